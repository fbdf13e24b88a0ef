"""End to end: fine_tuning.py under the deepspeed launcher on CPU ranks, on a small Demo set."""
import glob
import math
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import DEEPSPEED, free_port, run_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_MODEL = ["--stgcn_channels", "8,16", "--hidden_dim", "16", "--temporal_layers", "1",
               "--max_length", "48", "--num_beams", "1", "--max_new_tokens", "12"]


run = run_command


def train_args(demo_root, out_dir, *extra):
    return ["--dataset", "Demo", "--data_root", demo_root, "--output_dir", str(out_dir),
            "--batch-size", "4", "--gradient-accumulation-steps", "1", "--lr", "3e-3",
            "--num_workers", "0", "--dtype", "fp32", "--print_freq", "5", *SMALL_MODEL, *extra]


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.txt")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("zero_stage", ["2", "3"])
def test_two_ranks_train_evaluate_and_reload(demo_root, tmp_path, zero_stage):
    out, port = tmp_path / "run", free_port()
    cmd = [*DEEPSPEED, "--num_gpus", "2", "--master_port", port, "fine_tuning.py",
           *train_args(demo_root, out, "--epochs", "4", "--zero_stage", zero_stage,
                       "--eval_every", "4")]
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # DeepSpeed's CPU all-reduce buffers are unlinked, not left in /dev/shm
    assert not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}_*")
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert "test_bleu4" in log[-1] and "dev_rouge" in log[-1]
    for name in ("best_checkpoint.pth", "checkpoint_3.pth", "test_tmp_pres.txt", "dev_tmp_refs.txt"):
        assert (out / name).exists(), name
    with open(out / "test_tmp_pres.txt") as f:
        lines = f.read().splitlines()
    assert len(lines) == 8 and all(line.startswith("sample: ") and ", prediction: " in line
                                   for line in lines)

    sys.path.insert(0, ROOT)
    import utils
    from models import Uni_Sign, load_checkpoint_weights
    args = utils.parse_args("t", ["--dataset", "Demo", "--mt5_path", f"{demo_root}/Demo/mt5",
                                  *SMALL_MODEL])
    model = Uni_Sign(args)
    load_checkpoint_weights(model, str(out / "checkpoint_3.pth"))
    saved = torch.load(out / "checkpoint_3.pth", weights_only=True)["model"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def test_eval_only_from_checkpoint_single_process_zero3(demo_root, tmp_path):
    out = tmp_path / "train"
    proc = run([sys.executable, "fine_tuning.py",
                *train_args(demo_root, out, "--epochs", "1", "--zero_stage", "3")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    evaluated = tmp_path / "eval"
    proc = run([sys.executable, "fine_tuning.py", "--eval", "--finetune",
                str(out / "best_checkpoint.pth"),
                *train_args(demo_root, evaluated, "--zero_stage", "3")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "optimizer steps per epoch" not in proc.stdout  # nothing is trained
    with open(evaluated / "eval_metrics.json") as f:
        metrics = json.load(f)
    assert set(metrics) == {"dev", "test"} and "bleu4" in metrics["test"]
    trained = read_log(out)[-1]
    assert metrics["test"]["bleu4"] == pytest.approx(trained["test_bleu4"], abs=1e-6)

    # Beam search pooled over batches (ZeRO-3 on one rank) writes what batch by batch writes.
    predictions = {}
    for pool in ("0", "4", "64"):
        evaluated = tmp_path / f"beams_pool{pool}"
        proc = run([sys.executable, "fine_tuning.py", "--eval", "--finetune",
                    str(out / "best_checkpoint.pth"),
                    *train_args(demo_root, evaluated, "--zero_stage", "3", "--num_beams", "3",
                                "--decode_pool", pool)], tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        predictions[pool] = [(evaluated / f"{split}_tmp_pres.txt").read_text()
                             for split in ("dev", "test")]
    assert predictions["4"] == predictions["0"] and predictions["64"] == predictions["0"]
    assert len(predictions["0"][1].splitlines()) == 8


def test_missing_mt5_directory_stops_before_building(demo_root, tmp_path):
    proc = run([sys.executable, "fine_tuning.py", "--mt5_path", str(tmp_path / "no_mt5"),
                *train_args(demo_root, tmp_path / "x", "--epochs", "1")], tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "no_mt5" in proc.stderr and "missing paths" in proc.stderr
    assert "parameters:" not in proc.stdout


def read_step_records(out_dir):
    """{(epoch, step): record}; a resumed run's later record of a step replaces the killed run's."""
    with open(os.path.join(out_dir, "log_steps.txt")) as f:
        return {(r["epoch"], r["step"]): r for r in map(json.loads, f)}


@pytest.mark.parametrize("regularizer", [[], ["--use_hyperbolic", "--alpha", "0.7"]],
                         ids=["plain", "hyperbolic"])
def test_killed_run_resumes_with_identical_losses(demo_root, tmp_path, regularizer):
    import signal
    import time
    common = ["--epochs", "2", "--print_freq", "1", "--save_every_steps", "3", "--eval_every", "5",
              "--skip_test_eval", "--zero_stage", "2", "--max_length", "32", *regularizer]
    reference = tmp_path / "uninterrupted"
    proc = run([sys.executable, "fine_tuning.py", *train_args(demo_root, reference, *common)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    out = tmp_path / "killed"
    cmd = [sys.executable, "fine_tuning.py", *train_args(demo_root, out, *common)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    state = out / "training_state" / "latest"
    deadline = time.time() + 300
    while not (state.exists() and state.read_text().startswith("epoch0-step")):
        assert victim.poll() is None and time.time() < deadline, "no mid-epoch state was written"
        time.sleep(0.05)
    time.sleep(0.3)  # let it train a little past the saved state before dying
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout

    expected, resumed = read_step_records(reference), read_step_records(out)
    assert sorted(resumed) == sorted(expected)
    for key, record in expected.items():
        for name in ("loss", "hyp_loss", "hyp_curvature"):
            if name in record:  # the curvature also checks the restored RiemannianAdam state
                assert resumed[key][name] == pytest.approx(record[name], rel=1e-6, abs=1e-6), key


def test_bf16_trains_and_evaluates_on_cpu(demo_root, tmp_path):
    out = tmp_path / "bf16"
    args = train_args(demo_root, out, "--epochs", "1", "--quick_break", "3", "--print_freq", "1")
    args[args.index("--dtype") + 1] = "bf16"
    proc = run([sys.executable, "fine_tuning.py", *args], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = [r["loss"] for r in read_step_records(out).values()]
    assert len(losses) == 3 and all(0 < loss < 100 for loss in losses)
    assert "test_bleu4" in read_log(out)[-1]


def test_wandb_offline_run_is_recorded_without_network(demo_root, tmp_path):
    out = tmp_path / "tracked"
    cmd = [sys.executable, "fine_tuning.py", "--wandb", "--wandb_run_name", "offline-check",
           *train_args(demo_root, out, "--epochs", "1", "--quick_break", "2")]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_a_batch_larger_than_the_training_split_stops_before_the_model(demo_root, tmp_path,
                                                                       in_process_trainer):
    import fine_tuning
    import flags
    args = flags.parse_args("fine_tuning.py", train_args(demo_root, tmp_path / "out")
                            + ["--batch-size", "64"])
    with pytest.raises(SystemExit) as stop:
        fine_tuning.run_command_line(fine_tuning.main, args)
    assert str(stop.value.code) == ("error: the training split has 48 clips, fewer than one "
                                    "batch of --batch-size 64 x 1 ranks: lower --batch-size")


def test_a_damaged_training_state_is_named(demo_root, tmp_path, in_process_trainer):
    import fine_tuning
    import flags
    out = tmp_path / "out"
    out.mkdir()
    argv = train_args(demo_root, out) + ["--epochs", "1", "--quick_break", "2"]
    fine_tuning.main(flags.parse_args("fine_tuning.py", argv))
    state = out / "training_state" / "epoch0"
    for path in state.rglob("*_states.pt"):
        path.write_bytes(path.read_bytes()[:64])
    argv[argv.index("--epochs") + 1] = "2"
    with pytest.raises(SystemExit) as stop:
        fine_tuning.run_command_line(fine_tuning.main, flags.parse_args("fine_tuning.py", argv))
    assert str(stop.value.code).startswith(f"error: the training state {state} cannot be loaded")


def train_in_process(demo_root, out, *extra):
    """Runs fine_tuning.main on the small Demo set; returns read_step_records."""
    import fine_tuning
    import flags
    fine_tuning.main(flags.parse_args("fine_tuning.py", train_args(
        demo_root, out, "--quick_break", "4", "--print_freq", "1", "--eval_every", "5", *extra)))
    return read_step_records(out)


@pytest.mark.parametrize("zero_stage", ["2", "3"])
def test_offload_steps_like_adamw_saves_and_resumes(demo_root, tmp_path, zero_stage,
                                                    in_process_trainer):
    common = ["--zero_stage", zero_stage, "--weight-decay", "0.05", "--opt-betas", "0.8",
              "0.99"]
    # Cosine schedule: DeepSpeed's CPU Adam takes the same lr, betas, eps, decay groups and
    # schedule as torch's AdamW, so the losses agree up to float rounding.
    plain = train_in_process(demo_root, tmp_path / "plain", "--epochs", "1", *common)
    offloaded = train_in_process(demo_root, tmp_path / "offload", "--epochs", "1", "--offload",
                                 *common)
    assert sorted(offloaded) == sorted(plain) and len(plain) == 4
    for key, record in plain.items():
        assert offloaded[key]["loss"] == pytest.approx(record["loss"], rel=1e-5), key
        assert offloaded[key]["lr"] == pytest.approx(record["lr"], rel=1e-9), key
    lrs = [offloaded[(0, step)]["lr"] for step in range(4)]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]
    assert offloaded[(0, 3)]["loss"] < offloaded[(0, 0)]["loss"]
    assert (tmp_path / "offload" / "checkpoint_0.pth").exists()
    assert (tmp_path / "offload" / "best_checkpoint.pth").exists()

    # An offloaded run stopped after one epoch and resumed continues as an uninterrupted one
    # (both evaluate every epoch: evaluation draws from the random state the next epoch uses).
    constant = ["--sched", "constant", "--eval_every", "1", "--offload", *common]
    whole = train_in_process(demo_root, tmp_path / "whole", "--epochs", "2", *constant)
    train_in_process(demo_root, tmp_path / "resumed", "--epochs", "1", *constant)
    resumed = train_in_process(demo_root, tmp_path / "resumed", "--epochs", "2", *constant)
    assert sorted(resumed) == sorted(whole) and len(whole) == 8
    for key, record in whole.items():
        assert resumed[key]["loss"] == pytest.approx(record["loss"], rel=1e-6, abs=1e-6), key


def test_offload_with_the_hyperbolic_branch(demo_root, tmp_path, in_process_trainer):
    # DeepSpeed's CPU Adam steps the registered parameters; RiemannianAdam the geometry beside it.
    steps = train_in_process(demo_root, tmp_path / "run", "--epochs", "1", "--offload",
                             "--use_hyperbolic", "--hyp_dim", "8")
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["hyp_loss"]) for r in steps.values())
    assert steps[(0, 3)]["hyp_curvature"] != pytest.approx(steps[(0, 0)]["hyp_curvature"],
                                                           abs=1e-7)


@pytest.mark.parametrize("zero_stage", ["2", "3"])
def test_gradient_checkpointing_trains_as_the_plain_run(demo_root, tmp_path, zero_stage,
                                                        in_process_trainer):
    common = ["--epochs", "1", "--zero_stage", zero_stage]
    plain = train_in_process(demo_root, tmp_path / "plain", *common)
    recomputed = train_in_process(demo_root, tmp_path / "recomputed", "--gradient_checkpointing",
                                  *common)
    assert sorted(recomputed) == sorted(plain) and len(plain) == 4
    for key, record in plain.items():
        assert recomputed[key]["loss"] == pytest.approx(record["loss"], rel=1e-5), key
    assert json.loads((tmp_path / "recomputed" / "args.json").read_text())[
        "gradient_checkpointing"]
