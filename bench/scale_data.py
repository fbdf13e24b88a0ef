"""A simulated CSL-News of N clips for bench/scale.py: the label file, a packed pose store and a
tiny mT5, laid out as config.py's CSL_News entry expects.

    ROOT/data/CSL_News/CSL_News_Labels.json   [{"video": "NAME.mp4", "pose": "NAME.pkl",
                                                 "text": ...}], Uni-Sign's CSL-News format
    ROOT/dataset/CSL_News/pose_format/         a packed store (pose_store.py), or with parts
                                               a parted store (store_parts.py)
    ROOT/mt5/                                  a tiny mT5 whose tokenizer covers the texts

Clip lengths follow CSL-News (about 1,985 hours in 1.01 million clips, ~7 s at 25 fps): log-normal
with median 150 frames, mean ~174, cut to 25-750 frames, and the store's index records them.
The frames on disk are shortened so that a million clips fit: clip i of a shard starts
`frames_on_disk` frames after clip i-1 and reads its full recorded length from there, so clips
share (overlapping) frames. Reading a clip therefore costs what a real clip of that length
costs, but a shard holds shard_size * frames_on_disk + 750 frames instead of the sum of the
lengths. Keypoints are random (every clip passes the pre-scan's checks); texts are random
strings of 300 CJK characters, 10-60 per clip.
"""
import json
import os

import numpy as np

import pose_store
import store_parts
from keypoints import NUM_KEYPOINTS
from durable import write_json_atomic, write_npy

FORMAT = 1
MAX_FRAMES = 750  # 30 s at 25 fps
MEDIAN_FRAMES, SIGMA = 150, 0.55
CHARSET = [chr(0x4E00 + 37 * k) for k in range(300)]  # 300 distinct CJK ideographs
PROGRAMMES = ('CCTV-News', 'Evening-Report', 'Weekly-Review', 'Province-News')
SHARD_SIZE = pose_store.DEFAULT_SHARD_SIZE
_STEP = 2.0 ** -16  # grid step of every clip: levels / 65536, exact in float32


def paths(root, parts):
    store = 'dataset' if parts <= 1 else f'dataset-parts{parts}'
    return {'data_root': os.path.join(root, 'data'), 'pose_root': os.path.join(root, store),
            'labels': os.path.join(root, 'data', 'CSL_News', 'CSL_News_Labels.json'),
            'pose_dir': os.path.join(root, store, 'CSL_News', 'pose_format'),
            'mt5': os.path.join(root, 'mt5'), 'meta': os.path.join(root, store, 'meta.json')}


def clip_lengths(clips, seed):
    rng = np.random.default_rng([seed, 1])
    lengths = np.rint(MEDIAN_FRAMES * np.exp(SIGMA * rng.standard_normal(clips)))
    return np.clip(lengths, 25, MAX_FRAMES).astype(np.int64)


def clip_names(clips):
    """CSL-News-like names: PROGRAMME_DATE_START-END_ID."""
    return [f"{PROGRAMMES[i % len(PROGRAMMES)]}_2022{1 + i // 100000 % 12:02d}"
            f"{1 + i // 3000 % 28:02d}_{i % 3000 * 7:06d}-{i % 3000 * 7 + 6:06d}_{i:07d}"
            for i in range(clips)]


def write_labels(path, names, seed):
    """The CSL-News label file, written entry by entry (no list of a million dicts)."""
    rng = np.random.default_rng([seed, 2])
    sizes = rng.integers(10, 61, len(names))
    chars = rng.integers(0, len(CHARSET), int(sizes.sum()))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.write('[')
        start = 0
        for index, (name, size) in enumerate(zip(names, sizes.tolist())):
            text = ''.join(CHARSET[c] for c in chars[start:start + size].tolist())
            start += size
            entry = {'video': f'{name}.mp4', 'pose': f'{name}.pkl', 'text': text}
            f.write((',\n' if index else '\n') + json.dumps(entry, ensure_ascii=False))
        f.write('\n]\n')
    os.replace(path + '.tmp', path)


def frame_pool(frames, seed):
    """uint16 keypoint and score levels of `frames` frames: every body joint confident."""
    rng = np.random.default_rng([seed, 3])
    keypoints = rng.integers(8000, 56000, (frames, NUM_KEYPOINTS, 2), dtype=np.uint16)
    scores = rng.integers(0, 65535, (frames, NUM_KEYPOINTS), dtype=np.uint16)
    scores[:, :23] = rng.integers(int(0.5 / _STEP), 65535, (frames, 23), dtype=np.uint16)
    return keypoints, scores


def write_store(out_dir, names, lengths, frames_on_disk, seed):
    """A packed store (pose_store.py's format and manifest) of the named clips with the given
    recorded lengths, clip i of a shard starting frames_on_disk frames after clip i-1."""
    os.makedirs(out_dir, exist_ok=True)
    order = np.argsort(np.array(names, dtype=bytes), kind='stable')
    pool_frames = SHARD_SIZE * frames_on_disk + MAX_FRAMES
    keypoints, scores = frame_pool(pool_frames, seed)
    shards, rows = [], np.zeros((len(names), 5), dtype=np.int64)
    for shard, begin in enumerate(range(0, len(names), SHARD_SIZE)):
        members = order[begin:begin + SHARD_SIZE]
        rows[members] = np.stack([np.full(len(members), shard),
                                  np.arange(len(members)) * frames_on_disk, lengths[members],
                                  np.full(len(members), -1), np.full(len(members), -1)], 1)
        stem = os.path.join(out_dir, pose_store.shard_stem(shard))
        files = {f'{stem}.keypoints.npy': write_npy(f'{stem}.keypoints.npy', [keypoints],
                                                    np.uint16, keypoints.shape),
                 f'{stem}.scores.npy': write_npy(f'{stem}.scores.npy', [scores], np.uint16,
                                                 scores.shape)}
        shards.append({'id': shard, 'clips': len(members), 'frames': pool_frames,
                       'bad_files': [], 'files': {os.path.basename(f): digest
                                                  for f, digest in files.items()}})
    encoded = np.array(names, dtype=bytes)[order]
    grids = np.tile(np.array([0, 0, 0, _STEP, _STEP, _STEP], dtype=np.float32), (len(names), 1))
    index = {file: write_npy(os.path.join(out_dir, file), [array], array.dtype, array.shape)
             for file, array in zip(pose_store.INDEX_FILES, (encoded, rows[order], grids))}
    manifest = {'format': pose_store.STORE_FORMAT, 'version': pose_store.STORE_VERSION,
                'plan': {'shard_size': SHARD_SIZE, 'num_files': len(names)},
                'encoding': 'uint16 levels: offset + level * step, per clip (index_frames.npy)',
                'simulated': f'clips share frames: each starts {frames_on_disk} frames after '
                             'the previous one of its shard (bench/scale_data.py)',
                'complete': True, 'shards': shards, 'index': index, 'num_clips': len(names),
                'num_frames': int(lengths.sum()), 'bad_files': []}
    write_json_atomic(os.path.join(out_dir, pose_store.MANIFEST_NAME), manifest)


def write_parted_store(out_dir, names, lengths, parts, frames_on_disk, seed):
    owners = store_parts.parts_of(names, parts)
    dirs = [store_parts.part_dir_name(part, parts) for part in range(parts)]
    for part, folder in enumerate(dirs):
        chosen = np.flatnonzero(owners == part)
        write_store(os.path.join(out_dir, folder), [names[i] for i in chosen.tolist()],
                    lengths[chosen], frames_on_disk, seed)
    write_json_atomic(os.path.join(out_dir, store_parts.PARTS_MANIFEST), {
        'format': store_parts.PARTS_FORMAT, 'parts': parts, 'dirs': dirs,
        'num_clips': len(names), 'num_frames': int(lengths.sum()), 'bad_files': []})


def store_bytes(clips, frames_on_disk, parts=1):
    """Bytes the shards of a simulated store take (6 bytes per joint and frame)."""
    shards = -(-clips // SHARD_SIZE) + max(parts - 1, 0)
    return shards * (SHARD_SIZE * frames_on_disk + MAX_FRAMES) * NUM_KEYPOINTS * 6


def _made_with(meta, settings):
    if not os.path.isfile(meta):
        return False
    with open(meta, encoding='utf-8') as f:
        return json.load(f) == settings


def make(root, clips, parts=1, frames_on_disk=4, seed=0):
    """Writes (or keeps, when made with the same settings) the simulated set; returns paths."""
    where = paths(root, parts)
    settings = {'format': FORMAT, 'clips': clips, 'parts': parts,
                'frames_on_disk': frames_on_disk, 'seed': seed}
    if _made_with(where['meta'], settings):
        return where
    names = clip_names(clips)
    lengths = clip_lengths(clips, seed)
    labels_meta, label_settings = where['labels'] + '.meta.json', {**settings, 'parts': 0}
    if not _made_with(labels_meta, label_settings):
        write_labels(where['labels'], names, seed)
        write_json_atomic(labels_meta, label_settings)
    if parts > 1:
        write_parted_store(where['pose_dir'], names, lengths, parts, frames_on_disk, seed)
    else:
        write_store(where['pose_dir'], names, lengths, frames_on_disk, seed)
    if not os.path.isdir(where['mt5']):
        from demo.tiny_mt5 import build_tiny_mt5
        rng = np.random.default_rng([seed, 4])
        corpus = [''.join(rng.choice(CHARSET, 40)) for _ in range(400)]
        build_tiny_mt5(where['mt5'], corpus, vocab_size=400, d_model=32, d_ff=64,
                       num_layers=1, num_heads=2, d_kv=16)
    write_json_atomic(where['meta'], settings)
    return where
