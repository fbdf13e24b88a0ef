import os

import pytest

import config


def test_resolve_known_dataset_uses_roots_and_phase(tmp_path):
    paths = config.resolve_paths("WLASL", str(tmp_path / "d"), str(tmp_path / "p"), "/m")
    assert paths["labels"]["dev"] == os.path.join(str(tmp_path / "d"), "WLASL/labels-2000.dev")
    assert paths["pose_dirs"]["test"] == f"{tmp_path / 'p'}/WLASL/pose_format/test"
    assert paths["mt5_path"] == "/m"


def test_how2sign_has_no_dev_split():
    assert config.resolve_paths("How2Sign")["labels"]["dev"] is None


def test_demo_keeps_its_own_mt5_under_data_root(tmp_path):
    paths = config.resolve_paths("Demo", str(tmp_path))
    assert paths["mt5_path"] == f"{tmp_path}/Demo/mt5"
    assert paths["pose_dirs"]["train"] == f"{tmp_path}/Demo/pose_format"


def test_unknown_dataset_is_named():
    with pytest.raises(config.ConfigError, match="Phoenix9"):
        config.resolve_paths("Phoenix9")


def test_validate_names_every_missing_path(tmp_path):
    paths = config.resolve_paths("CSL_Daily", str(tmp_path), str(tmp_path), str(tmp_path / "nomt5"))
    with pytest.raises(config.ConfigError) as err:
        config.validate_paths(paths, config.PHASES)
    message = str(err.value)
    assert "nomt5" in message and "labels.train" in message and "pose_format" in message


def test_validate_passes_when_everything_exists(tmp_path):
    (tmp_path / "CSL_Daily" / "pose_format").mkdir(parents=True)
    for phase in config.PHASES:
        (tmp_path / "CSL_Daily" / f"labels.{phase}").write_bytes(b"")
    paths = config.resolve_paths("CSL_Daily", str(tmp_path), str(tmp_path), str(tmp_path))
    config.validate_paths(paths, config.PHASES)


def test_environment_variables_set_the_defaults(tmp_path):
    import subprocess
    import sys
    code = "import config; print(config.resolve_paths('CSL_Daily')['labels']['train'])"
    env = {**os.environ, "SIGN_DATA_ROOT": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(config.__file__), check=True).stdout.strip()
    assert out == os.path.join(str(tmp_path), "CSL_Daily/labels.train")


def test_phoenix_entries(tmp_path):
    paths = config.resolve_paths("PHOENIX2014", str(tmp_path / "d"), str(tmp_path / "p"), "/m")
    assert paths["labels"]["train"] == os.path.join(
        str(tmp_path / "d"), "phoenix2014/phoenix2014-groundtruth-train.stm")
    assert paths["pose_dirs"]["dev"] == f"{tmp_path / 'p'}/phoenix2014/pose_format"
    paths = config.resolve_paths("PHOENIX2014T", str(tmp_path / "d"), str(tmp_path / "p"))
    assert paths["labels"]["test"].endswith("phoenix2014T/PHOENIX-2014-T.test.corpus.csv")
    paths = config.resolve_paths("PhoenixDemo", str(tmp_path))
    assert paths["labels"]["dev"] == os.path.join(
        str(tmp_path), "PhoenixDemo/phoenix2014-groundtruth-dev.stm")
    assert paths["pose_dirs"]["test"] == f"{tmp_path}/PhoenixDemo/pose_format"


def test_spec_checks_its_fields():
    with pytest.raises(config.ConfigError, match="label_format 'xml'"):
        config.DatasetSpec(labels={p: "x" for p in config.PHASES}, label_format="xml",
                           pose_dir="p", language="German")
    with pytest.raises(config.ConfigError, match="tasks"):
        config.DatasetSpec(labels={p: "x" for p in config.PHASES}, label_format="stm",
                           pose_dir="p", language="German", tasks=("MT",))


def test_prompt_and_scoring_come_from_the_registry():
    assert config.get_dataset("CSL_Daily").prompt == "Translate sign language video to Chinese: "
    assert config.get_dataset("PHOENIX2014T").prompt == "Translate sign language video to German: "
    assert config.get_dataset("CSL_Daily").scoring_level("SLT") == "char"
    assert config.get_dataset("CSL_Daily").scoring_level("CSLR") == "word"
    assert config.get_dataset("OpenASL").scoring_level("SLT") == "word"


def test_a_dataset_registered_here_trains_and_evaluates(demo_root, tmp_path, request,
                                                       in_process_trainer):
    """A new corpus in PHOENIX-2014-T's corpus format, German, added through the registry
    alone, trains and evaluates through fine_tuning.py with its own prompt."""
    import json

    import torch
    from conftest import write_label_file

    import fine_tuning
    import flags
    from labels import load_labels
    from models import SignTranslator
    for phase, size in (("train", 8), ("dev", 2), ("test", 3)):
        entries = load_labels(os.path.join(demo_root, "Demo", f"labels.{phase}"))[:size]
        write_label_file(tmp_path / f"tiny.{phase}.corpus.csv", "corpus_csv", entries)
    config.register_dataset(
        "TinyCorpus", labels={p: f"tiny.{p}.corpus.csv" for p in config.PHASES},
        label_format="corpus_csv", pose_dir=os.path.join(demo_root, "Demo", "pose_format"),
        language="German", tasks=("SLT", "CSLR"))
    request.addfinalizer(lambda: config.DATASETS.pop("TinyCorpus"))
    out = tmp_path / "run"
    mt5 = os.path.join(demo_root, "Demo", "mt5")
    args = flags.parse_args("fine_tuning.py", [
        "--dataset", "TinyCorpus", "--data_root", str(tmp_path), "--mt5_path", mt5,
        "--output_dir", str(out), "--epochs", "1", "--batch-size", "4",
        "--gradient-accumulation-steps", "1", "--num_workers", "0", "--dtype", "fp32",
        "--stgcn_channels", "8,16", "--hidden_dim", "16", "--temporal_layers", "1",
        "--max_length", "32", "--num_beams", "1", "--max_new_tokens", "4"])
    os.makedirs(out)
    fine_tuning.main(args)
    log = [json.loads(line) for line in open(out / "log.txt")]
    assert "test_bleu4" in log[-1] and "dev_rouge" in log[-1]
    assert len(open(out / "test_tmp_pres.txt").read().splitlines()) == 3
    saved = torch.load(out / "best_checkpoint.pth", weights_only=True)
    assert saved["args"]["language"] == "German"
    stored = flags.get_args_parser().parse_args([])
    vars(stored).update(saved["args"], mt5_path=mt5)
    assert SignTranslator(stored).prompt == "Translate sign language video to German: "
