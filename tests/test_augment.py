"""Pose augmentation: each transform on constructed arrays, its effect after part normalisation,
the per-(seed, epoch, clip) draws, the training split only, the refusals, and a resumed run of
fine_tuning.main that sees the samples an uninterrupted one saw."""
import random

import numpy as np
import pytest
import torch

import augment
import config
import flags
from conftest import default_args, make_pose, make_split
from datasets import build_dataset
from poses import clip_parts, read_pose
from test_fine_tuning import read_step_records, train_in_process

ALL = dict(aug_rotate=20.0, aug_scale=0.2, aug_shift=0.2, aug_speed=0.3, aug_joint_dropout=0.2)


def test_rotation_and_per_axis_scale_about_a_centre():
    points = np.array([[2.0, 1.0], [1.0, 3.0]], np.float32)
    turned = augment.rotate_scale(points, np.array([1.0, 1.0]), 90, 1.0, 1.0)
    np.testing.assert_allclose(turned, [[1.0, 2.0], [-1.0, 1.0]], atol=1e-6)
    stretched = augment.rotate_scale(points, np.array([1.0, 1.0]), 0, 2.0, 0.5)
    np.testing.assert_allclose(stretched, [[3.0, 1.0], [1.0, 2.0]], atol=1e-6)
    assert turned.dtype == np.float32


def test_drift_grows_from_nothing_to_the_offset():
    keypoints = np.zeros((5, 1, 133, 2), np.float32)
    moved = augment.drift(keypoints, [4.0, -2.0])
    np.testing.assert_allclose(moved[:, 0, 7], [[0, 0], [1, -0.5], [2, -1], [3, -1.5], [4, -2]])
    assert (moved[:, 0] == moved[:, 0, :1]).all()  # every joint of a frame moves alike
    np.testing.assert_array_equal(augment.drift(keypoints[:1], [4.0, -2.0]), keypoints[:1])


def test_speed_resamples_to_nearest_frames():
    assert augment.speed_indices(10, 1.0).tolist() == list(range(10))
    faster = augment.speed_indices(10, 2.0)
    assert len(faster) == 5 and faster[0] == 0 and faster[-1] == 9
    slower = augment.speed_indices(10, 0.5)
    assert len(slower) == 20 and sorted(slower.tolist()) == slower.tolist()
    assert set(slower.tolist()) == set(range(10))
    assert augment.speed_indices(1, 1.3).tolist() == [0]


def test_joint_dropout_zeroes_scores_where_drawn():
    scores = np.full((4, 1, 133), 0.9, np.float32)
    mask = np.zeros_like(scores, bool)
    mask[1, 0, 5] = mask[3, 0, 100] = True
    dropped = augment.drop_joints(scores, mask)
    assert dropped[mask].tolist() == [0, 0] and (dropped[~mask] == 0.9).all()
    assert (scores == 0.9).all()  # the input is left alone


def test_each_transform_alone_stays_in_its_range():
    pose = make_pose(30, seed=1)
    for epoch in range(5):
        key = (3, epoch, 7)
        rotated = augment.PoseAugment(rotate=10)(pose, key)["keypoints"]
        centre, _ = augment.body_frame(pose["keypoints"][:, 0], pose["scores"][:, 0])
        before, after = pose["keypoints"] - centre, rotated - centre
        np.testing.assert_allclose(np.linalg.norm(after, axis=-1),
                                   np.linalg.norm(before, axis=-1), rtol=1e-4, atol=1e-5)
        angle = np.degrees(np.arctan2(after[..., 1], after[..., 0]) -
                           np.arctan2(before[..., 1], before[..., 0]))
        angle = (angle + 180) % 360 - 180
        assert np.ptp(angle) < 1e-2 and abs(angle.mean()) <= 10
        frames = len(augment.PoseAugment(speed=0.3)(pose, key)["keypoints"])
        assert round(30 / 1.3) <= frames <= round(30 / 0.7)
        scores = augment.PoseAugment(joint_dropout=0.5)(pose, key)["scores"]
        assert 0.3 < (scores == 0).mean() < 0.7


def test_draws_depend_on_seed_epoch_and_clip_only():
    pose = make_pose(40, seed=2)
    transform = augment.PoseAugment(**{k[4:]: v for k, v in ALL.items()})
    first = transform(pose, (0, 1, 5))
    again = augment.PoseAugment(**{k[4:]: v for k, v in ALL.items()})(pose, (0, 1, 5))
    for name in ("keypoints", "scores"):
        np.testing.assert_array_equal(first[name], again[name])
    for key in ((1, 1, 5), (0, 2, 5), (0, 1, 6)):
        other = transform(pose, key)
        assert other["keypoints"].shape != first["keypoints"].shape or not np.array_equal(
            other["keypoints"], first["keypoints"]), key


def parts_equal(a, b):
    return all(torch.equal(a[part], b[part]) for part in a)


def test_every_transform_changes_the_normalised_parts_that_uniform_ones_would_not():
    pose = make_pose(24, seed=3)
    plain = clip_parts(pose, 64)
    # Why the scale is per axis and the shift a drift: normalisation undoes uniform ones.
    uniform = {"keypoints": pose["keypoints"] * 1.7 + 0.4, "scores": pose["scores"]}
    for part, values in clip_parts(uniform, 64).items():
        np.testing.assert_allclose(values, plain[part], atol=1e-5)
    for name in augment.FLAGS:
        transform = augment.PoseAugment(**{name[4:]: ALL[name]})
        assert not parts_equal(clip_parts(transform(pose, (0, 0, 0)), 64), plain), name


def split_paths(tmp_path):
    labels, poses = make_split(tmp_path, [20, 33, 12, 40])
    return {"labels": {phase: labels for phase in ("train", "dev", "test")},
            "pose_dirs": {phase: poses for phase in ("train", "dev", "test")}}


def test_training_split_only_and_no_flag_gives_todays_samples(tmp_path):
    paths, spec = split_paths(tmp_path), config.get_dataset("CSL_Daily")
    plain = build_dataset(default_args(), spec, paths, "train")
    assert plain.augment is None
    for index in range(4):  # no flag: the samples of the pose layer alone, as before
        pose = read_pose(plain.pose_path(index))
        rng = random.Random(f"{plain.seed}-{plain.epoch}-{index}")
        assert parts_equal(plain[index][1], clip_parts(pose, plain.max_length, True, rng))
    args = default_args(**ALL)
    augmented = build_dataset(args, spec, paths, "train")
    assert isinstance(augmented.augment, augment.PoseAugment)
    assert not any(parts_equal(augmented[i][1], plain[i][1]) for i in range(4))
    for phase in ("dev", "test"):
        evaluated, reference = (build_dataset(a, spec, paths, phase)
                                for a in (args, default_args()))
        assert evaluated.augment is None
        assert all(parts_equal(evaluated[i][1], reference[i][1]) for i in range(4))
    augmented.set_epoch(1)
    epoch1 = [augmented[i][1] for i in range(4)]
    augmented.set_epoch(0)
    assert not parts_equal(epoch1[0], augmented[0][1])


@pytest.mark.parametrize("argv,message", [
    (["--eval", "--aug_rotate", "10"], "--aug_rotate augments training clips; --eval trains"),
    (["--task", "G2T", "--aug_speed", "0.2"], "--aug_speed: --task G2T reads no poses"),
    (["--aug_joint_dropout", "0"], "--aug_joint_dropout 0 augments nothing"),
    (["--aug_scale", "1"], "expected a finite number >= 0 and < 1"),
    (["--aug_rotate", "-5"], "expected a finite number >= 0 and <= 180"),
])
def test_augmentation_flags_that_cannot_act_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        flags.parse_args("fine_tuning.py", argv)
    assert message in capsys.readouterr().err


def test_a_run_stopped_mid_epoch_resumes_on_the_same_augmented_samples(
        demo_root, tmp_path, in_process_trainer, monkeypatch):
    import preemption
    common = ["--epochs", "2", "--aug_rotate", "15", "--aug_scale", "0.2", "--aug_shift", "0.1",
              "--aug_speed", "0.3", "--aug_joint_dropout", "0.1", "--skip_test_eval"]
    straight = train_in_process(demo_root, tmp_path / "straight", *common)
    asked = []

    def agreed(self, device="cpu"):  # a preemption signal noted at the 6th check: epoch 1
        asked.append(device)
        return len(asked) == 6

    monkeypatch.setattr(preemption.StopRequest, "agreed", agreed)
    with pytest.raises(preemption.Preempted):
        train_in_process(demo_root, tmp_path / "resumed", *common)
    monkeypatch.undo()
    resumed = train_in_process(demo_root, tmp_path / "resumed", *common)
    assert sorted(resumed) == sorted(straight) and len(straight) == 8
    for key, record in straight.items():
        assert resumed[key]["loss"] == pytest.approx(record["loss"], rel=1e-6), key
    plain = train_in_process(demo_root, tmp_path / "plain", "--epochs", "1")
    assert plain[(0, 1)]["loss"] != pytest.approx(straight[(0, 1)]["loss"], rel=1e-6)
