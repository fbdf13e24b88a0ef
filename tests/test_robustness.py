"""Bad input, non-finite losses and determinism, through fine_tuning.main (in this process, on
a copy of the small Demo set) and through the command line."""
import builtins
import gzip
import json
import os
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch

import config
import fine_tuning
import models
import utils
from datasets import DataError
from engine import NonFiniteLossError
from test_fine_tuning import ROOT, free_port, read_log, read_step_records, run, train_args
from conftest import DEEPSPEED

BAD_TRAIN_CLIP = "demo_train_00003"


@pytest.fixture
def trainer(monkeypatch, tmp_path):
    """Runs fine_tuning.main(flags) here. The process group of the first call stays for the
    session (DeepSpeed keeps its groups); the variables describing it are removed afterwards so
    that launched subprocesses do not inherit them, and the print wrapper is undone."""
    monkeypatch.setattr(builtins, "print", builtins.print)
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=free_port(), DS_ACCELERATOR="cpu").items():
        monkeypatch.setenv(key, value)

    def train(*flags):
        args = utils.parse_args("fine_tuning.py", list(flags))
        os.makedirs(args.output_dir, exist_ok=True)
        return fine_tuning.main(args)
    return train


def quick_args(data_root, out_dir, *extra):
    return train_args(data_root, out_dir, "--epochs", "1", "--quick_break", "6",
                      "--print_freq", "1", *extra)


# ----------------------------------------------------------------------------- corrupt inputs

def pose_path(data_root, name=BAD_TRAIN_CLIP):
    return os.path.join(data_root, "Demo", "pose_format", f"{name}.pkl")


def rewrite_pose(data_root, change, name=BAD_TRAIN_CLIP):
    path = pose_path(data_root, name)
    with open(path, "rb") as f:
        pose = pickle.load(f)
    with open(path, "wb") as f:
        pickle.dump(change(pose), f)


def rewrite_labels(data_root, phase, change):
    path = os.path.join(data_root, "Demo", f"labels.{phase}")
    with gzip.open(path, "rb") as f:
        labels = pickle.load(f)
    with gzip.open(path, "wb") as f:
        pickle.dump(change(labels), f)


def truncate(data_root, name=BAD_TRAIN_CLIP):
    path = pose_path(data_root, name)
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[:len(content) // 2])


def with_value(pose, key, index, value):
    pose[key] = pose[key].copy()
    pose[key][index] = value
    return pose


def without_text(labels, name):
    del labels[name]["text"]
    return labels


def small_vocabulary_mt5(data_root):
    """A copy of the tiny mT5 whose config claims fewer embeddings than its tokenizer has."""
    linked = os.path.join(data_root, "Demo", "mt5")
    copy = os.path.join(data_root, "small_vocab_mt5")
    shutil.copytree(os.path.realpath(linked), copy)
    with open(os.path.join(copy, "config.json")) as f:
        model_config = json.load(f)
    model_config["vocab_size"] = 50
    with open(os.path.join(copy, "config.json"), "w") as f:
        json.dump(model_config, f)
    return ["--mt5_path", copy]


# name -> (corrupt(data_root) returning extra flags or None, error type, phrases of the message)
BAD_INPUTS = {
    "missing pose file": (lambda root: os.remove(pose_path(root)), DataError,
                          [f"{BAD_TRAIN_CLIP}.pkl", "pose file not found"]),
    "truncated pickle": (truncate, DataError, [f"{BAD_TRAIN_CLIP}.pkl", "unreadable pickle"]),
    "17 keypoints": (lambda root: rewrite_pose(root, lambda p: {
        "keypoints": p["keypoints"][:, :, :17], "scores": p["scores"][:, :, :17]}), DataError,
        [f"{BAD_TRAIN_CLIP}.pkl", "17, 2)", "expected (T, N, 133, 2)"]),
    "no person axis": (lambda root: rewrite_pose(root, lambda p: {
        "keypoints": p["keypoints"][:, 0], "scores": p["scores"][:, 0]}), DataError,
        [f"{BAD_TRAIN_CLIP}.pkl", "person axis"]),
    "NaN coordinates": (lambda root: rewrite_pose(
        root, lambda p: with_value(p, "keypoints", (5, 0, 100, 0), np.nan)), DataError,
        [f"{BAD_TRAIN_CLIP}.pkl", "NaN or Inf (first at frame 5)"]),
    "Inf coordinates": (lambda root: rewrite_pose(
        root, lambda p: with_value(p, "keypoints", (2, 0, 7, 1), np.inf)), DataError,
        [f"{BAD_TRAIN_CLIP}.pkl", "NaN or Inf (first at frame 2)"]),
    "every score below threshold": (lambda root: rewrite_pose(
        root, lambda p: dict(p, scores=np.minimum(p["scores"], 0.3))), DataError,
        [f"{BAD_TRAIN_CLIP}.pkl", "every keypoint score is at or below 0.3"]),
    "zero-length clip": (lambda root: rewrite_pose(root, lambda p: {
        "keypoints": p["keypoints"][:0], "scores": p["scores"][:0]}), DataError,
        [f"{BAD_TRAIN_CLIP}.pkl", "zero-length clip"]),
    "start >= end": (lambda root: rewrite_pose(root, lambda p: dict(p, start=9, end=9)),
                     DataError, [f"{BAD_TRAIN_CLIP}.pkl", "start=9 end=9"]),
    "label without text": (lambda root: rewrite_labels(
        root, "dev", lambda labels: without_text(labels, "demo_dev_00002")), DataError,
        ["labels.dev", "'demo_dev_00002' has no text"]),
    "empty dev split": (lambda root: rewrite_labels(root, "dev", lambda labels: {}), DataError,
                        ["labels.dev", "the dev split is empty"]),
    "tokenizer larger than the model vocabulary": (
        small_vocabulary_mt5, config.ConfigError,
        ["small_vocab_mt5 has 105 tokens", "small_vocab_mt5/config.json has vocab_size 50"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_stops_the_run_before_training(data_root, tmp_path, trainer, capsys, case):
    corrupt, error_type, phrases = BAD_INPUTS[case]
    extra = corrupt(data_root) or []
    out = tmp_path / "out"
    with pytest.raises(error_type) as error:
        trainer(*quick_args(data_root, out, *extra))
    for phrase in phrases:
        assert phrase in str(error.value)
    assert "parameters:" not in capsys.readouterr().out  # no model was built
    assert not (out / "log_steps.txt").exists()


def test_skip_bad_samples_trains_without_them_and_lists_them(data_root, tmp_path, trainer, capsys):
    os.remove(pose_path(data_root))
    rewrite_pose(data_root, lambda p: with_value(p, "keypoints", (1, 0, 0, 0), np.nan),
                 "demo_train_00007")
    rewrite_labels(data_root, "dev", lambda labels: without_text(labels, "demo_dev_00002"))
    truncate(data_root, "demo_test_00005")
    out = tmp_path / "out"
    trainer(*quick_args(data_root, out, "--skip_bad_samples"))
    printed = capsys.readouterr().out
    lines = (out / "bad_samples.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["train", "train", "dev", "test"]
    for name in (BAD_TRAIN_CLIP, "demo_train_00007", "demo_dev_00002", "demo_test_00005"):
        assert sum(name in line for line in lines) == 1
        assert name in printed
    summary = f"skipped 4 bad samples (train 2, dev 1, test 1), listed in {out}/bad_samples.txt"
    assert printed.rstrip().endswith(summary)
    assert "train: 46 clips" in printed
    assert len((out / "dev_tmp_pres.txt").read_text().splitlines()) == 7
    assert len((out / "test_tmp_pres.txt").read_text().splitlines()) == 7


def test_command_line_reports_bad_input_without_traceback(data_root, tmp_path):
    truncate(data_root)
    out = tmp_path / "out"
    proc = run([sys.executable, "fine_tuning.py", *quick_args(data_root, out)], tmp_path,
               timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: train split") or "\nerror: train split" in proc.stderr
    assert f"{BAD_TRAIN_CLIP}.pkl: unreadable pickle" in proc.stderr
    assert "Traceback" not in proc.stderr and "parameters:" not in proc.stdout


# ----------------------------------------------------------------------------- non-finite losses

@pytest.fixture
def nan_losses(monkeypatch):
    """Makes the training losses of chosen forward calls NaN; records the parameters every
    training forward sees."""
    original = models.Uni_Sign.forward
    record = {"nan_at": set(), "weights": [], "nan": []}

    def forward(self, src_input, tgt_input):
        out = original(self, src_input, tgt_input)
        if self.training:
            index = len(record["weights"])
            record["weights"].append(torch.cat([p.detach().flatten() for p in self.parameters()]))
            record["nan"].append(index in record["nan_at"])
            if index in record["nan_at"]:
                out["loss"] = out["loss"] * float("nan")
        return out
    monkeypatch.setattr(models.Uni_Sign, "forward", forward)
    return record


def test_nonfinite_losses_skip_the_update_and_are_counted(data_root, tmp_path, trainer, nan_losses):
    nan_losses["nan_at"] = {2, 3}
    out = tmp_path / "out"
    trainer(*quick_args(data_root, out, "--weight-decay", "0.1"))
    weights = nan_losses["weights"]
    assert len(weights) == 6
    for step in range(5):
        unchanged = torch.equal(weights[step], weights[step + 1])
        assert unchanged == (step in {2, 3}), step  # AdamW's decay and moments did not move
    steps = read_step_records(out)
    assert [steps[(0, s)].get("skipped") for s in range(6)] == [None, None, "non-finite loss",
                                                                "non-finite loss", None, None]
    epoch = read_log(out)[0]
    assert epoch["train_nonfinite_steps"] == 2 and np.isfinite(epoch["train_loss"])
    state = torch.load(out / "training_state" / "epoch0" / "mp_rank_00_model_states.pt",
                       weights_only=False)
    assert state["global_steps"] == 4


def test_consecutive_nonfinite_losses_stop_with_a_resumable_state(data_root, tmp_path, trainer,
                                                                  nan_losses):
    nan_losses["nan_at"] = set(range(2, 100))
    out = tmp_path / "out"
    flags = train_args(data_root, out, "--epochs", "2", "--quick_break", "6", "--print_freq", "1",
                       "--max_nonfinite", "3")
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite losses"):
        trainer(*flags)
    assert (out / "training_state" / "latest").read_text() == "epoch0-step5"
    before_nan = nan_losses["weights"][2]
    nan_losses["nan_at"], nan_losses["weights"] = set(), []
    trainer(*flags)
    assert torch.equal(nan_losses["weights"][0], before_nan)  # resumed with the last good weights
    assert len(nan_losses["weights"]) == 1 + 6  # the last batch of epoch 0, then epoch 1
    assert [r["epoch"] for r in read_log(out)] == [0, 1]


def test_two_ranks_skip_together_under_zero3(data_root, tmp_path):
    """A NaN on one rank only: both ranks skip (no collective is left waiting) and train on."""
    script = tmp_path / "nan_on_rank1.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "import fine_tuning, models, utils\n"
        "original, calls = models.Uni_Sign.forward, []\n"
        "def forward(self, src, tgt):\n"
        "    out = original(self, src, tgt)\n"
        "    if self.training:\n"
        "        calls.append(1)\n"
        "        if (utils.get_rank(), len(calls)) in {(1, 2), (0, 4), (1, 4)}:\n"
        "            out['loss'] = out['loss'] * float('nan')\n"
        "    return out\n"
        "models.Uni_Sign.forward = forward\n"
        "fine_tuning.run_command_line(fine_tuning.main, utils.parse_args('t'))\n")
    out = tmp_path / "out"
    cmd = [*DEEPSPEED, "--num_gpus", "2", "--master_port", free_port(), str(script),
           *train_args(data_root, out, "--epochs", "1", "--quick_break", "5", "--print_freq", "1",
                       "--zero_stage", "3", "--gradient-accumulation-steps", "2")]
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = read_step_records(out)
    assert [s for (_, s), r in sorted(steps.items()) if "skipped" in r] == [1, 3]
    assert read_log(out)[0]["train_nonfinite_steps"] == 2
    assert "update skipped on every rank" in proc.stdout


# ----------------------------------------------------------------------------- determinism

def test_same_seed_gives_the_same_losses(data_root, tmp_path, trainer):
    losses = []
    for name in ("first", "second"):
        trainer(*quick_args(data_root, tmp_path / name, "--skip_test_eval", "--eval_every", "9"))
        losses.append([r["loss"] for _, r in sorted(read_step_records(tmp_path / name).items())])
    assert len(losses[0]) == 6 and losses[0] == losses[1]
