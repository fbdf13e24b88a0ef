"""The language models the translator writes with: mT5, mBART, T5 / Flan-T5 and ByT5.

`--lm auto` (the default) takes the model from the language-model folder (--mt5_path): its
config.json's model_type (mt5, mbart, t5), and for a t5 folder its tokenizer (ByT5Tokenizer in
tokenizer_config.json, or no SentencePiece model at all, is ByT5). An explicit `--lm` must agree
with the folder. What each model gets:

- mT5 (as Uni-Sign): the text prompt "Translate sign language video to <language>: " before the
  pose embeddings, SentencePiece targets ending in </s>; decoding starts from <pad>.
- T5 / Flan-T5: the same text prompt and targets (T5's own task-prefix style).
- ByT5: the same prompt and targets, as UTF-8 bytes (ByT5Tokenizer, no vocabulary file).
- mBART: the prompt in the source format of the folder's tokenizer, then the pose embeddings;
  targets in its target format. mBART-50 (MBart50Tokenizer, the default): source
  "<src code> prompt </s>", targets "<tgt code> text </s>", decoding from </s> with the target
  language code forced as the first token (forced BOS); mbart-large-cc25 (MBartTokenizer, named
  by the folder's tokenizer_config.json; as GFSLT-VLP and SignCL use it): source
  "prompt </s> <src code>", targets "text </s> <tgt code>", so the decoder inputs (the targets
  shifted, the last code wrapped to the front) are "<tgt code> text </s>" and decoding starts
  from the target code. Source and target codes are the dataset language's (de_DE, zh_CN,
  en_XX), or --lang_code.

`output_logits` is the models' vocabulary projection on decoder states: T5's rescaling of tied
models and mBART's final_logits_bias included, as their forward applies them.

`encode_real_positions` runs the encoder for inference on CPU without each sequence's trailing
padding: no real position attends to it, and positions (T5's relative buckets, mBART's learned
table) count from the start, so the real positions' states are those of the padded batch.
"""
import json
import os

import torch

import config
import cpu_kernels

LMS = ('mt5', 'mbart', 't5', 'byt5')
# mBART's language codes of the datasets' languages (FAIRSEQ_LANGUAGE_CODES spelling).
LANG_CODES = {'German': 'de_DE', 'Chinese': 'zh_CN', 'English': 'en_XX', 'French': 'fr_XX',
              'Spanish': 'es_XX', 'Italian': 'it_IT', 'Japanese': 'ja_XX', 'Russian': 'ru_RU',
              'Dutch': 'nl_XX', 'Korean': 'ko_KR', 'Turkish': 'tr_TR', 'Arabic': 'ar_AR'}
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                'pytorch_model.bin.index.json')
# Tokenizer files of each model (ByT5 needs none: its vocabulary is the 256 bytes).
TOKENIZER_FILES = {'mt5': ('spiece.model', 'tokenizer.json'),
                   't5': ('spiece.model', 'tokenizer.json'),
                   'mbart': ('sentencepiece.bpe.model', 'tokenizer.json'), 'byt5': ()}


def add_lm_flags(p, add_flag):
    g = p.add_argument_group('language model')
    add_flag(g, '--lm', choices=('auto',) + LMS, default='auto',
             help="the language model in --mt5_path: auto (from its config.json), mt5, mbart, t5 "
                  "(also Flan-T5) or byt5; docs/language_models.md says what each is given")
    add_flag(g, '--lang_code', metavar='CODE', default=None,
             help="mBART only: the source and target language code (e.g. de_DE, zh_CN, en_XX; "
                  "default: the dataset language's)")


def lm_refusals(args, explicit):
    """The language-model flags that cannot act (see flags.refusals)."""
    problems = []
    uses_lm = not (args.task == 'CSLR' and getattr(args, 'head', 'generate') == 'ctc')
    if 'lm' in explicit and not uses_lm:
        problems.append("--lm: a CTC recognizer (--head ctc) has no language model")
    kind = None
    if uses_lm and args.mt5_path and os.path.isfile(os.path.join(args.mt5_path, 'config.json')):
        try:
            kind = resolve(args.mt5_path, args.lm)
        except config.ConfigError as error:
            problems.append(f"--lm {args.lm}: {error}")
    elif args.lm != 'auto':
        kind = args.lm
    if kind not in (None, 'mt5') and args.task == 'G2T':
        problems.append(f"--task G2T: gloss-to-text training is built on mT5 (the language "
                        f"model here is {kind})")
    if 'lang_code' in explicit and kind not in (None, 'mbart'):
        problems.append(f"--lang_code: only mBART takes a language code (the language model "
                        f"here is {kind or 'not mBART'})")
    return problems


def read_json(path, required=None):
    try:
        with open(path, encoding='utf-8') as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise config.ConfigError(f"{path} cannot be read as JSON ({error}): download the "
                                 "model folder again") from None
    if required and not (isinstance(value, dict) and required in value):
        raise config.ConfigError(f"{path} is not an mT5 config (no {required}): download the "
                                 "model folder again")
    if not isinstance(value, dict):
        raise config.ConfigError(f"{path} is not a JSON object: download the model folder again")
    return value


def tokenizer_class(folder):
    path = os.path.join(folder, 'tokenizer_config.json')
    return read_json(path).get('tokenizer_class') if os.path.isfile(path) else None


def kind_of(model_type, folder):
    """'mt5', 'mbart', 't5' or 'byt5' for a config's model_type and its tokenizer folder."""
    if model_type in ('mt5', 'mbart'):
        return model_type
    if model_type == 't5':
        byte_level = tokenizer_class(folder) == 'ByT5Tokenizer' or not any(
            os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES['t5'])
        return 'byt5' if byte_level else 't5'
    raise config.ConfigError(f"the language-model folder {folder} holds a {model_type!r} model; "
                             f"known: {', '.join(LMS)} (model_type mt5, mbart or t5)")


def resolve(folder, lm='auto'):
    """The language model of a folder (with its config.json), checked against --lm."""
    path = os.path.join(folder, 'config.json')
    settings = read_json(path, required='d_model')
    kind = kind_of(settings.get('model_type'), folder)
    if lm not in (None, 'auto') and lm != kind:
        raise config.ConfigError(f"the language-model folder {folder} holds {kind}, not {lm}: "
                                 "give --lm auto or a matching folder")
    return kind


def lm_of(args, folder=None):
    return resolve(folder or args.mt5_path, getattr(args, 'lm', 'auto'))


def check_lang_code(args, kind):
    """--lang_code where the folder turned out not to hold mBART (known only once resolved)."""
    if getattr(args, 'lang_code', None) and kind != 'mbart':
        raise config.ConfigError(f"--lang_code: only mBART takes a language code; "
                                 f"{args.mt5_path} holds {kind}")


def model_class(kind):
    from transformers import (MBartForConditionalGeneration, MT5ForConditionalGeneration,
                              T5ForConditionalGeneration)
    return {'mt5': MT5ForConditionalGeneration, 'mbart': MBartForConditionalGeneration,
            't5': T5ForConditionalGeneration, 'byt5': T5ForConditionalGeneration}[kind]


def config_class(kind):
    from transformers import MBartConfig, MT5Config, T5Config
    return {'mt5': MT5Config, 'mbart': MBartConfig, 't5': T5Config, 'byt5': T5Config}[kind]


def language_code(args):
    """mBART's language code of the run: --lang_code, else the dataset language's."""
    code = getattr(args, 'lang_code', None)
    if code:
        return code
    language = getattr(args, 'language', None) or config.get_dataset(args.dataset).language
    if language not in LANG_CODES:
        raise config.ConfigError(f"no mBART language code is known for {language}: give "
                                 "--lang_code (e.g. de_DE)")
    return LANG_CODES[language]


def read_tokenizer(folder, kind, code=None):
    """The tokenizer of a folder; ConfigError naming it when it cannot be loaded."""
    from transformers import ByT5Tokenizer, MBart50Tokenizer, MBartTokenizer, T5Tokenizer
    try:
        if kind == 'byt5':
            return ByT5Tokenizer.from_pretrained(folder) if os.path.isfile(
                os.path.join(folder, 'tokenizer_config.json')) else ByT5Tokenizer()
        if kind == 'mbart':
            cc25 = tokenizer_class(folder) == 'MBartTokenizer'
            cls = MBartTokenizer if cc25 else MBart50Tokenizer
            try:
                tokenizer = cls.from_pretrained(folder, src_lang=code, tgt_lang=code)
            except KeyError:
                tokenizer = None
            if tokenizer is None or tokenizer.convert_tokens_to_ids(code) == tokenizer.unk_token_id:
                raise config.ConfigError(f"the language code {code} is not in the vocabulary of "
                                         f"the tokenizer in {folder}: give --lang_code one of its "
                                         "codes (de_DE, zh_CN, en_XX, ...)")
            return tokenizer
        return T5Tokenizer.from_pretrained(folder, legacy=False)
    except config.ConfigError:
        raise
    except Exception as error:  # sentencepiece and tokenizers raise many kinds for bad files
        raise config.ConfigError(f"the tokenizer in the folder {folder} cannot be loaded ("
                                 f"{type(error).__name__}: {str(error).strip()[:200]})") from None


def set_generation(model, tokenizer, kind):
    """mBART decodes into the target language: mBART-50 forces its code as the first token
    (forced BOS), cc25 starts the decoder from it (its targets end with the code)."""
    if kind != 'mbart':
        return model
    code_id = tokenizer.convert_tokens_to_ids(tokenizer.tgt_lang)
    if type(tokenizer).__name__ == 'MBartTokenizer':
        model.generation_config.decoder_start_token_id = code_id
        model.generation_config.forced_bos_token_id = None
    else:
        model.generation_config.forced_bos_token_id = code_id
    return model


def output_logits(model, hidden):
    """Vocabulary logits of decoder states, as the model's own forward computes them."""
    if getattr(model.config, 'scale_decoder_outputs', False):
        hidden = hidden * (model.config.d_model ** -0.5)
    logits = cpu_kernels.output_product(model.lm_head, hidden)
    bias = getattr(model, 'final_logits_bias', None)
    return logits if bias is None else logits + bias.to(logits.dtype)


def encode_real_positions(encoder, inputs_embeds, attention_mask):
    """Encoder states (B, L, D) at every unmasked position, each sequence encoded on its own up
    to its last unmasked position; the masked positions after it come back as zeros. A batch
    without trailing padding, or off the CPU (a GPU runs the padded batch at once), is encoded
    as it is."""
    length = attention_mask.shape[1]
    positions = torch.arange(1, length + 1, device=attention_mask.device)
    ends = (attention_mask.bool() * positions).amax(1).tolist()
    if inputs_embeds.device.type != 'cpu' or all(end == length for end in ends):
        return encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                       return_dict=True).last_hidden_state
    states = None
    for i, end in enumerate(ends):
        row = encoder(inputs_embeds=inputs_embeds[i:i + 1, :end],
                      attention_mask=attention_mask[i:i + 1, :end],
                      return_dict=True).last_hidden_state
        if states is None:
            states = row.new_zeros(len(ends), length, row.shape[-1])
        states[i, :end] = row[0]
    return states
