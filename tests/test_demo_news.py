"""Tests for demo.news: CSL-News label list and pose files, clip lengths, names, sentences kept
apart from the Demo evaluation splits, determinism, reuse and the command line."""
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

import demo.news
from datasets import S2T_Dataset, load_labels, read_pose
from demo.data import (choose_held_out, sample_sentence, sample_splits, sentence_glosses,
                       sentence_text)

N_CLIPS = 40


@pytest.fixture(scope='module')
def news(tmp_path_factory):
    return demo.news.make_news(str(tmp_path_factory.mktemp('news')), n=N_CLIPS, seed=0)


@pytest.fixture(scope='module')
def labels(news):
    with open(news['labels'], encoding='utf-8') as f:
        return json.load(f)


def raw_pose(news, entry):
    with open(os.path.join(news['pose_dir'], entry['pose']), 'rb') as f:
        return pickle.load(f)


def test_layout_is_where_config_looks(news, tmp_path):
    import config
    out = os.path.dirname(news['root'])
    paths = config.resolve_paths('CSL_News', data_root_dir=out, pose_root_dir=out)
    assert {paths['labels']['train'], paths['labels']['dev']} == {news['labels']}
    assert paths['pose_dirs']['train'] == news['pose_dir']


def test_label_list_is_read_as_csl_news(news, labels):
    assert isinstance(labels, list) and len(labels) == N_CLIPS
    for entry in labels:
        assert set(entry) == {'video', 'pose', 'text'}
        assert entry['video'][:-4] + '.pkl' == entry['pose'] and entry['video'].endswith('.mp4')
    assert [e['name'] for e in load_labels(news['labels'])] == [e['video'] for e in labels]
    train, dev = (S2T_Dataset(news['labels'], news['pose_dir'], phase, dataset_name='CSL_News')
                  for phase in ('train', 'dev'))
    assert (len(train), len(dev)) == (int(N_CLIPS * 0.99), N_CLIPS - int(N_CLIPS * 0.99))
    name, parts, text, gloss = dev[0]
    assert name == labels[-1]['video'] and text == labels[-1]['text'] and gloss == ''


def test_pose_files_have_uni_sign_extraction_layout(news, labels):
    for entry in labels[:5]:
        pose = raw_pose(news, entry)
        assert set(pose) == {'keypoints', 'scores'} and isinstance(pose['keypoints'], list)
        assert all(k.shape == (1, 133, 2) and s.shape == (1, 133)
                   for k, s in zip(pose['keypoints'], pose['scores']))
        upper_body = np.stack(pose['keypoints'])[:, 0, :11]
        assert 0 <= upper_body.min() and upper_body.max() <= 1  # divided by the frame size
        assert len(read_pose(os.path.join(news['pose_dir'], entry['pose']))['scores']) == \
            len(pose['scores'])


def test_clips_last_2_to_15_seconds(news, labels):
    lengths = [len(raw_pose(news, entry)['scores']) for entry in labels]
    assert min(lengths) >= 2 * 25 and max(lengths) <= 15 * 25
    assert max(lengths) - min(lengths) > 150


def test_names_follow_csl_news(news, labels):
    names = [entry['video'][:-4] for entry in labels]
    assert len(set(names)) == len(names)
    for index, (name, entry) in enumerate(zip(names, labels)):
        match = re.fullmatch(r'[A-Za-z-]+_(\d{8})_(\d+)-(\d+)_(\d+)', name)
        assert match, name
        start, end, number = map(int, match.groups()[1:])
        assert number == index and end - start == len(raw_pose(news, entry)['scores'])
    assert names[0].startswith('Evening-News_20200101_0-')


def test_texts_are_whole_sentences_never_from_demo_evaluation(labels):
    splits, _ = sample_splits(np.random.default_rng(0), 2000, 150, 150)  # the default Demo set
    evaluation = {sentence_text(s) for split in ('dev', 'test') for s in splits[split]}
    sentences = [s for entry in labels for s in re.findall(r'[^.]+\.', entry['text'])]
    assert len(sentences) > 2 * N_CLIPS
    assert all(s.strip()[0].isupper() for s in sentences)
    assert not evaluation & {s.strip() for s in sentences}


def test_sentences_avoid_the_held_out_gloss_pairs():
    held_out = {tuple(pair) for pair in choose_held_out(np.random.default_rng(0))}
    rng = np.random.default_rng(1)

    def has_held_out_pair(s):
        glosses = sentence_glosses(s)
        return bool({(a, b) for i, a in enumerate(glosses) for b in glosses[i + 1:]} & held_out)

    assert sum(has_held_out_pair(sample_sentence(rng)) for _ in range(500)) > 25
    assert not any(has_held_out_pair(demo.news.allowed_sentence(rng, held_out))
                   for _ in range(500))


def test_deterministic_and_reused(news, labels, tmp_path, monkeypatch):
    again = demo.news.make_news(str(tmp_path), n=N_CLIPS, seed=0)
    with open(again['labels'], encoding='utf-8') as f:
        assert json.load(f) == labels
    first, second = raw_pose(news, labels[3]), raw_pose(again, labels[3])
    assert np.array_equal(np.stack(first['keypoints']), np.stack(second['keypoints']))

    def refuse(*args, **kwargs):
        raise AssertionError('regenerated a complete matching set')

    monkeypatch.setattr(demo.news, 'write_clips', refuse)
    assert demo.news.make_news(os.path.dirname(news['root']), n=N_CLIPS, seed=0) == news


def test_command_line(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'demo.news', '--out', str(tmp_path), '--n', '3',
                           '--seed', '2'], cwd=os.path.dirname(os.path.dirname(__file__)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == os.path.join(str(tmp_path), 'CSL_News')
    with open(tmp_path / 'CSL_News' / 'CSL_News_Labels.json', encoding='utf-8') as f:
        assert len(json.load(f)) == 3
