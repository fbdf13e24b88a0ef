"""Clips per second that training GPUs consume, for sizing the data loader.

A training step's FLOPs per clip are the ST-GCN part encoders' (counted by
torch.utils.flop_counter on the meta device: shapes only, nothing computed) plus mT5's (computed
from its shapes: every matrix product of the encoder, the decoder, cross-attention and the output
layer, forward and backward = 3 x forward). A GPU's step time is then FLOPs / (MFU x peak), with
an assumed model FLOP utilisation of the dense bf16 peak, unless a measured step time is given
(bench/train_step.py prints one on a GPU).

    python bench/gpu_demand.py [--frames 120] [--target_tokens 25] [--mfu 0.3] [--gpus 8]
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from cli import add_flag  # noqa: E402

MT5_BASE = dict(d_model=768, d_ff=2048, layers=12, vocab=250112)  # google/mt5-base
H100_BF16_PEAK = 989.4e12  # dense bf16 tensor-core FLOP/s of an H100 SXM
PROMPT_TOKENS = 10  # the task prompt before the pose frames (CSL-Daily's is about this long)
JOINTS = {'body': 9, 'left': 21, 'right': 21, 'face_all': 18}


def mt5_train_flops(source, target, shape=MT5_BASE):
    """Training FLOPs (2 per multiply-add, backward twice forward) of mT5 for one sequence of
    `source` encoder tokens and `target` decoder tokens, the pose projection included."""
    d, ff, layers, vocab = shape['d_model'], shape['d_ff'], shape['layers'], shape['vocab']
    dense = 4 * d * d + 3 * d * ff  # q, k, v, o and the gated-GELU feed-forward, per token
    encoder = layers * (source * dense + 2 * source * source * d)
    decoder = layers * (target * (dense + 2 * d * d) + 2 * target * target * d
                        + 2 * source * d * d + 2 * target * source * d)
    projection = source * 4 * 256 * d  # four 256-wide part features -> d_model
    return 6 * (encoder + decoder + target * d * vocab + projection)


def encoder_train_flops(frames, batch=2):
    """Training FLOPs per clip of the four ST-GCN part encoders (the trainer's default widths)
    for clips of `frames` frames, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from flags import get_args_parser
    from pose_encoder import PoseEncoder
    args = get_args_parser().parse_args([])
    with torch.device('meta'):
        encoder = PoseEncoder(args).train()
        clips = {part: torch.zeros(batch, frames, joints, 3) for part, joints in JOINTS.items()}
    with FlopCounterMode(display=False) as counter:
        encoder.encode_pose(clips).sum().backward()
    return counter.get_total_flops() / batch


def step_seconds(frames, target, batch, mfu, peak):
    """Estimated seconds of one GPU's training step at `batch` clips."""
    flops = encoder_train_flops(round(frames)) + mt5_train_flops(frames + PROMPT_TOKENS, target)
    return batch * flops / (mfu * peak)


def recommended_workers(clips_per_gpu, clips_per_worker, headroom=1.25):
    """DataLoader workers per GPU to deliver `clips_per_gpu` with `headroom` to spare."""
    return max(1, math.ceil(headroom * clips_per_gpu / clips_per_worker))


def add_demand_flags(parser):
    add_flag(parser, '--gpus', type=cli.count, default=8, help='GPUs consuming clips')
    add_flag(parser, '--gpu_batch', type=cli.count, default=16, help='clips per GPU step')
    add_flag(parser, '--target_tokens', type=cli.count, default=25,
             help='mean decoder tokens per clip')
    add_flag(parser, '--mfu', type=cli.float_range(0, 1, low_open=True), default=0.3,
             help='assumed model FLOP utilisation of the peak (optimistic: it asks more of '
                  'the loader)')
    add_flag(parser, '--peak_tflops', type=cli.positive, default=H100_BF16_PEAK / 1e12,
             help='dense bf16 peak of one GPU (H100: 989.4)')
    add_flag(parser, '--step_seconds', type=cli.positive, default=None,
             help='a measured GPU step time, used instead of the FLOP estimate')


def demand(args, frames):
    """(seconds per GPU step, clips/s per GPU, how the step time was found)."""
    if args.step_seconds:
        seconds, how = args.step_seconds, 'measured step time (--step_seconds)'
    else:
        seconds = step_seconds(frames, args.target_tokens, args.gpu_batch, args.mfu,
                               args.peak_tflops * 1e12)
        how = (f"FLOP estimate: mt5-base + ST-GCN encoders, {frames:.0f} frames + {PROMPT_TOKENS} "
               f"prompt tokens, {args.target_tokens} target tokens, bf16 at {args.mfu:.0%} MFU "
               f"of {args.peak_tflops:g} TFLOP/s")
    return seconds, args.gpu_batch / seconds, how


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flag(parser, '--frames', type=cli.count, default=120, help='mean frames per clip')
    add_demand_flags(parser)
    args = parser.parse_args(argv)
    encoder = encoder_train_flops(args.frames)
    mt5 = mt5_train_flops(args.frames + PROMPT_TOKENS, args.target_tokens)
    print(f"training GFLOP per clip of {args.frames} frames: ST-GCN encoders {encoder / 1e9:.1f}, "
          f"mT5 {mt5 / 1e9:.1f}")
    seconds, per_gpu, how = demand(args, args.frames)
    print(f"{how}\nstep {seconds * 1e3:.1f} ms per GPU at batch {args.gpu_batch}: "
          f"{per_gpu:.0f} clips/s per GPU, {per_gpu * args.gpus:.0f} clips/s on {args.gpus} GPUs")


if __name__ == '__main__':
    main()
