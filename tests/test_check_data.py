"""script/check_data.py: a full scan of a dataset's splits with a report and an exit status."""
import gzip
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
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


def test_progress_off_a_terminal_is_a_line_per_split(data_root, capsys):
    assert load_script().main(["--dataset", "Demo", "--data_root", data_root, "--workers",
                               "1"]) == 0
    out, err = capsys.readouterr()
    for phase, clips in (("train", 48), ("dev", 8), ("test", 8)):
        assert f"checking {phase}: {clips} of {clips} clips (" in out
    assert "\r" not in out + err


def test_progress_on_a_terminal_is_a_bar(data_root, capsys, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    terminal = Terminal()
    monkeypatch.delenv("TERM", raising=False)
    monkeypatch.setattr(sys, "stderr", terminal)
    assert load_script().main(["--dataset", "Demo", "--data_root", data_root, "--splits",
                               "train", "--workers", "1"]) == 0
    assert "checking train" in terminal.getvalue() and "48/48" in terminal.getvalue()
    assert "of 48 clips" not in capsys.readouterr().out


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


def rewrite_pose(data_root, name, change):
    path = os.path.join(data_root, "Demo", "pose_format", f"{name}.pkl")
    with open(path, "rb") as f:
        pose = pickle.load(f)
    with open(path, "wb") as f:
        pickle.dump(change(pose), f)


def rewrite_label(data_root, phase, change):
    path = os.path.join(data_root, "Demo", f"labels.{phase}")
    with gzip.open(path, "rb") as f:
        labels = pickle.load(f)
    change(labels)
    with gzip.open(path, "wb") as f:
        pickle.dump(labels, f)


def expand(pose):
    """One frame referenced 5000 times: a small file whose frames stack to 5000."""
    return {"keypoints": [pose["keypoints"][0]] * 5000, "scores": [pose["scores"][0]] * 5000}


def renamed(old, new):
    def rename(labels):
        labels[new] = dict(labels.pop(old), name=new)
    return rename


def with_value(key, value, dtype=np.float64):
    """A change setting one value of frame 1 of `key`, stored in `dtype`."""
    def change(pose):
        values = np.array(pose[key], dtype=dtype)
        values[(1, 0, 5, 0)[:values.ndim]] = value
        return dict(pose, **{key: values})
    return change


def as_slow_pose_file(root, name="demo_train_00006"):
    """The clip as a .pose file at 0.001 frames per second: a short file that --pose_fps 25
    would resample to 25000 times its frames."""
    import mediapipe_pose
    from keypoints import read_pose_pickle
    poses = os.path.join(root, "Demo", "pose_format")
    clip = read_pose_pickle(os.path.join(poses, f"{name}.pkl"))
    holistic = mediapipe_pose.wholebody_to_holistic(
        clip["keypoints"][:, 0] * 640, clip["scores"][:, 0], 640, 480, fps=0.001)
    mediapipe_pose.write_pose(holistic, os.path.join(poses, f"{name}.pose"))
    rewrite_label(root, "train", lambda labels: labels[name].update(video_path=f"{name}.pose"))


# case: (problem kind, the clip as the messages name it, damage, extra flags of both commands)
BAD_DATA = {
    "extreme coordinates": ("extreme values", "demo_train_00003.pkl", lambda root: rewrite_pose(
        root, "demo_train_00003", lambda p: dict(p, keypoints=p["keypoints"] * 1e30)), []),
    "coordinates beyond float32": ("extreme values", "demo_train_00003.pkl", lambda root:
        rewrite_pose(root, "demo_train_00003", with_value("keypoints", 1e300)), []),
    "extreme scores": ("extreme values", "demo_train_00004.pkl", lambda root: rewrite_pose(
        root, "demo_train_00004", with_value("scores", 1e30)), []),
    "blank text": ("bad label entry", "'demo_train_00005'", lambda root: rewrite_label(
        root, "train", lambda labels: labels["demo_train_00005"].update(text=" \t ")), []),
    "line break in a name": ("bad label entry", "'demo_train\\n00002'", lambda root:
        rewrite_label(root, "train", renamed("demo_train_00002", "demo_train\n00002")), []),
    "name splitting a prediction line": ("bad label entry", "'demo_train_00009, prediction: '",
        lambda root: rewrite_label(root, "train", renamed(
            "demo_train_00009", "demo_train_00009, prediction: ")), []),
    "pose path leaving the pose folder": ("bad label entry", "'demo_train_00007'", lambda root:
        rewrite_label(root, "train", lambda labels: labels["demo_train_00007"].update(
            video_path="../../secret.mp4")), []),
    "absolute pose path": ("bad label entry", "'demo_train_00010'", lambda root: rewrite_label(
        root, "train", lambda labels: labels["demo_train_00010"].update(
            video_path="/etc/secret.mp4")), []),
    "expanding pickle": ("too many frames", "demo_train_00008.pkl", lambda root: rewrite_pose(
        root, "demo_train_00008", expand), []),
    "expanding frame rate": ("too many frames", "demo_train_00006.pose", as_slow_pose_file,
                             ["--pose_fps", "25"]),
}


@pytest.fixture
def trainer_verdict(in_process_trainer, monkeypatch, tmp_path):
    """The trainer's error line for a run of fine_tuning.py's command line on the Demo set."""
    import fine_tuning
    import flags
    from test_fine_tuning import train_args
    # run_command_line ends the process group, which the in-process runs of a session share
    monkeypatch.setattr(fine_tuning.utils, "close_distributed", lambda: None)

    def verdict(data_root, *extra):
        args = flags.parse_args("fine_tuning.py", train_args(data_root, tmp_path / "run", *extra))
        with pytest.raises(SystemExit) as stop:
            fine_tuning.run_command_line(fine_tuning.main, args)
        return str(stop.value.code)
    return verdict


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_trainer_and_check_data_agree_on_bad_data(case, data_root, trainer_verdict, capsys):
    """check_data.py reports the sample the trainer's pre-scan stops on, with the same kind."""
    kind, clip, damage, extra = BAD_DATA[case]
    damage(data_root)
    extra = ["--max_frames_per_clip", "1000", *extra]
    status = load_script().main(["--dataset", "Demo", "--data_root", data_root, "--splits",
                                 "train", *extra])
    out = capsys.readouterr().out
    reported = [line for line in out.splitlines() if line.startswith(f"  [{kind}] ")]
    assert status == 1 and len(reported) == 1 and clip in reported[0], out
    message = trainer_verdict(data_root, *extra)
    assert message.startswith("error: train split (") and f"({kind} 1)" in message, message
    assert clip in message and "parameters:" not in capsys.readouterr().out


def test_skip_bad_samples_skips_what_check_data_reports(data_root, tmp_path, trainer_verdict,
                                                        capsys):
    """Every damage at once: the trainer trains without them, listing each one of them, and
    check_data.py lists the same messages."""
    import fine_tuning
    import flags
    from test_fine_tuning import train_args
    for _, _, damage, _ in BAD_DATA.values():
        damage(data_root)
    extra = ["--max_frames_per_clip", "1000", "--pose_fps", "25"]
    report_path = tmp_path / "report.json"
    assert load_script().main(["--dataset", "Demo", "--data_root", data_root, "--report",
                               str(report_path), *extra]) == 1
    reported = json.loads(report_path.read_text())["splits"]["train"]["problems"]
    out = tmp_path / "run"
    fine_tuning.run_command_line(fine_tuning.main, flags.parse_args("fine_tuning.py", train_args(
        data_root, out, "--skip_bad_samples", "--epochs", "1", "--quick_break", "1",
        "--skip_test_eval", *extra)))
    skipped = (out / "bad_samples.txt").read_text().splitlines()
    assert sorted(skipped) == sorted(f"train\t{p['problem']}" for p in reported)
    assert len(skipped) == len(BAD_DATA) - 1  # two cases damage the same clip
    assert f"train: {48 - len(skipped)} clips" in capsys.readouterr().out


def test_line_breaks_inside_texts_read_as_spaces(data_root):
    from labels import load_labels
    rewrite_label(data_root, "train", lambda labels: labels["demo_train_00000"].update(
        text="two\nlines\r\nhere"))
    entries = load_labels(os.path.join(data_root, "Demo", "labels.train"))
    assert entries[0]["text"] == "two lines  here"


def test_clips_in_two_splits_are_counted_not_refused(data_root, tmp_path, capsys):
    import config
    import fine_tuning
    import flags

    def copy_two_training_clips(labels):
        train_path = os.path.join(data_root, "Demo", "labels.train")
        with gzip.open(train_path, "rb") as f:
            train = pickle.load(f)
        for name in ("demo_train_00000", "demo_train_00001"):
            labels[name] = train[name]
    rewrite_label(data_root, "test", copy_two_training_clips)
    report_path = tmp_path / "report.json"
    status = load_script().main(["--dataset", "Demo", "--data_root", data_root,
                                 "--report", str(report_path)])
    assert status == 0
    assert json.loads(report_path.read_text())["overlaps"] == {"train/test": 2}
    assert "warning: 2 clips of test are also in train" in capsys.readouterr().out
    args = flags.parse_args("fine_tuning.py", ["--dataset", "Demo", "--data_root", data_root,
                                               "--num_workers", "0"])
    fine_tuning.build_datasets(args, config.get_dataset("Demo"),
                               config.resolve_paths("Demo", data_root), config.PHASES)
    assert "warning: clips in two splits (same name or pose file): train/test 2" in \
        capsys.readouterr().out


def test_an_empty_training_split_is_not_called_usable(data_root, trainer_verdict, capsys):
    rewrite_label(data_root, "train", lambda labels: labels.clear())
    status = load_script().main(["--dataset", "Demo", "--data_root", data_root])
    assert status == 1
    assert "error: the train split has no usable sample" in capsys.readouterr().out
    assert trainer_verdict(data_root).endswith("labels.train: the train split is empty")


def test_a_split_of_bad_clips_only_is_not_called_usable(data_root, trainer_verdict, capsys):
    for index in range(8):
        os.remove(os.path.join(data_root, "Demo", "pose_format", f"demo_dev_{index:05d}.pkl"))
    status = load_script().main(["--dataset", "Demo", "--data_root", data_root])
    assert status == 1
    out = capsys.readouterr().out
    assert "dev: 0 of 8 samples usable" in out
    assert "error: the dev split has no usable sample" in out
    message = trainer_verdict(data_root, "--skip_bad_samples")
    assert message.endswith("labels.dev: the dev split is empty once its 8 bad samples are "
                            "skipped"), message


def frame_count(path):
    with open(path, "rb") as f:
        return len(pickle.load(f)["scores"])


def test_clips_of_a_packed_store_are_held_to_the_same_checks(data_root, trainer_verdict,
                                                             monkeypatch, capsys):
    """A store packed before the coordinate bound existed, and a frame cap below a stored clip's
    length: both commands refuse the same store clips."""
    import keypoints
    from pose_store import pack
    rewrite_pose(data_root, "demo_train_00003", lambda p: dict(p, keypoints=p["keypoints"] * 1e30))
    poses = os.path.join(data_root, "Demo", "pose_format")
    with monkeypatch.context() as unbounded:
        unbounded.setattr(keypoints, "MAX_COORDINATE", np.inf)
        pack(poses, poses, workers=1, progress=False)
    longest = max(frame_count(os.path.join(poses, f"demo_train_{i:05d}.pkl")) for i in range(48))
    for name in os.listdir(poses):  # only the store is left to read
        if name.endswith(".pkl"):
            os.remove(os.path.join(poses, name))
    extra = ["--max_frames_per_clip", str(longest - 1)]
    assert load_script().main(["--dataset", "Demo", "--data_root", data_root, "--splits",
                               "train", *extra]) == 1
    out = capsys.readouterr().out
    refused = [line for line in out.splitlines() if line.startswith("  [")]
    assert sum("[extreme values]" in line and "'demo_train_00003'" in line
               for line in refused) == 1, out
    too_long = [line for line in refused if line.startswith("  [too many frames]")]
    assert too_long and all("(clip 'demo_train_" in line for line in too_long)
    message = trainer_verdict(data_root, *extra)
    assert f"{len(refused)} of 48 samples are unusable" in message
    assert f"too many frames {len(too_long)}" in message and "extreme values 1" in message


def test_clips_are_the_same_by_their_pose_file_wherever_the_split_keeps_it(tmp_path, data_root,
                                                                           capsys):
    """How2Sign keeps each split's poses in a folder of its own: equal file names there are
    different clips. A path spelled another way to the same file is the same clip."""
    from conftest import label, make_pose, write_labels, write_pickle
    (tmp_path / "How2Sign").mkdir()
    for phase in ("train", "test"):
        poses = tmp_path / "poses" / "How2Sign" / "pose_format" / phase
        poses.mkdir(parents=True)
        entries = []
        for index in range(3):
            write_pickle(poses / f"clip_{index}.pkl", make_pose(12, seed=index))
            entries.append(dict(label(f"{phase}_{index}", f"sentence {index}"),
                                video_path=f"clip_{index}.mp4"))
        write_labels(tmp_path / "How2Sign" / f"labels.{phase}", entries)
    report_path = tmp_path / "report.json"
    assert load_script().main(["--dataset", "How2Sign", "--data_root", str(tmp_path),
                               "--pose_root", str(tmp_path / "poses"), "--report",
                               str(report_path)]) == 0
    assert json.loads(report_path.read_text())["overlaps"] == {}

    rewrite_label(data_root, "test", lambda labels: labels["demo_test_00001"].update(
        video_path="./demo_train_00004.mp4"))
    assert load_script().main(["--dataset", "Demo", "--data_root", data_root, "--report",
                               str(report_path)]) == 0
    assert json.loads(report_path.read_text())["overlaps"] == {"train/test": 1}
