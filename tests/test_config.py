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
