"""Tests for checkpoint.py: atomic weight files, training states and their pruning, and a run
killed while saving."""
import json
import os
import signal
import sys

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
    (tmp_path / "checkpoint_11.pth.tmp-4242").write_bytes(b"half")  # a write killed midway
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


# ----------------------------------------------------------------------------- training states

class FakeEngine:
    """Writes a DeepSpeed-like state directory: one file per call, holding `client_state`."""

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        torch.save(client_state, os.path.join(save_dir, tag, "model_states.pt"))

    def use_node_local_storage(self):
        return False


def saved_value(out, tag):
    path = out / "training_state" / tag / "model_states.pt"
    return torch.load(path, weights_only=True)["value"]


def test_saving_again_under_the_latest_tag_never_deletes_the_latest_state(tmp_path):
    engine = FakeEngine()
    save = checkpoint.save_training_state
    assert save(engine, str(tmp_path), "epoch0", {"value": 1}, keep_last=1) == "epoch0"
    # A restarted run saving the same position again must not remove what `latest` names first.
    assert save(engine, str(tmp_path), "epoch0", {"value": 2}, keep_last=1) == "epoch0.1"
    assert checkpoint.latest_training_state(str(tmp_path)) == "epoch0.1"
    assert saved_value(tmp_path, "epoch0.1") == 2
    assert sorted(os.listdir(tmp_path / "training_state")) == [".staging", "epoch0.1", "latest"]


def test_keep_last_keeps_the_newest_states_and_cleans_leftovers(tmp_path):
    engine = FakeEngine()
    root = tmp_path / "training_state"
    for epoch in range(4):
        checkpoint.save_training_state(engine, str(tmp_path), f"epoch{epoch}", {"value": epoch}, 2)
        os.utime(root / f"epoch{epoch}", (epoch, epoch))  # ordered mtimes on coarse clocks
    (root / "latest.tmp-123").write_text("epo")  # a pointer write killed before its rename
    (root / ".staging" / "epoch9").mkdir()  # a state write killed before its rename
    checkpoint.save_training_state(engine, str(tmp_path), "epoch4", {"value": 4}, 2)
    assert sorted(os.listdir(root)) == [".staging", "epoch3", "epoch4", "latest"]
    assert os.listdir(root / ".staging") == []
    assert saved_value(tmp_path, checkpoint.latest_training_state(str(tmp_path))) == 4


KILLING_TRAINER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import checkpoint, fine_tuning, utils
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

def die():
    os.kill(os.getpid(), signal.SIGKILL)

kill = os.environ.get("KILL_DURING")
if kill == "training state of epoch1":
    original_save = TorchCheckpointEngine.save
    def save(self, state_dict, path):
        if "epoch1" in path and path.endswith("_states.pt"):
            with open(path, "wb") as f:
                f.write(b"half a file")
            die()
        return original_save(self, state_dict, path)
    TorchCheckpointEngine.save = save
elif kill == "latest pointer to epoch1":
    original_write = checkpoint.atomic_write_text
    def write(path, text):
        if os.path.basename(path) == "latest" and text == "epoch1":
            with open(f"{{path}}.tmp-{{os.getpid()}}", "w") as f:
                f.write(text[:3])
            die()
        return original_write(path, text)
    checkpoint.atomic_write_text = write
fine_tuning.run_command_line(fine_tuning.main, utils.parse_args("t"))
"""


def test_run_killed_while_saving_resumes_from_the_previous_state(demo_root, tmp_path, monkeypatch):
    from test_fine_tuning import read_log, run, train_args
    script = tmp_path / "killing_trainer.py"
    script.write_text(KILLING_TRAINER.format(root=os.path.dirname(os.path.dirname(__file__))))
    flags = ["--epochs", "3", "--quick_break", "2", "--keep_last", "1", "--eval_every", "9",
             "--skip_test_eval"]
    out = tmp_path / "killed"
    cmd = [sys.executable, str(script), *train_args(demo_root, out, *flags)]
    for kill in ("training state of epoch1", "latest pointer to epoch1"):
        monkeypatch.setenv("KILL_DURING", kill)
        proc = run(cmd, tmp_path)
        assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert checkpoint.latest_training_state(str(out)) == "epoch0", kill
    monkeypatch.delenv("KILL_DURING")
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resumed from {out}/training_state/epoch0" in proc.stdout
    assert [r["epoch"] for r in read_log(out)] == [0, 1, 2]
    assert sorted(os.listdir(out / "training_state")) == [".staging", "epoch2", "latest"]
    assert sorted(p.name for p in out.glob("*.pth")) == ["best_checkpoint.pth", "checkpoint_2.pth"]

    # Each of the three runs trained epoch 1 from the epoch-0 state: identically.
    losses = {}
    with open(out / "log_steps.txt") as f:
        for record in map(json.loads, f):
            losses.setdefault((record["epoch"], record["step"]), []).append(record["loss"])
    assert losses == {(0, 0): [losses[0, 0][0]], (0, 1): [losses[0, 1][0]],
                      (1, 0): [losses[1, 0][0]] * 3, (1, 1): [losses[1, 1][0]] * 3,
                      (2, 0): [losses[2, 0][0]], (2, 1): [losses[2, 1][0]]}


class Payload:
    """Unpickling this runs a shell command: what a tampered training state could hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_tampered_training_state_is_refused_without_running_it(demo_root, tmp_path,
                                                                  in_process_trainer):
    import fine_tuning
    import flags
    out = tmp_path / "run"
    out.mkdir()
    argv = ["--dataset", "Demo", "--data_root", demo_root, "--output_dir", str(out),
            "--batch-size", "4", "--gradient-accumulation-steps", "1", "--num_workers", "0",
            "--dtype", "fp32", "--epochs", "1", "--quick_break", "2", "--stgcn_channels",
            "8,16", "--hidden_dim", "16", "--temporal_layers", "1", "--max_length", "32",
            "--num_beams", "1", "--max_new_tokens", "4"]
    fine_tuning.main(flags.parse_args("fine_tuning.py", argv))
    states = out / "training_state" / "epoch0"
    target = next(states.glob("mp_rank_*_model_states.pt"))
    marker = tmp_path / "payload_ran"
    saved = torch.load(target, weights_only=False)
    saved["extra"] = Payload(marker)
    torch.save(saved, target)
    argv[argv.index("--epochs") + 1] = "2"
    with pytest.raises(SystemExit) as stop:
        fine_tuning.run_command_line(fine_tuning.main, flags.parse_args("fine_tuning.py", argv))
    assert str(stop.value.code).startswith(f"error: {target}: refused to load")
    assert "posix.system" in str(stop.value.code) or "os.system" in str(stop.value.code)
    assert not marker.exists()
