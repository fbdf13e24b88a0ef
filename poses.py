"""The pose layer: one clip from a pose file to the part tensors, and one batch of clips.

Everything that turns keypoints into model input lives here and is shared by training,
evaluation, translate.py, script/check_data.py and bench/: `read_pose` (pickles and
pose-format `.pose` files), `sample_frame_indices` (frame subsampling), `load_part_kp` (the four
body parts, Uni-Sign's normalisation, vectorised) and `collate_clips` (padding with each clip's
last frame, the attention mask and lengths).
"""
import os
import random

import numpy as np
import torch

import mediapipe_pose
from keypoints import (DEFAULT_MAX_FRAMES, PART_JOINTS, PARTS, SCORE_THRESHOLD, check_coordinates,
                       clip_span, read_pose_pickle)

# load_part_kp gathers every part joint into one array, parts side by side in PARTS order,
# followed by the anchor joint of each relative joint: hands are taken relative to their wrist
# (first joint), the face relative to joint 53 (its last).
_PART_SIZES = [len(PART_JOINTS[part]) for part in PARTS]
_PART_BOUNDS = np.cumsum([0] + _PART_SIZES)
_NUM_PART_JOINTS = int(_PART_BOUNDS[-1])
_NUM_BODY_JOINTS = _PART_SIZES[0]
_ANCHOR_JOINTS = np.repeat([91, 112, 53], _PART_SIZES[1:])
_GATHERED_JOINTS = np.concatenate([*PART_JOINTS.values(), _ANCHOR_JOINTS])



def read_pose(path, fps=None, max_frames=DEFAULT_MAX_FRAMES):
    """Reads and validates a pose pickle, or a pose-format `.pose` file (by extension).

    Returns 'keypoints' (T, 1, 133, 2) and 'scores' (T, 1, 133) as float32 (the first person
    of each frame, as Uni-Sign uses), plus 'start'/'end' when the file restricts the clip.
    `.pose` files (MediaPipe Holistic or COCO-WholeBody) are mapped by mediapipe_pose.py and
    resampled to `fps` frames per second when it is given; pickles carry no frame rate and are
    returned as stored.
    """
    if os.fspath(path).endswith('.pose'):
        pose = mediapipe_pose.read_pose_file(path, fps=fps, max_frames=max_frames)
        check_coordinates(path, pose['keypoints'])
        return pose
    return read_pose_pickle(path, max_frames)


def sample_frame_indices(duration, max_length, train, rng=None, start=0):
    """Absolute frame indices of a clip of `duration` frames beginning at `start`.

    Clips longer than max_length keep a sorted random subset when training (as Uni-Sign) and
    an evenly spaced, deterministic subset otherwise. rng defaults to the `random` module.
    """
    if duration <= max_length:
        picked = np.arange(duration)
    elif train:
        picked = np.array(sorted((rng or random).sample(range(duration), k=max_length)))
    else:
        # the spacing exceeds one frame here, so rounding never produces duplicates
        picked = np.unique(np.round(np.linspace(0, duration - 1, max_length)))
    return picked.astype(np.int64) + start



# ----------------------------------------------------------------------------- part keypoints

def _first_person(frames):
    """(T, 1+, J, ...) array, or a list of per-frame (1+, J, ...) arrays -> (T, J, ...)."""
    if isinstance(frames, (list, tuple)):
        if all(len(frame) == 1 for frame in frames):  # the usual case, and the fastest
            return np.concatenate(frames)
        return np.stack([frame[0] for frame in frames])
    return np.asarray(frames)[:, 0]


def _crop_scale_body(body, threshold):
    """Uni-Sign's crop_scale on channel planes (3, T, V), in place.

    Maps x and y by the square box around the clip's confident joints into [-1, 1] and
    returns the box side, or 0 when fewer than 4 joints are confident or the box is empty.
    """
    confident = body[2] > threshold
    xs, ys = body[0][confident], body[1][confident]
    if len(xs) < 4:
        return 0
    x_low, x_high, y_low, y_high = xs.min(), xs.max(), ys.min(), ys.max()
    scale = max(x_high - x_low, y_high - y_low)
    if scale == 0:
        return 0
    for plane, low, high in ((body[0], x_low, x_high), (body[1], y_low, y_high)):
        plane -= (low + high - scale) / 2
        plane /= scale
        plane -= 0.5
        plane *= 2
    return scale


def _part_planes(keypoints, scores):
    """Gathers the part joints into channel planes (x, y, score) of shape (3, T, 69)."""
    dtype = np.result_type(keypoints, scores)  # the precision Uni-Sign computes in
    if dtype.kind != 'f':
        dtype = np.dtype(np.float64)
    gathered = np.take(keypoints, _GATHERED_JOINTS, axis=1)
    relative = gathered[:, _NUM_BODY_JOINTS:_NUM_PART_JOINTS] - gathered[:, _NUM_PART_JOINTS:]
    planes = np.empty((3, len(keypoints), _NUM_PART_JOINTS), dtype)
    planes[:2, :, :_NUM_BODY_JOINTS] = gathered[:, :_NUM_BODY_JOINTS].transpose(2, 0, 1)
    planes[:2, :, _NUM_BODY_JOINTS:] = relative.transpose(2, 0, 1)
    planes[2] = np.take(scores, _GATHERED_JOINTS[:_NUM_PART_JOINTS], axis=1)
    return planes


def load_part_kp(skeletons, confs, force_ok=False):
    """Splits a clip into part tensors {part: float32 (T, V, 3)} with channels x, y, score.

    skeletons/confs: lists of per-frame arrays (1, 133, 2)/(1, 133) as Uni-Sign passes them,
    or stacked (T, 1, 133, 2)/(T, 1, 133). The body is normalised into [-1, 1] by the clip's
    bounding square of confident body joints; hands and face are taken relative to their
    anchor joint and divided by the same side; joints scoring <= 0.3 are zeroed, and
    everything is zero when the square is undefined. The numbers match Uni-Sign's per-frame
    version operation for operation; force_ok is accepted and, as there, has no effect.
    """
    keypoints, scores = _first_person(skeletons), _first_person(confs)
    planes = _part_planes(keypoints, scores)
    scale = _crop_scale_body(planes[:, :, :_NUM_BODY_JOINTS], SCORE_THRESHOLD)
    if scale == 0:
        planes[:] = 0
    else:
        planes[:2, :, _NUM_BODY_JOINTS:] /= scale
        # As in Uni-Sign, the score channel is clipped too, and masking uses the clipped score.
        np.clip(planes, -1, 1, out=planes)
        unreliable = planes[2] <= SCORE_THRESHOLD
        for plane in planes:
            plane[unreliable] = 0
    planes = planes.astype(np.float32, copy=False)
    return {part: torch.from_numpy(np.ascontiguousarray(planes[:, :, low:high].transpose(1, 2, 0)))
            for part, low, high in zip(PARTS, _PART_BOUNDS[:-1], _PART_BOUNDS[1:])}


# ----------------------------------------------------------------------------- batches

def pad_repeat_last(clips, lengths):
    """Stacks clips (T_i, ...) into (B, max T, ...), padding each with copies of its last frame."""
    flat = torch.cat(clips, dim=0)
    first_rows = torch.cumsum(lengths, 0) - lengths
    steps = torch.arange(int(lengths.max()))
    rows = first_rows[:, None] + torch.minimum(steps[None, :], lengths[:, None] - 1)
    return flat[rows]



def clip_parts(pose, max_length, train=False, rng=None):
    """The part tensors of a read_pose() clip, its frames subsampled to at most max_length."""
    start, duration = clip_span(pose)
    frames = sample_frame_indices(duration, max_length, train, rng, start)
    return load_part_kp(pose['keypoints'][frames], pose['scores'][frames])


def collate_clips(clips, names=None):
    """The encoder input of a batch: each part (B, max T, V, 3) padded with copies of its clip's
    last frame, 'attention_mask' (B, max T), 'src_length_batch' (B,) and 'name_batch'."""
    lengths = torch.tensor([len(clip['body']) for clip in clips], dtype=torch.long)
    batch = {part: pad_repeat_last([clip[part] for clip in clips], lengths) for part in PARTS}
    steps = torch.arange(batch['body'].shape[1])
    batch['attention_mask'] = (steps[None, :] < lengths[:, None]).long()
    batch['src_length_batch'] = lengths
    batch['name_batch'] = list(names) if names is not None else [None] * len(clips)
    return batch
