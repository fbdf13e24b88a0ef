import os

import pytest
import torch

import checkpoint
import utils


def test_atomic_save_keeps_previous_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "best_checkpoint.pth")
    checkpoint.atomic_torch_save({"model": {"w": torch.ones(2)}}, path)
    with pytest.raises(Exception):
        checkpoint.atomic_torch_save({"model": lambda: None}, path)  # not picklable
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["best_checkpoint.pth"]


def test_plain_args_load_with_weights_only(tmp_path):
    args = utils.parse_args("t", ["--batch_size", "2"])
    args.device = torch.device("cpu")
    path = str(tmp_path / "c.pth")
    checkpoint.atomic_torch_save({"model": {}, "args": checkpoint.plain_args(args)}, path)
    loaded = torch.load(path, weights_only=True)["args"]
    assert loaded["batch_size"] == 2 and "device" not in loaded
    assert loaded["stgcn_channels"] == [64, 128, 256]


def test_prune_epoch_weights_keeps_newest_numerically(tmp_path):
    for epoch in (1, 2, 9, 10):
        (tmp_path / f"checkpoint_{epoch}.pth").write_bytes(b"x")
    (tmp_path / "best_checkpoint.pth").write_bytes(b"x")
    checkpoint.prune_epoch_weights(str(tmp_path), keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["best_checkpoint.pth", "checkpoint_10.pth",
                                            "checkpoint_9.pth"]


def test_latest_training_state_ignores_dangling_pointer(tmp_path):
    root = tmp_path / "training_state"
    root.mkdir()
    assert checkpoint.latest_training_state(str(tmp_path)) is None
    (root / "latest").write_text("epoch3")
    assert checkpoint.latest_training_state(str(tmp_path)) is None
    (root / "epoch3").mkdir()
    assert checkpoint.latest_training_state(str(tmp_path)) == "epoch3"
