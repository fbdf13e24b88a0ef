"""Tests for sample_checks.py: clips that would reach the model as zeros, parallel scanning,
problem kinds and the fail-fast message."""
import numpy as np
import pytest

import sample_checks
from datasets import DataError, S2T_Dataset, load_part_kp, validate_samples
from conftest import label, make_pose, make_split, write_labels, write_pickle


def test_confidence_problem_agrees_with_load_part_kp_zeros():
    pose = make_pose(6, seed=1)
    assert sample_checks.confidence_problem(pose) is None
    low = dict(pose, scores=np.minimum(pose['scores'], 0.3))
    assert 'every keypoint score is at or below 0.3' in sample_checks.confidence_problem(low)
    few = dict(pose, scores=pose['scores'].copy())
    few['scores'][:, :, :11] = 0.1  # every body joint (0, 3..10) ...
    few['scores'][0, 0, [0, 3, 4]] = 0.9  # ... but three detections
    assert 'only 3 body joint detections' in sample_checks.confidence_problem(few)
    one_point = dict(pose, keypoints=np.full_like(pose['keypoints'], 0.5))
    assert 'same point' in sample_checks.confidence_problem(one_point)
    for bad in (low, few, one_point):  # each would indeed be all zeros
        parts = load_part_kp(bad['keypoints'], bad['scores'])
        assert all(float(part.abs().max()) == 0 for part in parts.values())


def test_confidence_is_judged_inside_the_clip_window():
    pose = make_pose(10, seed=2)
    pose['scores'][4:] = 0.0
    assert sample_checks.confidence_problem(dict(pose, start=0, end=4)) is None
    assert sample_checks.confidence_problem(dict(pose, start=4, end=10)) is not None


def test_parallel_scan_equals_serial_scan(tmp_path, monkeypatch):
    labels, pose_dir = make_split(tmp_path, [3, 4, 5, 6, 7])
    (tmp_path / 'poses' / 'clip2.pkl').write_bytes(b'broken')
    dataset = S2T_Dataset(labels, pose_dir, 'train')
    serial = sample_checks.scan_samples(dataset)
    monkeypatch.setattr(sample_checks, 'MIN_PARALLEL_CLIPS', 1)
    assert sample_checks.scan_samples(dataset, workers=2) == serial
    durations, problems = serial
    assert durations == {0: 3, 1: 4, 3: 6, 4: 7} and list(problems) == [2]
    shards = [sample_checks.scan_samples(dataset, range(rank, 5, 2)) for rank in range(2)]
    assert sample_checks.merge_findings(shards) == serial


@pytest.mark.parametrize('message, kind', [
    ('/p/a.pkl: pose file not found', 'missing file'),
    ('/p/a.pkl: unreadable pickle (EOFError: ...)', 'unreadable file'),
    ("/p/a.pkl: refused to unpickle 'os.system' (...)", 'refused pickle'),
    ('/p/a.pkl: keypoints has shape (4, 1, 17, 2), expected (T, N, 133, 2)',
     'wrong shape or format'),
    ('/p/a.pkl: scores has shape (4, 133), expected (T, N, 133)', 'wrong shape or format'),
    ('/p/a.pkl: keypoints contain NaN or Inf (first at frame 2)', 'non-finite values'),
    ('/p/a.pkl: zero-length clip', 'zero-length clip'),
    ('/p/a.pkl: invalid clip window start=3 end=3 for a 4-frame file', 'bad clip window'),
    ("/l/labels.dev: entry 'x' has no text", 'bad label entry'),
    ('/p/a.pkl: every keypoint score is at or below 0.3 (the clip would be all zeros)',
     'low confidence'),
])
def test_problem_kinds(message, kind):
    assert sample_checks.problem_kind(message) == kind


def test_validate_samples_reports_label_and_pose_problems_together(tmp_path):
    labels, pose_dir = make_split(tmp_path, [4, 5, 6])
    write_pickle(tmp_path / 'poses' / 'clip1.pkl',
                 dict(make_pose(5), scores=np.zeros((5, 1, 133))))
    entries = [label(f'clip{i}', f'sentence {i}') for i in range(3)]
    entries.append({'name': 'textless', 'video_path': 'textless.mp4'})
    labels = write_labels(tmp_path / 'labels', entries)
    with pytest.raises(DataError, match="entry 'textless' has no text"):
        S2T_Dataset(labels, pose_dir, 'train')
    dataset = S2T_Dataset(labels, pose_dir, 'train', defer_label_errors=True)
    assert len(dataset) == 3 and len(dataset.label_problems) == 1
    with pytest.raises(DataError) as error:
        validate_samples(dataset)
    message = str(error.value)
    assert '2 of 4 samples are unusable (bad label entry 1, low confidence 1)' in message
    assert 'textless' in message and 'clip1.pkl: every keypoint score' in message
    ok, problems = validate_samples(dataset, skip_bad=True)
    assert ok == [0, 2] and len(problems) == 2
    assert [entry['name'] for entry in dataset.entries] == ['clip0', 'clip2']
    assert dataset.lengths() == [4, 6]
