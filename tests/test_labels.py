"""Tests for labels: the gloss label readers (sclite STM, PHOENIX corpus files, Uni-Sign pickles
with gloss lists), each entry {name, text, gloss, pose_file, signer}, the format coming from the
dataset registry (config.DatasetSpec.label_format) or, for a file given alone, its content."""
import gzip
import json
import pickle

import pytest
import torch
from conftest import label, random_clip, write_labels

import config
import labels
from labels import load_labels
from ctc_head import GlossVocab
from datasets import DataError, GlossTargets, S2T_Dataset
from SLRT_metrics import read_stm

REAL_STM_LINES = (
    "01April_2010_Thursday_heute_default-2 1 Signer04 0.0 1.79769e+308 "
    "WEST WARM WEST BLEIBEN KUEHL\n"
    "29July_2010_Thursday_heute_default-7 1 signer05 0.0 1.79769e+308 __ON__ TEMPERATUR "
    "WIE-AUSSEHEN MORGEN GLEICH SIEBZEHN ACHTZEHN SUEDOST WENN REGEN\n")


def test_gloss_datasets_name_their_label_format():
    assert config.DATASETS["PhoenixDemo"].label_format == "stm"
    assert config.DATASETS["PHOENIX2014"].label_format == "stm"
    assert config.DATASETS["PHOENIX2014T"].label_format == "corpus_csv"
    assert config.DATASETS["CSL_Daily"].label_format == "unisign_pickle"


@pytest.mark.parametrize("label_format", ["stm", None])  # None: told from the content
def test_stm_reader_matches_sclite_reader_and_keeps_signers(tmp_path, label_format):
    path = tmp_path / "g.stm"
    path.write_text(";; comment\n" + REAL_STM_LINES)
    entries = labels.load_labels(str(path), label_format)
    assert entries == labels.read_stm(str(path))
    assert [e["name"] for e in entries] == list(read_stm(path))
    assert [e["gloss"] for e in entries] == list(read_stm(path).values())
    assert [e["signer"] for e in entries] == ["Signer04", "signer05"]
    assert entries[0]["pose_file"] == "01April_2010_Thursday_heute_default-2.pkl"
    assert entries[0]["text"] == "WEST WARM WEST BLEIBEN KUEHL"


@pytest.mark.parametrize("text, problem", [
    ("a 1 s 0.0\n", "g.stm:1: expected"),
    ("a 1 s 0.0 1.79769e+308 X\nb 1 s 0.0 1.79769e+308 Y\na 1 s 0.0 1.79769e+308 Z\n",
     "g.stm:3: sample a appears twice")])
def test_stm_reader_errors_name_file_and_line(tmp_path, text, problem):
    (tmp_path / "g.stm").write_text(text)
    for label_format in ("stm", None):
        with pytest.raises(DataError, match=problem):
            labels.load_labels(str(tmp_path / "g.stm"), label_format)
    # a dataset reading STM labels stops with the same message
    (tmp_path / "poses").mkdir()
    with pytest.raises(DataError, match=problem):
        S2T_Dataset(str(tmp_path / "g.stm"), str(tmp_path / "poses"), "train",
                    dataset_name="PhoenixDemo", task="CSLR")


@pytest.mark.parametrize("header, row, text", [
    ("name|video|start|end|speaker|orth|translation",
     "11August_2010_Wednesday_tagesschau-2|x/1/*.png|-1|-1|Signer08|DRUCK TIEF KOMMEN|"
     "tiefer luftdruck", "tiefer luftdruck"),
    ("id|folder|signer|annotation", "11August_2010_Wednesday_tagesschau-2|x/1/*.png|Signer08|"
                                    "DRUCK TIEF KOMMEN", "DRUCK TIEF KOMMEN")])
def test_phoenix_corpus_files(tmp_path, header, row, text):
    path = tmp_path / "PHOENIX-2014-T.dev.corpus.csv"
    path.write_text(f"{header}\n{row}\n")
    for label_format in ("corpus_csv", None):
        [entry] = labels.load_labels(str(path), label_format)
        assert entry["name"] == "11August_2010_Wednesday_tagesschau-2"
        assert entry["gloss"] == ["DRUCK", "TIEF", "KOMMEN"] and entry["signer"] == "Signer08"
        assert entry["text"] == text
        assert entry["pose_file"] == "11August_2010_Wednesday_tagesschau-2.pkl"


def test_unisign_label_file_with_gloss_lists_gives_recognition_and_translation_items(tmp_path):
    (tmp_path / "poses").mkdir()
    names, entries = ["S000001_P0000_T00", "S000002_P0000_T00"], {}
    for index, name in enumerate(names):
        with open(tmp_path / "poses" / f"{name}.pkl", "wb") as f:
            pickle.dump(random_clip(20 + index, index), f)
        entries[name] = {"name": name, "gloss": ["他", "喜欢", "书"], "text": "他喜欢书。",
                         "video_path": f"{name}.mp4"}
    path = str(tmp_path / "labels.dev")
    with gzip.open(path, "wb") as f:
        pickle.dump(entries, f)
    read = labels.load_labels(path, "unisign_pickle")
    assert read == labels.load_labels(path)
    assert [e["gloss"] for e in read] == [["他", "喜欢", "书"]] * 2
    assert [e["pose_file"] for e in read] == [f"{name}.pkl" for name in names]

    vocab = GlossVocab.build(e["gloss"] for e in read)
    recognition = S2T_Dataset(path, str(tmp_path / "poses"), "dev", dataset_name="CSL_Daily",
                              task="CSLR", targets=GlossTargets(vocab))
    translation = S2T_Dataset(path, str(tmp_path / "poses"), "dev", dataset_name="CSL_Daily")
    for index in range(2):
        (name, parts, text, gloss), expected = recognition[index], translation[index]
        # the recognition text is the gloss string; translation keeps the sentence
        assert (name, text, gloss) == (expected[0], expected[3], expected[3]) == (
            names[index], "他 喜欢 书", "他 喜欢 书")
        assert expected[2] == "他喜欢书。"
        assert all(torch.equal(parts[p], expected[1][p]) for p in parts)


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


