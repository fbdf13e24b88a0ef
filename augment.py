"""Pose augmentation of training clips: rotation, scale, shift, speed and joint dropout.

The transforms act on a clip's raw keypoints (T, 1, 133, 2) and scores (T, 1, 133), before
frame sampling and part normalisation (poses.clip_parts), on the training split only: the
dataset of every other split has none (datasets.build_dataset). Each clip draws its parameters
from a generator seeded by (seed, epoch, clip index), as the frame sampling does, so a sample
does not depend on loader workers and a resumed run sees the same samples.

Part normalisation maps the body into [-1, 1] by the clip's bounding square of confident body
joints, and hands and face relative to their anchor joint by the same side, so a uniform scale or
a constant shift of a whole clip would come out unchanged. The scale is therefore drawn per axis
(it changes the aspect of the signer), and the shift is a drift: the clip's offset grows from
zero at its first frame to the drawn one at its last (a camera that pans), its size a fraction of
the bounding side. Rotation and scale are about the centre of the clip's confident body joints;
speed resamples the clip to about T / f frames (nearest frames), f drawn in [1 - s, 1 + s]; joint
dropout sets the score of each (frame, joint) to 0 with its probability, so normalisation drops
that joint as it drops undetected ones. No flag: no transform, and samples exactly as before.
"""
import math

import numpy as np

from cli import add_flag, float_range, non_negative
from keypoints import PART_JOINTS, SCORE_THRESHOLD, clip_span

below_one = float_range(0, 1, high_open=True)
FLAGS = ('aug_rotate', 'aug_scale', 'aug_shift', 'aug_speed', 'aug_joint_dropout')


def add_augment_flags(p):
    """The augmentation flags (all off by default)."""
    g = p.add_argument_group("pose augmentation (training clips only)")
    add_flag(g, "--aug_rotate", type=float_range(0, 180), default=0.0, metavar="DEGREES",
             help="rotate each training clip by an angle drawn in [-DEGREES, DEGREES]")
    add_flag(g, "--aug_scale", type=below_one, default=0.0,
             help="scale x and y of each training clip by factors drawn apart in [1-X, 1+X]")
    add_flag(g, "--aug_shift", type=non_negative, default=0.0,
             help="drift each training clip by up to X times its body box side over its length")
    add_flag(g, "--aug_speed", type=below_one, default=0.0,
             help="play each training clip at a speed drawn in [1-X, 1+X] (frames resampled)")
    add_flag(g, "--aug_joint_dropout", type=below_one, default=0.0, metavar="P",
             help="drop each joint of each frame of a training clip with probability P")


def augment_refusals(args, explicit):
    """Messages for the augmentation flags that cannot act with these settings."""
    given = [d for d in FLAGS if d in explicit]
    if args.task == 'G2T':
        return [f"--{d}: --task G2T reads no poses to augment" for d in given]
    if args.eval:
        return [f"--{d} augments training clips; --eval trains none (dev and test clips are "
                "never augmented)" for d in given]
    return [f"--{d} 0 augments nothing: leave the flag out" for d in given
            if getattr(args, d) == 0]


def from_args(args):
    """The run's PoseAugment, or None when every augmentation flag is off."""
    values = {d: getattr(args, d, 0.0) for d in FLAGS}
    if not any(values.values()):
        return None
    return PoseAugment(*values.values())


# ----------------------------------------------------------------------------- transforms

def body_frame(keypoints, scores):
    """(centre (2,), side) of the clip's confident body joints (all body joints if fewer than
    2 are confident); side is the bounding square's, 1 when it is empty."""
    body = keypoints[:, PART_JOINTS['body']].reshape(-1, 2)
    confident = scores[:, PART_JOINTS['body']].reshape(-1) > SCORE_THRESHOLD
    points = body[confident] if confident.sum() >= 2 else body
    low, high = points.min(0), points.max(0)
    side = float((high - low).max())
    return (low + high) / 2, side if side > 0 else 1.0


def rotate_scale(keypoints, centre, degrees, scale_x, scale_y):
    """Keypoints (..., 2) rotated by `degrees` (counter-clockwise) and scaled per axis about
    `centre`."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    matrix = np.array([[cos, -sin], [sin, cos]]) @ np.diag([scale_x, scale_y])
    return ((keypoints - centre) @ matrix.T + centre).astype(keypoints.dtype)


def drift(keypoints, offset):
    """Keypoints (T, ..., 2) moved by offset * t / (T - 1) at frame t."""
    frames = len(keypoints)
    ramp = np.linspace(0, 1, frames) if frames > 1 else np.zeros(1)
    steps = ramp[:, None] * np.asarray(offset, dtype=np.float64)[None, :]  # (T, 2)
    shape = (frames,) + (1,) * (keypoints.ndim - 2) + (2,)
    return (keypoints + steps.reshape(shape)).astype(keypoints.dtype)


def speed_indices(frames, factor):
    """Frame indices playing a clip of `frames` frames `factor` times as fast (nearest frames)."""
    length = max(1, int(round(frames / factor)))
    return np.round(np.linspace(0, frames - 1, length)).astype(np.int64)


def drop_joints(scores, mask):
    """Scores with those under `mask` set to 0."""
    scores = scores.copy()
    scores[mask] = 0
    return scores


class PoseAugment:
    """Draws and applies the transforms to a read_pose() clip, seeded by (seed, epoch, index)."""

    def __init__(self, rotate=0.0, scale=0.0, shift=0.0, speed=0.0, joint_dropout=0.0):
        self.rotate, self.scale, self.shift = rotate, scale, shift
        self.speed, self.joint_dropout = speed, joint_dropout

    def draw(self, rng):
        """The parameters of one clip; every one is drawn whatever is on, so turning one
        transform on leaves the others' draws unchanged."""
        uniform = rng.uniform(-1, 1, 6)
        return {'degrees': self.rotate * uniform[0], 'scale_x': 1 + self.scale * uniform[1],
                'scale_y': 1 + self.scale * uniform[2],
                'shift': self.shift * uniform[3:5], 'speed': 1 + self.speed * uniform[5]}

    def __call__(self, pose, key):
        """The augmented clip ('keypoints', 'scores'; its window already cut) of `pose`."""
        rng = np.random.default_rng([int(k) for k in key])
        params = self.draw(rng)
        start, frames = clip_span(pose)
        indices = start + speed_indices(frames, params['speed'] if self.speed else 1.0)
        keypoints = np.asarray(pose['keypoints'])[indices]
        scores = np.asarray(pose['scores'])[indices]
        centre, side = body_frame(keypoints[:, 0], scores[:, 0])
        if self.rotate or self.scale:
            keypoints = rotate_scale(keypoints, centre, params['degrees'], params['scale_x'],
                                     params['scale_y'])
        if self.shift:
            keypoints = drift(keypoints, params['shift'] * side)
        dropped = rng.random(scores.shape) < self.joint_dropout
        if self.joint_dropout:
            scores = drop_joints(scores, dropped)
        return {'keypoints': np.ascontiguousarray(keypoints),
                'scores': np.ascontiguousarray(scores)}
