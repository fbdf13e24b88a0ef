"""Whole-body keypoint files: the COCO-WholeBody-133 layout, the error every bad input raises,
and the checked reading of pose pickles.

Pose pickles are dicts of keypoints (T, N, 133, 2) and scores (T, N, 133), per frame or stacked
(Uni-Sign's RTMPose files). They, and Uni-Sign's label pickles, are read with a restricted
unpickler that only rebuilds plain containers, numbers, strings and numpy arrays, so a crafted
file cannot run code. Every problem is a `DataError` naming the file. This module is the bottom
of the pose layer: it imports nothing of the project.
"""
import codecs
import os
import pickle

import numpy as np

PARTS = ('body', 'left', 'right', 'face_all')
PART_JOINTS = {
    'body': np.array([0, *range(3, 11)]),
    'left': np.arange(91, 112),
    'right': np.arange(112, 133),
    'face_all': np.array([*range(23, 40, 2), *range(83, 91), 53]),
}
NUM_KEYPOINTS = 133
SCORE_THRESHOLD = 0.3
# Beyond this, finite coordinates overflow float32 in part normalisation (squares of spans).
MAX_COORDINATE = 1e6
DEFAULT_MAX_FRAMES = 100_000  # --max_frames_per_clip


class DataError(ValueError):
    """An unusable label or pose file; the message names the file and the problem."""


# ----------------------------------------------------------------------------- safe unpickling

def _encode_latin1(text, encoding):
    """Pickle protocols 0-2 rebuild bytes with _codecs.encode(text, 'latin1'); nothing else."""
    if encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r} for bytes")
    return codecs.encode(text, encoding)


def _allowed_pickle_globals():
    """Maps the (module, name) pairs a pose or label pickle may reference to the real objects."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed = {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype,
               ('_codecs', 'encode'): _encode_latin1}
    for package in ('numpy._core', 'numpy.core'):  # files written by numpy 2 and numpy 1
        allowed[(f'{package}.multiarray', '_reconstruct')] = multiarray._reconstruct
        allowed[(f'{package}.multiarray', 'scalar')] = multiarray.scalar
        allowed[(f'{package}.numeric', '_frombuffer')] = numeric._frombuffer
    for module in ('builtins', '__builtin__'):
        for builtin in (set, frozenset, complex, bytearray):
            allowed[(module, builtin.__name__)] = builtin
    return allowed


_ALLOWED_GLOBALS = _allowed_pickle_globals()


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return allowed


def unpickle(fileobj, path):
    """Unpickles with the restricted unpickler, turning every failure into a DataError."""
    try:
        return _RestrictedUnpickler(fileobj).load()
    except _RefusedGlobal as refused:
        raise DataError(f"{path}: refused to unpickle '{refused}' (only containers, numbers, "
                        "strings and numpy arrays are allowed)") from None
    except Exception as error:  # corrupt bytes can surface as almost any exception type
        raise DataError(f"{path}: unreadable pickle ({type(error).__name__}: {error})") from None


def require_file(path, what):
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} not found")


# ----------------------------------------------------------------------------- pose pickles

def read_pose_pickle(path, max_frames=DEFAULT_MAX_FRAMES):
    """Reads and validates a pose pickle: 'keypoints' (T, 1, 133, 2) and 'scores' (T, 1, 133)
    as float32 (the first person of each frame, as Uni-Sign uses), plus 'start'/'end' when the
    file restricts the clip. A clip of more than `max_frames` frames is refused before its
    frames are stacked: a small pickle can repeat one reference to expand to any size."""
    require_file(path, "pose file")
    try:
        with open(path, 'rb') as f:
            pose = unpickle(f, path)
    except OSError as error:
        raise DataError(f"{path}: unreadable pose file ({error})") from None
    if not isinstance(pose, dict):
        raise DataError(f"{path}: pose file holds a {type(pose).__name__}, expected a dict")
    missing = [key for key in ('keypoints', 'scores') if key not in pose]
    if missing:
        raise DataError(f"{path}: pose file lacks {', '.join(map(repr, missing))}")
    for key in ('keypoints', 'scores'):
        check_frame_count(path, key, len(pose[key]) if hasattr(pose[key], '__len__') else 0,
                          max_frames)
    keypoints = _frames_array(pose['keypoints'], path, 'keypoints', (NUM_KEYPOINTS, 2))
    scores = _frames_array(pose['scores'], path, 'scores', (NUM_KEYPOINTS,))
    if len(keypoints) != len(scores):
        raise DataError(f"{path}: {len(keypoints)} frames of keypoints but {len(scores)} of scores")
    if len(keypoints) == 0:
        raise DataError(f"{path}: zero-length clip")
    for key, values in (('keypoints', keypoints), ('scores', scores)):
        finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
        if not finite.all():
            raise DataError(f"{path}: {key} contain NaN or Inf (first at frame "
                            f"{int(np.argmin(finite))})")
    # checked in the file's own precision: beyond float32's range a value would read as Inf
    check_coordinates(path, keypoints)
    check_coordinates(path, scores, 'scores')
    clip = {key: np.ascontiguousarray(values, dtype=np.float32)
            for key, values in (('keypoints', keypoints), ('scores', scores))}
    clip.update(_clip_window(pose, len(keypoints), path))
    return clip


def check_frame_count(path, key, frames, max_frames):
    if frames > max_frames:
        raise DataError(f"{path}: {key} hold {frames} frames, more than --max_frames_per_clip "
                        f"{max_frames} (raise it for clips this long)")


def check_coordinates(path, values, key='keypoints'):
    """Finite coordinates beyond MAX_COORDINATE overflow in normalisation: the clip is refused.
    Scores (confidences, normally within [0, 1]) are held to the same bound."""
    if values.dtype.kind in 'iu':  # the most negative integer has no positive counterpart
        values = values.astype(np.float64)
    magnitude = np.abs(values).reshape(len(values), -1).max(axis=1)
    extreme = magnitude > MAX_COORDINATE
    if extreme.any():
        bound = 'coordinate' if key == 'keypoints' else 'score'
        raise DataError(f"{path}: {key} reach {float(magnitude.max()):.3g}, beyond the "
                        f"{bound} bound {MAX_COORDINATE:g} (first at frame "
                        f"{int(np.argmax(extreme))}); they would overflow in normalisation")


def _frames_array(value, path, key, joint_shape):
    """Stacks per-frame arrays (N, *joint_shape) or checks a (T, N, *joint_shape) array; the
    first person of each frame, in the file's dtype."""
    expected = f"(T, N, {', '.join(map(str, joint_shape))})"
    if isinstance(value, (list, tuple)):
        frames = []
        for index, frame in enumerate(value):
            if not isinstance(frame, np.ndarray) or frame.shape[1:] != joint_shape \
                    or len(frame) == 0:
                shape = getattr(frame, 'shape', type(frame).__name__)
                raise DataError(f"{path}: {key} frame {index} has shape {shape}, expected "
                                f"(N, {', '.join(map(str, joint_shape))}) with N >= 1 people")
            frames.append(frame[:1])
        array = np.stack(frames) if frames else np.zeros((0, 1) + joint_shape)
    elif isinstance(value, np.ndarray):
        if value.ndim != 2 + len(joint_shape) or value.shape[2:] != joint_shape \
                or value.shape[1] == 0:
            raise DataError(f"{path}: {key} has shape {value.shape}, expected {expected} with a "
                            "person axis N >= 1")
        array = value[:, :1]
    else:
        raise DataError(f"{path}: {key} is a {type(value).__name__}, expected an array {expected}")
    if array.dtype.kind not in 'fiu':
        raise DataError(f"{path}: {key} has non-numeric dtype {array.dtype}")
    return array


def _clip_window(pose, num_frames, path):
    if 'start' not in pose and 'end' not in pose:
        return {}
    if 'start' not in pose or 'end' not in pose:
        raise DataError(f"{path}: pose file has only one of 'start' and 'end'")
    start, end = pose['start'], pose['end']
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, end)):
        raise DataError(f"{path}: 'start'/'end' must be integers, got {start!r}/{end!r}")
    if not 0 <= start < end <= num_frames:
        raise DataError(f"{path}: invalid clip window start={start} end={end} for a "
                        f"{num_frames}-frame file (need 0 <= start < end <= frames)")
    return {'start': int(start), 'end': int(end)}


def clip_span(pose):
    """Returns (first frame, number of frames) of the clip a read_pose() dict describes."""
    if 'start' in pose:
        return pose['start'], pose['end'] - pose['start']
    return 0, len(pose['scores'])
