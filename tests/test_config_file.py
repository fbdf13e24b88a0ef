"""config_file: --config FILE through the trainer's own parser (flags.parse_args), its errors,
its refusals, and the run.yaml a run leaves, read back with --config."""
import json

import pytest
import yaml

import config_file
import flags


def write(tmp_path, content, name="run.yaml"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def parse(*argv):
    return flags.parse_args("fine_tuning.py", list(argv))


def stopped(argv, capsys):
    """The one error line of a parse that must stop (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        parse(*argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_a_yaml_file_sets_flags_in_either_spelling(tmp_path):
    path = write(tmp_path, "batch-size: 4\nmin_lr: 1e-6\nstgcn_channels: [8, 16]\n"
                           "hidden_dim: 16\nuse_signcl: true\nsigncl_weight: 0.5\n"
                           "opt_betas: [0.9, 0.98]\nembed_once: off\n")
    args = parse("--config", path)
    assert args.batch_size == 4 and args.min_lr == 1e-6 and args.stgcn_channels == [8, 16]
    assert args.use_signcl and args.signcl_weight == 0.5 and args.opt_betas == [0.9, 0.98]
    assert args.embed_once == "off"  # YAML reads off as false; the flag's word comes back
    assert args.config == path
    assert {"batch_size", "min_lr", "use_signcl", "signcl_weight"} <= args.given_flags
    assert "lr" not in args.given_flags and args.lr == 1e-3


def test_a_json_file_and_the_command_line_over_it(tmp_path):
    path = write(tmp_path, {"batch_size": 4, "epochs": 3, "pin_mem": False}, "run.json")
    args = parse("--epochs", "5", "--config", path, "--batch_size", "2")
    assert args.batch_size == 2 and args.epochs == 5 and args.pin_mem is False
    assert parse("--config", path).epochs == 3


def test_a_switch_set_false_is_left_off(tmp_path):
    args = parse("--config", write(tmp_path, "use_sst: false\nshare_classifier: false\n"
                                             "task: CSLR\nhead: ctc\n"))
    assert not args.use_sst and "use_sst" not in args.given_flags
    assert args.share_classifier is False and args.head == "ctc"


@pytest.mark.parametrize("content, message", [
    ("batch_size: 0\n", "batch_size: expected an integer >= 1, got 0"),
    ("lr: nan\n", "lr: expected a finite number > 0, got nan"),
    ("batch_sise: 3\n", "batch_sise: unknown flag (did you mean batch_size"),
    ("help: true\n", "help: unknown flag"),
    ("lr: [1, 2]\n", "lr: expected one value, got a list"),
    ("stgcn_channels: {a: 1}\n", "stgcn_channels: expected one value, got dict"),
    ("use_signcl: 3\n", "use_signcl: expected true or false, got 3"),
    ("dtype: fp64\n", "dtype: expected one of bf16, fp16, fp32, got fp64"),
    ("zero_stage: 5\n", "zero_stage: expected 0, 1, 2, 3 or auto, got '5'"),
    ("num_beams: true\n", "num_beams: expected a value, got true"),
    ("max_new_tokens:\n", "max_new_tokens: no value given"),
    ("batch_size: 2\nbatch-size: 3\n", "batch-size: given twice (also as batch_size)"),
    ("- batch_size\n", "expected a mapping of flag names to values, got a list"),
    ("batch_size: [2\n", "not valid YAML"),
])
def test_bad_keys_and_values_name_the_file_and_the_key(tmp_path, capsys, content, message):
    path = write(tmp_path, content)
    err = stopped(["--config", path], capsys)
    assert err.startswith(f"fine_tuning.py: error: --config {path}: {message}"), err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_or_broken_json_file(tmp_path, capsys):
    missing = str(tmp_path / "none.yaml")
    assert f"--config {missing}: cannot be read" in stopped(["--config", missing], capsys)
    broken = write(tmp_path, '{"batch_size": 2,', "run.json")
    assert f"--config {broken}: not valid JSON" in stopped(["--config", broken], capsys)


def test_config_without_a_file_is_the_parsers_error(capsys):
    assert "argument --config: expected one argument" in stopped(["--config"], capsys)


def test_a_flag_in_the_file_that_cannot_act_is_refused(tmp_path, capsys):
    path = write(tmp_path, "signcl_weight: 0.5\nnum_beams: 2\ntask: CSLR\nhead: ctc\n")
    err = stopped(["--config", path], capsys)
    assert "--signcl_weight sets a regulariser that is off" in err
    assert "--num_beams acts on mT5, which --head ctc does not build" in err


def test_run_yaml_reproduces_the_run_with_config(tmp_path):
    argv = ["--batch_size", "3", "--stgcn_channels", "8,16", "--hidden_dim", "16",
            "--use_hyperbolic", "--alpha", "0.6", "--opt-betas", "0.9", "0.99",
            "--embed_once", "off", "--no-pin-mem", "--output_dir", str(tmp_path / "out"),
            "--overwrite", "--local_rank", "0", "--task", "CSLR"]
    args = parse(*argv)
    text = config_file.run_yaml(args, set(args.given_flags))
    saved = yaml.safe_load(text)
    assert saved["batch_size"] == 3 and saved["stgcn_channels"] == [8, 16]
    assert saved["pin_mem"] is False and saved["embed_once"] == "off"
    assert not {"overwrite", "local_rank", "config"} & set(saved)
    again = parse("--config", write(tmp_path, text))
    left_out = {"config", "given_flags", "overwrite"}
    assert {k: v for k, v in vars(again).items() if k not in left_out} == \
        {k: v for k, v in vars(args).items() if k not in left_out}


def test_the_trainer_reads_a_config_and_saves_run_yaml(demo_root, tmp_path, in_process_trainer):
    import fine_tuning
    from test_fine_tuning import train_args
    out = tmp_path / "run"
    path = write(tmp_path, "epochs: 1\nquick_break: 2\nbatch-size: 2\nseed: 7\n")
    args = flags.parse_args("fine_tuning.py", [*train_args(demo_root, out), "--config", path])
    assert args.batch_size == 4  # train_args gives --batch-size 4 on the command line
    fine_tuning.main(args)
    saved = json.loads((out / "args.json").read_text())
    assert saved["config"] == path and saved["seed"] == 7 and saved["quick_break"] == 2
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["seed"] == 7 and run["batch_size"] == 4 and run["dataset"] == "Demo"
    assert "config" not in run and "given_flags" not in saved
    again = flags.parse_args("fine_tuning.py", ["--config", str(out / "run.yaml")])
    assert (again.seed, again.batch_size, again.epochs, again.output_dir) == (7, 4, 1, str(out))
