"""Tests for resume_flags.py: every flag is honoured or refused when a run resumes, and a
changed learning rate or length takes effect."""
import json
import os

import pytest

import fine_tuning
import flags
import resume_flags


def test_every_flag_is_honoured_or_refused():
    dests = {action.dest for action in flags.get_args_parser()._actions if action.dest != "help"}
    assert not resume_flags.HONOURED & set(resume_flags.REFUSED)
    assert dests - resume_flags.HONOURED - set(resume_flags.REFUSED) == set()


def train_args(demo_root, out, *extra):
    return flags.parse_args("fine_tuning.py", [
        "--dataset", "Demo", "--data_root", demo_root, "--output_dir", str(out),
        "--batch-size", "4", "--gradient-accumulation-steps", "1", "--num_workers", "0",
        "--dtype", "fp32", "--quick_break", "2", "--stgcn_channels", "8,16", "--hidden_dim",
        "16", "--temporal_layers", "1", "--max_length", "32", "--num_beams", "1",
        "--max_new_tokens", "4", "--sched", "constant", "--eval_every", "5", *extra])


def test_changed_flags_are_listed_and_honoured_or_refused(demo_root, tmp_path, capsys,
                                                         in_process_trainer):
    out = tmp_path / "run"
    out.mkdir()
    fine_tuning.main(train_args(demo_root, out, "--epochs", "1", "--lr", "1e-3"))
    saved = json.loads((out / "training_state" / "epoch0" / "flags.json").read_text())
    assert saved["lr"] == 1e-3 and saved["epochs"] == 1

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        fine_tuning.run_command_line(fine_tuning.main, train_args(
            demo_root, out, "--epochs", "2", "--batch-size", "2", "--hidden_dim", "16"))
    message = str(stop.value.code)
    assert message.startswith(f"error: resuming {out}/training_state/epoch0 with changed flags")
    assert f"--batch_size 4 -> 2: {resume_flags.DATA}" in message
    assert "parameters:" not in capsys.readouterr().out  # stopped before the model was built

    fine_tuning.main(train_args(demo_root, out, "--epochs", "2", "--lr", "2e-3"))
    printed = capsys.readouterr().out
    assert "resume: --epochs 1 -> 2 (honoured)" in printed
    assert "resume: --lr 0.001 -> 0.002 (honoured)" in printed
    with open(os.path.join(out, "log.txt")) as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[0]["train_lr"] == pytest.approx(1e-3)
    assert records[1]["train_lr"] == pytest.approx(2e-3)


def test_layout_changes_beside_a_refused_one_are_all_named():
    args = flags.parse_args("fine_tuning.py", ["--zero_stage", "2"])
    args.world_size = 1
    saved = {"world_size": 2, "zero_stage": 3, "hidden_dim": 64}
    with pytest.raises(fine_tuning.config.ConfigError) as info:
        resume_flags.check_changes(saved, args, "out/training_state/epoch0")
    message = str(info.value)
    assert "--world_size 2 -> 1: the number of ranks" in message
    assert f"--zero_stage 3 -> 2: {resume_flags.OPTIMIZER}" in message
    assert f"--hidden_dim 64 -> 256: {resume_flags.MODEL}" in message
    assert "--overwrite" in message


def test_layout_changes_alone_go_through_the_universal_checkpoint(capsys):
    args = flags.parse_args("fine_tuning.py", ["--zero_stage", "2"])
    args.world_size = 1
    resume_flags.check_changes({"world_size": 2, "zero_stage": 1}, args, "out/training_state/epoch0")
    assert args.load_universal
    assert "--zero_stage 1 -> 2 (through DeepSpeed's universal checkpoint)" in capsys.readouterr().out


def test_another_number_of_ranks_in_mid_epoch_is_refused_with_the_reason():
    args = flags.parse_args("fine_tuning.py", [])
    args.world_size = 1
    with pytest.raises(fine_tuning.config.ConfigError, match="saved in mid-epoch by 2 ranks"):
        resume_flags.check_changes({"world_size": 2}, args, "out/training_state/epoch0-step4")
