"""Benchmark of part-keypoint extraction: datasets.load_part_kp against a per-frame baseline.

The baseline below re-expresses Uni-Sign's original load_part_kp/crop_scale, which loops over
parts and frames in Python. It is timed against the vectorised datasets.load_part_kp called
(b) as Uni-Sign calls it, with lists of per-frame arrays, and (c) with the stacked arrays that
datasets.read_pose returns. Outputs are checked to agree before anything is timed.

    python bench/load_part_kp.py [--frames 256] [--repeats 30]
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from cli import add_flag  # noqa: E402
from datasets import load_part_kp  # noqa: E402

THRESHOLD = 0.3


# ------------------------------------------------------------- baseline: per-frame Python loop

def baseline_part_joints(part):
    """Joint indices and the index of the joint a part is made relative to (None: absolute)."""
    if part == 'body':
        return [0] + list(range(3, 11)), None
    if part == 'left':
        return list(range(91, 112)), 0
    if part == 'right':
        return list(range(112, 133)), 0
    face = list(range(23, 40))[::2] + list(range(83, 91)) + [53]
    return face, len(face) - 1


def baseline_crop_scale(motion, threshold):
    """Per-clip square crop of the confident joints, mapped to [-1, 1] (Uni-Sign semantics)."""
    result = motion.copy()
    confident = motion[motion[..., 2] > threshold][:, :2]
    if len(confident) < 4:
        return np.zeros(motion.shape), 0
    x_low, x_high = min(confident[:, 0]), max(confident[:, 0])
    y_low, y_high = min(confident[:, 1]), max(confident[:, 1])
    side = max(x_high - x_low, y_high - y_low)
    if side == 0:
        return np.zeros(motion.shape), 0
    left, top = (x_low + x_high - side) / 2, (y_low + y_high - side) / 2
    result[..., :2] = (motion[..., :2] - [left, top]) / side
    result[..., :2] = (result[..., :2] - 0.5) * 2
    result = np.clip(result, -1, 1)
    result[result[..., 2] <= threshold] = 0
    return result, side


def baseline_load_part_kp(skeletons, confs):
    """BASELINE: Uni-Sign's per-frame part extraction, frame by frame and part by part."""
    outputs, side = {}, None
    for part in ('body', 'left', 'right', 'face_all'):
        coords, scores = [], []
        for skeleton, conf in zip(skeletons, confs):
            joints, anchor = baseline_part_joints(part)  # rebuilt per frame, as the original
            points = skeleton[0][joints, :]
            if anchor is not None:
                points = points - points[anchor, :]
            coords.append(points)
            scores.append(conf[0][joints])
        motion = np.concatenate([np.stack(coords), np.stack(scores)[..., None]], axis=-1)
        if part == 'body':
            result, side = baseline_crop_scale(motion, THRESHOLD)
        elif side == 0:
            result = np.zeros(motion.shape)
        else:
            result = motion
            result[..., :2] = result[..., :2] / side
            result = np.clip(result, -1, 1)
            result[result[..., 2] <= THRESHOLD] = 0
        outputs[part] = torch.tensor(result)
    return outputs


# ------------------------------------------------------------- inputs, checks, timing

def realistic_clip(num_frames, seed=0):
    """A drifting whole-body pose in [0, 1] image coordinates; ~8% of scores below 0.3."""
    rng = np.random.default_rng(seed)
    rest = rng.uniform(0.2, 0.8, (1, 1, 133, 2))
    drift = np.cumsum(rng.normal(0, 0.002, (num_frames, 1, 133, 2)), axis=0)
    keypoints = (rest + drift).astype(np.float32)
    scores = rng.uniform(0.35, 1.0, (num_frames, 1, 133)).astype(np.float32)
    low = rng.random((num_frames, 1, 133)) < 0.08
    scores[low] = rng.uniform(0.0, 0.3, int(low.sum()))
    return keypoints, scores


def max_abs_diff(a, b):
    return max((a[part].double() - b[part].double()).abs().max().item() for part in a)


def median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flag(parser, '--frames', type=cli.count, default=256)
    add_flag(parser, '--repeats', type=cli.count, default=30)
    args = parser.parse_args()

    keypoints, scores = realistic_clip(args.frames)
    frame_keypoints, frame_scores = list(keypoints), list(scores)
    reference = baseline_load_part_kp(frame_keypoints, frame_scores)
    diffs = {'(b) ours, per-frame lists': max_abs_diff(
                 reference, load_part_kp(frame_keypoints, frame_scores)),
             '(c) ours, stacked arrays': max_abs_diff(reference, load_part_kp(keypoints, scores))}
    for label, diff in diffs.items():
        print(f"max |diff| baseline vs {label}: {diff:.3g}")
    assert max(diffs.values()) <= 1e-6, diffs

    timings = {
        '(a) baseline per-frame loop': lambda: baseline_load_part_kp(frame_keypoints, frame_scores),
        '(b) ours, per-frame lists': lambda: load_part_kp(frame_keypoints, frame_scores),
        '(c) ours, stacked arrays': lambda: load_part_kp(keypoints, scores),
    }
    medians = {label: median_seconds(fn, args.repeats) for label, fn in timings.items()}
    baseline = medians['(a) baseline per-frame loop']
    print(f"T={args.frames}, median of {args.repeats} runs:")
    for label, seconds in medians.items():
        print(f"  {label:30s} {seconds * 1e3:8.3f} ms   speed-up x{baseline / seconds:6.1f}")


if __name__ == '__main__':
    main()
