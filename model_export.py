"""Exported model folders: a trained translator or CTC recognizer as one self-contained folder.

    model.safetensors   the weights, each tensor once (modules that share one, such as the two
                        hands or a tied mT5 embedding, store it under their first name)
    config.json         {"format": "signpose", "version": 2, "head", "flags" (the model's own,
                        as trained), "info" (epoch, metrics and the CTC gloss vocabulary, from the
                        checkpoint), "mt5" (mT5's config) and "generation" (translator only)}
    tokenizer.json, tokenizer_config.json, spiece.model   mT5's tokenizer (translator only)
    README.md           a model card: dataset, metrics, flags, how to load it

`translate.py --export DIR` writes it and `translate.py --model DIR` reads it back, with mT5 built
from its config and given the output-layer layout of the stored weights (mt5_layout.py), so the
folder translates exactly as its checkpoint. Folders of the first format (translator.pth,
translator.json and mT5's config.json) still load; `--model OLD --export NEW` rewrites one.
"""
import json
import os
import shutil

import checkpoint
import mt5_layout
import utils
from config import ConfigError

FORMAT, VERSION = 'signpose', 2
WEIGHTS, CONFIG, CARD = 'model.safetensors', 'config.json', 'README.md'
LEGACY_WEIGHTS, LEGACY_FLAGS = 'translator.pth', 'translator.json'  # version 1
# Flags the model card lists (all of them are in config.json).
CARD_FLAGS = ('dataset', 'task', 'head', 'stgcn_channels', 'hidden_dim', 'temporal_layers',
              'temporal_kernel', 'max_length', 'num_beams', 'max_new_tokens', 'ctc_beam',
              'epochs', 'batch_size', 'lr', 'label_smoothing', 'seed')


def model_flags(stored, overrides=None):
    """The trainer's defaults, updated with a model's stored flags and explicit overrides;
    regularisers are off (they only shape the training loss)."""
    flags = utils.get_args_parser().parse_args([])
    vars(flags).update(stored or {})
    vars(flags).update({k: v for k, v in (overrides or {}).items() if v is not None})
    flags.use_signcl = flags.use_sst = flags.use_hyperbolic = False
    flags.rgb_support = False
    return flags


def head_of(flags):
    return 'ctc' if flags.task == 'CSLR' and flags.head == 'ctc' else 'translator'


# ----------------------------------------------------------------------------- writing

def unique_tensors(model):
    """The state dict with each tensor once, under the first name it has in the state dict
    (safetensors refuses tensors that share memory)."""
    kept, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() == 0 or key not in seen:  # empty tensors all have address 0
            seen.add(key)
            kept[name] = tensor.detach().cpu().contiguous()
    return kept


def export(model, flags, info, folder):
    """Writes the folder (see the module docstring) for a SignTranslator or CTCRecognizer."""
    from safetensors.torch import save
    os.makedirs(folder, exist_ok=True)
    weights = save(unique_tensors(model), metadata={'format': 'pt'})
    checkpoint._atomic_write(os.path.join(folder, WEIGHTS), 'wb', lambda f: f.write(weights))
    stored = checkpoint.plain_args(flags)
    stored.pop('mt5_path', None)
    description = {'format': FORMAT, 'version': VERSION, 'head': head_of(flags), 'flags': stored,
                   'info': plain_info(info)}
    if hasattr(model, 'mt5_model'):
        description['mt5'] = model.mt5_model.config.to_dict()
        description['generation'] = model.mt5_model.generation_config.to_dict()
        save_tokenizer(model.mt5_tokenizer, folder)
    checkpoint.write_json(os.path.join(folder, CONFIG), description)
    write_card(folder, description, model)
    for name in (LEGACY_FLAGS, LEGACY_WEIGHTS):  # a first-format folder rewritten in place
        if os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))


def plain_info(info):
    """What a checkpoint holds besides weights and flags, as JSON: plain values (epoch, metrics)
    and the gloss vocabulary; other objects (optimizer states of foreign checkpoints) are left."""
    plain = (str, int, float, bool, type(None))
    return {key: value for key, value in info.items()
            if isinstance(value, plain) or key == 'gloss_vocab'}


def save_tokenizer(tokenizer, folder):
    tokenizer.save_pretrained(folder)
    # Recent transformers write only tokenizer.json; the SentencePiece model keeps the folder
    # loadable by older versions too.
    spiece = getattr(tokenizer, 'vocab_file', None)
    target = os.path.join(folder, getattr(tokenizer, 'vocab_files_names', {}).get(
        'vocab_file', 'spiece.model'))
    if spiece and os.path.isfile(spiece) and os.path.abspath(spiece) != os.path.abspath(target):
        shutil.copyfile(spiece, target)


def write_card(folder, description, model):
    """README.md through huggingface_hub's ModelCard, with its metadata header."""
    from huggingface_hub import ModelCard, ModelCardData
    flags, info, head = description['flags'], description['info'], description['head']
    metrics = {key: value for key, value in info.items()
               if key.startswith(('dev_', 'test_')) and isinstance(value, (int, float))}
    what = ("CTC gloss recognizer (pose → glosses)" if head == 'ctc'
            else "sign language translator (pose → mT5 → text)")
    tags = ['sign-language', 'pose', 'ctc' if head == 'ctc' else 'mt5',
            'sign-language-recognition' if head == 'ctc' else 'sign-language-translation']
    data = ModelCardData(library_name=FORMAT, tags=tags,
                         metrics=sorted({k.split('_', 1)[1] for k in metrics}) or None)
    lines = [f"# {flags.get('dataset', '?')} {what}", "",
             f"A signpose {what}: COCO-WholeBody keypoints (RTMPose, 133 joints) → ST-GCN pose "
             "encoder → " + ("CTC head." if head == 'ctc' else "mT5."), "",
             f"- dataset: {flags.get('dataset')} (task {flags.get('task')})",
             f"- trained: epoch {info['epoch']} of {flags.get('epochs')}" if 'epoch' in info
             else "- trained: epoch not recorded in the checkpoint"]
    if head == 'ctc':
        lines.append(f"- gloss vocabulary: {len(info['gloss_vocab']['itos']) - 1} glosses + blank")
    else:
        mt5 = description['mt5']
        layers = [mt5.get(a, mt5.get(b)) for a, b in (('num_layers', 'encoder_layers'),
                                                      ('num_decoder_layers', 'decoder_layers'))]
        lines.append(f"- {mt5.get('model_type', 'mt5')}: d_model {mt5['d_model']}, "
                     f"{layers[0]}+{layers[1]} layers, vocabulary {mt5['vocab_size']}, output "
                     f"layer {mt5_layout.describe(model.mt5_model)}")
    lines += ["", "## Metrics (from the checkpoint)", ""]
    lines += (["| metric | value |", "| --- | --- |"]
              + [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())]
              if metrics else ["None recorded (a best_checkpoint.pth records the dev metric)."])
    lines += ["", "## Flags", "", "| flag | value |", "| --- | --- |"]
    lines += [f"| --{name} | {format_value(flags[name])} |" for name in CARD_FLAGS
              if name in flags]
    lines += ["", "All flags are in config.json.", "", "## How to load it", "", "```bash",
              f"python translate.py --model {os.path.basename(os.path.abspath(folder))} "
              "clips/ --format jsonl --output out.jsonl", "```", "", "```python",
              "from model_export import load_exported",
              "model, flags, info = load_exported(FOLDER)  # a SignTranslator or CTCRecognizer",
              "```", "", f"Files: {WEIGHTS} (weights), {CONFIG} (flags and configuration)"
              + ("." if head == 'ctc' else ", tokenizer.json / spiece.model (mT5's tokenizer)."),
              ""]
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(
        os.path.join(folder, CARD))


def format_value(value):
    return ','.join(map(str, value)) if isinstance(value, list) else str(value)


# ----------------------------------------------------------------------------- reading

def load_exported(folder):
    """(model, flags, info) from a folder written by `export` (or of the first format);
    ConfigError naming the file for a missing or damaged one."""
    if not os.path.isdir(folder):
        raise ConfigError(f"--model {folder} is not a folder (write one with translate.py "
                          "--export; a weight file is read with --checkpoint)")
    if os.path.isfile(os.path.join(folder, LEGACY_FLAGS)):
        return load_version_1(folder)
    for name in (CONFIG, WEIGHTS):
        if not os.path.isfile(os.path.join(folder, name)):
            raise ConfigError(f"--model {folder}: {name} not found (write the folder with "
                              "translate.py --export)")
    description = read_description(os.path.join(folder, CONFIG))
    flags = model_flags(description['flags'])
    flags.mt5_path = folder
    info = description.get('info') or {}
    if description.get('head') == 'ctc':
        from ctc_head import GlossVocab
        from models import CTCRecognizer
        if not isinstance(info.get('gloss_vocab'), dict):
            raise ConfigError(f"{folder}/{CONFIG} holds no gloss vocabulary (info.gloss_vocab): "
                              "write the folder again with translate.py --export")
        model = CTCRecognizer(flags, GlossVocab.from_state_dict(info['gloss_vocab']).num_classes)
    else:
        model = build_translator(folder, description, flags)
    load_weights(model, os.path.join(folder, WEIGHTS))
    return model, flags, info


def read_flags(folder):
    """The stored flags of an exported folder (either format), read before any model is built."""
    if not os.path.isdir(folder):
        raise ConfigError(f"--model {folder} is not a folder (write one with translate.py "
                          "--export; a weight file is read with --checkpoint)")
    if os.path.isfile(os.path.join(folder, LEGACY_FLAGS)):
        return read_version_1(os.path.join(folder, LEGACY_FLAGS))['flags']
    if not os.path.isfile(os.path.join(folder, CONFIG)):
        raise ConfigError(f"--model {folder}: {CONFIG} not found (write the folder with "
                          "translate.py --export)")
    return read_description(os.path.join(folder, CONFIG))['flags']


def read_description(path):
    """config.json of an exported folder, checked: its format, version and flags."""
    try:
        with open(path, encoding='utf-8') as f:
            description = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{path} cannot be read ({error}): write the folder again with "
                          "translate.py --export") from None
    if not isinstance(description, dict) or description.get('format') != FORMAT:
        raise ConfigError(f"{path} is not the config of a folder written by translate.py "
                          "--export (no \"format\": \"signpose\")")
    version = description.get('version')
    if not isinstance(version, int) or version > VERSION:
        raise ConfigError(f"{path} is an export of version {version}; this code reads versions "
                          f"up to {VERSION}: update it, or export the checkpoint again")
    if not isinstance(description.get('flags'), dict):
        raise ConfigError(f"{path} holds no 'flags' object: write the folder again with "
                          "translate.py --export")
    return description


def build_translator(folder, description, flags):
    """SignTranslator with its language model (mT5, mBART, T5, ByT5) built from the stored
    config (weights loaded after)."""
    from transformers import GenerationConfig

    import language_models
    from models import SignTranslator, read_tokenizer
    path = os.path.join(folder, CONFIG)
    try:
        kind = language_models.kind_of(description['mt5'].get('model_type', 'mt5'), folder)
        mt5_config = language_models.config_class(kind).from_dict(description['mt5'])
        generation = GenerationConfig.from_dict(description.get('generation') or {})
    except ConfigError:
        raise
    except Exception as error:  # a missing or edited block; transformers raises many kinds
        raise ConfigError(f"{path}: its mT5 configuration cannot be used ({type(error).__name__}: "
                          f"{str(error).strip()[:200]}): write the folder again") from None
    files = language_models.TOKENIZER_FILES[kind]
    if files and not any(os.path.isfile(os.path.join(folder, name)) for name in files):
        raise ConfigError(f"--model {folder} has no tokenizer ({' or '.join(files)}): "
                          "write the folder again with translate.py --export")
    tokenizer = read_tokenizer(folder, kind, flags)
    mt5 = language_models.model_class(kind)(mt5_config)
    mt5.generation_config = generation
    return SignTranslator(flags, mt5_model=mt5, tokenizer=tokenizer)


def load_weights(model, path):
    """model.safetensors into `model`: every alias of a tensor stored once gets it, and mT5 the
    output-layer layout of the stored weights (untied when shared and lm_head differ)."""
    from safetensors.torch import load_file

    from models import load_checkpoint_weights
    try:
        state = load_file(path)
    except Exception as error:  # safetensors raises several kinds for damaged files
        raise ConfigError(f"{path} cannot be read ({type(error).__name__}: "
                          f"{str(error).strip()[:200]}): write the folder again") from None
    if hasattr(model, 'mt5_model'):
        # `export` stores the output layer only when it is a tensor of its own; the aliases are
        # filled in for that layout, and load_checkpoint_weights ties two equal tensors.
        mt5_layout.set_tied(model.mt5_model, 'mt5_model.' + mt5_layout.OUTPUT_KEY not in state)
    aliases = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        aliases.setdefault(id(tensor), []).append(name)
    for names in aliases.values():
        stored = next((name for name in names if name in state), None)
        for name in names if stored else ():
            state.setdefault(name, state[stored])
    load_checkpoint_weights(model, state, source=path)


def load_version_1(folder):
    """A folder of the first format: translator.pth ({'model': state_dict}), translator.json
    ({'flags', 'info'}) and mT5's own config.json, generation config and tokenizer."""
    from transformers import GenerationConfig, MT5Config, MT5ForConditionalGeneration

    from models import SignTranslator, load_checkpoint_weights, load_tokenizer
    for name in (LEGACY_WEIGHTS, 'config.json'):
        if not os.path.isfile(os.path.join(folder, name)):
            raise ConfigError(f"--model {folder}: {name} not found (write the folder with "
                              "translate.py --export)")
    description = read_version_1(os.path.join(folder, LEGACY_FLAGS))
    flags = model_flags(description['flags'])
    flags.mt5_path = folder
    tokenizer = load_tokenizer(folder)  # checks config.json too, before transformers reads it
    mt5 = MT5ForConditionalGeneration(MT5Config.from_pretrained(folder))
    if os.path.isfile(os.path.join(folder, 'generation_config.json')):
        mt5.generation_config = GenerationConfig.from_pretrained(folder)
    model = SignTranslator(flags, mt5_model=mt5, tokenizer=tokenizer)
    load_checkpoint_weights(model, os.path.join(folder, LEGACY_WEIGHTS))  # and its layout
    return model, flags, description.get('info', {})


def read_version_1(path):
    try:
        with open(path, encoding='utf-8') as f:
            description = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"--model {path} cannot be read ({error}): write the folder again "
                          "with --export") from None
    if not isinstance(description, dict) or not isinstance(description.get('flags'), dict):
        raise ConfigError(f"--model {path} holds no 'flags' object: write the folder again "
                          "with --export")
    return description
