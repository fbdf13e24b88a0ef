"""Experiment tracking: Weights & Biases (--wandb) and TensorBoard (--tensorboard) behind one call.

A run's W&B id is kept in its output folder (`wandb_run_id`), so a resumed run (after a
preemption, a crash, or with a longer --epochs) goes on in the same W&B run instead of opening a
new one. TensorBoard event files go to OUTPUT_DIR/tensorboard, each value indexed by DeepSpeed's
optimizer step, which a resumed run restores from its training state, so its curves continue
where the first run stopped. Only the main rank writes; other ranks get a tracker that does
nothing.
"""
import math
import os

import checkpoint
import utils
from config import ConfigError

WANDB_ID_FILE = "wandb_run_id"
TENSORBOARD_DIR = "tensorboard"


class Tracker:
    """Sends scalars to the open sinks (a W&B run, a TensorBoard writer, either or none)."""

    def __init__(self, wandb_run=None, writer=None):
        self.wandb_run = wandb_run
        self.writer = writer

    def log(self, values, step):
        """Records `values` (name -> number; None values are left out) at optimizer step `step`."""
        values = {name: value for name, value in values.items() if value is not None}
        if self.wandb_run is not None:
            self.wandb_run.log({**values, "optimizer_step": step})
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(name, value, step)

    def finish(self):
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.writer is not None:
            self.writer.close()


def read_wandb_id(output_dir):
    """The W&B id a run in `output_dir` logged to, or None."""
    path = os.path.join(output_dir, WANDB_ID_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip() or None


def open_wandb(args, resumed, job):
    """The W&B run: the stored one when a training run resumes, else a new one whose id is
    stored (evaluations open their own run and store nothing)."""
    import wandb
    from wandb.sdk.lib.runid import generate_id
    options = dict(project=args.wandb_project, name=args.wandb_run_name, job_type=job,
                   config=checkpoint.plain_args(args), dir=args.output_dir or None)
    if job != "train" or not args.output_dir:
        return wandb.init(**options)
    run_id = read_wandb_id(args.output_dir) if resumed else None
    if run_id is not None:
        print(f"continuing the W&B run {run_id} (id kept in {args.output_dir}/{WANDB_ID_FILE})")
        return wandb.init(id=run_id, resume="allow", **options)
    run_id = generate_id()
    checkpoint.atomic_write_text(os.path.join(args.output_dir, WANDB_ID_FILE), run_id + "\n")
    return wandb.init(id=run_id, **options)


def open_tensorboard(args):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package
        raise ConfigError("--tensorboard needs the tensorboard package: "
                                "pip install tensorboard") from None
    return SummaryWriter(log_dir=os.path.join(args.output_dir, TENSORBOARD_DIR))


def open_tracker(args, resumed=False, job="train"):
    """The run's tracker; `resumed`: the run continues a training state of its output folder."""
    if not utils.is_main_process():
        return Tracker()
    wandb_run = open_wandb(args, resumed, job) if args.wandb else None
    writer = open_tensorboard(args) if args.tensorboard else None
    return Tracker(wandb_run, writer)
