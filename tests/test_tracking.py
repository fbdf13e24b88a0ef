"""Tests for tracking.py: TensorBoard events and W&B runs, continued by a resumed run."""
import os
import subprocess
import sys

import pytest

from conftest import PROCESS_GROUP_VARIABLES, ROOT
from test_fine_tuning import train_args

pytest.importorskip("tensorboard")


def scalar_steps(log_dir, tag):
    """(step, value) of every event of `tag` in the TensorBoard files of `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_curves_continue_after_a_resume(demo_root, tmp_path, in_process_trainer):
    import fine_tuning
    import flags
    out = tmp_path / "run"
    first = train_args(demo_root, out, "--epochs", "1", "--quick_break", "4", "--print_freq", "1",
                       "--tensorboard")
    fine_tuning.main(flags.parse_args("fine_tuning.py", first))
    steps_first = [step for step, _ in scalar_steps(out / "tensorboard", "train/loss")]
    assert steps_first == [1, 2, 3, 4]
    resumed = [*first[:first.index("--epochs")], "--epochs", "2", "--quick_break", "4",
               "--print_freq", "1", "--tensorboard"]
    fine_tuning.main(flags.parse_args("fine_tuning.py", resumed))
    losses = scalar_steps(out / "tensorboard", "train/loss")
    assert [step for step, _ in losses] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(0 < value < 100 for _, value in losses)
    dev = scalar_steps(out / "tensorboard", "dev/bleu4")
    assert [step for step, _ in dev] == [4, 8]


def test_tensorboard_needs_an_output_folder(demo_root):
    import flags
    args = train_args(demo_root, "unused", "--tensorboard")
    args[args.index("--output_dir") + 1] = ""
    with pytest.raises(SystemExit):
        flags.parse_args("fine_tuning.py", args)


def wandb_run_ids(out):
    """The ids of the offline W&B runs written under `out` (folder offline-run-DATE-ID)."""
    return sorted(path.name.rsplit("-", 1)[1] for path in (out / "wandb").glob("offline-run-*"))


def test_a_resumed_run_continues_its_wandb_run(demo_root, tmp_path):
    out = tmp_path / "tracked"
    env = {**{k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_VARIABLES},
           "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    for epochs in ("1", "2"):
        cmd = [sys.executable, "fine_tuning.py", "--wandb",
               *train_args(demo_root, out, "--epochs", epochs, "--quick_break", "2")]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stored = (out / "wandb_run_id").read_text().strip()
    assert wandb_run_ids(out) == [stored, stored]
    assert "continuing the W&B run " + stored in proc.stdout
