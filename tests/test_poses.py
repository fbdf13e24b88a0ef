"""Tests for poses: part keypoints (Uni-Sign's numbers, vectorised) and frame sampling."""
import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_pose

from keypoints import PART_JOINTS
from poses import load_part_kp, sample_frame_indices

REPO = Path(__file__).resolve().parents[1]
PART_SIZES = {'body': 9, 'left': 21, 'right': 21, 'face_all': 18}


def load_bench_baseline():
    spec = importlib.util.spec_from_file_location('bench_load_part_kp',
                                                  REPO / 'bench' / 'load_part_kp.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.baseline_load_part_kp


def max_abs_diff(a, b):
    return max((a[part].double() - b[part].double()).abs().max().item() for part in a)


# ----------------------------------------------------------------------------- load_part_kp

@pytest.mark.parametrize('num_frames,seed', [(1, 0), (5, 1), (64, 2), (256, 3)])
def test_load_part_kp_matches_per_frame_baseline(num_frames, seed):
    baseline = load_bench_baseline()
    pose = make_pose(num_frames, seed)
    pose['scores'][0, 0, :5] = 1.3  # scores above 1 get clipped along with the coordinates
    frames_kp, frames_scores = list(pose['keypoints']), list(pose['scores'])
    expected = baseline(frames_kp, frames_scores)
    for result in (load_part_kp(frames_kp, frames_scores),
                   load_part_kp(pose['keypoints'], pose['scores'])):
        assert list(result) == list(PART_SIZES)
        for part, size in PART_SIZES.items():
            assert result[part].dtype == torch.float32
            assert result[part].shape == (num_frames, size, 3)
            assert result[part].is_contiguous()
        assert max_abs_diff(expected, result) <= 1e-6


def test_load_part_kp_float64_input_matches_baseline_within_float32():
    baseline = load_bench_baseline()
    pose = make_pose(40, seed=4)
    keypoints, scores = pose['keypoints'].astype(np.float64), pose['scores'].astype(np.float64)
    expected = baseline(list(keypoints), list(scores))
    assert max_abs_diff(expected, load_part_kp(keypoints, scores)) <= 1e-6


def test_load_part_kp_masks_low_scores_and_bounds_values():
    pose = make_pose(30, seed=5, low_fraction=0.3)
    parts = load_part_kp(pose['keypoints'], pose['scores'])
    for part, joints in PART_JOINTS.items():
        low = torch.from_numpy(pose['scores'][:, 0, joints] <= 0.3)
        assert (parts[part][low] == 0).all()
        assert parts[part].abs().max() <= 1


def test_all_low_scores_give_zeros():
    pose = make_pose(12)
    parts = load_part_kp(pose['keypoints'], pose['scores'] * 0.25)
    assert all((parts[part] == 0).all() for part in parts)


def test_fewer_than_four_confident_body_joints_give_zeros():
    pose = make_pose(1)
    pose['scores'][:] = 0.9
    pose['scores'][0, 0, PART_JOINTS['body']] = 0.1
    pose['scores'][0, 0, [0, 3, 4]] = 0.9  # three confident body joints in the whole clip
    parts = load_part_kp(pose['keypoints'], pose['scores'])
    assert all((parts[part] == 0).all() for part in parts)
    pose['scores'][0, 0, 5] = 0.9
    parts = load_part_kp(pose['keypoints'], pose['scores'])
    assert (parts['left'] != 0).any()


def test_degenerate_body_box_gives_zeros():
    pose = make_pose(6)
    pose['keypoints'][:] = 0.5
    parts = load_part_kp(pose['keypoints'], pose['scores'])
    assert all((parts[part] == 0).all() for part in parts)



# ----------------------------------------------------------------------------- sampling

def test_training_sampling_is_a_sorted_random_subset():
    picked = sample_frame_indices(100, 30, train=True, rng=random.Random(0), start=10)
    assert len(picked) == 30 and len(set(picked.tolist())) == 30
    assert (np.diff(picked) > 0).all() and picked.min() >= 10 and picked.max() < 110
    again = sample_frame_indices(100, 30, train=True, rng=random.Random(0), start=10)
    other = sample_frame_indices(100, 30, train=True, rng=random.Random(1), start=10)
    assert (picked == again).all() and not (picked == other).all()


def test_evaluation_sampling_is_deterministic_and_even():
    picked = sample_frame_indices(100, 30, train=False, start=5)
    assert len(picked) == 30 and picked[0] == 5 and picked[-1] == 104
    gaps = np.diff(picked)
    assert gaps.min() >= 3 and gaps.max() <= 4
    assert (picked == sample_frame_indices(100, 30, train=False, start=5)).all()


def test_short_clips_keep_every_frame():
    for train in (True, False):
        assert sample_frame_indices(7, 30, train, start=3).tolist() == list(range(3, 10))


