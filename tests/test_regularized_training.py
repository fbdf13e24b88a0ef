"""End to end: SignCL, SST and the hyperbolic branch in fine_tuning.py and pretraining.py under the
deepspeed launcher on 2 CPU ranks (ZeRO-2 and ZeRO-3), evaluation of a regularised checkpoint, and
the Poincaré plot of a dumped batch."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from test_fine_tuning import ROOT, free_port, read_log, run, train_args
from conftest import DEEPSPEED

# 48 training clips, 2 ranks, batches of 2: 12 micro-steps per epoch, every one logged.
SCHEDULE = ["--batch-size", "2", "--epochs", "2", "--eval_every", "2", "--print_freq", "1"]
FLAGS = {"signcl": ["--use_signcl"], "sst": ["--use_sst"],
         "hyperbolic": ["--use_hyperbolic", "--alpha", "0.7"]}
ALL_FLAGS = FLAGS["signcl"] + FLAGS["sst"] + FLAGS["hyperbolic"]
LOSS_OF = {"signcl": "signcl_loss", "sst": "sst_loss", "hyperbolic": "hyp_loss"}


def launch(script, demo_root, out, tmp_path, zero_stage, *flags):
    """Trains on 2 ranks; returns the records of log_steps.txt."""
    cmd = [*DEEPSPEED, "--num_gpus", "2", "--master_port", free_port(), script,
           *train_args(demo_root, out, *SCHEDULE, "--zero_stage", zero_stage, *flags)]
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(out, "log_steps.txt")) as f:
        return [json.loads(line) for line in f]


def check_training(out, steps, names, micro_steps=24):
    """Every step logs finite losses, the cross-entropy falls over the epochs, the epoch log
    holds the averages and the last epoch was evaluated."""
    assert len(steps) == micro_steps
    for record in steps:
        for name in ("loss", "ce_loss", *names):
            assert math.isfinite(record[name]), (name, record)
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[-1]["train_ce_loss"] < log[0]["train_ce_loss"]
    assert all(f"train_{name}" in log[-1] for name in names)
    assert "test_bleu4" in log[-1] and "dev_bleu4" in log[-1]
    return log


@pytest.mark.parametrize("name", list(FLAGS))
def test_each_regularizer_alone_on_two_ranks_zero2(demo_root, tmp_path, name):
    out = tmp_path / "run"
    steps = launch("fine_tuning.py", demo_root, out, tmp_path, "2", *FLAGS[name])
    check_training(out, steps, [LOSS_OF[name]])
    disabled = {LOSS_OF[other] for other in FLAGS if other != name}
    assert not disabled & set(steps[0])
    if name == "hyperbolic":
        assert steps[-1]["hyp_curvature"] != pytest.approx(0.5, abs=1e-6)  # RiemannianAdam moved it
        assert steps[-1]["hyp_alpha"] > steps[0]["hyp_alpha"]  # the schedule follows progress
        assert all(math.isfinite(r["hyp_grad_norm"]) for r in steps)


def test_all_three_with_pretraining_and_accumulation_zero2(demo_root, tmp_path):
    out = tmp_path / "run"
    steps = launch("pretraining.py", demo_root, out, tmp_path, "2", *ALL_FLAGS,
                   "--gradient-accumulation-steps", "2")
    check_training(out, steps, ["hyp_loss", "signcl_loss", "sst_loss"])
    # The curvature changes at optimizer steps only: every second micro-step.
    curvatures = [r["hyp_curvature"] for r in steps[:8]]
    assert [curvatures[i] == curvatures[i + 1] for i in range(7)] == [True, False] * 3 + [True]


def test_zero3_two_ranks_then_evaluate_the_checkpoint_and_plot(demo_root, tmp_path):
    # hyp_dim 640 makes the projections large enough for ZeRO-3 to partition them.
    out = tmp_path / "train"
    steps = launch("fine_tuning.py", demo_root, out, tmp_path, "3", *ALL_FLAGS,
                   "--hyp_dim", "640", "--save_one_batch")
    trained = check_training(out, steps, ["hyp_loss", "signcl_loss", "sst_loss"])[-1]
    assert (out / "testing_dev.npz").exists() and (out / "testing_test.npz").exists()

    evaluated = tmp_path / "eval"
    proc = run([sys.executable, "fine_tuning.py", "--eval", "--finetune",
                str(out / "best_checkpoint.pth"),
                *train_args(demo_root, evaluated, "--batch-size", "2", "--zero_stage", "2",
                            *FLAGS["hyperbolic"], "--hyp_dim", "640", "--save_one_batch",
                            "--save_batch_name", "figure")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "regularizers.sst.tokens" in proc.stdout  # reported as dropped
    with open(evaluated / "eval_metrics.json") as f:
        metrics = json.load(f)
    assert metrics["test"]["bleu4"] == pytest.approx(trained["test_bleu4"], abs=1e-6)
    figure = np.load(evaluated / "figure_test.npz")
    assert figure["body"].shape == (2, 640) and figure["text"].shape == (2, 4, 640)
    assert float(figure["curvature"]) == pytest.approx(
        float(np.load(out / "testing_test.npz")["curvature"]), rel=1e-6)
    assert list(figure["names"])[0] in {line.split(",")[0][len("sample: "):]
                                        for line in open(evaluated / "test_tmp_pres.txt")}

    png = tmp_path / "poincare.png"
    subprocess.run([sys.executable, os.path.join(ROOT, "script", "plot_poincare.py"),
                    "--input", str(evaluated / "figure_test.npz"), "--out", str(png)],
                   check=True, capture_output=True)
    import matplotlib.image
    pixels = matplotlib.image.imread(png)[..., :3]
    drawn = (pixels < 0.9).any(axis=-1)
    assert png.stat().st_size > 10_000 and 0.01 < drawn.mean() < 0.5
    assert len(np.unique(pixels.reshape(-1, 3)[drawn.reshape(-1)], axis=0)) > 20  # markers in colour
