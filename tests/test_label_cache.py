"""Tests for label_cache.py: a corpus shipped as one list is parsed once for its splits, a kept
split is loaded instead of parsing, a changed label file or a corrupt cache is read again."""
import json
import os

import pytest

import label_cache
import labels


@pytest.fixture
def news_file(tmp_path):
    entries = [{'video': f'{i}.mp4', 'pose': f'{i}.pkl', 'text': f'text {i}'} for i in range(200)]
    del entries[5]['text']
    del entries[199]['pose']
    path = tmp_path / 'news.json'
    path.write_text(json.dumps(entries))
    return str(path)


@pytest.fixture
def counted_parses(monkeypatch):
    calls = []
    read = label_cache.iter_label_entries

    def counting(path, label_format=None):
        calls.append(path)
        return read(path, label_format)

    monkeypatch.setattr(label_cache, 'iter_label_entries', counting)
    label_cache.forget()
    yield calls
    label_cache.forget()


def test_held_out_splits_from_one_parse(news_file, counted_parses):
    train, train_problems = label_cache.split_entries(news_file, 'news_json', 'train', 0.01)
    dev, dev_problems = label_cache.split_entries(news_file, 'news_json', 'dev', 0.01)
    assert len(counted_parses) == 1
    assert len(train) == 197 and "entry '5.mp4' has no text" in train_problems[0]
    assert [e['name'] for e in dev] == ['198.mp4'] and "'199.mp4' has no pose" in dev_problems[0]
    assert train[0] == {'name': '0.mp4', 'text': 'text 0', 'gloss': [], 'pose_file': '0.pkl',
                        'signer': labels.DEFAULT_SIGNER}


def test_kept_split_loads_without_parsing(news_file, tmp_path, counted_parses):
    folder = str(tmp_path / 'cache')
    first = label_cache.split_entries(news_file, 'news_json', 'train', 0.01, folder)
    label_cache.forget()
    counted_parses.clear()
    again = label_cache.split_entries(news_file, 'news_json', 'train', 0.01, folder)
    assert counted_parses == [] and list(again[0]) == list(first[0]) and again[1] == first[1]
    with open(news_file, 'a') as f:  # a changed label file is parsed again
        f.write(' ')
    label_cache.split_entries(news_file, 'news_json', 'train', 0.01, folder)
    assert counted_parses == [news_file]


def test_corrupt_label_cache_is_reported_and_rebuilt(news_file, tmp_path, counted_parses,
                                                     capsys):
    folder = str(tmp_path / 'cache')
    label_cache.split_entries(news_file, 'news_json', 'train', 0.01, folder)
    path = os.path.join(folder, 'labels.train.npz')
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 3])
    label_cache.forget()
    counted_parses.clear()
    table, _ = label_cache.split_entries(news_file, 'news_json', 'train', 0.01, folder)
    assert f"label cache {path} is corrupt" in capsys.readouterr().out
    assert counted_parses == [news_file] and len(table) == 197
    label_cache.forget()
    counted_parses.clear()
    label_cache.split_entries(news_file, 'news_json', 'train', 0.01, folder)
    assert counted_parses == []
