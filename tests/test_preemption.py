"""Tests for preemption.py: a scheduler's signal stops the run at a resumable point, and the
rerun continues with the losses of an uninterrupted run (one process, and two ranks under the
deepspeed launcher)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import DEEPSPEED, ROOT, free_port, run_command

import preemption

SMALL = ["--batch-size", "4", "--gradient-accumulation-steps", "1", "--lr", "3e-3",
         "--num_workers", "0", "--dtype", "fp32", "--print_freq", "1", "--epochs", "2",
         "--eval_every", "5", "--skip_test_eval", "--stgcn_channels", "8,16", "--hidden_dim",
         "16", "--temporal_layers", "1", "--max_length", "32", "--num_beams", "1",
         "--max_new_tokens", "8"]


def test_a_request_is_noted_and_agreed_inside_its_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.StopRequest() as stop:
        assert not stop.agreed()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.agreed() and stop.name() == "SIGUSR1"
    assert signal.getsignal(signal.SIGTERM) == before


def test_workers_leave_the_signals_to_their_rank():
    saved = {number: signal.getsignal(number) for number in preemption.SIGNALS}
    try:
        preemption.ignore_in_worker(0)
        assert all(signal.getsignal(n) == signal.SIG_IGN for n in preemption.SIGNALS)
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def step_records(out_dir):
    with open(os.path.join(out_dir, "log_steps.txt")) as f:
        return {(r["epoch"], r["step"]): r["loss"] for r in map(json.loads, f) if "loss" in r}


def signal_mid_epoch(cmd, out, number, send_to_group=False):
    """Starts `cmd`, sends `number` (to its whole process group, as SLURM signals every
    process of a job) once it has trained a few steps, and returns the finished process and
    its output."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log, deadline = out / "log_steps.txt", time.time() + 300
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert victim.poll() is None and time.time() < deadline, "no step was logged"
        time.sleep(0.05)
    if send_to_group:
        os.killpg(victim.pid, number)
    else:
        victim.send_signal(number)
    output, _ = victim.communicate(timeout=300)
    return victim, output


def test_a_signal_saves_a_state_and_the_rerun_continues_identically(demo_root, tmp_path):
    reference = tmp_path / "reference"
    common = ["--dataset", "Demo", "--data_root", demo_root, *SMALL]
    proc = run_command([sys.executable, "fine_tuning.py", *common, "--output_dir",
                        str(reference)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "preempted"
    cmd = [sys.executable, "fine_tuning.py", *common, "--output_dir", str(out)]
    victim, output = signal_mid_epoch(cmd, out, signal.SIGUSR1)
    assert victim.returncode == preemption.PREEMPTED_STATUS, output[-3000:]
    assert "stopped on SIGUSR1: saved the training state" in output
    assert "Traceback" not in output
    stopped = len(step_records(out))
    assert 3 <= stopped < len(step_records(reference))
    proc = run_command(cmd, tmp_path)
    assert proc.returncode == 0 and "resumed from" in proc.stdout, proc.stderr[-3000:]
    expected, resumed = step_records(reference), step_records(out)
    assert sorted(resumed) == sorted(expected)
    for key, loss in expected.items():
        assert resumed[key] == pytest.approx(loss, rel=1e-6, abs=1e-6), key


def test_two_ranks_stop_together_when_the_launcher_is_signalled(demo_root, tmp_path):
    common = ["fine_tuning.py", "--dataset", "Demo", "--data_root", demo_root, *SMALL,
              "--epochs", "8"]  # long enough for the signal to arrive in mid-run
    launch = [*DEEPSPEED, "--num_gpus", "2"]
    reference = tmp_path / "reference"
    proc = run_command([*launch, "--master_port", free_port(), *common, "--output_dir",
                        str(reference)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "preempted"
    cmd = [*launch, "--master_port", free_port(), *common, "--output_dir", str(out)]
    victim, output = signal_mid_epoch(cmd, out, signal.SIGTERM, send_to_group=True)
    assert victim.returncode != 0
    assert "stopped on SIGTERM: saved the training state" in output, output[-3000:]
    assert "Traceback" not in output
    proc = run_command([*launch, "--master_port", free_port(), *common, "--output_dir",
                        str(out)], tmp_path)
    assert proc.returncode == 0 and "resumed from" in proc.stdout, proc.stderr[-3000:]
    expected, resumed = step_records(reference), step_records(out)
    assert sorted(resumed) == sorted(expected)
    for key, loss in expected.items():
        assert resumed[key] == pytest.approx(loss, rel=1e-6, abs=1e-6), key
