"""Durable file writes: a file is written under a temporary name, fsynced and renamed, so a
reader sees the old file or the whole new one, never a part; each write returns the SHA-256 of
what it wrote (the packed pose store records them, the pre-scan cache checks them)."""
import hashlib
import io
import json
import os

import numpy as np


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_chunks_atomic(path, chunks):
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


def write_npy(path, arrays, dtype, shape):
    """Writes arrays back to back as one .npy of the given shape; returns the file's SHA-256."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)), 'fortran_order': False,
        'shape': tuple(shape)})
    body = (memoryview(np.ascontiguousarray(a, dtype=dtype)).cast('B') for a in arrays
            if np.size(a))  # an empty array has no bytes (and no byte view)
    return write_chunks_atomic(path, [header.getvalue(), *body])


def write_json_atomic(path, obj):
    write_chunks_atomic(path, [json.dumps(obj, ensure_ascii=False).encode('utf-8')])
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def sha256_file(path, block=1 << 22):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _arrays_digest(arrays):
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f'{name}:{array.dtype.str}:{array.shape};'.encode('utf-8'))
        digest.update(memoryview(array).cast('B') if array.size else b'')
    return digest.hexdigest()


def write_checked_npz(path, arrays, meta):
    """Writes numpy arrays and a JSON-ready `meta` atomically as one .npz that carries the
    SHA-256 of the arrays (read_checked_npz verifies it)."""
    record = json.dumps({'meta': meta, 'sha256': _arrays_digest(arrays)})
    buffer = io.BytesIO()
    np.savez(buffer, __record__=np.array(record), **arrays)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_chunks_atomic(path, [buffer.getbuffer()])


def read_checked_npz(path):
    """(arrays, meta) of a write_checked_npz file; raises ValueError (or numpy's, zip's or the
    OS's error) when it does not load or its arrays do not match their checksum."""
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files if name != '__record__'}
        record = json.loads(str(stored['__record__']))
    if record.get('sha256') != _arrays_digest(arrays):
        raise ValueError("its checksum does not match its content")
    return arrays, record.get('meta')
