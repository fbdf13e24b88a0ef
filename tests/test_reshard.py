"""Tests for reshard.py: a rerun with another ZeRO stage or number of ranks resumes through
DeepSpeed's universal checkpoint, and what cannot be converted is refused before training."""
import json
import os
import sys

import pytest
from conftest import DEEPSPEED, free_port, run_command

import checkpoint
import reshard
from test_fine_tuning import read_log, train_args


def step_losses(out):
    with open(os.path.join(out, "log_steps.txt")) as f:
        return {(r["epoch"], r["step"]): r["loss"] for r in map(json.loads, f)}


def run_in_process(demo_root, out, *extra):
    import fine_tuning
    import flags
    out.mkdir(exist_ok=True)
    fine_tuning.main(flags.parse_args("fine_tuning.py", train_args(
        demo_root, out, "--quick_break", "4", "--print_freq", "1", "--sched", "constant",
        "--warmup-epochs", "0", *extra)))


def test_another_zero_stage_continues_with_the_same_losses(demo_root, tmp_path,
                                                           in_process_trainer):
    straight, changed = tmp_path / "straight", tmp_path / "changed"
    run_in_process(demo_root, straight, "--epochs", "2", "--zero_stage", "2")
    run_in_process(demo_root, changed, "--epochs", "1", "--zero_stage", "2")
    run_in_process(demo_root, changed, "--epochs", "2", "--zero_stage", "1")
    assert (changed / "training_state" / "epoch0.universal" / "zero").is_dir()
    expected, resumed = step_losses(straight), step_losses(changed)
    assert sorted(resumed) == sorted(expected)
    for key, loss in expected.items():
        assert resumed[key] == pytest.approx(loss, rel=1e-5), key
    assert checkpoint.latest_training_state(changed) == "epoch1"


def test_one_rank_trains_without_zero_as_zero_2_does(demo_root, tmp_path, in_process_trainer,
                                                    monkeypatch):
    """--zero_stage auto on one rank: stage 0, no gradient reduction, ZeRO-2's losses; a resume
    keeps the stage the state was saved under."""
    import fine_tuning
    engines = []
    init_engine = fine_tuning.init_engine
    monkeypatch.setattr(fine_tuning, "init_engine",
                        lambda *a: engines.append(init_engine(*a)) or engines[-1])
    auto, zero2 = tmp_path / "auto", tmp_path / "zero2"
    run_in_process(demo_root, zero2, "--epochs", "1", "--zero_stage", "2")
    run_in_process(demo_root, auto, "--epochs", "2")
    assert json.loads((auto / "ds_config.json").read_text())["zero_optimization"]["stage"] == 0
    assert json.loads((auto / "args.json").read_text())["zero_stage"] == 0
    assert not engines[-1].enable_backward_allreduce
    expected, got = step_losses(zero2), step_losses(auto)
    assert [got[key] for key in sorted(expected)] == pytest.approx(
        [expected[key] for key in sorted(expected)], rel=1e-5)
    run_in_process(demo_root, zero2, "--epochs", "2")
    assert json.loads((zero2 / "args.json").read_text())["zero_stage"] == 2
    assert engines[-1].enable_backward_allreduce


def test_a_one_rank_state_without_zero_resumes_on_two_ranks_as_it_is(demo_root, tmp_path):
    out = tmp_path / "run"
    first = [sys.executable, "fine_tuning.py", *train_args(demo_root, out, "--epochs", "1",
                                                           "--quick_break", "3")]
    proc = run_command(first, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ZeRO stage 0 (--zero_stage auto: one rank in float32" in proc.stdout
    again = [*DEEPSPEED, "--num_gpus", "2", "--master_port", free_port(), "fine_tuning.py",
             *train_args(demo_root, out, "--epochs", "2", "--quick_break", "3")]
    proc = run_command(again, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--world_size 1 -> 2 (a state without ZeRO loads whole on every rank)" in proc.stdout
    assert "resumed from" in proc.stdout and not (out / "training_state" / "epoch0.universal").exists()
    assert json.loads((out / "args.json").read_text())["zero_stage"] == 0
    assert [record["epoch"] for record in read_log(out)] == [0, 1]


def test_two_ranks_state_resumes_on_one_rank(demo_root, tmp_path):
    out = tmp_path / "run"
    first = [*DEEPSPEED, "--num_gpus", "2", "--master_port", free_port(), "fine_tuning.py",
             *train_args(demo_root, out, "--epochs", "1", "--quick_break", "3",
                         "--zero_stage", "2")]
    proc = run_command(first, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = [sys.executable, "fine_tuning.py", *train_args(demo_root, out, "--epochs", "2",
                                                     "--quick_break", "3", "--zero_stage", "2")]
    proc = run_command(again, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--world_size 2 -> 1 (through DeepSpeed's universal checkpoint)" in proc.stdout
    assert "resumed from" in proc.stdout and "epoch0.universal" in proc.stdout
    assert [record["epoch"] for record in read_log(out)] == [0, 1]
    assert 0 < read_log(out)[-1]["train_loss"] < 100


@pytest.mark.parametrize("stages", [(2, 3), (3, 1), (0, 2)])
def test_a_stage_change_the_universal_checkpoint_cannot_carry_is_refused(stages):
    with pytest.raises(checkpoint.ConfigError, match="between stages 1 and 2 only"):
        reshard.convertible({"zero_stage": stages}, "epoch0")


def test_a_tampered_state_is_refused_before_conversion(tmp_path):
    root = tmp_path / "training_state"
    (root / "epoch0").mkdir(parents=True)
    bad = root / "epoch0" / "mp_rank_00_model_states.pt"
    bad.write_bytes(b"\x80\x04csubprocess\nPopen\n.")
    with pytest.raises(checkpoint.ConfigError):
        reshard.convert(str(root), "epoch0", "epoch0.universal")
    assert not (root / "epoch0.universal").exists()
