"""Benchmark of the SignCL loss: signcl.SignCL against the reference implementation's own code.

The reference is SignCL.py of github.com/JinhuiYE/SignCL, imported at run time from the path given
with --reference (it is not shipped here); without it the reference rows are skipped. Forward +
backward are timed for
  - the sampled mode, the training default (both neighbours, 4 random negatives per anchor):
    the reference's SignCL() against SignCL(),
  - the deterministic mode (both neighbours, every admissible negative): the reference with
    neg_samples large enough to take every negative against SignCL(..., deterministic=True),
after checking that the deterministic values and gradients agree. Each row gives the median wall
time and the median CPU time of the timing thread; the machine may be shared with other work, so
wall time includes waiting for a core while CPU time does not. Repeats alternate between the
implementations so that both see the same load.

    python bench/signcl_speed.py --reference ../SignCL/SignCL.py [--batch 4] [--frames 256]
        [--dim 768] [--margin 20] [--repeats 5] [--threads 1]
"""
import argparse
import importlib.util
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from cli import add_flag  # noqa: E402
from signcl import SignCL  # noqa: E402

MAX_DISTANCE = 32.0


def load_reference(path):
    """The SignCL class of the reference file at `path`."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: --reference {path}: no such file (SignCL.py of "
                         "github.com/JinhuiYE/SignCL)")
    spec = importlib.util.spec_from_file_location("reference_signcl", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "SignCL", None), type):
        raise SystemExit(f"error: --reference {path}: defines no class SignCL")
    return module.SignCL


def time_runs(functions, x, repeats):
    """{name: (median wall s, median thread CPU s)} of fn(x).backward(), one warm-up run each;
    the repeats go round the functions in turn."""
    samples = {name: ([], []) for name in functions}
    for step in range(repeats + 1):
        for name, fn in functions.items():
            x.grad = None
            wall, cpu = time.perf_counter(), time.thread_time()
            fn(x).backward()
            if step:
                samples[name][0].append(time.perf_counter() - wall)
                samples[name][1].append(time.thread_time() - cpu)
    return {name: (statistics.median(w), statistics.median(c)) for name, (w, c) in samples.items()}


def check_equal(x, margin, reference):
    """Deterministic values and gradients of SignCL against the reference taking every negative."""
    ours = SignCL(max_distance=MAX_DISTANCE)(x, margin=margin, deterministic=True)
    ref = reference(x, margin=margin)
    grad_ours, = torch.autograd.grad(ours, x)
    grad_ref, = torch.autograd.grad(ref, x)
    value_gap = abs(ours.item() - ref.item()) / abs(ref.item())
    grad_gap = ((grad_ours - grad_ref).abs().max() / grad_ref.abs().max()).item()
    print(f"deterministic check: loss {ours.item():.6f} vs reference {ref.item():.6f} "
          f"(rel {value_gap:.1e}), max grad gap {grad_gap:.1e} of max |grad|")
    if value_gap > 1e-5 or grad_gap > 1e-4:
        raise SystemExit("signcl.SignCL disagrees with the reference")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_flag(parser, "--reference", help="path to the reference SignCL.py (JinhuiYE/SignCL)")
    add_flag(parser, "--batch", type=cli.count, default=4)
    add_flag(parser, "--frames", type=cli.int_range(8), default=256)
    add_flag(parser, "--dim", type=cli.count, default=768)
    add_flag(parser, "--margin", type=cli.count, default=20)
    add_flag(parser, "--repeats", type=cli.count, default=5)
    add_flag(parser, "--threads", type=cli.count, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def rows(args, reference):
    """{mode: {implementation: fn}} to time."""
    ours = SignCL(max_distance=MAX_DISTANCE)
    table = {"sampled": {"signcl.SignCL": lambda t: ours(t, margin=args.margin)},
             "deterministic": {"signcl.SignCL": lambda t: ours(t, margin=args.margin,
                                                               deterministic=True)}}
    if reference is not None:
        sampled, every = reference(MAX_DISTANCE), reference(MAX_DISTANCE, neg_samples=args.frames)
        table["sampled"]["reference"] = lambda t: sampled(t, margin=args.margin)
        table["deterministic"]["reference"] = lambda t: every(t, margin=args.margin)
    return table


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        run(args)
    finally:
        torch.set_num_threads(threads)


def run(args):
    torch.manual_seed(0)
    random.seed(0)
    reference = load_reference(args.reference) if args.reference else None
    # Per-dimension scale chosen so that L1 distances fall near max_distance (live gradients).
    x = (torch.randn(args.batch, args.frames, args.dim) * (MAX_DISTANCE / args.dim) * 1.2
         ).requires_grad_()
    print(f"SignCL forward+backward, CPU, B={args.batch} T={args.frames} D={args.dim} "
          f"margin={args.margin}, {torch.get_num_threads()} thread(s), median of {args.repeats}; "
          f"CPU = this thread's CPU time (the machine may be shared: wall time includes waiting)")
    if reference is None:
        print("reference not given (--reference PATH/TO/SignCL.py of JinhuiYE/SignCL): "
              "reference rows skipped")
    else:
        check_equal(x, args.margin, reference(MAX_DISTANCE, neg_samples=args.frames))
    print(f"{'mode':>13}  {'implementation':15s} {'wall ms':>9s} {'CPU ms':>9s} "
          f"{'CPU speed-up':>13s}")
    for mode, functions in rows(args, reference).items():
        times = time_runs(functions, x, args.repeats)
        base = times.get("reference")
        for name, (wall, cpu) in times.items():
            ratio = f"{base[1] / cpu:12.1f}x" if base else f"{'-':>13s}"
            print(f"{mode:>13}  {name:15s} {wall * 1e3:9.2f} {cpu * 1e3:9.2f} {ratio}")


if __name__ == "__main__":
    main()
