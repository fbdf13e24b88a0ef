"""Evaluation speed: Uni-Sign's two passes against one pass, with identical generated text.

Uni-Sign evaluates a batch with a teacher-forced forward (pose encoder, mT5, loss) and then
beam search from that forward's input embeddings; engine.predict runs the pose encoder once and
goes straight to beam search (both batched over the clips and beams by Hugging Face generate).
Rows, all on the same batches and weights:
  unisign            two passes, models.UNISIGN_SPEED, tokenizer inside forward
  two_pass_switches  two passes with models.SPEED_DEFAULTS and pre-tokenised batches
  one_pass_plain     one pass, UNISIGN_SPEED encoder
  one_pass           one pass, SPEED_DEFAULTS (engine.predict's way)
  one_pass_pooled    one_pass, with beam search over --pool_rows beam rows of several batches
                     at a time (SignTranslator.generate_pooled, engine.predict's default): each
                     batch still encoded and decoded on its own, one output-layer product per
                     step for all, sentences leave the pool when their result is final
Every row's tokens must equal the unisign row's, sentence by sentence. The model has random
weights, so beam search never stops on its own: every batch decodes the same number of new
tokens, by default the mean over the batches of their longest reference (about what a trained
model generates), or --max_new_tokens. Clips and references come from train_step.py's
CSL-Daily-like pool (random batches; padding repeats the last frame).

    OMP_NUM_THREADS=1 python bench/eval_speed.py --size small --steps 4 --repeats 2
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import (MT5_SHAPES, build_model, machine_description, make_batch,  # noqa: E402
                        make_pool, make_tokenizer, synchronize, to_device)
from models import SPEED_DEFAULTS, UNISIGN_SPEED  # noqa: E402

ROWS = {  # name: (speed switches, mode, pre-tokenised batches)
    'unisign': (UNISIGN_SPEED, 'two_pass', False),
    'two_pass_switches': (SPEED_DEFAULTS, 'two_pass', True),
    'one_pass_plain': (UNISIGN_SPEED, 'one_pass', False),
    'one_pass': (SPEED_DEFAULTS, 'one_pass', True),
    'one_pass_pooled': (SPEED_DEFAULTS, 'pooled', True),
}


@torch.no_grad()
def evaluate_batches(model, batches, mode, opts, device):
    """Generated id rows per clip (trailing padding removed) and the seconds it took."""
    outputs = []
    options = dict(max_new_tokens=opts.max_new_tokens, num_beams=opts.num_beams)
    synchronize(device)
    start = time.perf_counter()
    if mode == 'pooled':
        outputs += model.generate_pooled([src for src, _ in batches], pool_rows=opts.pool_rows,
                                         **options)
    for src, tgt in batches if mode != 'pooled' else []:
        if mode == 'one_pass':
            outputs.append(model.generate(src, **options))
        else:
            forward = model(src, tgt)  # Uni-Sign also reads the loss here
            outputs.append(model.generate(forward, **options))
    synchronize(device)
    seconds = time.perf_counter() - start
    return [strip_padding(row) for ids in outputs for row in ids.cpu()], seconds


def strip_padding(row, pad_id=0):
    tokens = row.tolist()
    while len(tokens) > 1 and tokens[-1] == pad_id:
        tokens.pop()
    return tokens


def prepare(opts, tokenizer, device):
    """Per pre-tokenisation setting, the batches on the device; sets opts.max_new_tokens."""
    lengths, sentences, _, batch_indices = make_pool(opts)
    batches = {flag: [to_device(make_batch(ix, lengths, sentences, tokenizer, flag, k), device)
                      for k, ix in enumerate(batch_indices)] for flag in (False, True)}
    longest = [max(len(tokenizer(sentences[i]).input_ids) for i in ix) for ix in batch_indices]
    opts.max_new_tokens = opts.max_new_tokens or round(statistics.mean(longest))
    return batches, sum(len(ix) for ix in batch_indices)


def run(opts):
    device = torch.device(opts.device)
    with tempfile.TemporaryDirectory() as directory:
        tokenizer = make_tokenizer(directory)
    model = build_model(opts.size, tokenizer, opts.vocab_size, opts.seed).to(device).eval()
    batches, sentences = prepare(opts, tokenizer, device)
    times = {row: [] for row in ROWS}
    outputs = {}
    for _ in range(opts.repeats):
        for row, (speed, mode, pretokenized) in ROWS.items():
            model.set_speed(**speed)
            ids, seconds = evaluate_batches(model, batches[pretokenized], mode, opts, device)
            times[row].append(seconds)
            outputs.setdefault(row, ids)
            print(f"  {row}: {sentences / seconds:.3f} sentences/s", flush=True)
    return times, outputs, sentences


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--size', default='small', choices=list(MT5_SHAPES))
    p.add_argument('--vocab_size', type=int, default=None)
    p.add_argument('--device', default='auto')
    p.add_argument('--batch_size', type=int, default=4)
    p.add_argument('--steps', type=int, default=6, help="batches evaluated per row")
    p.add_argument('--repeats', type=int, default=1, help="interleaved rounds over the rows")
    p.add_argument('--num_beams', type=int, default=4)
    p.add_argument('--max_new_tokens', type=int, default=0,
                   help="0: the mean over the batches of their longest reference")
    p.add_argument('--pool_rows', type=int, default=64, help="beam rows decoded together")
    p.add_argument('--mean_frames', type=float, default=120)
    p.add_argument('--cv', type=float, default=0.35)
    p.add_argument('--seed', type=int, default=0)
    opts = p.parse_args(argv)
    if opts.device == 'auto':
        opts.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    print(machine_description(torch.device(opts.device)))
    times, outputs, sentences = run(opts)
    base = sentences / statistics.median(times['unisign'])
    print(f"\nsize {opts.size}, {sentences} clips in batches of {opts.batch_size}, "
          f"{opts.num_beams} beams, {opts.max_new_tokens} new tokens, pool of {opts.pool_rows} "
          f"beam rows, median of {opts.repeats} round(s)")
    print(f"{'row':18s} {'sentences/s':>11s} {'x unisign':>9s}  identical ids")
    identical = True
    for row in ROWS:
        rate = sentences / statistics.median(times[row])
        same = outputs[row] == outputs['unisign']
        identical &= same
        print(f"{row:18s} {rate:11.3f} {rate / base:8.2f}x  {'yes' if same else 'NO'}")
    if not identical:
        sys.exit("generated ids differ from Uni-Sign's way")


if __name__ == '__main__':
    main()
