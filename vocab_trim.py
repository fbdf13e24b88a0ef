"""Vocabulary trimming: a language-model folder keeping only the tokens a corpus uses.

As MMTLB and GFSLT-VLP trim mBART: the kept tokens are those of the training corpora (label
files of given datasets and splits, tokenized with the model's own tokenizer, with the prompt of
each dataset's language) plus every special token. The new folder is an ordinary Hugging Face
folder loaded by `from_pretrained` (and by --mt5_path):
- the SentencePiece model (sentencepiece's ModelProto) keeps the control, unknown and
  user-defined pieces and the used normal pieces, in their order, so ids are renumbered densely
  and the tokenizer class rebuilds its vocabulary (with mBART's language codes after it);
- the input embedding, the output layer when it is untied (mt5-base, Flan-T5) and mBART's
  final_logits_bias keep the rows of the kept tokens, in the new order;
- config.json and generation_config.json carry the token ids renumbered.
The logits of a trimmed model are the full model's restricted to the kept tokens, so text made
of kept tokens is scored and decoded as before. ByT5's 384 byte ids are not trimmed.
"""
import json
import os
import shutil

import torch
import torch.nn as nn

import config
import language_models
import mt5_layout
from labels import load_labels

SPIECE_FILES = {'mt5': 'spiece.model', 't5': 'spiece.model', 'mbart': 'sentencepiece.bpe.model'}
ID_FIELDS = ('pad_token_id', 'eos_token_id', 'bos_token_id', 'decoder_start_token_id',
             'forced_bos_token_id', 'forced_eos_token_id')


def corpus_texts(datasets, splits, data_root=None, glosses=False):
    """The sentences (and with `glosses` the gloss strings) of the datasets' label files of
    `splits`, and each dataset language's prompt."""
    texts = []
    for name in datasets:
        spec = config.get_dataset(name)
        paths = config.resolve_paths(name, data_root)['labels']
        texts.append(spec.prompt)
        for split in splits:
            if paths.get(split) is None:
                raise config.ConfigError(f"--dataset {name} has no {split} split "
                                         "(train, dev, test)")
            for entry in load_labels(paths[split], spec.label_format):
                texts += [entry['text']] if entry.get('text') else []
                if glosses and entry.get('gloss'):
                    gloss = entry['gloss']
                    texts.append(gloss if isinstance(gloss, str) else ' '.join(gloss))
    return texts


def kept_ids(tokenizer, texts):
    """Sorted ids of the texts' tokens and of every special token."""
    kept = set(tokenizer.all_special_ids)
    for begin in range(0, len(texts), 20000):
        for row in tokenizer(texts[begin:begin + 20000], return_attention_mask=False)['input_ids']:
            kept.update(row)
    return sorted(kept)


def trim_spiece(model_bytes, kept_pieces):
    """The SentencePiece model with only the non-normal pieces and the `kept_pieces`."""
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
    pieces = [p for p in proto.pieces if p.type != normal or p.piece in kept_pieces]
    del proto.pieces[:]
    proto.pieces.extend(pieces)
    return proto.SerializeToString()


def new_tokenizer(src, dst, kind, code, kept_pieces):
    """Writes the trimmed SentencePiece model (and the tokenizer settings) to dst; the tokenizer
    class rebuilds its vocabulary from it."""
    name = SPIECE_FILES[kind]
    if not os.path.isfile(os.path.join(src, name)):
        raise config.ConfigError(f"{src} has no {name}: trimming rewrites the SentencePiece model")
    with open(os.path.join(src, name), 'rb') as f:
        trimmed = trim_spiece(f.read(), kept_pieces)
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, name), 'wb') as f:
        f.write(trimmed)
    for extra in ('tokenizer_config.json', 'special_tokens_map.json'):
        if os.path.isfile(os.path.join(src, extra)):
            shutil.copyfile(os.path.join(src, extra), os.path.join(dst, extra))
    tokenizer = language_models.read_tokenizer(dst, kind, code)
    tokenizer.save_pretrained(dst)
    return tokenizer


def row_map(old, new):
    """For each new id, the old id of the same token."""
    tokens = new.convert_ids_to_tokens(list(range(len(new))))
    rows = old.convert_tokens_to_ids(tokens)
    lost = [t for t, r in zip(tokens, rows) if old.convert_ids_to_tokens(r) != t]
    if lost:
        raise config.ConfigError(f"the trimmed tokenizer has tokens the full one lacks: {lost[:5]}")
    return rows


def slice_rows(model, rows):
    """The model with embedding, output-layer and bias rows `rows` (in that order)."""
    index = torch.tensor(rows, dtype=torch.long)
    tied = mt5_layout.is_tied(model)
    embedding = model.get_input_embeddings()
    embedding.weight = nn.Parameter(embedding.weight.detach()[index].clone())
    embedding.num_embeddings = len(rows)
    for stack in (model.get_encoder(), model.get_decoder()):  # their own modules on one tensor
        stack.embed_tokens.weight = embedding.weight
        stack.embed_tokens.num_embeddings = len(rows)
    output = model.get_output_embeddings()
    if tied:
        output.weight = embedding.weight
    else:
        output.weight = nn.Parameter(output.weight.detach()[index].clone())
    output.out_features = len(rows)
    if getattr(model, 'final_logits_bias', None) is not None:
        model.final_logits_bias = model.final_logits_bias[:, index].clone()
    model.config.vocab_size = len(rows)
    return model


def renumber_ids(model, rows):
    """Token ids in the config and the generation config, in the new numbering."""
    new_id = {old: new for new, old in enumerate(rows)}
    for settings in (model.config, model.generation_config):
        for field in ID_FIELDS:
            value = getattr(settings, field, None)
            if isinstance(value, int):
                if value not in new_id:
                    raise config.ConfigError(f"{field} {value} is not among the kept tokens")
                setattr(settings, field, new_id[value])


def trim_folder(src, dst, texts, lm='auto', code=None):
    """Writes the trimmed folder to dst; returns (kept tokens, full vocabulary rows)."""
    from models import load_mt5
    kind = language_models.resolve(src, lm)
    if kind == 'byt5':
        raise config.ConfigError("ByT5's vocabulary is its 256 bytes and a few special ids: "
                                 "there is nothing to trim")
    code = code or ('en_XX' if kind == 'mbart' else None)
    old = language_models.read_tokenizer(src, kind, code)
    kept = kept_ids(old, texts)
    pieces = set(old.convert_ids_to_tokens(kept))
    new = new_tokenizer(src, dst, kind, code, pieces)
    rows = row_map(old, new)
    model = load_mt5(src, lm)
    full = model.get_input_embeddings().weight.shape[0]
    renumber_ids(slice_rows(model, rows), rows)
    model.save_pretrained(dst)
    with open(os.path.join(dst, 'trimmed_from.json'), 'w', encoding='utf-8') as f:
        json.dump({'source': os.path.abspath(src), 'full_vocabulary': full, 'kept': len(rows),
                   'rows': rows}, f)
    return len(rows), full
