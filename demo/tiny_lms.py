"""Small random-initialised mBART, T5 and ByT5 folders, built offline like demo/tiny_mt5.py.

Each is an ordinary Hugging Face folder loaded by `from_pretrained` as the real models are:
- mbart: mBART-50's layout (tied output layer, scaled embeddings, final_logits_bias, 52 language
  codes after the SentencePiece pieces); its tokenizer is MBart50Tokenizer on a SentencePiece
  model trained here (sentencepiece.bpe.model is kept beside tokenizer.json); with `cc25`
  (`--cc25`) mbart-large-cc25's instead: MBartTokenizer (tokenizer_config.json names it) and its
  25 language codes, put after the text ("text </s> en_XX");
- t5: T5 v1.0's layout (ReLU feed-forward, tied output layer, decoder outputs rescaled);
- byt5: ByT5's layout (gated GELU, untied output layer); ByT5Tokenizer needs no file.

    python -m demo.tiny_lms --lm mbart --corpus sentences.txt --out pretrained_weight/tiny-mbart
    python -m demo.tiny_lms --lm mbart --cc25 --corpus sentences.txt --out pretrained_weight/tiny-cc25
"""
import argparse
import os

import torch
from transformers import (ByT5Tokenizer, MBart50Tokenizer, MBartConfig,
                          MBartForConditionalGeneration, MBartTokenizer, T5Config,
                          T5ForConditionalGeneration, T5Tokenizer)

import cli
from cli import add_flag
from demo.tiny_mt5 import train_spiece, untie_output_layer

KINDS = ('mbart', 't5', 'byt5')


def spiece_tokenizer(kind, out_dir, sentences, vocab_size, cc25=False):
    """The SentencePiece model trained on the sentences, through the model's tokenizer class
    (saved, its class is what tokenizer_config.json names: MBartTokenizer marks cc25)."""
    name = 'sentencepiece.bpe.model' if kind == 'mbart' else 'spiece.model'
    with open(os.path.join(out_dir, name), 'wb') as f:
        f.write(train_spiece(sentences, vocab_size))
    if kind == 'mbart':
        return (MBartTokenizer if cc25 else MBart50Tokenizer).from_pretrained(out_dir)
    return T5Tokenizer.from_pretrained(out_dir, extra_ids=0, legacy=False)


def tiny_config(kind, vocab, d_model, d_ff, num_layers, num_heads):
    if kind == 'mbart':
        return MBartConfig(
            vocab_size=vocab, d_model=d_model, encoder_layers=num_layers,
            decoder_layers=num_layers, encoder_attention_heads=num_heads,
            decoder_attention_heads=num_heads, encoder_ffn_dim=d_ff, decoder_ffn_dim=d_ff,
            max_position_embeddings=1024, scale_embedding=True, dropout=0.1,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
            forced_eos_token_id=2, tie_word_embeddings=True)
    return T5Config(
        vocab_size=vocab, d_model=d_model, d_ff=d_ff, d_kv=d_model // num_heads,
        num_layers=num_layers, num_decoder_layers=num_layers, num_heads=num_heads,
        feed_forward_proj='relu' if kind == 't5' else 'gated-gelu', dropout_rate=0.1,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        tie_word_embeddings=kind == 't5')


def build_tiny_lm(kind, out_dir, sentences, vocab_size=256, d_model=128, d_ff=256, num_layers=2,
                  num_heads=4, seed=0, cc25=False):
    """Writes a tokenizer and random weights of `kind` (mbart, t5, byt5) to `out_dir`; `cc25`
    gives mbart mbart-large-cc25's tokenizer in place of mBART-50's."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    if cc25 and kind != 'mbart':
        raise ValueError("cc25 is a layout of mbart only")
    os.makedirs(out_dir, exist_ok=True)
    if kind == 'byt5':
        tokenizer = ByT5Tokenizer()
    else:
        tokenizer = spiece_tokenizer(kind, out_dir, sentences, vocab_size, cc25)
    tokenizer.save_pretrained(out_dir)
    config = tiny_config(kind, len(tokenizer), d_model, d_ff, num_layers, num_heads)
    torch.manual_seed(seed)
    cls = MBartForConditionalGeneration if kind == 'mbart' else T5ForConditionalGeneration
    model = cls(config)
    # Logits near log(vocab) at the start, as in demo/tiny_mt5.py.
    if config.tie_word_embeddings:
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, d_model ** -0.5)
    else:
        untie_output_layer(model, d_model)
    model.save_pretrained(out_dir)
    return out_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flag(parser, "--lm", choices=KINDS, required=True, help="which model to build")
    add_flag(parser, "--corpus", required=True, help="text file, one sentence per line")
    add_flag(parser, "--out", required=True)
    add_flag(parser, "--vocab_size", type=cli.count, default=256,
             help="SentencePiece pieces (mbart, t5; ByT5 has its 384 byte ids)")
    add_flag(parser, "--d_model", type=cli.count, default=128)
    add_flag(parser, "--num_layers", type=cli.count, default=2)
    add_flag(parser, "--cc25", action="store_true",
             help="mbart only: mbart-large-cc25's tokenizer (MBartTokenizer) in place of "
                  "mBART-50's")
    args = parser.parse_args()
    if args.cc25 and args.lm != 'mbart':
        parser.error("--cc25: only --lm mbart has the cc25 layout")
    with open(args.corpus, encoding="utf-8") as f:
        sentences = [line.strip() for line in f if line.strip()]
    build_tiny_lm(args.lm, args.out, sentences, vocab_size=args.vocab_size, d_model=args.d_model,
                  d_ff=2 * args.d_model, num_layers=args.num_layers, cc25=args.cc25)
    print(args.out)


if __name__ == "__main__":
    main()
