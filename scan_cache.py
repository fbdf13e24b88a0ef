"""The pre-scan's findings kept between starts of a run, so a resume reads only changed clips.

Before any model is built every clip is read and checked (sample_checks.py); at a million clips
that is tens of minutes per start. The findings of a split are kept in
`<output_dir>/scan_cache/<phase>.npz`, one row per clip sorted by its key (the clip's store name,
its pose file path without extension):

    signatures  int64: what the clip's reading depends on; a pose file's size, modification
                time, status-change time and inode; for a packed store the shard's recorded
                SHA-256 checksums with its files' sizes and times, the clip's index row and grid
    frames      int32: the clip's length, -1 for a bad clip
    problems    the message of each bad clip

A clip is read again when it is new or its signature changed; a clip whose file was missing is
always looked at again. The settings the findings depend on (where the clips are, packed or
not, --max_frames_per_clip, --pose_fps, CACHE_VERSION) are stored with them: a cache made with
other settings is set aside. The file carries the SHA-256 of its arrays: a file that does not
load or does not match is reported and rebuilt, never trusted.
"""
import hashlib
import json
import os

import numpy as np

from clip_table import StringColumn
from durable import read_checked_npz, write_checked_npz, write_json_atomic
from sample_checks import scan_clips
from store_parts import parts_of

CACHE_VERSION = 1
CACHE_DIR = 'scan_cache'
_ARRAYS = ('keys', 'signatures', 'frames', 'problem_rows', 'problem_data', 'problem_ends')


def cache_dir(output_dir):
    """The run's cache folder, or None without an output folder."""
    return os.path.join(output_dir, CACHE_DIR) if output_dir else None


def cache_path(output_dir, phase):
    return os.path.join(output_dir, CACHE_DIR, f'{phase}.npz')


def _fingerprint(inputs):
    """SHA-256 of the inputs: strings, lists of strings, and folders (the name, size and
    modification time of each file in them)."""
    digest = hashlib.sha256()
    for item in inputs:
        if isinstance(item, str) and os.path.isdir(item):
            for file in sorted(os.listdir(item)):
                stat = os.stat(os.path.join(item, file))
                digest.update(f'{file}:{stat.st_size}:{stat.st_mtime_ns};'.encode('utf-8'))
        elif isinstance(item, str):
            digest.update(item.encode('utf-8'))
        else:
            digest.update('\0'.join(item).encode('utf-8'))
        digest.update(b'\1')
    return digest.hexdigest()


def cached_value(folder, name, inputs, compute, write=True):
    """compute(), kept under `name` in folder/values.json (written with `write`) for the same
    inputs (see _fingerprint); computed every time when folder is None."""
    if folder is None:
        return compute()
    path, key = os.path.join(folder, 'values.json'), _fingerprint(inputs)
    values = {}
    if os.path.isfile(path):
        try:
            with open(path, encoding='utf-8') as f:
                values = json.load(f)
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            print(f"warning: cache {path} is corrupt ({error}); computing its values again")
            values = {}
    if isinstance(values.get(name), dict) and values[name].get('key') == key:
        return values[name]['value']
    value = compute()
    if write:
        values[name] = {'key': key, 'value': value}
        os.makedirs(folder, exist_ok=True)
        write_json_atomic(path, values)
    return value


def scan_settings(dataset):
    """What a clip's findings depend on besides the clip itself."""
    packed = dataset.store is not None
    source = dataset.store.directory if packed else dataset.pose_dir
    return {'version': CACHE_VERSION, 'packed': packed, 'source': os.path.abspath(source),
            'max_frames': int(dataset.max_frames),
            'pose_fps': None if dataset.pose_fps is None else float(dataset.pose_fps)}


def store_signatures(store, names):
    """int64 (n, 8) per clip of a packed store: what its frames depend on (its shard's recorded
    checksums with the files' sizes and modification times, its index row and grid); all -1
    for a clip the store lacks. A parted store's clips are looked up in their parts."""
    names = np.asarray(names, dtype=bytes)
    out = np.full((len(names), 8), -1, dtype=np.int64)
    if hasattr(store, 'parts'):  # store_parts.PartedStore
        owners = parts_of(names, store.parts)
        for part in np.unique(owners).tolist():
            out[owners == part] = store_signatures(store.part(part), names[owners == part])
        return out
    positions = store.positions(names)
    found = positions >= 0
    _, rows, grids = store.index()
    rows, grids = rows[positions[found]], np.ascontiguousarray(grids[positions[found]])
    records = {record['id']: record['files'] for record in store.manifest['shards']}
    shards = np.array([_shard_signature(store.directory, records.get(shard, {}))
                       for shard in range(int(rows[:, 0].max()) + 1 if len(rows) else 0)],
                      dtype=np.int64)
    out[found] = np.concatenate([shards[rows[:, 0]][:, None], rows[:, 1:],
                                 grids.view(np.int64).reshape(len(rows), 3)], 1)
    return out


def _shard_signature(directory, files):
    digest = hashlib.sha256()
    for file, checksum in sorted(files.items()):
        try:
            stat = os.stat(os.path.join(directory, file))
            stamp = f'{stat.st_size}:{stat.st_mtime_ns}'
        except OSError:
            stamp = 'missing'
        digest.update(f'{file}:{checksum}:{stamp};'.encode('utf-8'))
    return int.from_bytes(digest.digest()[:8], 'little') & ((1 << 63) - 1)  # >= 0


def clip_signatures(dataset, keys, indices):
    """int64 signature rows of the clips at `indices` (keys: every sample's clip key)."""
    if dataset.store is not None:
        return store_signatures(dataset.store, keys[indices])
    rows = np.full((len(indices), 4), -1, dtype=np.int64)
    for row, index in enumerate(np.asarray(indices).tolist()):
        try:
            stat = os.stat(dataset.pose_path(index))
        except OSError:
            continue
        rows[row] = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    return rows


class ScanCache:
    """The findings of one split as stored; empty when there is no usable file."""

    def __init__(self, arrays=None):
        arrays = arrays or {'keys': np.zeros(0, dtype='S1'),
                            'signatures': np.zeros((0, 0), dtype=np.int64),
                            'frames': np.zeros(0, dtype=np.int32),
                            'problem_rows': np.zeros(0, dtype=np.int64),
                            'problem_data': np.zeros(0, dtype=np.uint8),
                            'problem_ends': np.zeros(0, dtype=np.int64)}
        self.arrays = arrays
        messages = StringColumn(arrays['problem_data'], arrays['problem_ends'])
        self.problems = dict(zip(arrays['problem_rows'].tolist(), messages))

    def __len__(self):
        return len(self.arrays['keys'])

    @classmethod
    def load(cls, path, settings):
        """The cache in `path` made with `settings`; an empty one, saying why, when the file is
        absent, corrupt or made with other settings."""
        if not os.path.isfile(path):
            return cls()
        try:
            arrays, meta = read_checked_npz(path)
            arrays = {name: arrays[name] for name in _ARRAYS}
        except Exception as error:  # a damaged file can fail in any of numpy's or zip's ways
            print(f"warning: pre-scan cache {path} is corrupt ({type(error).__name__}: {error}); "
                  "reading every clip again and rebuilding it")
            return cls()
        if meta != settings:
            print(f"pre-scan cache {path} was made with other settings "
                  f"({meta} vs {settings}); reading every clip again")
            return cls()
        return cls(arrays)

    def positions(self, keys):
        """Row of each key in the cache, -1 where it has none."""
        stored = self.arrays['keys']
        if len(stored) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        rows = np.minimum(np.searchsorted(stored, keys), len(stored) - 1)
        return np.where(stored[rows] == keys, rows, -1).astype(np.int64)

    def lookup(self, keys, signatures):
        """(hit mask, frames, {position in keys: problem}) of clips whose key and signature the
        cache holds; a clip without a signature (its file is missing) is never a hit."""
        rows = self.positions(keys)
        hit = rows >= 0
        if hit.any():
            stored = self.arrays['signatures']
            same = np.zeros(len(keys), dtype=bool)
            if stored.shape[1] == signatures.shape[1]:
                same[hit] = (stored[rows[hit]] == signatures[hit]).all(axis=1)
            hit &= same & (signatures[:, 0] >= 0)
        frames = np.full(len(keys), -1, dtype=np.int32)
        frames[hit] = self.arrays['frames'][rows[hit]]
        problems = {position: self.problems[row] for position, row in
                    zip(np.flatnonzero(hit).tolist(), rows[hit].tolist()) if row in self.problems}
        return hit, frames, problems

    def signatures_of(self, keys, width):
        """Stored signatures of the keys (rows of -1 where none)."""
        rows = self.positions(keys)
        out = np.full((len(keys), width), -1, dtype=np.int64)
        if self.arrays['signatures'].shape[1:] == (width,):
            out[rows >= 0] = self.arrays['signatures'][rows[rows >= 0]]
        return out


def save(path, settings, keys, signatures, frames, problems):
    """Writes the findings of every clip (problems: {clip position: message}) atomically."""
    keys, first = np.unique(keys, return_index=True)  # a pose file listed twice is one clip
    position_row = {position: row for row, position in enumerate(first.tolist())}
    bad = sorted((position_row[position], message) for position, message in problems.items()
                 if position in position_row)
    messages = StringColumn.from_strings([message for _, message in bad])
    arrays = {'keys': keys, 'signatures': np.ascontiguousarray(signatures[first]),
              'frames': np.ascontiguousarray(frames[first], dtype=np.int32),
              'problem_rows': np.array([row for row, _ in bad], dtype=np.int64),
              'problem_data': messages.data, 'problem_ends': messages.ends}
    write_checked_npz(path, arrays, settings)


def cached_scan(dataset, indices, keys, cache, workers=0, progress=None):
    """Findings of the clips at `indices`: from the cache where unchanged, read (in `workers`
    processes) otherwise. Returns (frames aligned with indices, {index: problem}, signatures
    of the clips read, positions in indices of the clips read)."""
    indices = np.asarray(indices, dtype=np.int64)
    signatures = clip_signatures(dataset, keys, indices)
    hit, frames, cached = cache.lookup(keys[indices], signatures)
    problems = {int(indices[position]): message for position, message in cached.items()}
    read = np.flatnonzero(~hit)
    fresh_frames, fresh_problems = scan_clips(dataset, indices[read], workers,
                                              progress if len(read) else None)
    frames[read] = fresh_frames
    problems.update(fresh_problems)
    return frames, problems, signatures[read], read


def scan_split(dataset, share, path=None, workers=0, progress=None, gather=None, write=True):
    """Findings of every clip of a split, each rank checking its `share` of the sample
    indices (from the cache in `path` where unchanged) and `gather` (utils.all_gather_objects
    over ranks; None: one process) collecting the shares. With `write` (one rank) the cache is
    rewritten when a clip was read. Returns (frames of every sample, -1 for a bad one;
    {index: problem}; clips read on every rank together)."""
    keys = dataset.clip_names()
    settings = scan_settings(dataset)
    cache = ScanCache.load(path, settings) if path else ScanCache()
    frames, problems, signatures, read = cached_scan(dataset, share, keys, cache, workers,
                                                     progress)
    local = (np.asarray(share, dtype=np.int64), frames, problems,
             np.asarray(share, dtype=np.int64)[read], signatures)
    shares = gather(local) if gather is not None else [local]
    all_frames, all_problems = np.full(len(dataset), -1, dtype=np.int32), {}
    for part_share, part_frames, part_problems, _, _ in shares:
        all_frames[part_share] = part_frames
        all_problems.update(part_problems)
    read_indices = np.concatenate([part[3] for part in shares])
    read_signatures = np.concatenate([part[4] for part in shares])
    found = read_signatures[:, 0] >= 0 if read_signatures.size else np.zeros(0, dtype=bool)
    if path and write and (found.any() or (len(cache) == 0 and len(dataset))):
        stored = cache.signatures_of(keys, read_signatures.shape[1])
        stored[read_indices] = read_signatures
        save(path, settings, keys, stored, all_frames, all_problems)
    return all_frames, all_problems, len(read_indices)
