"""Benchmark of the SignCL loss: regularizers.SignCL against a per-anchor Python loop.

The baseline re-expresses SignCL.py (one Python iteration per anchor frame, negatives drawn with
random.sample and shared by the batch). Forward + backward are timed on CPU for both the sampled
mode (the training default: 2 positives, 4 negatives) and the deterministic mode (both neighbours,
every admissible negative), after checking that the deterministic values and gradients agree.

    python bench/signcl_speed.py [--batch 4] [--frames 256] [--dim 768] [--margin 20] [--repeats 3]
"""
import argparse
import os
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from cli import add_flag  # noqa: E402
from regularizers import SignCL  # noqa: E402

MAX_DISTANCE = 32.0


def baseline_signcl(x, margin, deterministic, pos_samples=2, neg_samples=4):
    """SignCL.py's loop: anchors 1..T-3, positives i-1 and i+1, negatives in 2..T-3 farther than
    margin, batch-mean softplus terms summed over anchors and divided by B * (T - 4)."""
    batch, frames, _ = x.shape
    total = x.new_zeros(())
    for i in range(1, frames - 2):
        positives = [i - 1, i + 1]
        negatives = [j for j in range(2, frames - 2) if j < i - margin or j > i + margin]
        if not deterministic:
            positives = random.sample(positives, k=min(2, pos_samples))
            negatives = random.sample(negatives, k=min(len(negatives), neg_samples))
        anchor = x[:, i].unsqueeze(1)
        pos_dist = (anchor - x[:, positives]).abs().sum(-1)
        neg_dist = (anchor - x[:, negatives]).abs().sum(-1)
        total = total + F.softplus(pos_dist - MAX_DISTANCE).mean() \
            + F.softplus(MAX_DISTANCE - neg_dist).mean()
    return total / (batch * (frames - 4))


def time_backward(loss_fn, x, repeats):
    """Median seconds of loss_fn(x).backward() after one warm-up run."""
    times = []
    for step in range(repeats + 1):
        x.grad = None
        start = time.perf_counter()
        loss_fn(x).backward()
        if step:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_equal(x, margin):
    module = SignCL(max_distance=MAX_DISTANCE)
    ours = module(x, margin=margin, deterministic=True)
    ref = baseline_signcl(x, margin, deterministic=True)
    grad_ours, = torch.autograd.grad(ours, x)
    grad_ref, = torch.autograd.grad(ref, x)
    value_gap = abs(ours.item() - ref.item()) / abs(ref.item())
    grad_gap = ((grad_ours - grad_ref).abs().max() / grad_ref.abs().max()).item()
    print(f"deterministic check: loss {ours.item():.6f} vs {ref.item():.6f} "
          f"(rel {value_gap:.1e}), max grad gap {grad_gap:.1e} of max |grad|")
    if value_gap > 1e-5 or grad_gap > 1e-4:
        raise SystemExit("vectorised SignCL disagrees with the loop")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_flag(parser, "--batch", type=cli.count, default=4)
    add_flag(parser, "--frames", type=cli.count, default=256)
    add_flag(parser, "--dim", type=cli.count, default=768)
    add_flag(parser, "--margin", type=cli.count, default=20)
    add_flag(parser, "--repeats", type=cli.count, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    # Per-dimension scale chosen so that L1 distances fall near max_distance (live gradients).
    x = (torch.randn(args.batch, args.frames, args.dim) * (MAX_DISTANCE / args.dim) * 1.2).requires_grad_()
    print(f"SignCL forward+backward, CPU, B={args.batch} T={args.frames} D={args.dim} "
          f"margin={args.margin}, {torch.get_num_threads()} threads")
    check_equal(x, args.margin)
    module = SignCL(max_distance=MAX_DISTANCE)
    for mode, deterministic in (("sampled", False), ("deterministic", True)):
        loop = time_backward(lambda t: baseline_signcl(t, args.margin, deterministic), x, args.repeats)
        ours = time_backward(lambda t: module(t, margin=args.margin, deterministic=deterministic),
                             x, args.repeats)
        print(f"{mode:>13}: loop {loop * 1e3:8.1f} ms   vectorised {ours * 1e3:7.1f} ms   "
              f"speed-up {loop / ours:6.1f}x")


if __name__ == "__main__":
    main()
