"""Packed pose store: per-clip pose pickles packed into a few large memory-mapped shards.

Reading a million small pickles costs an open, an unpickle and a validation per clip; a packed
store reads a clip as two slices of memory-mapped arrays. Layout of a store directory:

    packed_poses.json              manifest: plan, shards with the SHA-256 of every file, bad files
    shard-00000.keypoints.npy      float16 (frames, 133, 2), the clips of shard 0 back to back
    shard-00000.scores.npy         float16 (frames, 133)
    shard-00000.index.json         names, lengths, coordinate frames and clip windows of shard 0
    index_names.npy                every clip name (UTF-8 bytes), sorted, for binary search
    index_rows.npy                 int64 (clips, 5): shard, offset, length, start, end (-1: none)
    index_frames.npy               float32 (clips, 4): centre x, y and half extent x, y

Coordinates are stored as float16 of (x - centre) / half extent, where the centre and half
extent come from the clip's confident joints: float16 then resolves about 1/4000 of the
signer's extent instead of 1/4000 of the image. Scores are rounded so none crosses the 0.3
confidence threshold. Packing is resumable: a shard's files are written under temporary names,
fsynced and renamed before the shard is recorded in the manifest, and a re-run packs only the
shards the manifest lacks.
"""
import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os

import numpy as np
import torch
from tqdm import tqdm

from datasets import NUM_KEYPOINTS, SCORE_THRESHOLD, DataError, read_pose

MANIFEST_NAME = 'packed_poses.json'
STORE_FORMAT = 'packed-poses'
STORE_VERSION = 1
POSE_EXTENSION = '.pkl'
DEFAULT_SHARD_SIZE = 2048
INDEX_FILES = ('index_names.npy', 'index_rows.npy', 'index_frames.npy')
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_THRESHOLD32 = np.float32(SCORE_THRESHOLD)  # load_part_kp compares float32 scores with this


def clip_name(pose_file):
    """Store name of a pose file given relative to the pose folder: the path without extension."""
    return os.path.splitext(os.path.normpath(pose_file))[0].replace(os.sep, '/')


def is_packed_store(directory):
    return os.path.isfile(os.path.join(directory, MANIFEST_NAME))


def shard_stem(shard_id):
    return f'shard-{shard_id:05d}'


# ----------------------------------------------------------------------------- encoding a clip

def _coordinate_frame(keypoints, scores):
    """Centre and half extent (x, y) of the clip's confident joints (all joints if none are)."""
    points = keypoints[scores > _THRESHOLD32]
    if len(points) == 0:
        points = keypoints.reshape(-1, 2)
    low, high = points.min(axis=0), points.max(axis=0)
    centre = ((low + high) / 2).astype(np.float32)
    # at least 1/32768 of the farthest joint's distance, so every value fits float16
    reach = np.abs(keypoints - centre).reshape(-1, 2).max(axis=0) / 32768
    half = np.maximum((high - low) / 2, reach).astype(np.float32)
    half[half == 0] = 1
    return centre, half


def _scores_to_float16(scores):
    """float16 scores on the same side of the confidence threshold as the float32 ones."""
    packed = scores.astype(np.float16)
    above = scores > _THRESHOLD32
    flipped = above != (packed.astype(np.float32) > _THRESHOLD32)
    if flipped.any():
        toward = np.where(above[flipped], np.inf, -np.inf).astype(np.float16)
        packed[flipped] = np.nextafter(packed[flipped], toward)
    return packed


def _encode_clip(path):
    """Reads one pose file into packed form, or returns the DataError message."""
    try:
        pose = read_pose(path)
        keypoints, scores = pose['keypoints'][:, 0], pose['scores'][:, 0]
        centre, half = _coordinate_frame(keypoints, scores)
        relative = (keypoints - centre) / half
        if np.abs(scores).max() > _FLOAT16_MAX:
            raise DataError(f"{path}: scores too large to store as float16")
    except DataError as error:
        return str(error)
    frame = [float(v) for v in (*centre, *half)]
    window = [pose.get('start', -1), pose.get('end', -1)]
    return relative.astype(np.float16), _scores_to_float16(scores), frame, window


def _decode(stored, frame=None):
    """float32 copy of a float16 (T, ...) array; with a coordinate frame, centre + value * half.

    torch converts float16 with vector instructions where numpy goes element by element.
    With several torch threads, rows go in pieces below torch's parallel grain (32768
    elements): larger ops wake its thread pool, which on a busy machine costs far more than
    the op itself. DataLoader workers run one thread and take the clip in one piece.
    """
    source = torch.from_numpy(np.array(stored)).view(len(stored), -1)  # writable copy of the map
    if frame is not None:
        # rows of factors x, y, x, y, ... rather than pairs, so arithmetic runs over long loops
        factors = np.repeat(np.reshape(frame, (2, 1, 2)), source.shape[1] // 2, axis=1)
        centre, half = (torch.from_numpy(row) for row in factors.reshape(2, -1))
    if torch.get_num_threads() == 1 or source.numel() < 32768:
        out = source.float() if frame is None else torch.addcmul(centre, source, half)
        return out.numpy().reshape(stored.shape)
    out = torch.empty(source.shape)
    rows = max(1, 32767 // source.shape[1])
    for piece, piece_out in zip(source.split(rows), out.split(rows)):
        if frame is None:
            piece_out.copy_(piece)
        else:
            torch.addcmul(centre, piece, half, out=piece_out)
    return out.numpy().reshape(stored.shape)


# ----------------------------------------------------------------------------- durable writes

def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_chunks_atomic(path, chunks):
    """Writes the byte chunks to path via a fsynced temporary file; returns their SHA-256."""
    digest = hashlib.sha256()
    with open(path + '.tmp', 'wb') as f:
        for chunk in chunks:
            f.write(chunk)
            digest.update(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + '.tmp', path)
    return digest.hexdigest()


def _write_npy(path, arrays, dtype, shape):
    """Writes arrays back to back as one .npy of the given shape; returns the file's SHA-256."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)), 'fortran_order': False,
        'shape': tuple(shape)})
    body = (memoryview(np.ascontiguousarray(a, dtype=dtype)).cast('B') for a in arrays)
    return _write_chunks_atomic(path, [header.getvalue(), *body])


def _write_json_atomic(path, obj):
    _write_chunks_atomic(path, [json.dumps(obj, ensure_ascii=False).encode('utf-8')])
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def sha256_file(path, block=1 << 22):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


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
        if manifest.get('format') != STORE_FORMAT or manifest.get('plan') != plan:
            raise DataError(f"{out_dir}: holds a store packed from other pose files or with "
                            "another shard size; pack with resume=False (--no_resume) to "
                            "replace it")
        manifest['shards'] = [shard for shard in manifest['shards'] if all(
            os.path.isfile(os.path.join(out_dir, file)) for file in shard['files'])]
        return manifest
    _remove_store_files(out_dir)
    manifest = {'format': STORE_FORMAT, 'version': STORE_VERSION, 'plan': plan,
                'coordinates': 'float16 (x - centre) / half extent, per clip (index_frames.npy)',
                'complete': False, 'shards': []}
    _write_json_atomic(path, manifest)
    return manifest


# ----------------------------------------------------------------------------- packing

def _write_shard(out_dir, shard_id, clips, bad_files):
    """clips: (name, keypoints, scores, frame, window) tuples; returns the manifest record."""
    stem = os.path.join(out_dir, shard_stem(shard_id))
    num_frames = sum(len(clip[2]) for clip in clips)
    keypoints = _write_npy(f'{stem}.keypoints.npy', [clip[1] for clip in clips], np.float16,
                           (num_frames, NUM_KEYPOINTS, 2))
    scores = _write_npy(f'{stem}.scores.npy', [clip[2] for clip in clips], np.float16,
                        (num_frames, NUM_KEYPOINTS))
    index = {'names': [clip[0] for clip in clips], 'lengths': [len(clip[2]) for clip in clips],
             'frames': [clip[3] for clip in clips], 'windows': [clip[4] for clip in clips]}
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
        bar = stack.enter_context(tqdm(total=len(files), initial=len(files) - remaining,
                                       unit='clip', desc='packing', disable=not progress))
        pool = stack.enter_context(multiprocessing.Pool(workers)) if workers > 1 else None
        for shard_id, members, encoded in _read_shards(shards, pool):
            record = _pack_shard(out_dir, shard_id, members, encoded, skip_bad, bar)
            manifest['shards'] = sorted(manifest['shards'] + [record], key=lambda s: s['id'])
            _write_json_atomic(os.path.join(out_dir, MANIFEST_NAME), manifest)
            if on_shard is not None:
                on_shard(record)
    return _finish(out_dir, manifest, progress)


def _gather_shard_indexes(out_dir, manifest):
    names, rows, frames = [], [], []
    for shard in manifest['shards']:
        with open(os.path.join(out_dir, f"{shard_stem(shard['id'])}.index.json"),
                  encoding='utf-8') as f:
            index = json.load(f)
        offsets = np.cumsum([0] + index['lengths'][:-1])
        for name, offset, length, frame, (start, end) in zip(
                index['names'], offsets, index['lengths'], index['frames'], index['windows']):
            names.append(name.encode('utf-8'))
            rows.append((shard['id'], offset, length, start, end))
            frames.append(frame)
    return names, rows, frames


def _finish(out_dir, manifest, progress):
    """Writes the sorted clip index and marks the manifest complete."""
    names, rows, frames = _gather_shard_indexes(out_dir, manifest)
    names = np.array(names, dtype=f'S{max([1, *map(len, names)])}')
    order = np.argsort(names, kind='stable')
    arrays = (names[order], np.array(rows, dtype=np.int64).reshape(-1, 5)[order],
              np.array(frames, dtype=np.float32).reshape(-1, 4)[order])
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
    """Reads clips of a packed store in datasets.read_pose()'s form.

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
        if self.manifest.get('format') != STORE_FORMAT or \
                self.manifest.get('version') != STORE_VERSION:
            raise DataError(f"{path}: not a version {STORE_VERSION} packed pose store")
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
        clip = {'keypoints': _decode(keypoints, self._array(INDEX_FILES[2])[position])[:, None],
                'scores': _decode(scores)[:, None]}
        if start >= 0:
            clip.update(start=start, end=end)
        return clip

    def length(self, name):
        """Frames stored for the clip (the whole file, ignoring any start/end window)."""
        return self._row(name)[1][2]

    def span(self, name):
        """(first frame, number of frames) of the clip, as datasets.clip_span gives."""
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
