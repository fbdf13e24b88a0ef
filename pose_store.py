"""Packed pose store: per-clip pose pickles packed into a few large memory-mapped shards.

Reading a million small pickles costs an open, an unpickle and a validation per clip; a packed
store reads a clip as two slices of memory-mapped arrays. Layout of a store directory:

    packed_poses.json              manifest: plan, shards with the SHA-256 of every file, bad files
    shard-00000.keypoints.npy      uint16 (frames, 133, 2), the clips of shard 0 back to back
    shard-00000.scores.npy         uint16 (frames, 133)
    shard-00000.index.json         names, lengths, grids and clip windows of shard 0
    index_names.npy                every clip name (UTF-8 bytes), sorted, for binary search
    index_rows.npy                 int64 (clips, 5): shard, offset, length, start, end (-1: none)
    index_frames.npy               float32 (clips, 6): grid offset x, y, score; step x, y, score

Values are fixed point on a per-clip grid, one per coordinate axis and one for the scores:
value = offset + level * step, the level stored as uint16. The grid spans the clip's range of
that quantity (all joints, all frames) in 65536 levels, so a value is off by at most half a
step, about 1/131070 of the clip's extent on that axis (more only where float32 itself is
coarser: values far from zero compared with their range). Grid values and the products
level * step are exact float32 numbers, so decoding is exact whatever the arithmetic (vector or
scalar, fused or not): equal levels always decode equal, and a score is moved by one level
where needed so that it stays on its side of the 0.3 confidence threshold.

Packing is resumable: a shard's files are written under temporary names, fsynced and renamed
before the shard is recorded in the manifest, and a re-run packs only the shards the manifest
lacks.
"""
import contextlib
import hashlib
import json
import math
import multiprocessing
import os

import numpy as np

from durable import fsync_dir as _fsync_dir, sha256_file  # noqa: F401
from durable import write_chunks_atomic as _write_chunks_atomic
from durable import write_json_atomic as _write_json_atomic, write_npy as _write_npy
from keypoints import NUM_KEYPOINTS, SCORE_THRESHOLD, DataError
from poses import read_pose
from progress import Meter

MANIFEST_NAME = 'packed_poses.json'
STORE_FORMAT = 'packed-poses'
STORE_VERSION = 2  # 1: float16 coordinates relative to the clip's extent
POSE_EXTENSION = '.pkl'
DEFAULT_SHARD_SIZE = 2048
INDEX_FILES = ('index_names.npy', 'index_rows.npy', 'index_frames.npy')
_LEVELS = 65536  # uint16
_EXACT_INTEGERS = 2 ** 24  # float32 holds every integer up to this exactly
_LARGEST_MULTIPLE = _EXACT_INTEGERS // _LEVELS  # level * multiple stays an exact integer
_SMALLEST_UNIT_EXPONENT = -120  # grid values stay normal float32 numbers
_LARGEST_UNIT_EXPONENT = 100  # grid values stay below float32's maximum (2**128)
_THRESHOLD32 = np.float32(SCORE_THRESHOLD)  # load_part_kp compares float32 scores with this
# positions in a grid row of the factors of one frame's keypoints, x, y, x, y, ...
_XY_OFFSETS = np.tile([0, 1], NUM_KEYPOINTS)
_XY_STEPS = _XY_OFFSETS + 3


def clip_name(pose_file):
    """Store name of a pose file given relative to the pose folder: the path without extension."""
    if is_plain_path(pose_file):  # the usual case, a million times at start-up: no normpath
        dot = pose_file.rfind('.')
        return pose_file[:dot] if dot > pose_file.rfind('/') + 1 else pose_file
    return os.path.splitext(os.path.normpath(pose_file))[0].replace(os.sep, '/')


def is_plain_path(path):
    """Whether a relative path is its own os.path.normpath (no '.', '..' or empty parts)."""
    return os.sep == '/' and path and path[0] not in './' and path[-1] != '/' and \
        '//' not in path and '/.' not in path


def clip_names(pose_files):
    """Store names (a numpy bytes array) of pose files given relative to the pose folder."""
    return np.array([clip_name(file).encode('utf-8') for file in pose_files], dtype=bytes)


def open_packed_store(pose_dir, packed_dir=None):
    """The PackedPoseStore in packed_dir, or in pose_dir if it holds one; otherwise None."""
    if packed_dir is None and not is_packed_store(pose_dir):
        return None
    return PackedPoseStore(pose_dir if packed_dir is None else packed_dir)


def is_packed_store(directory):
    return os.path.isfile(os.path.join(directory, MANIFEST_NAME))


def shard_stem(shard_id):
    return f'shard-{shard_id:05d}'


# ----------------------------------------------------------------------------- encoding a clip

def _grid(values, path, what):
    """(offset, step) of the finest exact grid holding values (float32) in uint16 levels.

    Grid values are integers of at most 2**24 times a power of two `unit`: offset = first *
    unit, step = multiple * unit with multiple <= 256, so offset + level * step and level * step
    are exact float32 numbers. The smallest unit that fits gives the smallest step.
    """
    low, high = float(values.min()), float(values.max())
    largest = max(abs(low), abs(high))
    exponent = _SMALLEST_UNIT_EXPONENT if largest == 0 else \
        max(_SMALLEST_UNIT_EXPONENT, math.frexp(largest)[1] - 25)
    while exponent <= _LARGEST_UNIT_EXPONENT:
        unit = 2.0 ** exponent
        first, last = math.floor(low / unit), math.ceil(high / unit)
        multiple = max(1, -(-(last - first) // (_LEVELS - 1)))
        top = first + (_LEVELS - 1) * multiple
        if multiple <= _LARGEST_MULTIPLE and max(-first, top) <= _EXACT_INTEGERS:
            return first * unit, multiple * unit
        exponent += 1
    raise DataError(f"{path}: {what} too large to store (magnitude {largest:g})")


def _quantize(values, offset, step):
    """uint16 levels of the grid points nearest to values."""
    levels = np.rint((values.astype(np.float64) - offset) / step)
    return np.clip(levels, 0, _LEVELS - 1).astype(np.uint16)


def _quantize_scores(scores, offset, step):
    """Levels of the scores, each decoding on the same side of the threshold as the score."""
    levels = _quantize(scores, offset, step).astype(np.int32)
    above = scores > _THRESHOLD32
    decoded_above = offset + levels * step > _THRESHOLD32  # exact: grid values are float32
    # the nearest grid point lies within half a step, so one step over lands on the right side
    levels += (above & ~decoded_above).astype(np.int32) - (~above & decoded_above)
    return levels.astype(np.uint16)


def _encode_clip(path):
    """Reads one pose file into packed form, or returns the DataError message."""
    try:
        pose = read_pose(path)
        keypoints, scores = pose['keypoints'][:, 0], pose['scores'][:, 0]
        axes = [_grid(keypoints[..., axis], path, 'keypoints') for axis in range(2)]
        score_grid = _grid(scores, path, 'scores')
    except DataError as error:
        return str(error)
    offsets, steps = zip(*axes, score_grid)
    levels = np.stack([_quantize(keypoints[..., axis], *axes[axis]) for axis in range(2)], -1)
    window = [pose.get('start', -1), pose.get('end', -1)]
    return levels, _quantize_scores(scores, *score_grid), [*offsets, *steps], window


def _decode(stored, offsets, steps):
    """float32 copy of a uint16 (T, ...) array: offsets + stored * steps, where offsets and
    steps are scalars or rows matching one frame flattened.

    Multiplying and adding in two passes is exact (see the module docstring), and in place over
    whole frames numpy runs contiguous vector loops: as fast as torch on one thread, with no
    thread pool to wake.
    """
    values = stored.reshape(len(stored), -1).astype(np.float32)  # also copies out of the map
    values *= steps
    values += offsets
    return values.reshape(stored.shape)


# ----------------------------------------------------------------------------- planning

def _list_pose_files(pose_files_or_dir, root):
    """(name, path) of every pose file, sorted by name; names are paths relative to the root."""
    if isinstance(pose_files_or_dir, (str, os.PathLike)):
        root = os.fspath(pose_files_or_dir)
        if not os.path.isdir(root):
            raise DataError(f"{root}: pose folder not found")
        paths = [os.path.join(folder, file) for folder, _, files in os.walk(root)
                 for file in files if file.endswith(POSE_EXTENSION)]
    else:
        paths = [os.fspath(p) for p in pose_files_or_dir]
        if root is None and paths:
            root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    files = sorted((clip_name(os.path.relpath(os.path.abspath(p), os.path.abspath(root))), p)
                   for p in paths)
    for (name, path), (next_name, next_path) in zip(files, files[1:]):
        if name == next_name:
            raise DataError(f"{path} and {next_path} would both be stored as clip {name!r}")
    return files


def _plan(files, shard_size):
    digest = hashlib.sha256('\n'.join(name for name, _ in files).encode('utf-8')).hexdigest()
    return {'shard_size': int(shard_size), 'num_files': len(files), 'names_sha256': digest}


def _remove_store_files(out_dir):
    for file in os.listdir(out_dir):
        base = file[:-4] if file.endswith('.tmp') else file
        if base == MANIFEST_NAME or base in INDEX_FILES or \
                (base.startswith('shard-') and base.endswith(('.npy', '.json'))):
            os.remove(os.path.join(out_dir, file))


def _open_manifest(out_dir, plan, resume):
    """The manifest to continue from (its shards whose files all exist), or a fresh one."""
    path = os.path.join(out_dir, MANIFEST_NAME)
    if resume and os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            manifest = json.load(f)
        if manifest.get('format') == STORE_FORMAT and manifest.get('version') != STORE_VERSION:
            raise DataError(f"{out_dir}: holds a version {manifest.get('version')} packed store; "
                            f"this code writes version {STORE_VERSION}: pack with resume=False "
                            "(--no_resume) to replace it")
        if manifest.get('format') != STORE_FORMAT or manifest.get('plan') != plan:
            raise DataError(f"{out_dir}: holds a store packed from other pose files or with "
                            "another shard size; pack with resume=False (--no_resume) to "
                            "replace it")
        manifest['shards'] = [shard for shard in manifest['shards'] if all(
            os.path.isfile(os.path.join(out_dir, file)) for file in shard['files'])]
        return manifest
    _remove_store_files(out_dir)
    manifest = {'format': STORE_FORMAT, 'version': STORE_VERSION, 'plan': plan,
                'encoding': 'uint16 levels: offset + level * step, per clip (index_frames.npy)',
                'complete': False, 'shards': []}
    _write_json_atomic(path, manifest)
    return manifest


# ----------------------------------------------------------------------------- packing

def _write_shard(out_dir, shard_id, clips, bad_files):
    """clips: (name, keypoints, scores, grid, window) tuples; returns the manifest record."""
    stem = os.path.join(out_dir, shard_stem(shard_id))
    num_frames = sum(len(clip[2]) for clip in clips)
    keypoints = _write_npy(f'{stem}.keypoints.npy', [clip[1] for clip in clips], np.uint16,
                           (num_frames, NUM_KEYPOINTS, 2))
    scores = _write_npy(f'{stem}.scores.npy', [clip[2] for clip in clips], np.uint16,
                        (num_frames, NUM_KEYPOINTS))
    index = {'names': [clip[0] for clip in clips], 'lengths': [len(clip[2]) for clip in clips],
             'grids': [clip[3] for clip in clips], 'windows': [clip[4] for clip in clips]}
    index_digest = _write_chunks_atomic(f'{stem}.index.json', [json.dumps(index).encode('utf-8')])
    _fsync_dir(out_dir)
    name = shard_stem(shard_id)
    return {'id': shard_id, 'clips': len(clips), 'frames': num_frames, 'bad_files': bad_files,
            'files': {f'{name}.keypoints.npy': keypoints, f'{name}.scores.npy': scores,
                      f'{name}.index.json': index_digest}}


def _read_shards(shards, pool):
    """Yields (shard id, members, encoded clips); a pool reads the next shard meanwhile."""
    def start(members):
        paths = [path for _, path in members]
        return pool.imap(_encode_clip, paths, chunksize=4) if pool else map(_encode_clip, paths)

    pending = start(shards[0][1]) if shards else None
    for position, (shard_id, members) in enumerate(shards):
        current = pending
        if position + 1 < len(shards):
            pending = start(shards[position + 1][1])
        yield shard_id, members, current


def _pack_shard(out_dir, shard_id, members, encoded, skip_bad, bar):
    clips, bad_files = [], []
    for (name, path), result in zip(members, encoded):
        bar.update()
        if isinstance(result, str):
            if not skip_bad:
                raise DataError(result)
            bad_files.append({'file': path, 'error': result})
        else:
            clips.append((name, *result))
    return _write_shard(out_dir, shard_id, clips, bad_files)


def pack(pose_files_or_dir, out_dir, shard_size=DEFAULT_SHARD_SIZE, workers=None, resume=True,
         progress=True, skip_bad=False, root=None, on_shard=None):
    """Packs pose files (a folder searched recursively for .pkl, or a list) into out_dir.

    Clips are named by their path relative to the folder (or to `root`, default the files'
    common folder) without extension. Files are read by `workers` processes (default: all
    cores; 0 or 1 reads in this process). An unusable file raises a DataError naming it, or
    with skip_bad is left out and listed under 'bad_files' in the manifest. With resume,
    shards recorded by an interrupted run of the same plan are kept. on_shard(record) is
    called after each shard is recorded. Returns the manifest.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    files = _list_pose_files(pose_files_or_dir, root)
    os.makedirs(out_dir, exist_ok=True)
    manifest = _open_manifest(out_dir, _plan(files, shard_size), resume)
    if manifest['complete']:
        return manifest
    done = {shard['id'] for shard in manifest['shards']}
    shards = [(k, files[k * shard_size:(k + 1) * shard_size])
              for k in range(math.ceil(len(files) / shard_size)) if k not in done]
    remaining = sum(len(members) for _, members in shards)
    workers = (os.cpu_count() or 1) if workers is None else workers
    with contextlib.ExitStack() as stack:
        bar = Meter(len(files), 'packing', enabled=progress, final=True,
                    initial=len(files) - remaining)
        stack.callback(bar.close)
        pool = stack.enter_context(multiprocessing.Pool(workers)) if workers > 1 else None
        for shard_id, members, encoded in _read_shards(shards, pool):
            record = _pack_shard(out_dir, shard_id, members, encoded, skip_bad, bar)
            manifest['shards'] = sorted(manifest['shards'] + [record], key=lambda s: s['id'])
            _write_json_atomic(os.path.join(out_dir, MANIFEST_NAME), manifest)
            if on_shard is not None:
                on_shard(record)
    return _finish(out_dir, manifest, progress)


def _gather_shard_indexes(out_dir, manifest):
    names, rows, grids = [], [], []
    for shard in manifest['shards']:
        with open(os.path.join(out_dir, f"{shard_stem(shard['id'])}.index.json"),
                  encoding='utf-8') as f:
            index = json.load(f)
        offsets = np.cumsum([0] + index['lengths'][:-1])
        for name, offset, length, grid, (start, end) in zip(
                index['names'], offsets, index['lengths'], index['grids'], index['windows']):
            names.append(name.encode('utf-8'))
            rows.append((shard['id'], offset, length, start, end))
            grids.append(grid)
    return names, rows, grids


def _finish(out_dir, manifest, progress):
    """Writes the sorted clip index and marks the manifest complete."""
    names, rows, grids = _gather_shard_indexes(out_dir, manifest)
    names = np.array(names, dtype=f'S{max([1, *map(len, names)])}')
    order = np.argsort(names, kind='stable')
    arrays = (names[order], np.array(rows, dtype=np.int64).reshape(-1, 5)[order],
              np.array(grids, dtype=np.float32).reshape(-1, 6)[order])
    manifest['index'] = {file: _write_npy(os.path.join(out_dir, file), [array], array.dtype,
                                          array.shape)
                         for file, array in zip(INDEX_FILES, arrays)}
    bad_files = [bad for shard in manifest['shards'] for bad in shard['bad_files']]
    manifest.update(complete=True, num_clips=len(names), bad_files=bad_files,
                    num_frames=sum(shard['frames'] for shard in manifest['shards']))
    _write_json_atomic(os.path.join(out_dir, MANIFEST_NAME), manifest)
    if bad_files and progress:
        print(f"left out {len(bad_files)} unusable pose files; they are listed under "
              f"'bad_files' in {os.path.join(out_dir, MANIFEST_NAME)}")
    return manifest


# ----------------------------------------------------------------------------- reading

class PackedPoseStore:
    """Reads clips of a packed store in poses.read_pose()'s form.

    Shards are memory-mapped lazily, once per process: the object pickles without its maps,
    so it can be handed to DataLoader workers.
    """

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        path = os.path.join(self.directory, MANIFEST_NAME)
        if not os.path.isfile(path):
            raise DataError(f"{self.directory}: no packed pose store ({MANIFEST_NAME} not found)")
        with open(path, encoding='utf-8') as f:
            self.manifest = json.load(f)
        if self.manifest.get('format') != STORE_FORMAT:
            raise DataError(f"{path}: not a packed pose store manifest")
        if self.manifest.get('version') != STORE_VERSION:
            raise DataError(f"{self.directory}: packed pose store of format version "
                            f"{self.manifest.get('version')}; this code reads version "
                            f"{STORE_VERSION}: repack with script/pack_poses.py --no_resume")
        if not self.manifest['complete']:
            plan = self.manifest['plan']
            total = math.ceil(plan['num_files'] / plan['shard_size'])
            done = len(self.manifest['shards'])
            raise DataError(f"{self.directory}: packing stopped after {done} of {total} shards; "
                            "run it again with the same arguments to finish")
        self._arrays, self._pid = {}, None

    def __getstate__(self):
        return {'directory': self.directory, 'manifest': self.manifest}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._arrays, self._pid = {}, None

    def _array(self, file):
        if self._pid != os.getpid():  # maps are not shared with forked or spawned workers
            self._arrays, self._pid = {}, os.getpid()
        if file not in self._arrays:
            # read-only shared maps: unlike copy-on-write ones they never count as committed memory
            mapped = np.load(os.path.join(self.directory, file), mmap_mode='r')
            self._arrays[file] = np.asarray(mapped)  # a plain view: np.memmap indexing is slower
        return self._arrays[file]

    def __len__(self):
        return self.manifest['num_clips']

    def _find(self, name):
        names = self._array(INDEX_FILES[0])
        key = name.encode('utf-8')
        if len(key) > names.dtype.itemsize or len(names) == 0:
            return None
        position = int(names.searchsorted(np.array(key, dtype=names.dtype)))
        return position if position < len(names) and names[position] == key else None

    def __contains__(self, name):
        return self._find(name) is not None

    def _row(self, name):
        position = self._find(name)
        if position is None:
            raise DataError(f"{self.directory}: packed pose store has no clip {name!r}")
        return position, self._array(INDEX_FILES[1])[position].tolist()

    def read(self, name):
        """'keypoints' float32 (T, 1, 133, 2), 'scores' float32 (T, 1, 133), 'start'/'end'."""
        position, (shard, offset, length, start, end) = self._row(name)
        stem = shard_stem(shard)
        keypoints = self._array(f'{stem}.keypoints.npy')[offset:offset + length]
        scores = self._array(f'{stem}.scores.npy')[offset:offset + length]
        grid = self._array(INDEX_FILES[2])[position]  # offsets x, y, score; steps x, y, score
        clip = {'keypoints': _decode(keypoints, grid[_XY_OFFSETS], grid[_XY_STEPS])[:, None],
                'scores': _decode(scores, grid[2], grid[5])[:, None]}
        if start >= 0:
            clip.update(start=start, end=end)
        return clip

    def positions(self, names):
        """Index positions of clip names (a numpy bytes array); -1 where the store lacks one."""
        index = self._array(INDEX_FILES[0])
        names = np.asarray(names, dtype=bytes)
        if len(index) == 0:
            return np.full(len(names), -1, dtype=np.int64)
        positions = np.minimum(np.searchsorted(index, names), len(index) - 1)
        return np.where(index[positions] == names, positions, -1).astype(np.int64)

    def spans(self, names):
        """(first frame, frames) of each clip (int64 (n, 2)), as span() gives, for many names."""
        positions = self.positions(names)
        if (positions < 0).any():
            missing = np.asarray(names)[positions < 0][0].decode('utf-8')
            raise DataError(f"{self.directory}: packed pose store has no clip {missing!r}")
        rows = self._array(INDEX_FILES[1])[positions]
        windowed = rows[:, 3] >= 0
        first = np.where(windowed, rows[:, 3], 0)
        return np.stack([first, np.where(windowed, rows[:, 4] - rows[:, 3], rows[:, 2])], 1)

    def index(self):
        """The memory-mapped clip index: names, rows (shard, offset, length, start, end), grids."""
        return tuple(self._array(file) for file in INDEX_FILES)

    def grid(self, name):
        """(offsets, steps) float32 of the clip's x, y and score grids: a stored value is
        within half a step of the packed one (a score near the threshold within one step)."""
        grid = self._array(INDEX_FILES[2])[self._row(name)[0]]
        return grid[:3].copy(), grid[3:].copy()

    def length(self, name):
        """Frames stored for the clip (the whole file, ignoring any start/end window)."""
        return self._row(name)[1][2]

    def span(self, name):
        """(first frame, number of frames) of the clip, as keypoints.clip_span gives."""
        _, (_, _, length, start, end) = self._row(name)
        return (start, end - start) if start >= 0 else (0, length)

    def names(self):
        return [name.decode('utf-8') for name in self._array(INDEX_FILES[0])]

    @property
    def bad_files(self):
        return self.manifest['bad_files']

    def files(self):
        """Every data file of the store with its recorded SHA-256."""
        recorded = dict(self.manifest['index'])
        for shard in self.manifest['shards']:
            recorded.update(shard['files'])
        return recorded

    def verify(self):
        """Recomputes every file's SHA-256; returns the problems found (empty when intact)."""
        problems = []
        for file, expected in sorted(self.files().items()):
            path = os.path.join(self.directory, file)
            if not os.path.isfile(path):
                problems.append(f"{path}: missing")
            elif sha256_file(path) != expected:
                problems.append(f"{path}: checksum mismatch")
        return problems
