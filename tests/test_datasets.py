"""Tests for datasets.py: label and pose reading, part keypoints, frame sampling, batching."""
import gzip
import importlib.util
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import datasets
from datasets import (DataError, S2T_Dataset, load_labels, load_part_kp, read_pose,
                      sample_frame_indices, validate_samples)
from demo.tiny_mt5 import build_tiny_mt5

REPO = Path(__file__).resolve().parents[1]
PART_SIZES = {'body': 9, 'left': 21, 'right': 21, 'face_all': 18}


def load_bench_baseline():
    spec = importlib.util.spec_from_file_location('bench_load_part_kp',
                                                  REPO / 'bench' / 'load_part_kp.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.baseline_load_part_kp


def make_pose(num_frames, seed=0, low_fraction=0.1):
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(0.2, 0.8, (num_frames, 1, 133, 2)).astype(np.float32)
    scores = rng.uniform(0.35, 1.0, (num_frames, 1, 133)).astype(np.float32)
    low = rng.random(scores.shape) < low_fraction
    scores[low] = rng.uniform(0.0, 0.3, int(low.sum()))
    return {'keypoints': keypoints, 'scores': scores}


def write_pickle(path, obj):
    with open(path, 'wb') as f:
        pickle.dump(obj, f)
    return str(path)


def write_labels(path, entries):
    with gzip.open(path, 'wb') as f:
        pickle.dump({entry['name']: entry for entry in entries}, f)
    return str(path)


def label(name, text, gloss=()):
    return {'name': name, 'gloss': list(gloss), 'text': text, 'video_path': f'{name}.mp4'}


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
    for part, joints in datasets.PART_JOINTS.items():
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
    pose['scores'][0, 0, datasets.PART_JOINTS['body']] = 0.1
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


# ----------------------------------------------------------------------------- labels

def test_load_labels_gzip_pickle(tmp_path):
    path = write_labels(tmp_path / 'labels.dev', [
        label('S1', '他今年四岁。', ['他', '今天', '年龄']),
        {'name': 'w1', 'gloss': '', 'text': 'a', 'video_path': 'w1.mp4'},  # WLASL style
    ])
    entries = load_labels(path)
    assert entries == [
        {'name': 'S1', 'text': '他今年四岁。', 'gloss': ['他', '今天', '年龄'], 'pose_file': 'S1.pkl',
         'signer': 'signer'},
        {'name': 'w1', 'text': 'a', 'gloss': [], 'pose_file': 'w1.pkl', 'signer': 'signer'},
    ]


def test_load_labels_csl_news_json(tmp_path):
    path = tmp_path / 'CSL_News_Labels.json'
    path.write_text(json.dumps([{'video': 'v/a.mp4', 'pose': 'p/a.pkl', 'text': '新闻'}]),
                    encoding='utf-8')
    assert load_labels(str(path)) == [
        {'name': 'v/a.mp4', 'text': '新闻', 'gloss': [], 'pose_file': 'p/a.pkl',
         'signer': 'signer'}]


@pytest.mark.parametrize('content,problem', [
    (None, 'not found'),
    (b'\x00\x01garbage', 'unreadable'),
    (gzip.compress(pickle.dumps(42)), 'expected a dict or a list'),
    (gzip.compress(pickle.dumps({'S9': {'name': 'S9', 'video_path': 'S9.mp4'}})),
     "'S9' has no text"),
    (json.dumps([{'video': 'x.mp4', 'pose': 'x.pkl'}]).encode(), "'x.mp4' has no text"),
])
def test_load_labels_errors_name_file_and_problem(tmp_path, content, problem):
    path = tmp_path / 'labels.train'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as error:
        load_labels(str(path))
    assert str(path) in str(error.value) and problem in str(error.value)


# ----------------------------------------------------------------------------- pose files

def test_read_pose_array_and_frame_list_formats(tmp_path):
    pose = make_pose(8)
    pose['keypoints'] = pose['keypoints'].astype(np.float64)
    clip = read_pose(write_pickle(tmp_path / 'a.pkl', dict(pose, start=2, end=7)))
    assert clip['keypoints'].dtype == np.float32 and clip['keypoints'].shape == (8, 1, 133, 2)
    assert clip['scores'].dtype == np.float32 and clip['scores'].shape == (8, 1, 133)
    assert (clip['start'], clip['end']) == (2, 7)
    # per-frame lists as written by pose extraction; extra people are dropped
    frames = [np.concatenate([k, k + 1]) for k in pose['keypoints']]
    listed = read_pose(write_pickle(tmp_path / 'b.pkl', {'keypoints': frames,
                                                         'scores': list(pose['scores'])}))
    np.testing.assert_array_equal(listed['keypoints'], clip['keypoints'])
    assert 'start' not in listed


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_read_pose_accepts_every_pickle_protocol_and_numpy_1_files(tmp_path, protocol):
    pose = make_pose(3)
    raw = pickle.dumps(pose, protocol=protocol)
    if protocol == 2:  # how numpy 1.x names its reconstruct function
        raw = raw.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
    path = tmp_path / 'p.pkl'
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_pose(str(path))['keypoints'], pose['keypoints'])


def corrupt_cases():
    good = make_pose(4)
    good_bytes = pickle.dumps(good)
    nan = make_pose(4)
    nan['keypoints'][2, 0, 7, 1] = np.nan
    inf = make_pose(4)
    inf['keypoints'][1, 0, 3, 0] = np.inf
    return {
        'missing': (None, 'not found'),
        'truncated': (good_bytes[:len(good_bytes) // 2], 'unreadable pickle'),
        'garbage': (b'not a pickle at all', 'unreadable pickle'),
        'not a dict': (pickle.dumps([1, 2]), 'expected a dict'),
        'missing keys': (pickle.dumps({'keypoints': good['keypoints']}), "lacks 'scores'"),
        '17 keypoints': (pickle.dumps({'keypoints': np.zeros((4, 1, 17, 2), np.float32),
                                       'scores': np.zeros((4, 1, 17), np.float32)}),
                         'keypoints has shape (4, 1, 17, 2)'),
        'no person axis': (pickle.dumps({'keypoints': good['keypoints'][:, 0],
                                         'scores': good['scores'][:, 0]}), 'person axis'),
        'zero length': (pickle.dumps({'keypoints': np.zeros((0, 1, 133, 2), np.float32),
                                      'scores': np.zeros((0, 1, 133), np.float32)}),
                        'zero-length clip'),
        'start >= end': (pickle.dumps(dict(good, start=3, end=3)), 'start=3 end=3'),
        'end past clip': (pickle.dumps(dict(good, start=0, end=9)), 'start=0 end=9'),
        'frame mismatch': (pickle.dumps({'keypoints': good['keypoints'],
                                         'scores': good['scores'][:3]}), '4 frames of keypoints'),
        'nan': (pickle.dumps(nan), 'NaN or Inf (first at frame 2)'),
        'inf': (pickle.dumps(inf), 'NaN or Inf (first at frame 1)'),
        'empty person': (pickle.dumps({'keypoints': [np.zeros((0, 133, 2))],
                                       'scores': [np.zeros((0, 133))]}), 'keypoints frame 0'),
    }


@pytest.mark.parametrize('case', list(corrupt_cases()))
def test_read_pose_errors_name_file_and_problem(tmp_path, case):
    content, problem = corrupt_cases()[case]
    path = tmp_path / f'{case.replace(" ", "_")}.pkl'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_pose(str(path))
    assert str(path) in str(error.value)
    assert problem in str(error.value)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_malicious_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / 'pwned'
    pose_path = tmp_path / 'evil.pkl'
    pose_path.write_bytes(pickle.dumps({'keypoints': _Exploit(marker), 'scores': None}))
    with pytest.raises(DataError) as error:
        read_pose(str(pose_path))
    assert str(pose_path) in str(error.value) and 'refused' in str(error.value)
    label_path = tmp_path / 'labels.evil'
    label_path.write_bytes(gzip.compress(pickle.dumps({'x': _Exploit(marker)})))
    with pytest.raises(DataError, match='refused'):
        load_labels(str(label_path))
    assert not marker.exists()


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


# ----------------------------------------------------------------------------- dataset

@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
    from transformers import T5Tokenizer
    sentences = ['the cat sat on the mat', 'a dog runs in the park', 'hello world',
                 'sign language translation is fun', 'we read a long sentence today']
    directory = build_tiny_mt5(str(tmp_path_factory.mktemp('tiny_mt5')), sentences)
    return T5Tokenizer.from_pretrained(directory, legacy=False)


def make_split(tmp_path, lengths, texts=None, glosses=None):
    pose_dir = tmp_path / 'poses'
    pose_dir.mkdir(exist_ok=True)
    entries = []
    for index, length in enumerate(lengths):
        name = f'clip{index}'
        write_pickle(pose_dir / f'{name}.pkl', make_pose(length, seed=index))
        text = texts[index] if texts else f'sentence {index}'
        entries.append(label(name, text, glosses[index] if glosses else ['G', str(index)]))
    return write_labels(tmp_path / 'labels', entries), str(pose_dir)


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
