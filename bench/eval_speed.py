"""Evaluation speed and memory: Uni-Sign's two passes against one pass and pooled beam search,
with identical generated text.

Uni-Sign evaluates a batch with a teacher-forced forward (pose encoder, mT5, loss) and then
beam search from that forward's input embeddings; engine.predict runs the pose encoder once and
goes straight to beam search, pooled over batches. Rows, all on the same batches and weights,
each in a fresh subprocess (rounds repeated and interleaved with --repeats; the median is shown):
  unisign            two passes, models.UNISIGN_SPEED, tokenizer inside forward
  two_pass_switches  two passes with models.SPEED_DEFAULTS and pre-tokenised batches
  one_pass_plain     one pass, UNISIGN_SPEED encoder, Hugging Face generate batch by batch
  one_pass           one pass, SPEED_DEFAULTS, generate batch by batch
  one_pass_pooled    one pass, SPEED_DEFAULTS, beam search pooled over --pool_rows beam rows of
                     several batches (SignTranslator.generate_pooled, engine.predict's default):
                     each batch is encoded and decoded on its own, one output-layer product per
                     step serves all, sentences leave the pool when their result is final
Every row's tokens must equal the unisign row's, sentence by sentence. The model has random
weights, so beam search never stops on its own: every batch decodes the same number of new
tokens, by default the mean over the batches of their longest reference (about what a trained
model generates), or --max_new_tokens. (With a trained model, sentences that end early also
leave the pool early; batch by batch they are decoded until the batch's last one ends. That
gain is not measured here.) Clips and references come from train_step.py's
CSL-Daily-like pool (random batches; padding repeats the last frame). Peak memory is the
worker's peak resident set during evaluation (the high-water mark is reset after the model is
built) on CPU, torch.cuda.max_memory_allocated on CUDA.

    OMP_NUM_THREADS=1 python bench/eval_speed.py --size small --steps 8
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import (MT5_SHAPES, build_model, machine_description, make_batch,  # noqa: E402
                        make_pool, make_tokenizer, synchronize, to_device)
from step_phases import EVAL_PHASES, eval_split, phase_clock, phase_hooks, split_lines  # noqa: E402
import cli  # noqa: E402
from cli import add_flag  # noqa: E402
from models import SPEED_DEFAULTS, UNISIGN_SPEED  # noqa: E402
from peak_memory import peak_memory_mb, reset_peak_memory  # noqa: E402

ROWS = {  # name: (speed switches, mode, pre-tokenised batches)
    'unisign': (UNISIGN_SPEED, 'two_pass', False),
    'two_pass_switches': (SPEED_DEFAULTS, 'two_pass', True),
    'one_pass_plain': (UNISIGN_SPEED, 'one_pass', False),
    'one_pass': (SPEED_DEFAULTS, 'one_pass', True),
    'one_pass_pooled': (SPEED_DEFAULTS, 'pooled', True),
}

@torch.no_grad()
def evaluate_batches(model, batches, mode, opts, device):
    """Generated id rows per clip (as generate() pads them) and the seconds it took."""
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
    return [row.tolist() for ids in outputs for row in ids.cpu()], seconds


def make_batches(opts, tokenizer, pretokenized, device):
    lengths, sentences, _, batch_indices = make_pool(opts)
    return [to_device(make_batch(ix, lengths, sentences, tokenizer, pretokenized, k), device)
            for k, ix in enumerate(batch_indices)]


def mean_longest_reference(opts, tokenizer):
    _, sentences, _, batch_indices = make_pool(opts)
    longest = [max(len(tokenizer(sentences[i]).input_ids) for i in ix) for ix in batch_indices]
    return round(statistics.mean(longest))


def run_row(opts, row):
    """Worker: evaluates the batches the row's way; writes the ids, returns the measurements."""
    from transformers import T5Tokenizer
    device = torch.device(opts.device)
    speed, mode, pretokenized = ROWS[row]
    tokenizer = T5Tokenizer.from_pretrained(opts.tokenizer_dir, extra_ids=0, legacy=False)
    model = build_model(opts.size, tokenizer, opts.vocab_size, opts.seed,
                        opts.tied_output).to(device).eval()
    model.set_speed(**speed)
    batches = make_batches(opts, tokenizer, pretokenized, device)
    reset_peak_memory(device)
    clock = phase_clock(device)
    spent = phase_hooks(model, clock)
    cpu_start, begin = time.process_time(), clock()
    ids, seconds = evaluate_batches(model, batches, mode, opts, device)
    cpu_seconds, total = time.process_time() - cpu_start, clock() - begin
    with open(opts.ids_file, 'w') as f:
        json.dump(ids, f)
    return dict(seconds=seconds, cpu_seconds=cpu_seconds, sentences=len(ids),
                peak_mb=peak_memory_mb(device), phases=eval_split(spent, total))


def run_worker(opts, row, ids_file):
    command = [sys.executable, os.path.abspath(__file__), '--worker', row, '--ids_file', ids_file,
               '--tokenizer_dir', opts.tokenizer_dir]
    for name in ('size', 'device', 'batch_size', 'steps', 'num_beams', 'max_new_tokens',
                 'pool_rows', 'mean_frames', 'cv', 'seed'):
        command += [f'--{name}', str(getattr(opts, name))]
    if opts.vocab_size:
        command += ['--vocab_size', str(opts.vocab_size)]
    command += ['--tied_output'] * opts.tied_output
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{')]
    if done.returncode or not lines:
        raise RuntimeError(f"row {row} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    with open(ids_file) as f:
        return json.loads(lines[-1]), json.load(f)


def run(opts):
    """Every row's measurements per round, and its generated ids (first round)."""
    results, outputs = {row: [] for row in ROWS}, {}
    with tempfile.TemporaryDirectory() as work:
        opts.tokenizer_dir = work
        tokenizer = make_tokenizer(work)
        opts.max_new_tokens = opts.max_new_tokens or mean_longest_reference(opts, tokenizer)
        for round_index in range(opts.repeats):
            for row in ROWS:
                result, ids = run_worker(opts, row, os.path.join(work, f'{row}.json'))
                results[row].append(result)
                outputs.setdefault(row, ids)
                print(f"  round {round_index + 1} {row}: "
                      f"{result['sentences'] / result['seconds']:.3f} sentences/s", flush=True)
    return results, outputs


def parse_options(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_flag(p, '--size', default='small', choices=list(MT5_SHAPES))
    add_flag(p, '--vocab_size', type=cli.count, default=None)
    add_flag(p, '--tied_output', action='store_true',
             help="tie mT5's output layer to its input embedding (mt5-base keeps them apart)")
    add_flag(p, '--device', default='auto')
    add_flag(p, '--batch_size', type=cli.count, default=4)
    add_flag(p, '--steps', type=cli.count, default=8, help="batches evaluated per row")
    add_flag(p, '--repeats', type=cli.count, default=1, help="interleaved rounds over the rows")
    add_flag(p, '--num_beams', type=cli.count, default=4)
    add_flag(p, '--max_new_tokens', type=cli.non_negative_int, default=0,
                   help="0: the mean over the batches of their longest reference")
    add_flag(p, '--pool_rows', type=cli.count, default=64, help="beam rows decoded together")
    add_flag(p, '--mean_frames', type=cli.positive, default=120)
    add_flag(p, '--cv', type=cli.non_negative, default=0.35)
    add_flag(p, '--seed', type=cli.seed, default=0)
    add_flag(p, '--worker', default='', help=argparse.SUPPRESS)
    add_flag(p, '--ids_file', default='', help=argparse.SUPPRESS)
    add_flag(p, '--tokenizer_dir', default='', help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.device == 'auto':
        opts.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return opts


def summarise(opts, results, outputs):
    base = {clock: statistics.median(r['sentences'] / r[clock] for r in results['unisign'])
            for clock in ('seconds', 'cpu_seconds')}
    lines = [f"\nsize {opts.size} (output layer {'tied' if opts.tied_output else 'untied'}), "
             f"{results['unisign'][0]['sentences']} clips in batches of "
             f"{opts.batch_size}, {opts.num_beams} beams, at most {opts.max_new_tokens} new "
             f"tokens, pool of {opts.pool_rows} beam rows, median of "
             f"{opts.repeats} round(s)",
             f"{'row':18s} {'sentences/s':>11s} {'x unisign':>9s} {'x (CPU time)':>12s} "
             f"{'peak MB':>8s}  identical ids"]
    identical = True
    for row, runs in results.items():
        rate = statistics.median(r['sentences'] / r['seconds'] for r in runs)
        cpu_rate = statistics.median(r['sentences'] / r['cpu_seconds'] for r in runs)
        peak = statistics.median(r['peak_mb'] for r in runs)
        same = outputs[row] == outputs['unisign']
        identical &= same
        lines.append(f"{row:18s} {rate:11.3f} {rate / base['seconds']:8.2f}x "
                     f"{cpu_rate / base['cpu_seconds']:11.2f}x {peak:8.0f}  {'yes' if same else 'NO'}")
    splits = [{phase: statistics.median(r['phases'][phase] for r in results[row])
               for phase in EVAL_PHASES} for row in ('unisign', 'one_pass_pooled')
              if row in results]
    if len(splits) == 2:
        clock = 'CPU time' if opts.device == 'cpu' else 'wall clock'
        lines += [f"where the time goes ({clock}, all batches; ratio: unisign / one_pass_pooled)",
                  *split_lines(['unisign', 'pooled'], splits, EVAL_PHASES, 'in all')]
    distinct = len({tuple(ids) for ids in outputs['unisign']})
    lines.append(f"distinct outputs: {distinct} of {len(outputs['unisign'])} clips")
    return lines, identical


def main(argv=None):
    opts = parse_options(argv)
    if opts.worker:
        print(json.dumps(run_row(opts, opts.worker)))
        return
    print(machine_description(torch.device(opts.device)))
    results, outputs = run(opts)
    lines, identical = summarise(opts, results, outputs)
    print('\n'.join(lines))
    if not identical:
        sys.exit("generated ids differ from Uni-Sign's way")


if __name__ == '__main__':
    main()
