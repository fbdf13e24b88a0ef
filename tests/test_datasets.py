"""Tests for datasets.py: a split as clips with targets, the batch, held-out splits, packed
poses through the dataset."""
import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import label, make_pose, make_split, write_labels, write_pickle

import datasets
from datasets import (DataError, S2T_Dataset, load_labels, load_part_kp, sample_frame_indices,
                      validate_samples)
from demo.tiny_mt5 import build_tiny_mt5


PART_SIZES = {'body': 9, 'left': 21, 'right': 21, 'face_all': 18}


def max_abs_diff(a, b):
    return max((a[part].double() - b[part].double()).abs().max().item() for part in a)


# ----------------------------------------------------------------------------- dataset

@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
    from transformers import T5Tokenizer
    sentences = ['the cat sat on the mat', 'a dog runs in the park', 'hello world',
                 'sign language translation is fun', 'we read a long sentence today']
    directory = build_tiny_mt5(str(tmp_path_factory.mktemp('tiny_mt5')), sentences)
    return T5Tokenizer.from_pretrained(directory, legacy=False)


def test_getitem_uses_clip_window_and_even_frames(tmp_path):
    pose = make_pose(40, seed=9)
    pose_dir = tmp_path / 'poses'
    pose_dir.mkdir()
    write_pickle(pose_dir / 'w.pkl', dict(pose, start=5, end=25))
    labels = write_labels(tmp_path / 'labels', [label('w', 'hello', ['HELLO'])])
    dataset = S2T_Dataset(labels, str(pose_dir), 'dev', dataset_name='WLASL', max_length=8)
    name, parts, text, gloss = dataset[0]
    frames = sample_frame_indices(20, 8, train=False, start=5)
    expected = load_part_kp(pose['keypoints'][frames], pose['scores'][frames])
    assert (name, text, gloss) == ('w', 'hello', 'HELLO')
    assert max_abs_diff(expected, parts) == 0
    assert dataset.lengths() == [8]


def test_training_items_sample_max_length_frames_reproducibly(tmp_path):
    labels, pose_dir = make_split(tmp_path, [50])
    first = S2T_Dataset(labels, pose_dir, 'train', max_length=16, seed=3)[0][1]
    second = S2T_Dataset(labels, pose_dir, 'train', max_length=16, seed=3)[0][1]
    assert first['body'].shape == (16, 9, 3)
    assert max_abs_diff(first, second) == 0


def test_cslr_text_is_the_gloss_string(tmp_path):
    labels, pose_dir = make_split(tmp_path, [5], glosses=[['A', 'B', 'C']])
    assert S2T_Dataset(labels, pose_dir, 'test', task='CSLR')[0][2] == 'A B C'
    assert S2T_Dataset(labels, pose_dir, 'test', task='SLT')[0][2] == 'sentence 0'


def test_collate_pads_by_repeating_the_last_frame(tmp_path):
    labels, pose_dir = make_split(tmp_path, [3, 7, 5])
    dataset = S2T_Dataset(labels, pose_dir, 'dev')
    items = [dataset[i] for i in range(3)]
    src, tgt = dataset.collate_fn(items)
    for part, size in PART_SIZES.items():
        assert src[part].shape == (3, 7, size, 3) and src[part].dtype == torch.float32
        for row, (_, parts, _, _) in enumerate(items):
            length = len(parts[part])
            assert torch.equal(src[part][row, :length], parts[part])
            assert torch.equal(src[part][row, length:],
                               parts[part][-1:].expand(7 - length, -1, -1))
    assert src['attention_mask'].tolist() == [[1] * 3 + [0] * 4, [1] * 7, [1] * 5 + [0] * 2]
    assert src['attention_mask'].dtype == torch.long
    assert src['src_length_batch'].tolist() == [3, 7, 5]
    assert src['name_batch'] == ['clip0', 'clip1', 'clip2']
    assert tgt == {'gt_sentence': ['sentence 0', 'sentence 1', 'sentence 2'],
                   'gt_gloss': ['G 0', 'G 1', 'G 2']}
    assert 'prefix_ids' not in src


@pytest.mark.parametrize('dataset_name,lang', [('CSL_Daily', 'Chinese'), ('OpenASL', 'English')])
def test_collate_tokenises_prompt_and_targets(tmp_path, tokenizer, dataset_name, lang):
    texts = ['hello world', 'the cat sat on the mat ' * 20]
    labels, pose_dir = make_split(tmp_path, [4, 6], texts=texts)
    dataset = S2T_Dataset(labels, pose_dir, 'dev', dataset_name=dataset_name,
                          tokenizer=tokenizer, max_tgt_len=12)
    src, tgt = dataset.collate_fn([dataset[0], dataset[1]])
    prompt = tokenizer(f"Translate sign language video to {lang}: ")['input_ids']
    assert src['prefix_ids'].tolist() == [prompt, prompt]
    assert src['prefix_mask'].tolist() == [[1] * len(prompt)] * 2
    short = tokenizer(texts[0])['input_ids']
    labels_batch = tgt['labels']
    assert labels_batch.dtype == torch.long and labels_batch.shape == (2, 12)
    assert labels_batch[0].tolist() == short + [-100] * (12 - len(short))
    assert labels_batch[1].tolist() == tokenizer(texts[1], truncation=True,
                                                 max_length=12)['input_ids']


def test_validate_samples_reports_and_drops_bad_files(tmp_path):
    labels, pose_dir = make_split(tmp_path, [4, 5, 6])
    os.remove(os.path.join(pose_dir, 'clip1.pkl'))
    Path(pose_dir, 'clip2.pkl').write_bytes(b'broken')
    dataset = S2T_Dataset(labels, pose_dir, 'train')
    with pytest.raises(DataError) as error:
        validate_samples(dataset)
    message = str(error.value)
    assert '2 of 3 samples' in message and 'clip1.pkl' in message and 'clip2.pkl' in message
    ok, problems = validate_samples(dataset, skip_bad=True)
    assert ok == [0] and len(problems) == 2
    assert len(dataset) == 1 and dataset[0][0] == 'clip0' and dataset.lengths() == [4]


def test_csl_news_keeps_last_percent_for_evaluation(tmp_path):
    path = tmp_path / 'news.json'
    path.write_text(json.dumps([{'video': f'{i}.mp4', 'pose': f'{i}.pkl', 'text': 't'}
                                for i in range(200)]))
    train = S2T_Dataset(str(path), str(tmp_path), 'train', dataset_name='CSL_News')
    dev = S2T_Dataset(str(path), str(tmp_path), 'dev', dataset_name='CSL_News')
    assert len(train) == 198 and len(dev) == 2 and dev.entries[0]['name'] == '198.mp4'


def test_deferred_label_errors_leave_the_news_split_where_it_was(tmp_path):
    entries = [{'video': f'{i}.mp4', 'pose': f'{i}.pkl', 'text': 't'} for i in range(200)]
    del entries[5]['text']
    path = tmp_path / 'news.json'
    path.write_text(json.dumps(entries))
    with pytest.raises(DataError, match=r"news.json: entry '5.mp4' has no text"):
        load_labels(str(path))
    assert isinstance(datasets.read_label_entries(str(path))[5], DataError)
    train = S2T_Dataset(str(path), str(tmp_path), 'train', dataset_name='CSL_News',
                        defer_label_errors=True)
    dev = S2T_Dataset(str(path), str(tmp_path), 'dev', dataset_name='CSL_News',
                      defer_label_errors=True)
    assert len(train) == 197 and train.label_problems == [f"{path}: entry '5.mp4' has no text"]
    assert [e['name'] for e in dev.entries] == ['198.mp4', '199.mp4'] and not dev.label_problems



# ----------------------------------------------------------------------------- packed poses

def pack_split(tmp_path, lengths):
    from pose_store import pack
    labels, pose_dir = make_split(tmp_path, lengths)
    write_pickle(Path(pose_dir, 'clip1.pkl'), dict(make_pose(lengths[1], seed=1), start=2, end=9))
    pack(pose_dir, str(tmp_path / 'packed'), shard_size=2, workers=1, progress=False)
    return labels, pose_dir, str(tmp_path / 'packed')


@pytest.mark.parametrize('phase', ['train', 'dev'])
def test_packed_store_gives_the_pickle_items_up_to_float16_rounding(tmp_path, phase):
    labels, pose_dir, packed_dir = pack_split(tmp_path, [30, 12, 5, 70, 41])
    pickled = S2T_Dataset(labels, pose_dir, phase, max_length=32, seed=7)
    detected = S2T_Dataset(labels, packed_dir, phase, max_length=32, seed=7)
    explicit = S2T_Dataset(labels, pose_dir, phase, max_length=32, seed=7, packed_dir=packed_dir)
    assert pickled.store is None and detected.store is not None and explicit.store is not None
    assert detected.lengths() == explicit.lengths() == [30, 7, 5, 32, 32]
    for index in range(len(pickled)):
        expected = pickled[index]
        for dataset in (detected, explicit):
            name, parts, text, gloss = dataset[index]
            assert (name, text, gloss) == (expected[0], expected[2], expected[3])
            assert max_abs_diff(expected[1], parts) <= 1e-3
    assert pickled.lengths() == detected.lengths()


def test_packed_dir_without_a_store_is_an_error(tmp_path):
    labels, pose_dir = make_split(tmp_path, [4])
    with pytest.raises(DataError, match='no packed pose store'):
        S2T_Dataset(labels, pose_dir, 'dev', packed_dir=str(tmp_path))


def test_clips_missing_from_the_store_are_reported(tmp_path):
    labels, _, packed_dir = pack_split(tmp_path, [4, 12, 6])
    entries = [label(f'clip{i}', 's') for i in range(3)] + [label('extra', 's')]
    dataset = S2T_Dataset(write_labels(tmp_path / 'more', entries), packed_dir, 'dev')
    with pytest.raises(DataError, match="no clip 'extra'"):
        dataset.lengths()
    ok, problems = validate_samples(dataset, skip_bad=True)
    assert ok == [0, 1, 2] and len(problems) == 1 and packed_dir in problems[0]


def test_training_frames_depend_on_seed_epoch_and_index_only(tmp_path):
    label_path, pose_dir = _write_long_clip_set(tmp_path)
    first = datasets.S2T_Dataset(label_path, pose_dir, 'train', max_length=8, seed=3)
    again = datasets.S2T_Dataset(label_path, pose_dir, 'train', max_length=8, seed=3)
    again[0]  # drawing another item first must not change item 0's frames
    assert torch.equal(first[0][1]['body'], again[0][1]['body'])
    first.set_epoch(1)
    assert not torch.equal(first[0][1]['body'], again[0][1]['body'])
    again.set_epoch(1)
    assert torch.equal(first[0][1]['body'], again[0][1]['body'])


def _write_long_clip_set(tmp_path):
    rng = np.random.default_rng(0)
    pose_dir = tmp_path / 'poses'
    pose_dir.mkdir()
    labels = {}
    for name in ('a', 'b'):
        T = 60
        keypoints = rng.uniform(0, 500, (T, 1, 133, 2)).astype(np.float32)
        scores = rng.uniform(0.5, 1.0, (T, 1, 133)).astype(np.float32)
        with open(pose_dir / f'{name}.pkl', 'wb') as f:
            pickle.dump({'keypoints': keypoints, 'scores': scores}, f)
        labels[name] = {'name': name, 'gloss': ['X'], 'text': 'x', 'video_path': f'{name}.mp4'}
    label_path = tmp_path / 'labels.train'
    with gzip.open(label_path, 'wb') as f:
        pickle.dump(labels, f)
    return str(label_path), str(pose_dir)
