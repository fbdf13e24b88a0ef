"""script/make_phoenix_t_demo.py: the PHOENIX-2014-T-shaped demo set, its German grammar, and one
short fine_tuning.py run on it."""
import os
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, load_file_module, run_command

import config
from labels import read_corpus_csv
from poses import read_pose

make_t = load_file_module("script/make_phoenix_t_demo.py")

SPLITS = ("train", "dev", "test")
TINY_MT5 = dict(vocab_size=128, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)
SIZES = dict(n_train=40, n_dev=6, n_test=6)
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_t.make_phoenix_t_demo(str(root / "PhoenixTDemo"), seed=1, mt5_kwargs=TINY_MT5, **SIZES)
    return root


def corpus(data_root, split):
    return read_corpus_csv(str(data_root / "PhoenixTDemo" / f"PHOENIX-2014-T.{split}.corpus.csv"))


def test_grammar_puts_the_verb_second_and_inflects():
    cases = {
        "GESTERN LEHRER BUCH ROT KAUFEN NICHT": "gestern hat der lehrer kein rotes buch gekauft .",
        "MORGEN ICH SCHULE GEHEN": "morgen werde ich zur schule gehen .",
        "IMMER DU MUEDE NICHT": "du bist nie müde .",
        "MUTTER APFEL GROSS ESSEN": "meine mutter isst einen großen apfel .",
        "GESTERN KIND ZUHAUSE GEHEN NICHT": "gestern ist das kind nicht nach hause gegangen .",
    }
    for glosses, sentence in cases.items():
        assert make_t.translate(glosses.split()) == sentence
    with pytest.raises(ValueError):
        make_t.translate(["BUCH", "KAUFEN"])


def test_corpus_files_have_the_official_columns_and_german_text(data_root):
    first = (data_root / "PhoenixTDemo" / "PHOENIX-2014-T.train.corpus.csv").read_text("utf-8")
    assert first.splitlines()[0] == "name|video|start|end|speaker|orth|translation"
    name, video, start, end, speaker = first.splitlines()[1].split("|")[:5]
    assert video == f"{name}/1/*.png" and start == end == "-1" and speaker.startswith("Signer")
    for split in SPLITS:
        entries = corpus(data_root, split)
        assert len(entries) == SIZES[f"n_{split}"]
        for entry in entries:
            words = entry["text"].split()
            assert all(g.isupper() for g in entry["gloss"]) and entry["text"] == entry["text"].lower()
            assert words[-1] == "." and words[:-1] != [g.lower() for g in entry["gloss"]]
            assert entry["text"] == make_t.translate(entry["gloss"])
    train = corpus(data_root, "train")
    # verb second: the finite verb follows the first constituent, not the gloss order's end
    moved = [e for e in train if e["gloss"][-1] in make_t.VERBS
             and e["text"].split()[-2] != e["gloss"][-1].lower()]
    assert moved


def test_split_is_honest(data_root):
    train = {e["text"] for e in corpus(data_root, "train")}
    held_out = [e for split in ("dev", "test") for e in corpus(data_root, split)]
    assert not {e["text"] for e in held_out} & train
    train_pairs = {(a, b) for e in corpus(data_root, "train")
                   for i, a in enumerate(e["gloss"]) for b in e["gloss"][i + 1:]}
    unseen = [e for e in held_out if {(a, b) for i, a in enumerate(e["gloss"])
                                      for b in e["gloss"][i + 1:]} - train_pairs]
    assert len(unseen) == len(held_out)


def test_pose_files_read_and_regeneration_is_skipped(data_root):
    pose_dir = data_root / "PhoenixTDemo" / "pose_format"
    for entry in corpus(data_root, "dev"):
        clip = read_pose(str(pose_dir / entry["pose_file"]))
        assert clip["keypoints"].shape[1:] == (1, 133, 2) and np.isfinite(clip["keypoints"]).all()
    stamp = os.path.getmtime(pose_dir)
    start = time.time()
    make_t.make_phoenix_t_demo(str(data_root / "PhoenixTDemo"), seed=1, mt5_kwargs=TINY_MT5,
                               **SIZES)
    assert time.time() - start < 2 and os.path.getmtime(pose_dir) == stamp
    for name in ("config.json", "spiece.model"):
        assert (data_root / "PhoenixTDemo" / "mt5" / name).exists()


def test_registered_paths_resolve(data_root):
    paths = config.resolve_paths("PhoenixTDemo", data_root_dir=str(data_root))
    config.validate_paths(paths, SPLITS)
    assert paths["mt5_path"] == f"{data_root}/PhoenixTDemo/mt5"
    assert config.get_dataset("PhoenixTDemo").prompt == "Translate sign language video to German: "


def test_fine_tuning_translates_the_set(data_root, tmp_path):
    out = tmp_path / "run"
    proc = run_command(
        [sys.executable, os.path.join(ROOT, "fine_tuning.py"), "--dataset", "PhoenixTDemo", "--task", "SLT",
         "--data_root", str(data_root), "--output_dir", str(out), "--epochs", "1",
         "--quick_break", "2", "--batch-size", "4", "--gradient-accumulation-steps", "1",
         "--num_workers", "0", "--dtype", "fp32", "--stgcn_channels", "8,16", "--hidden_dim",
         "16", "--temporal_layers", "1", "--max_length", "32", "--num_beams", "1",
         "--max_new_tokens", "4"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (out / "test_tmp_pres.txt").read_text().splitlines()
    assert len(lines) == SIZES["n_test"] and all(", prediction: " in line for line in lines)
