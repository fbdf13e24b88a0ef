"""Builds a small random-initialised mT5 directory with an offline SentencePiece tokenizer.

The result is an ordinary Hugging Face directory (config.json, weights, spiece.model), loaded
with the same `from_pretrained` code as google/mt5-base, so the demo and the tests run with
no download. Its layout is mt5-base's: the output layer is a tensor of its own, stored beside the
input embedding with other values (`--tied` ties them, as the demos before it did).

    python -m demo.tiny_mt5 --corpus sentences.txt --out pretrained_weight/tiny-mt5
"""
import argparse
import io
import os

import sentencepiece as spm
import torch
from transformers import MT5Config, MT5ForConditionalGeneration, T5Tokenizer

import cli
import mt5_layout
from cli import add_flag

PROMPT_WORDS = "Translate sign language video to English Chinese:"


def train_spiece(sentences, vocab_size):
    """Trains a unigram SentencePiece model with mT5's special ids (pad 0, eos 1, unk 2)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences) + [PROMPT_WORDS] * 4),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def build_tiny_mt5(out_dir, sentences, vocab_size=256, d_model=128, d_ff=256,
                   num_layers=2, num_heads=4, d_kv=32, seed=0, tie=False):
    """Writes tokenizer and random mT5 weights to `out_dir`; returns the directory. With `tie`
    the output layer is the input embedding (one tensor), else a tensor of its own."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "spiece.model"), "wb") as f:
        f.write(train_spiece(sentences, vocab_size))
    tokenizer = T5Tokenizer.from_pretrained(out_dir, extra_ids=0, legacy=False)
    tokenizer.save_pretrained(out_dir)
    config = MT5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_ff=d_ff, d_kv=d_kv,
        num_layers=num_layers, num_decoder_layers=num_layers, num_heads=num_heads,
        feed_forward_proj="gated-gelu",
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.1,
    )
    torch.manual_seed(seed)
    model = MT5ForConditionalGeneration(config)
    # An output layer with std 1 gave this demo a first cross-entropy near 60; std d_model**-0.5
    # starts near log(vocab), as a pretrained checkpoint would, so a from-scratch run does not
    # spend its first epochs unlearning it. Tied, the embedding is scaled with it.
    if tie:
        with torch.no_grad():
            model.lm_head.weight.mul_(d_model ** -0.5)
    else:
        untie_output_layer(model, d_model)
    model.save_pretrained(out_dir)
    return out_dir


def untie_output_layer(model, d_model):
    """Gives the model an output layer of its own, drawn with std d_model**-0.5."""
    mt5_layout.set_tied(model, False)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, d_model ** -0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flag(parser, "--corpus", required=True, help="text file, one sentence per line")
    add_flag(parser, "--out", required=True)
    add_flag(parser, "--vocab_size", type=cli.count, default=256)
    add_flag(parser, "--d_model", type=cli.count, default=128)
    add_flag(parser, "--num_layers", type=cli.count, default=2)
    add_flag(parser, "--tied", action="store_true",
             help="tie the output layer to the input embedding (mt5-base keeps them apart)")
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        sentences = [line.strip() for line in f if line.strip()]
    build_tiny_mt5(args.out, sentences, vocab_size=args.vocab_size,
                   d_model=args.d_model, d_ff=2 * args.d_model, num_layers=args.num_layers,
                   tie=args.tied)
    print(args.out)


if __name__ == "__main__":
    main()
