"""Checks every clip of a dataset before any model is built.

Each pose file is read once (in worker processes when asked) with the same validation as
training, and the clip is checked for what reading alone accepts but training could not use:
with fewer than 4 confident body joints `load_part_kp` has no body box and the clip would reach
the model as zeros. Problems are messages naming the file; `problem_kind` sorts them into
kinds for counting. `validate_samples` is the trainer's pre-scan verdict; script/check_data.py
reports the same findings.
"""
import multiprocessing
import os
from collections import Counter

import numpy as np

from keypoints import PART_JOINTS, SCORE_THRESHOLD, DataError, check_coordinates, clip_span
from pose_store import is_plain_path
from progress import Meter

# Below this many clips a worker pool costs more than it saves.
MIN_PARALLEL_CLIPS = 2048
CHUNK_CLIPS = 512  # clips a scanning process checks per task: results travel as arrays
PROGRESS_SECONDS = 30  # off a terminal, a progress line this often
_BODY_JOINTS = PART_JOINTS['body']
# (kind, phrase identifying it in a DataError message); the first matching phrase wins.
PROBLEM_PHRASES = (
    ("missing file", "not found"), ("missing file", "has no clip"),
    ("refused pickle", "refused to unpickle"),
    ("unreadable file", "unreadable"),
    ("bad label entry", ": entry "),
    ("non-finite values", "NaN or Inf"), ("extreme values", "coordinate bound"),
    ("extreme values", "score bound"),
    ("too many frames", "--max_frames_per_clip"),
    ("zero-length clip", "zero-length clip"),
    ("bad clip window", "'start'"), ("bad clip window", "clip window"),
    ("low confidence", "would be all zeros"),
    ("wrong shape or format", "shape"), ("wrong shape or format", "lacks"),
    ("wrong shape or format", "expected a"), ("wrong shape or format", "frames of keypoints"),
    ("wrong shape or format", "dtype"),
)


def problem_kind(message):
    for kind, phrase in PROBLEM_PHRASES:
        if phrase in message:
            return kind
    return "other"


def confidence_problem(pose):
    """Why the clip of a read_pose() dict would be all zeros for the model, or None."""
    first, frames = clip_span(pose)
    body_scores = pose['scores'][first:first + frames, 0, _BODY_JOINTS]
    confident = body_scores > SCORE_THRESHOLD
    count = int(np.count_nonzero(confident))
    if count >= 4:
        body = pose['keypoints'][first:first + frames, 0, _BODY_JOINTS]
        for axis in (0, 1):  # x then y; one coordinate at a time is much faster in numpy
            values = body[:, :, axis][confident]
            if values.max() > values.min():
                return None
        return "every confident body joint is at the same point (the clip would be all zeros)"
    if not (pose['scores'][first:first + frames] > SCORE_THRESHOLD).any():
        return (f"every keypoint score is at or below {SCORE_THRESHOLD} "
                "(the clip would be all zeros)")
    return (f"only {count} body joint detections score above {SCORE_THRESHOLD} in the whole "
            "clip; at least 4 are needed to place the body (the clip would be all zeros)")


def clip_source(dataset, index):
    """The file a sample's clip comes from: its pose file, or its packed store and clip name."""
    if dataset.store is None:
        return dataset.pose_path(index)
    return f"{dataset.store.directory} (clip {dataset.clip_name(index)!r})"


def check_clip(dataset, index):
    """(frames, None) for a usable clip of `dataset`, (None, problem message) otherwise."""
    try:
        pose = dataset.read_clip(index)
        if dataset.store is not None:  # a store packed before the bound may hold such values
            check_coordinates(clip_source(dataset, index), pose['keypoints'])
    except DataError as error:
        return None, str(error)
    problem = confidence_problem(pose)
    if problem is not None:
        return None, f"{clip_source(dataset, index)}: {problem}"
    return clip_span(pose)[1], None


_worker_dataset = None


def _set_worker_dataset(dataset):
    global _worker_dataset
    _worker_dataset = dataset


def _check_chunk(indices, dataset=None):
    """(frames int32, -1 where bad; {index: problem}) of a chunk of sample indices."""
    dataset = _worker_dataset if dataset is None else dataset
    frames, problems = np.full(len(indices), -1, dtype=np.int32), {}
    for position, index in enumerate(indices.tolist()):
        count, problem = check_clip(dataset, index)
        if problem is None:
            frames[position] = count
        else:
            problems[index] = problem
    return frames, problems


def scan_clips(dataset, indices, workers=0, progress=None):
    """Checks the clips of the given sample indices in `workers` processes (0 or 1: in this
    one), showing progress (a progress.Meter, or the title of one; None: quiet). Returns
    (frames: int32 array aligned with indices, -1 for a bad clip; {index: problem})."""
    indices = np.asarray(indices, dtype=np.int64)
    workers = min(workers, os.cpu_count() or 1)
    parallel = workers > 1 and len(indices) >= MIN_PARALLEL_CLIPS
    size = max(1, min(CHUNK_CLIPS, -(-len(indices) // (workers * 4)))) if parallel \
        else CHUNK_CLIPS
    chunks = [indices[k:k + size] for k in range(0, len(indices), size)]
    frames, problems = np.full(len(indices), -1, dtype=np.int32), {}
    bar = progress if isinstance(progress, Meter) else Meter(
        len(indices), progress or '', seconds=PROGRESS_SECONDS, enabled=progress is not None)
    with (multiprocessing.Pool(workers, _set_worker_dataset, (dataset,)) if parallel
          else _NoPool()) as pool:
        results = pool.imap(_check_chunk, chunks) if parallel \
            else (_check_chunk(chunk, dataset) for chunk in chunks)
        position = 0
        for chunk_frames, chunk_problems in results:
            frames[position:position + len(chunk_frames)] = chunk_frames
            problems.update(chunk_problems)
            position += len(chunk_frames)
            bar.update(len(chunk_frames))
    bar.close()
    return frames, problems


class _NoPool:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def scan_samples(dataset, indices=None, workers=0, progress=None):
    """Checks the clips of the given sample indices (all by default) in `workers` processes
    (0 or 1: in this one); returns ({index: frames} of usable clips, {index: problem})."""
    indices = np.arange(len(dataset)) if indices is None else np.asarray(list(indices), np.int64)
    frames, problems = scan_clips(dataset, indices, workers, progress)
    durations = {index: count for index, count in zip(indices.tolist(), frames.tolist())
                 if index not in problems}
    return durations, problems


def merge_findings(parts):
    """One (durations, problems) pair from the scan_samples results of disjoint index sets."""
    durations, problems = {}, {}
    for part_durations, part_problems in parts:
        durations.update(part_durations)
        problems.update(part_problems)
    return durations, problems


def describe_problems(problems, total, shown=10):
    """A message counting the problems by kind and quoting the first `shown`."""
    counts = Counter(problem_kind(problem) for problem in problems)
    kinds = ", ".join(f"{kind} {count}" for kind, count in counts.most_common())
    listed = "\n  ".join(problems[:shown])
    more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
    return (f"{len(problems)} of {total} samples are unusable ({kinds}):\n  {listed}{more}\n"
            "script/check_data.py lists them all; --skip_bad_samples trains without them")


def clip_identities(dataset):
    """(name, absolute pose file) of every sample: what makes two samples the same clip."""
    pose_dir = os.path.abspath(dataset.pose_dir)
    return list(zip(dataset.entries.column('name'), (
        pose_dir + '/' + file if is_plain_path(file) else os.path.normpath(
            os.path.join(pose_dir, file)) for file in dataset.entries.column('pose_file'))))


def split_overlaps(clips_by_split):
    """{'train/test': n, ...}: clips (same name or same pose file, per clip_identities) in two
    splits. A clip of the training split scored as dev or test inflates the scores; reported,
    not refused (some corpora share a clip between dev and test on purpose)."""
    names = {phase: {name for name, _ in clips} for phase, clips in clips_by_split.items()}
    files = {phase: {file for _, file in clips} for phase, clips in clips_by_split.items()}
    phases = list(clips_by_split)
    overlaps = {}
    for i, first in enumerate(phases):
        for second in phases[i + 1:]:
            shared = sum(name in names[first] or file in files[first]
                         for name, file in clips_by_split[second])
            if shared:
                overlaps[f"{first}/{second}"] = shared
    return overlaps


def length_stats(durations):
    """min, mean, median, 95th percentile and max of clip lengths in frames."""
    if not durations:
        return {}
    frames = np.fromiter(durations, dtype=np.float64)
    return {"min": int(frames.min()), "mean": round(float(frames.mean()), 1),
            "median": float(np.median(frames)), "p95": float(np.percentile(frames, 95)),
            "max": int(frames.max())}


def validate_samples(dataset, skip_bad=False, workers=0, findings=None):
    """Checks every sample of `dataset` once; returns (ok indices, problem messages).

    Pose files are read and checked by sample_checks.scan_samples (in `workers` processes), or
    `findings`, the (durations, problems) of a scan done already, is used (the trainers gather
    one over ranks; durations a {index: frames} dict or an array of every sample's). Problems are the deferred label-entry ones, then the pose files' in dataset
    order. With problems and skip_bad False this raises a DataError quoting the first few and
    counting each kind; with skip_bad True the bad entries are dropped (see S2T_Dataset.keep).
    """
    durations, pose_problems = findings or scan_samples(dataset, workers=workers)
    label_problems = getattr(dataset, 'label_problems', [])
    problems = label_problems + [pose_problems[i] for i in sorted(pose_problems)]
    bad = np.zeros(len(dataset), dtype=bool)
    bad[np.fromiter(pose_problems, dtype=np.int64, count=len(pose_problems))] = True
    ok_indices = np.flatnonzero(~bad)
    if problems and not skip_bad:
        raise DataError(describe_problems(
            problems, len(dataset) + len(label_problems)))
    if isinstance(durations, dict):
        dataset.set_frames(list(durations), list(durations.values()))
    else:
        dataset.set_frames(ok_indices, np.asarray(durations)[ok_indices])
    if pose_problems:
        dataset.keep(ok_indices)
    dataset.label_problems = []
    return ok_indices.tolist(), problems
