"""script/make_fingerspelling_demo.py on a synthetic lexicon of .pose letter clips."""
import csv
import importlib.util
import json
import os

import numpy as np
import pytest
import sacrebleu

from datasets import load_labels, read_pose
from mediapipe_pose import HAND_POINTS, holistic_header, write_pose

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    'make_fingerspelling_demo', os.path.join(ROOT, 'script', 'make_fingerspelling_demo.py'))
fingerspelling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fingerspelling)


def letter_clip(index, frames):
    """A Holistic recording (full 478-point face) whose right hand sits at x = 100 * (index + 1);
    the left hand is never detected, as in one-handed fingerspelling."""
    from pose_format import Pose
    from pose_format.numpy import NumPyPoseBody
    header = holistic_header(500, 500, 478)
    points = header.total_points()
    rng = np.random.default_rng(index)
    data = rng.uniform(100, 400, (frames, 1, points, 3)).astype(np.float32)
    confidence = np.ones((frames, 1, points), dtype=np.float32)
    right = header.get_point_index('RIGHT_HAND_LANDMARKS', 'WRIST')
    left = header.get_point_index('LEFT_HAND_LANDMARKS', 'WRIST')
    data[:, 0, right:right + len(HAND_POINTS), 0] = 100 * (index + 1)
    confidence[:, 0, left:left + len(HAND_POINTS)] = 0
    data[:, 0, left:left + len(HAND_POINTS)] = 0
    return Pose(header, NumPyPoseBody(25.0, data, confidence))


@pytest.fixture
def lexicon(tmp_path):
    folder = tmp_path / 'lexicon'
    (folder / 'xyz').mkdir(parents=True)
    rows = []
    for index, letter in enumerate('abcei'):
        path = f'xyz/{letter}.pose'
        write_pose(letter_clip(index, 10 + index), folder / path)
        rows.append({'path': path, 'spoken_language': 'en', 'signed_language': 'xyz',
                     'start': 0, 'end': 1000, 'words': letter.upper(),
                     'glosses': letter.upper(), 'priority': 0})
    with open(folder / 'index.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(folder)


def test_spelling_chains_letter_clips_with_transitions(lexicon):
    letters, size = fingerspelling.load_letters(lexicon, 'xyz', fps=25.0)
    assert sorted(letters) == list('abcei') and size == (500, 500)
    assert [len(letters[c][0]) for c in 'abc'] == [10, 11, 12]
    coords, confidence = fingerspelling.spell('cab', letters, np.random.default_rng(0),
                                              transition_frames=3, speed=(1, 1), trim=0)
    assert len(coords) == 12 + 3 + 10 + 3 + 11
    right = fingerspelling.mediapipe_pose.holistic_header(1, 1, fingerspelling.FACE_POINTS) \
        .get_point_index('RIGHT_HAND_LANDMARKS', 'WRIST')
    wrist_x = coords[:, right, 0]
    np.testing.assert_allclose(wrist_x[:12], 300)               # c
    np.testing.assert_allclose(wrist_x[12:15], [250, 200, 150])  # c -> a, interpolated
    np.testing.assert_allclose(wrist_x[15:25], 100)              # a
    left = right - len(HAND_POINTS)
    assert not confidence[:, left:right].any() and confidence[:, right:].all()

    fast, _ = fingerspelling.spell('cab', letters, np.random.default_rng(0), speed=(2, 2), trim=0)
    assert len(fast) == 6 + 3 + 5 + 3 + 6


def test_dataset_holds_unseen_words_and_readable_pose_files(lexicon, tmp_path):
    out = tmp_path / 'fs' / 'Demo'
    fingerspelling.main(['--lexicon', lexicon, '--out', str(out), '--language', 'xyz',
                         '--n_train', '12', '--n_dev', '3', '--n_test', '3'])
    words = {}
    for split in ('train', 'dev', 'test'):
        entries = load_labels(str(out / f'labels.{split}'))
        words[split] = {e['text'].replace(' ', '') for e in entries}
        for entry in entries:
            assert entry['text'] == ' '.join(entry['gloss']).lower()
            clip = read_pose(str(out / 'pose_format' / entry['pose_file']))
            assert clip['scores'][:, 0, 112:133].all() and not clip['scores'][:, 0, 91:112].any()
            assert np.isfinite(clip['keypoints']).all()
    assert len(words['train']) == 12 and len(words['dev']) == 3 and len(words['test']) == 3
    assert not (words['dev'] | words['test']) & words['train']
    assert json.loads((out / 'meta.json').read_text())['letters'] == 'abcei'
    assert (out / 'mt5' / 'config.json').exists()


def test_score_counts_letter_edits(tmp_path):
    (tmp_path / 'test_tmp_pres.txt').write_text(
        'sample: x, prediction: C A T\nsample: y, prediction: d o\n')
    (tmp_path / 'test_tmp_refs.txt').write_text(
        'sample: x, ground-truth: c a t\nsample: y, ground-truth: d o g\n')
    result = fingerspelling.score(str(tmp_path))
    bleu4 = sacrebleu.corpus_bleu(['c a t', 'd o'], [['c a t', 'd o g']]).score
    assert result == {'char_accuracy': pytest.approx(100 * 5 / 6), 'word_accuracy': 50.0,
                      'bleu4': pytest.approx(bleu4), 'clips': 2}
