"""Tests for demo.data: file formats, determinism, held-out splits, tokenizer coverage, reuse."""
import gzip
import json
import os
import pickle
from collections import Counter

import numpy as np
import pytest

from demo import data

SIZES = dict(n_train=40, n_dev=10, n_test=10)
SMALL_MT5 = dict(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)


def read_labels(path):
    with gzip.open(path, 'rb') as f:
        return pickle.load(f)


def read_pose(paths, name):
    with open(os.path.join(paths['pose_dir'], name + '.pkl'), 'rb') as f:
        return pickle.load(f)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('demo') / 'Demo')
    return data.make_demo(root, seed=3, mt5_kwargs=SMALL_MT5, **SIZES)


@pytest.fixture(scope='module')
def labels(demo):
    return {split: read_labels(demo[split]) for split in data.SPLITS}


def test_files_exist(demo):
    for key in ('pose_dir', 'mt5', 'corpus', 'readme', 'meta', 'train', 'dev', 'test'):
        assert os.path.exists(demo[key]), key
    assert 'python -m demo.data' in open(demo['readme']).read()


def test_label_format(labels):
    for split, n in (('train', 40), ('dev', 10), ('test', 10)):
        assert isinstance(labels[split], dict) and len(labels[split]) == n
        for name, item in labels[split].items():
            assert set(item) == {'name', 'gloss', 'text', 'video_path'}
            assert item['name'] == name and item['video_path'] == name + '.mp4'
            assert type(item['text']) is str and item['text'].endswith('.')
            assert 3 <= len(item['gloss']) <= 6
            assert all(type(g) is str and g in data.LEXICON for g in item['gloss'])


def test_pose_format(demo, labels):
    for name in list(labels['train'])[:5] + list(labels['test'])[:5]:
        pose = read_pose(demo, name)
        assert set(pose) == {'keypoints', 'scores'}
        kp, sc = pose['keypoints'], pose['scores']
        assert kp.dtype == np.float32 and sc.dtype == np.float32
        assert kp.ndim == 4 and kp.shape[1:] == (1, 133, 2)
        assert sc.shape == kp.shape[:3]
        assert 30 <= len(kp) <= 160
        assert sc.min() >= 0 and sc.max() <= 1
        upper_body = kp[:, 0, [0, *range(3, 11)]]
        visible = sc[:, 0, [0, *range(3, 11)]] > 0.3
        assert ((upper_body >= 0) & (upper_body <= 512))[visible].all()


def test_hand_wrists_sit_on_body_wrists(demo, labels):
    pose = read_pose(demo, next(iter(labels['train'])))
    kp = pose['keypoints'][:, 0]
    present = pose['scores'][:, 0, 0] > 0
    gap_left = np.abs(kp[present, 91] - kp[present, 9]).max()
    gap_right = np.abs(kp[present, 112] - kp[present, 10]).max()
    assert gap_left < 25 and gap_right < 25


def test_corpus_is_train_text(demo, labels):
    lines = open(demo['corpus'], encoding='utf-8').read().splitlines()
    assert sorted(lines) == sorted(item['text'] for item in labels['train'].values())


def test_no_dev_or_test_sentence_in_train(labels):
    train = {item['text'] for item in labels['train'].values()}
    for split in ('dev', 'test'):
        assert not train & {item['text'] for item in labels[split].values()}


def test_every_test_sentence_has_held_out_pair(demo, labels):
    held_out = {tuple(p) for p in json.load(open(demo['meta']))['held_out_pairs']}
    assert held_out

    def pairs(glosses):
        return {(a, b) for i, a in enumerate(glosses) for b in glosses[i + 1:]}

    for split in ('dev', 'test'):
        assert all(pairs(item['gloss']) & held_out for item in labels[split].values())
    assert not any(pairs(item['gloss']) & held_out for item in labels['train'].values())


def test_gloss_order_differs_from_word_order(labels):
    differs = []
    for item in labels['train'].values():
        words = item['text'].rstrip('.').lower().split()
        positions = [words.index(g.lower()) for g in item['gloss'] if g.lower() in words]
        differs.append(positions != sorted(positions))
    assert np.mean(differs) > 0.4


def test_english_realisation():
    record = {'template': 'transitive', 'time': 'YESTERDAY', 'subj': 'TEACHER', 'obj': 'APPLE',
              'adj': 'OLD', 'verb': 'BUY', 'neg': False, 'place': None, 'state': None}
    assert data.sentence_glosses(record) == ['YESTERDAY', 'TEACHER', 'APPLE', 'OLD', 'BUY']
    assert data.sentence_text(record) == 'The teacher bought an old apple yesterday.'
    record.update(time='ALWAYS', neg=True, subj='I', adj=None)
    assert data.sentence_text(record) == 'I never buy an apple.'
    state = {'template': 'state', 'time': 'TOMORROW', 'subj': 'YOU', 'state': 'TIRED', 'neg': True,
             'obj': None, 'adj': None, 'verb': None, 'place': None}
    assert data.sentence_text(state) == 'You will not be tired tomorrow.'
    assert data.sentence_glosses(state) == ['TOMORROW', 'YOU', 'TIRED', 'NOT']


def test_signs_are_distinct():
    forms = Counter((s.loc, s.move, s.hands) for s in data.LEXICON.values())
    assert max(forms.values()) == 1
    assert 25 <= len(data.LEXICON) <= 40


def test_tokenizer_round_trips_every_sentence(demo, labels):
    from transformers import T5Tokenizer
    tokenizer = T5Tokenizer.from_pretrained(demo['mt5'], legacy=False)
    for split in data.SPLITS:
        for item in labels[split].values():
            ids = tokenizer(item['text']).input_ids
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids, skip_special_tokens=True) == item['text']


def test_mt5_loads(demo):
    from transformers import MT5ForConditionalGeneration
    model = MT5ForConditionalGeneration.from_pretrained(demo['mt5'])
    assert model.config.d_model == SMALL_MT5['d_model']


def test_deterministic_by_seed(demo, labels, tmp_path):
    again = data.make_demo(str(tmp_path / 'again'), seed=3, mt5_kwargs=SMALL_MT5, **SIZES)
    assert read_labels(again['test']) == labels['test']
    name = next(iter(labels['train']))
    first, second = read_pose(demo, name), read_pose(again, name)
    assert np.array_equal(first['keypoints'], second['keypoints'])
    assert np.array_equal(first['scores'], second['scores'])
    other = data.make_demo(str(tmp_path / 'other'), seed=4, mt5_kwargs=SMALL_MT5, **SIZES)
    assert read_labels(other['train']) != labels['train']


def test_reuses_matching_set(demo, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('regenerated a complete matching set')

    monkeypatch.setattr(data, 'write_split', refuse)
    assert data.make_demo(demo['root'], seed=3, mt5_kwargs=SMALL_MT5, **SIZES) == demo


def test_regenerates_on_changed_settings(tmp_path):
    root = str(tmp_path / 'Demo')
    data.make_demo(root, seed=1, mt5_kwargs=SMALL_MT5, **SIZES)
    data.make_demo(root, seed=1, mt5_kwargs=SMALL_MT5, n_train=30, n_dev=10, n_test=10)
    meta = json.load(open(os.path.join(root, 'meta.json')))
    assert meta['n_train'] == 30 and len(read_labels(os.path.join(root, 'labels.train'))) == 30
    assert len(os.listdir(os.path.join(root, 'pose_format'))) == 50
