"""Benchmark of the training data pipeline: per-clip pose pickles against a packed pose store.

Generates a CSL-News-shaped set (clips of 2-15 s at 25 fps, Uni-Sign's pickle layout: lists of
per-frame keypoint and score arrays) in a temporary folder, packs it, and measures
  - the raw read of one clip of --read_frames frames: datasets.read_pose vs PackedPoseStore.read
    (timed with torch on one thread, as DataLoader workers run it, and on all threads),
  - samples/s and frames/s through a DataLoader (read + load_part_kp + collate, no tokenizer)
    for per-file pickles, the packed store, and the packed store with length bucketing,
  - the share of padded frames per batch with and without bucketing.
The page cache is warm for both formats (the files were just written), which favours pickles.

    python bench/data_pipeline.py [--n 400] [--workers 2] [--batch_size 16]
"""
import argparse
import json
import os
import pickle
import sys
import tempfile
import time
import timeit

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pose_store  # noqa: E402
from datasets import S2T_Dataset, load_part_kp, read_pose  # noqa: E402
from samplers import ResumableDistributedSampler, padding_fraction  # noqa: E402

FPS = 25


# ----------------------------------------------------------------------------- synthetic set

def synthetic_clip(num_frames, rng):
    """A signer near the image centre: body joints drift slowly, hands move faster, legs are
    off-screen with low scores; coordinates in [0, 1] as Uni-Sign's extraction divides by W, H."""
    rest = np.array([0.5, 0.45]) + rng.normal(0, 0.12, (133, 2))
    speed = np.full((133, 1), 0.002)
    speed[91:] = 0.006
    walk = np.cumsum(rng.normal(0, 1, (num_frames, 133, 2)) * speed, axis=0)
    keypoints = np.clip(rest + walk, -0.2, 1.2)[:, None]
    scores = rng.uniform(0.4, 1.0, (num_frames, 1, 133)).astype(np.float32)
    scores[:, :, 13:23] = rng.uniform(0.0, 0.25, (num_frames, 1, 10))
    low = rng.random(scores.shape) < 0.08
    scores[low] = rng.uniform(0.0, 0.3, int(low.sum()))
    return {'keypoints': list(keypoints), 'scores': list(scores)}


def generate(root, count, read_frames, seed):
    """Writes count clips as pose pickles and a CSL-News label list; returns paths, lengths."""
    rng = np.random.default_rng(seed)
    pose_dir = os.path.join(root, 'poses')
    os.makedirs(pose_dir)
    lengths = rng.integers(2 * FPS, 15 * FPS + 1, count)
    lengths[0] = read_frames
    labels = []
    for index, length in enumerate(lengths):
        name = f'news_{index:06d}'
        with open(os.path.join(pose_dir, name + '.pkl'), 'wb') as f:
            pickle.dump(synthetic_clip(int(length), rng), f)
        labels.append({'video': name + '.mp4', 'pose': name + '.pkl', 'text': f'新闻 {index}'})
    label_path = os.path.join(root, 'CSL_News_Labels.json')
    with open(label_path, 'w', encoding='utf-8') as f:
        json.dump(labels, f, ensure_ascii=False)
    return label_path, pose_dir, lengths


# ----------------------------------------------------------------------------- measurements

def best_seconds(fn, calls):
    """Seconds per call, best of 7 rounds of `calls` calls: other load on the machine only
    ever adds time, so the best round is the closest to the intrinsic cost."""
    fn()
    return min(timeit.repeat(fn, number=calls, repeat=7)) / calls


def loader_throughput(dataset, sampler, workers, epochs):
    """samples/s, real frames/s and padded share of the last of `epochs` passes."""
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                         collate_fn=dataset.collate_fn,
                                         persistent_workers=workers > 0)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        samples = frames = padded = 0
        start = time.perf_counter()
        for src, _ in loader:
            samples += len(src['name_batch'])
            frames += int(src['src_length_batch'].sum())
            padded += src['attention_mask'].numel()
        seconds = time.perf_counter() - start
    return samples / seconds, frames / seconds, 1 - frames / padded


def max_part_difference(pickled, packed, count):
    worst = 0.0
    for index in range(min(count, len(pickled))):
        a, b = pickled[index][1], packed[index][1]
        worst = max(worst, max((a[p] - b[p]).abs().max().item() for p in a))
    return worst


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n', type=int, default=400, help='clips to generate')
    parser.add_argument('--workers', type=int, default=2, help='DataLoader workers')
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--max_length', type=int, default=256)
    parser.add_argument('--epochs', type=int, default=2, help='passes; the last one is timed')
    parser.add_argument('--read_frames', type=int, default=150)
    parser.add_argument('--calls', type=int, default=100, help='calls per timing round')
    parser.add_argument('--pack_workers', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def read_times(pose_dir, store, calls):
    """Per-clip seconds of read_pose, PackedPoseStore.read (with torch on one thread, as in
    DataLoader workers, and on all threads, as in the main process) and of load_part_kp."""
    path, name = os.path.join(pose_dir, 'news_000000.pkl'), 'news_000000'
    threads = torch.get_num_threads()
    times = {'pickle': best_seconds(lambda: read_pose(path), calls)}
    torch.set_num_threads(1)
    times['packed'] = best_seconds(lambda: store.read(name), calls)
    torch.set_num_threads(threads)
    times[f'{threads} torch threads'] = best_seconds(lambda: store.read(name), calls)
    clip = store.read(name)
    times['load_part_kp'] = best_seconds(lambda: load_part_kp(clip['keypoints'], clip['scores']),
                                         calls)
    return times


def run(args, root):
    label_path, pose_dir, lengths = generate(root, args.n, args.read_frames, args.seed)
    store_dir = os.path.join(root, 'packed')
    start = time.perf_counter()
    manifest = pose_store.pack(pose_dir, store_dir, shard_size=128, workers=args.pack_workers,
                               progress=False)
    pack_seconds = time.perf_counter() - start
    sizes = [sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
             for d in (pose_dir, store_dir)]
    print(f"{args.n} clips, {int(lengths.sum())} frames ({lengths.min()}-{lengths.max()} per "
          f"clip); pickles {sizes[0] / 2**20:.1f} MiB, packed {sizes[1] / 2**20:.1f} MiB in "
          f"{len(manifest['shards'])} shards, packed in {pack_seconds:.2f} s "
          f"({args.pack_workers} processes)")
    store = pose_store.PackedPoseStore(store_dir)
    read_seconds = read_times(pose_dir, store, args.calls)
    options = dict(dataset_name='CSL_News', max_length=args.max_length, tokenizer=None)
    per_file = S2T_Dataset(label_path, pose_dir, 'train', **options)
    packed = S2T_Dataset(label_path, store_dir, 'train', **options)
    diff = max_part_difference(S2T_Dataset(label_path, pose_dir, 'dev', **options),
                               S2T_Dataset(label_path, store_dir, 'dev', **options), 50)
    clip_lengths = packed.lengths()
    rows = {}
    for label, dataset, bucket in (('per-file pickles', per_file, False),
                                   ('packed store', packed, False),
                                   ('packed store + bucketing', packed, True)):
        sampler = ResumableDistributedSampler(len(dataset), 1, 0, batch_size=args.batch_size,
                                              seed=args.seed, lengths=clip_lengths,
                                              bucket_by_length=bucket)
        rows[label] = loader_throughput(dataset, sampler, args.workers, args.epochs)
    return read_seconds, diff, clip_lengths, rows


def report(args, read_seconds, diff, clip_lengths, rows):
    pickled = read_seconds.pop('pickle')
    parts = read_seconds.pop('load_part_kp')
    print(f"\nraw read of one {args.read_frames}-frame clip (best of 7 rounds of {args.calls}):")
    print(f"  {'read_pose (pickle)':48s} {pickled * 1e6:8.1f} us")
    for label, seconds in read_seconds.items():
        label = 'as in a DataLoader worker' if label == 'packed' else label
        print(f"  {'PackedPoseStore.read, ' + label:48s} {seconds * 1e6:8.1f} us   "
              f"x{pickled / seconds:.1f}")
    packed = read_seconds['packed']
    print(f"  read + load_part_kp ({parts * 1e6:.0f} us): pickle {(pickled + parts) * 1e6:.1f} us, "
          f"packed {(packed + parts) * 1e6:.1f} us   x{(pickled + parts) / (packed + parts):.1f}")
    print(f"max |part difference| pickle vs packed (50 clips): {diff:.2e}")
    print(f"\nDataLoader, {args.workers} workers, batch {args.batch_size}, max_length "
          f"{args.max_length}, epoch {args.epochs - 1} timed:")
    print(f"  {'pipeline':26s} {'samples/s':>10s} {'frames/s':>11s} {'padding':>8s}")
    for label, (samples, frames, padding) in rows.items():
        print(f"  {label:26s} {samples:10.1f} {frames:11.0f} {padding:8.1%}")
    base = rows['per-file pickles'][0]
    print(f"  samples/s ratio: packed x{rows['packed store'][0] / base:.2f}, packed + bucketing "
          f"x{rows['packed store + bucketing'][0] / base:.2f}")
    for bucket in (False, True):
        sampler = ResumableDistributedSampler(len(clip_lengths), 1, 0, batch_size=args.batch_size,
                                              seed=args.seed, lengths=clip_lengths,
                                              bucket_by_length=bucket)
        print(f"padding fraction {'with' if bucket else 'without'} bucketing: "
              f"{padding_fraction(sampler, clip_lengths):.1%}")
    ok = pickled / packed >= 10 and diff <= 1e-3
    print(f"\npacked raw read (worker setting) >= 10x faster and parts within 1e-3: "
          f"{'yes' if ok else 'NO'}")
    return ok


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix='data_pipeline_') as root:
        results = run(args, root)
    return 0 if report(args, *results) else 1


if __name__ == '__main__':
    sys.exit(main())
