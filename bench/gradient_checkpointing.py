"""Peak memory and step time of a training step with --gradient_checkpointing against without.

Rows, each in a fresh subprocess (so each has its own peak), repeated and interleaved with
--repeats (the table shows medians):
  plain          no checkpointing (the trainer's default)
  checkpointing  mT5 blocks and ST-GCN blocks recomputed in the backward pass (the flag)
  mt5, stgcn     only the mT5 blocks, only the ST-GCN blocks
The model is bench/train_step.py's translator with random weights at --shape (small: mt5-base
widths with 2+2 layers; base: mt5-base's 12+12) and the trainer's speed defaults; the batches
are train_step.py's CSL-Daily-like clip lengths (bucketed), the same in every row. A step is
forward + backward (+ AdamW with --optimizer). Memory: on CPU the process's peak resident set
(ru_maxrss) and its rise over the resident model and batches before the first step (the
activations' share); on CUDA torch.cuda.max_memory_allocated. Time: wall clock per step, and on
CPU the process's CPU time per step, which other jobs on a shared machine disturb less; run
with OMP_NUM_THREADS=1 (the default of --threads) to quote one-thread CPU time. Every ratio is
against the plain row of the same invocation.

    python bench/gradient_checkpointing.py --shape small --batch_size 4 --steps 3
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402  (bench/train_step.py: model, tokenizer and batches; sys.path)
import cli  # noqa: E402
from cli import add_flag  # noqa: E402
from stgcn_layers import set_checkpointing  # noqa: E402

ROWS = ('plain', 'checkpointing', 'mt5', 'stgcn')


def build(opts, row):
    """The translator of `row`: mT5 checkpointing through the trainer's flag, ST-GCN's set."""
    tokenizer = train_step.make_tokenizer(opts.tokenizer_dir)
    model = train_step.build_model(opts.shape, tokenizer, opts.vocab_size, opts.seed,
                                   gradient_checkpointing=row in ('checkpointing', 'mt5'),
                                   **train_step.SPEED_DEFAULTS)
    set_checkpointing(model, row in ('checkpointing', 'stgcn'))
    return model.to(opts.device).train(), tokenizer


def run_row(opts, row):
    """Worker: one row's peak memory and step times."""
    device = torch.device(opts.device)
    model, tokenizer = build(opts, row)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5) if opts.optimizer else None
    lengths, sentences, indices, _ = train_step.make_pool(opts)
    batches = [train_step.to_device(train_step.make_batch(ix, lengths, sentences, tokenizer,
                                                          True, k), device)
               for k, ix in enumerate(indices)]
    rss_before = train_step.current_rss_mb()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    train_step.train_step(model, batches[0], device, False, optimizer)  # warm-up
    train_step.synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        train_step.train_step(model, batch, device, False, optimizer)
    train_step.synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    if device.type == 'cuda':
        peak = rise = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rise = peak - rss_before
    return {'row': row, 'step_s': seconds / len(batches), 'cpu_step_s': cpu_seconds / len(batches),
            'peak_mb': peak, 'rise_mb': rise, 'frames': float(lengths[sum(indices, [])].mean())}


def run_worker(opts, row):
    command = [sys.executable, os.path.abspath(__file__), '--worker', row, '--shape', opts.shape,
               '--device', opts.device, '--batch_size', str(opts.batch_size), '--steps',
               str(opts.steps), '--mean_frames', str(opts.mean_frames), '--cv', str(opts.cv),
               '--seed', str(opts.seed), '--tokenizer_dir', opts.tokenizer_dir]
    command += ['--vocab_size', str(opts.vocab_size)] if opts.vocab_size else []
    command += ['--optimizer'] * opts.optimizer
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads)) if opts.threads else None
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{')]
    if done.returncode or not lines:
        raise RuntimeError(f"row {row} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def summarise(results, on_cpu):
    """Table lines: medians per row and their ratios to the plain row."""
    def median(row, key):
        return statistics.median(r[key] for r in results[row])
    header = f"{'row':14s} {'peak MB':>8s} {'x plain':>7s}"
    header += f" {'rise MB':>8s} {'x plain':>7s}" if on_cpu else ''
    header += f" {'s/step':>7s} {'x plain':>7s}"
    header += f" {'CPU s/step':>10s} {'x plain':>7s}" if on_cpu else ''
    lines = [header]
    keys = ['peak_mb', 'rise_mb', 'step_s', 'cpu_step_s'] if on_cpu else ['peak_mb', 'step_s']
    for row in results:
        line = f"{row:14s}"
        for key in keys:
            value, base = median(row, key), median('plain', key)
            width = 10 if key == 'cpu_step_s' else 8 if key.endswith('mb') else 7
            digits = 0 if key.endswith('mb') else 3
            line += f" {value:{width}.{digits}f} {value / base:6.2f}x"
        lines.append(line)
    return lines


def parse_options(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_flag(p, '--shape', default='small', choices=list(train_step.MT5_SHAPES))
    add_flag(p, '--vocab_size', type=cli.count, default=None, help="override the mT5 vocabulary")
    add_flag(p, '--device', default='auto', help="auto, cpu or cuda")
    add_flag(p, '--batch_size', type=cli.count, default=4)
    add_flag(p, '--steps', type=cli.count, default=3, help="batches timed per row")
    add_flag(p, '--repeats', type=cli.count, default=1, help="interleaved rounds over all rows")
    add_flag(p, '--rows', default=','.join(ROWS), help="comma-separated rows (plain is added)")
    add_flag(p, '--mean_frames', type=cli.positive, default=120)
    add_flag(p, '--cv', type=cli.non_negative, default=0.35,
             help="clip-length coefficient of variation")
    add_flag(p, '--seed', type=cli.seed, default=0)
    add_flag(p, '--threads', type=cli.non_negative_int, default=1,
             help="OMP_NUM_THREADS of the workers (0: inherit)")
    add_flag(p, '--optimizer', action='store_true', help="include an AdamW step")
    add_flag(p, '--json', default='', help="also write the raw results here")
    add_flag(p, '--worker', default='', help=argparse.SUPPRESS)
    add_flag(p, '--tokenizer_dir', default='', help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.size = opts.shape  # train_step.make_pool's name
    if opts.device == 'auto':
        opts.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    unknown = set(opts.rows.split(',')) - set(ROWS)
    if unknown:
        p.error(f"--rows: unknown {', '.join(sorted(unknown))}; known: {', '.join(ROWS)}")
    return opts


def main(argv=None):
    opts = parse_options(argv)
    if opts.worker:
        print(json.dumps(run_row(opts, opts.worker)))
        return
    device = torch.device(opts.device)
    print(train_step.machine_description(device), f"workers: OMP_NUM_THREADS={opts.threads}")
    rows = list(dict.fromkeys(['plain', *opts.rows.split(',')]))
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        opts.tokenizer_dir = tokenizer_dir
        train_step.make_tokenizer(tokenizer_dir)
        results = {row: [] for row in rows}
        for round_index in range(opts.repeats):
            for row in rows:
                results[row].append(run_worker(opts, row))
                print(f"  round {round_index + 1} {row}: {results[row][-1]}", flush=True)
    print(f"\nshape {opts.shape}, batch {opts.batch_size}, {opts.steps} batches per row (mean "
          f"{results['plain'][0]['frames']:.0f} frames), median of {opts.repeats} round(s), "
          f"device {device.type}")
    print('\n'.join(summarise(results, device.type == 'cpu')))
    if opts.json:
        with open(opts.json, 'w') as f:
            json.dump({'options': vars(opts), 'results': results}, f, indent=1)


if __name__ == '__main__':
    main()
