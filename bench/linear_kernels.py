"""Inference products on CPU: MKL's (nn.Linear's default) against oneDNN's (cpu_kernels.py).

For each shape of mt5-base's evaluation, the product `hidden @ weight.T` is timed both ways, with
the same tensors, alternating the two kernels over --repeats rounds: the output layer (250,112 x
768) at the beam-row counts of decoding, and the language model's own layers at encoder
positions and at a batch's beam rows. Prints the median CPU time of each, its GFLOP/s, the ratio
MKL / oneDNN and the largest relative difference of the results (float32 rounding).

    OMP_NUM_THREADS=1 python bench/linear_kernels.py [--rows 16,64,128] [--repeats 5]
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cpu_kernels  # noqa: E402
from cli import add_flag, count, count_list, seed  # noqa: E402

VOCABULARY, D_MODEL, D_FF = 250112, 768, 2048
# (what, rows, inputs, outputs): the model's layers at encoder positions and at beam rows
MODEL_LAYERS = [('encoder attention', 170, D_MODEL, D_MODEL),
                ('encoder feed-forward in', 170, D_MODEL, D_FF),
                ('encoder feed-forward out', 170, D_FF, D_MODEL),
                ('decoder attention', 16, D_MODEL, D_MODEL),
                ('decoder feed-forward in', 16, D_MODEL, D_FF),
                ('decoder feed-forward out', 16, D_FF, D_MODEL)]


def cpu_seconds(product, hidden, weight):
    start = time.process_time()
    out = product(hidden, weight)
    return time.process_time() - start, out


def compare(rows, inputs, outputs, repeats, generator):
    """(MKL seconds, oneDNN seconds, largest relative difference) for one shape."""
    hidden = torch.randn(rows, inputs, generator=generator)
    weight = torch.randn(outputs, inputs, generator=generator) * inputs ** -0.5
    products = {'mkl': F.linear, 'onednn': cpu_kernels.onednn_linear}
    times = {name: [] for name in products}
    results = {}
    with torch.no_grad():
        for name, product in products.items():  # warm-up
            results[name] = product(hidden, weight)
        for _ in range(repeats):
            for name, product in products.items():
                seconds, results[name] = cpu_seconds(product, hidden, weight)
                times[name].append(seconds)
    gap = float(((results['onednn'] - results['mkl']).abs().max()
                 / results['mkl'].abs().max()))
    return statistics.median(times['mkl']), statistics.median(times['onednn']), gap


def row(what, rows, inputs, outputs, measured):
    mkl, onednn, gap = measured
    flops = 2 * rows * inputs * outputs
    return (f"{what:<26} {rows:>5} x {inputs:>4} x {outputs:>6}  {mkl * 1e3:9.2f} ms "
            f"{flops / mkl / 1e9:6.1f} GF/s  {onednn * 1e3:9.2f} ms {flops / onednn / 1e9:6.1f} "
            f"GF/s  {mkl / onednn:5.2f}x  {gap:.1e}")


def parse_options(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_flag(p, '--rows', type=count_list, default=[16, 64, 128],
             help="beam rows of the output-layer products, comma-separated")
    add_flag(p, '--repeats', type=count, default=5, help="timed rounds per kernel")
    add_flag(p, '--vocabulary', type=count, default=VOCABULARY, help="output-layer rows")
    add_flag(p, '--seed', type=seed, default=0, help="random seed of the tensors")
    return p.parse_args(argv)


def main(argv=None):
    opts = parse_options(argv)
    if not cpu_kernels.onednn_available():
        raise SystemExit("error: this PyTorch has no oneDNN linear operator")
    generator = torch.Generator().manual_seed(opts.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'product':<26} {'rows x in x out':>22}  {'MKL':>9} {'':>11}  {'oneDNN':>9} "
          f"{'':>11}  ratio  rel. diff")
    for rows in opts.rows:
        measured = compare(rows, D_MODEL, opts.vocabulary, opts.repeats, generator)
        print(row('output layer', rows, D_MODEL, opts.vocabulary, measured))
    for what, rows, inputs, outputs in MODEL_LAYERS:
        measured = compare(rows, inputs, outputs, opts.repeats * 10, generator)
        print(row(what, rows, inputs, outputs, measured))


if __name__ == '__main__':
    main()
