"""End to end: a CSL-News-shaped set, packed, pretrained on 2 CPU ranks, killed and resumed in
mid-epoch, then fine-tuned on the Demo set from the pretraining checkpoint; and pretrain.sh."""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest
import torch

from pose_store import PackedPoseStore
from conftest import DEEPSPEED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
TINY_MODEL = ["--stgcn_channels", "8,16", "--hidden_dim", "16", "--temporal_layers", "1",
              "--num_beams", "1", "--max_new_tokens", "12", "--dtype", "fp32"]
NEWS_CLIPS = 130  # 128 training clips (16 steps of 2 ranks x 4) and 2 held out
STEPS_PER_EPOCH = 16
SAVE_EVERY, PAUSE_AT = 4, 6  # the killed run saves at step 4 and dies at step 6

# Runs pretraining.py with every training batch's clip names recorded as the model receives
# them (RECORD_DIR/rank{r}.jsonl); with PAUSE_AT=E:S rank 0 stops before training step S of
# epoch E and waits to be killed.
RECORDING_LAUNCHER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    import engine, pretraining, utils

    train_one_epoch, move_to_device = engine.train_one_epoch, engine.move_to_device
    current = {{}}

    def recording_epoch(args, model, data_loader, epoch, *rest, **options):
        current.update(sampler=data_loader.batch_sampler, epoch=epoch)
        try:
            return train_one_epoch(args, model, data_loader, epoch, *rest, **options)
        finally:
            current.clear()

    def recording_move(batch, device):
        if current and "name_batch" in batch:
            step = current["sampler"].batches_done
            path = os.path.join(os.environ["RECORD_DIR"], f"rank{{utils.get_rank()}}.jsonl")
            with open(path, "a") as f:
                f.write(json.dumps({{"epoch": current["epoch"], "step": step,
                                     "names": batch["name_batch"]}}) + "\\n")
            pause = os.environ.get("PAUSE_AT") == f"{{current['epoch']}}:{{step}}"
            if pause and utils.get_rank() == 0:
                time.sleep(3600)
        return move_to_device(batch, device)

    engine.train_one_epoch, engine.move_to_device = recording_epoch, recording_move
    pretraining.main(sys.argv[1:])
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="module")
def news_root(tmp_path_factory):
    """A CSL-News-shaped set packed in its pose folder, pickles removed: only the store is read."""
    from demo.news import make_news
    root = str(tmp_path_factory.mktemp("news"))
    paths = make_news(root, n=NEWS_CLIPS, seed=0)
    spec = importlib.util.spec_from_file_location("pack_poses", f"{ROOT}/script/pack_poses.py")
    pack_poses = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack_poses)
    assert pack_poses.main(["--pose_dir", paths["pose_dir"], "--out", paths["pose_dir"],
                            "--workers", "1", "--quiet"]) == 0
    assert len(PackedPoseStore(paths["pose_dir"])) == NEWS_CLIPS
    for file in os.listdir(paths["pose_dir"]):
        if file.endswith(".pkl"):
            os.remove(os.path.join(paths["pose_dir"], file))
    return root


def read_records(record_dir):
    """{(epoch, step, rank): names} of one run (a step recorded twice would be an error)."""
    records = {}
    for rank in (0, 1):
        path = os.path.join(record_dir, f"rank{rank}.jsonl")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            lines = f.read().split("\n")[:-1]  # a line being written has no newline yet
        for record in map(json.loads, lines):
            key = (record["epoch"], record["step"], rank)
            assert key not in records, f"step recorded twice: {key}"
            records[key] = record["names"]
    return records


def start_pretraining(tmp_path, news_root, demo_root, run, **env):
    launcher = tmp_path / "recording_pretraining.py"
    launcher.write_text(RECORDING_LAUNCHER.format(root=ROOT))
    record_dir = tmp_path / f"names_{run}"
    record_dir.mkdir()
    cmd = [*DEEPSPEED, "--num_gpus", "2", "--master_port", free_port(), str(launcher),
           "--data_root", news_root, "--pose_root", news_root,
           "--mt5_path", os.path.join(demo_root, "Demo", "mt5"), "--output_dir",
           str(tmp_path / "pretraining"), "--batch-size", "4", "--gradient-accumulation-steps",
           "1", "--lr", "3e-3", "--epochs", "1", "--max_length", "128", "--bucket_by_length",
           "--num_workers", "1", "--save_every_steps", str(SAVE_EVERY), "--print_freq", "4",
           *TINY_MODEL]
    with open(tmp_path / f"{run}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**ENV, "RECORD_DIR": str(record_dir), **env},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, record_dir


def wait_for_record(proc, record_dir, key, timeout=240):
    deadline = time.time() + timeout
    while key not in read_records(record_dir):
        assert proc.poll() is None, "the run ended before reaching the step to kill it at"
        assert time.time() < deadline, f"step {key} not reached"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, news_root, demo_root):
    """Pretraining killed with SIGKILL at step 6 of epoch 0, then resumed to the end."""
    tmp_path = tmp_path_factory.mktemp("pretraining")
    victim, killed_dir = start_pretraining(tmp_path, news_root, demo_root, "killed",
                                           PAUSE_AT=f"0:{PAUSE_AT}")
    try:
        wait_for_record(victim, killed_dir, (0, PAUSE_AT, 0))
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
    out = tmp_path / "pretraining"
    saved_tag = (out / "training_state" / "latest").read_text()
    resumed, resumed_dir = start_pretraining(tmp_path, news_root, demo_root, "resumed")
    try:
        returncode = resumed.wait(timeout=300)
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
    assert returncode == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    return {"out": out, "saved_tag": saved_tag, "killed": read_records(killed_dir),
            "resumed": read_records(resumed_dir), "log": (tmp_path / "resumed.log").read_text()}


def training_names(news_root):
    with open(os.path.join(news_root, "CSL_News", "CSL_News_Labels.json"), encoding="utf-8") as f:
        labels = json.load(f)
    return [entry["video"] for entry in labels[:int(len(labels) * 0.99)]]


def test_killed_and_resumed_pretraining_trains_on_every_clip_once(pretrained, news_root):
    assert pretrained["saved_tag"] == f"epoch0-step{SAVE_EVERY}"
    assert f"resumed from {pretrained['out']}/training_state/epoch0-step{SAVE_EVERY}" \
        in pretrained["log"]
    killed, resumed = pretrained["killed"], pretrained["resumed"]
    # what the killed run trained after its last saved state is lost, and trained again
    lost = {key: names for key, names in killed.items() if key[1] >= SAVE_EVERY}
    assert {key[1] for key in lost} >= set(range(SAVE_EVERY, PAUSE_AT))
    assert all(resumed[key] == names for key, names in lost.items())
    kept = {key: names for key, names in killed.items() if key[1] < SAVE_EVERY}
    expected = Counter(training_names(news_root))
    assert len(expected) == STEPS_PER_EPOCH * 2 * 4
    for rank in (0, 1):
        assert sorted(key[1] for key in resumed if key[2] == rank) == \
            list(range(SAVE_EVERY, STEPS_PER_EPOCH))
    trained = [name for batch in {**kept, **resumed}.values() for name in batch]
    assert Counter(trained) == expected


def test_length_bucketing_groups_similar_clips(pretrained, news_root):
    store = PackedPoseStore(os.path.join(news_root, "CSL_News", "pose_format"))
    frames = {name + ".mp4": min(store.length(name), 128) for name in store.names()}
    steps = {}
    for (epoch, step, _), names in pretrained["resumed"].items():
        steps.setdefault((epoch, step), []).extend(frames[name] for name in names)
    in_label_order = [frames[name] for name in training_names(news_root)]
    unsorted = [in_label_order[k:k + 8] for k in range(0, len(in_label_order), 8)]

    def mean_spread(batches):
        return sum(max(b) - min(b) for b in batches) / len(batches)

    assert mean_spread(steps.values()) < mean_spread(unsorted) / 4


def test_fine_tuning_starts_from_the_pretraining_checkpoint(pretrained, demo_root, tmp_path):
    best = pretrained["out"] / "best_checkpoint.pth"
    # lr 1e-30: the fine-tuning run's checkpoint holds the parameters it started from
    cmd = [sys.executable, "fine_tuning.py", "--dataset", "Demo", "--data_root", demo_root,
           "--finetune", str(best), "--output_dir", str(tmp_path / "fine_tuning"), "--lr", "1e-30",
           "--epochs", "1", "--quick_break", "2", "--batch-size", "4",
           "--gradient-accumulation-steps", "1", "--max_length", "48", "--num_workers", "0",
           *TINY_MODEL]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"loaded {best}" in proc.stdout
    pretrained_state = torch.load(best, weights_only=True)["model"]
    started = torch.load(tmp_path / "fine_tuning" / "checkpoint_0.pth", weights_only=True)["model"]
    parameters = [key for key in pretrained_state
                  if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert {key.split(".")[0] for key in parameters} >= {"gcn_modules", "fusion_gcn_modules",
                                                          "proj_linear", "mt5_model"}
    for key in parameters:
        torch.testing.assert_close(started[key], pretrained_state[key], rtol=1e-6, atol=1e-20,
                                   msg=key)


def test_pretrain_script_runs_uni_sign_stage1_recipe_on_a_packed_store(tmp_path):
    from demo.news import make_news
    paths = make_news(str(tmp_path), n=3, seed=1)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "deepspeed"
    launcher.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "argv.txt"}\n')
    launcher.chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}", "NUM_GPUS": "2",
           "SIGN_POSE_ROOT": str(tmp_path), "PACK": "1", "PACK_WORKERS": "1"}
    proc = subprocess.run(["bash", "script/pretrain.sh", "--bucket_by_length"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.path.isfile(os.path.join(paths["pose_dir"], "packed_poses.json"))
    argv = (tmp_path / "argv.txt").read_text().split()
    flags = dict(zip(argv, argv[1:]))
    assert argv[:2] == ["--num_gpus", "2"] and "pretraining.py" in argv
    assert {flag: flags[flag] for flag in ("--batch-size", "--gradient-accumulation-steps",
                                           "--epochs", "--opt", "--lr", "--quick_break",
                                           "--dataset", "--output_dir")} == {
        "--batch-size": "16", "--gradient-accumulation-steps": "8", "--epochs": "20",
        "--opt": "AdamW", "--lr": "3e-4", "--quick_break": "2048", "--dataset": "CSL_News",
        "--output_dir": "out/stage1_pretraining"}
    assert argv[-1] == "--bucket_by_length"
