"""script/check_data.py: a full scan of a dataset's splits with a report and an exit status."""
import gzip
import json
import os
import pickle
import subprocess
import sys

import numpy as np
from conftest import load_file_module

import sample_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script():
    return load_file_module("script/check_data.py")


def corrupt(data_root):
    """Five bad samples over the three splits; returns {name: problem kind}."""
    poses = os.path.join(data_root, "Demo", "pose_format")

    def rewrite(name, change):
        path = os.path.join(poses, f"{name}.pkl")
        with open(path, "rb") as f:
            pose = pickle.load(f)
        with open(path, "wb") as f:
            pickle.dump(change(pose), f)

    os.remove(os.path.join(poses, "demo_train_00001.pkl"))
    rewrite("demo_train_00004", lambda p: {"keypoints": p["keypoints"][:, :, :17],
                                           "scores": p["scores"][:, :, :17]})
    rewrite("demo_train_00009", lambda p: dict(p, scores=np.zeros_like(p["scores"])))
    rewrite("demo_dev_00003", lambda p: dict(p, keypoints=p["keypoints"] * np.inf))
    labels_path = os.path.join(data_root, "Demo", "labels.test")
    with gzip.open(labels_path, "rb") as f:
        labels = pickle.load(f)
    labels["demo_test_00006"]["text"] = None
    with gzip.open(labels_path, "wb") as f:
        pickle.dump(labels, f)
    return {"demo_train_00001": "missing file", "demo_train_00004": "wrong shape or format",
            "demo_train_00009": "low confidence", "demo_dev_00003": "non-finite values",
            "demo_test_00006": "bad label entry"}


def test_clean_dataset_passes_with_length_statistics(data_root, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    status = load_script().main(["--dataset", "Demo", "--data_root", data_root,
                                 "--report", str(report_path)])
    assert status == 0
    report = json.loads(report_path.read_text())
    assert report["bad"] == 0 and list(report["splits"]) == ["train", "dev", "test"]
    train = report["splits"]["train"]
    assert train["samples"] == train["usable"] == 48 and train["problems"] == []
    frames = train["clip_frames"]
    assert 0 < frames["min"] <= frames["median"] <= frames["max"]
    assert "Demo: every sample is usable" in capsys.readouterr().out


def test_every_bad_sample_is_reported_with_its_file_and_kind(data_root, tmp_path, capsys,
                                                             monkeypatch):
    expected = corrupt(data_root)
    monkeypatch.setattr(sample_checks, "MIN_PARALLEL_CLIPS", 1)  # read in worker processes
    report_path = tmp_path / "report.json"
    status = load_script().main(["--dataset", "Demo", "--data_root", data_root, "--workers", "2",
                                 "--report", str(report_path)])
    assert status == 1
    report = json.loads(report_path.read_text())
    assert report["bad"] == 5
    problems = [p for split in report["splits"].values() for p in split["problems"]]
    for name, kind in expected.items():
        found = [p for p in problems if name in p["problem"]]
        assert len(found) == 1 and found[0]["kind"] == kind, (name, found)
    assert report["splits"]["train"]["problem_counts"] == {
        "missing file": 1, "wrong shape or format": 1, "low confidence": 1}
    assert report["splits"]["train"]["usable"] == 45
    assert report["splits"]["test"]["problems"][0]["file"].endswith("labels.test")
    printed = capsys.readouterr().out
    assert "Demo: 5 bad samples" in printed
    assert "demo_train_00001.pkl: pose file not found" in printed


def test_command_line_exit_status_for_an_unknown_dataset(tmp_path):
    proc = subprocess.run([sys.executable, "script/check_data.py", "--dataset", "Nope",
                           "--data_root", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert "unknown dataset 'Nope'" in proc.stderr
