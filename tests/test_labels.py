"""Tests for labels: the gloss label readers (sclite STM, PHOENIX corpus files, Uni-Sign pickles
with gloss lists), each entry {name, text, gloss, pose_file, signer}, the format coming from the
dataset registry (config.DatasetSpec.label_format) or, for a file given alone, its content."""
import gzip
import pickle

import pytest
import torch
from conftest import random_clip

import config
import labels
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
