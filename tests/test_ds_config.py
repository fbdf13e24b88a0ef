"""Tests for ds_config.py: the generated DeepSpeed config, a user's --deepspeed_config merged
over it (file wins, nested sections merged, flag-owned keys checked), and the run files."""
import json

import pytest

import ds_config
import flags
from config import ConfigError
from test_fine_tuning import train_args


def parse(*argv):
    return flags.parse_args("t", list(argv))


def user_file(tmp_path, content):
    path = tmp_path / "ds.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_generated_config_follows_flags():
    args = parse("--zero_stage", "3", "--dtype", "bf16", "--batch-size", "4",
                 "--gradient-accumulation-steps", "2", "--offload")
    cfg = ds_config.build(args)
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["bf16"]["enabled"]
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    fp32 = ds_config.build(parse("--dtype", "fp32"))
    assert "bf16" not in fp32 and "fp16" not in fp32


def test_the_file_wins_key_by_key_and_nested_sections_merge(tmp_path):
    path = user_file(tmp_path, {
        "zero_optimization": {"reduce_bucket_size": 12345, "offload_optimizer": {
            "pin_memory": True}},
        "fp16": {"loss_scale_window": 500, "initial_scale_power": 12},
        "steps_per_print": 7, "communication_data_type": "fp32"})
    cfg = ds_config.build(parse("--dtype", "fp16", "--zero_stage", "2", "--offload",
                                "--deepspeed_config", path))
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 2 and zero["reduce_bucket_size"] == 12345
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert cfg["fp16"] == {"enabled": True, "loss_scale_window": 500, "initial_scale_power": 12}
    assert cfg["steps_per_print"] == 7 and cfg["communication_data_type"] == "fp32"
    assert cfg["train_micro_batch_size_per_gpu"] == 16


def test_flag_owned_keys_may_repeat_the_flag_or_say_auto(tmp_path):
    path = user_file(tmp_path, {"train_micro_batch_size_per_gpu": "auto",
                                "gradient_accumulation_steps": 3, "train_batch_size": 6,
                                "zero_optimization": {"stage": "auto"},
                                "bf16": {"enabled": "auto"}, "gradient_clipping": 1})
    cfg = ds_config.build(parse("--batch-size", "2", "--gradient-accumulation-steps", "3",
                                "--zero_stage", "1", "--dtype", "fp32",
                                "--deepspeed_config", path))
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["zero_optimization"]["stage"] == 1
    assert cfg["bf16"] == {"enabled": False} and cfg["train_batch_size"] == 6


@pytest.mark.parametrize("content, argv, named", [
    ({"train_micro_batch_size_per_gpu": 8}, ["--batch-size", "4"],
     "train_micro_batch_size_per_gpu is 8 but the flags give --batch-size 4"),
    ({"train_batch_size": 64}, ["--batch-size", "4", "--gradient-accumulation-steps", "2"],
     "train_batch_size is 64 but the flags give --batch-size x --gradient-accumulation-steps x 1"),
    ({"zero_optimization": {"stage": 3}}, ["--zero_stage", "2"],
     "zero_optimization.stage is 3 but the flags give --zero_stage 2"),
    ({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}, [],
     "zero_optimization.offload_optimizer.device is \"cpu\" but the flags give no --offload"),
    ({"fp16": {"enabled": True}}, ["--dtype", "fp32"],
     "fp16.enabled is true but the flags give --dtype fp32"),
    ({"gradient_clipping": "none"}, [], "gradient_clipping is \"none\" but the flags give "
                                        "--gradient-clipping 1"),
    ({"checkpoint": {"use_node_local_storage": True}}, [],
     "checkpoint.use_node_local_storage is true but the flags give no --node_local_storage"),
    ({"optimizer": {"type": "Adam"}}, [], "'optimizer': the trainer builds it from --opt"),
    ({"scheduler": {"type": "WarmupLR"}}, [], "'scheduler': the trainer builds it from --sched"),
])
def test_a_file_that_contradicts_a_flag_is_refused_naming_both(tmp_path, content, argv, named):
    path = user_file(tmp_path, content)
    with pytest.raises(ConfigError) as error:
        ds_config.build(parse("--dtype", "fp32", *argv, "--deepspeed_config", path))
    assert str(error.value).startswith(f"--deepspeed_config {path}: ")
    assert named in str(error.value)


@pytest.mark.parametrize("content, problem", [
    ('{"zero_optimization": {"stage": 2,}}', "not valid JSON"),
    ("[1, 2]", "expected a JSON object of DeepSpeed settings, got a list"),
    (None, "cannot be read"),
])
def test_a_bad_file_is_named(tmp_path, content, problem):
    path = user_file(tmp_path, content) if content is not None else str(tmp_path / "none.json")
    with pytest.raises(ConfigError) as error:
        ds_config.build(parse("--deepspeed_config", path))
    assert str(error.value).startswith(f"--deepspeed_config {path}: {problem}")


def test_the_trainer_writes_and_uses_the_effective_config(demo_root, tmp_path, monkeypatch,
                                                          in_process_trainer):
    import deepspeed

    import fine_tuning
    seen = []
    initialize = deepspeed.initialize

    def recording(**kwargs):
        seen.append(kwargs["config"])
        return initialize(**kwargs)
    monkeypatch.setattr(deepspeed, "initialize", recording)
    path = user_file(tmp_path, {"zero_optimization": {"reduce_bucket_size": 4096},
                                "train_micro_batch_size_per_gpu": "auto"})
    out = tmp_path / "run"
    args = flags.parse_args("fine_tuning.py", train_args(
        demo_root, out, "--epochs", "1", "--quick_break", "2", "--deepspeed_config", path))
    fine_tuning.main(args)
    written = json.loads((out / "ds_config.json").read_text())
    assert written == seen[0] and written["zero_optimization"]["reduce_bucket_size"] == 4096
    assert written["train_micro_batch_size_per_gpu"] == 4
    saved_flags = json.loads((out / "args.json").read_text())
    assert saved_flags["deepspeed_config"] == path and saved_flags["batch_size"] == 4
    assert not list(out.glob("*.tmp-*"))


@pytest.mark.parametrize("argv, saved, ranks, stage", [
    ([], None, 1, 0),
    ([], None, 4, 2),
    (["--offload"], None, 1, 2),
    (["--dtype", "fp16"], None, 1, 2),
    (["--dtype", "bf16"], None, 1, 2),
    (["--dtype", "fp32"], None, 1, 0),
    ([], {"zero_stage": 2}, 1, 2),
    ([], {"zero_stage": 0}, 8, 0),
    (["--zero_stage", "3"], {"zero_stage": 2}, 1, 3),
])
def test_auto_zero_stage(argv, saved, ranks, stage, monkeypatch, capsys):
    monkeypatch.setattr(ds_config.utils, "get_world_size", lambda: ranks)
    args = parse(*argv)
    ds_config.resolve_zero_stage(args, saved)
    assert args.zero_stage == stage
    assert ("--zero_stage auto" in capsys.readouterr().out) == ("--zero_stage" not in argv)


def test_auto_zero_stage_takes_the_files_stage(tmp_path):
    args = parse("--deepspeed_config", user_file(tmp_path, {"zero_optimization": {"stage": 1}}))
    ds_config.resolve_zero_stage(args)
    assert args.zero_stage == 1 and ds_config.build(args)["zero_optimization"]["stage"] == 1


@pytest.mark.parametrize("value", ["4", "-1", "two", ""])
def test_a_zero_stage_out_of_range_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        parse("--zero_stage", value)
    assert "--zero_stage" in capsys.readouterr().err


def test_a_bad_file_stops_the_trainer_before_the_model(demo_root, tmp_path, capsys,
                                                       in_process_trainer):
    import fine_tuning
    path = user_file(tmp_path, "{not json")
    args = flags.parse_args("fine_tuning.py", train_args(
        demo_root, tmp_path / "run", "--epochs", "1", "--deepspeed_config", path))
    with pytest.raises(SystemExit) as stop:
        fine_tuning.run_command_line(fine_tuning.main, args)
    assert str(stop.value.code).startswith(f"error: --deepspeed_config {path}: not valid JSON")
    assert "parameters:" not in capsys.readouterr().out
