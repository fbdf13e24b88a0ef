"""Preemption: a cluster scheduler's warning signal stops the run at a resumable point.

SLURM sends SIGTERM (or the signal chosen with `sbatch --signal=USR1@120`) some time before it
kills a job. On SIGTERM or SIGUSR1 each rank notes the request; at the end of the current
accumulation window (gradients accumulated inside a window are not part of a training state)
the ranks agree over one all-reduce, save a training state at that batch, and exit with status
PREEMPTED_STATUS. A rerun with the same --output_dir continues from it with the losses of an
uninterrupted run. DataLoader workers ignore the signals: they end with their rank.
"""
import signal

import torch
import torch.distributed as dist

import utils

PREEMPTED_STATUS = 75  # EX_TEMPFAIL: stopped on request, resumable; schedulers may requeue
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised by the epoch loop once every rank has seen the request; `batches_done` is the
    sampler position the training state is saved at."""

    def __init__(self, signal_name, batches_done):
        super().__init__(f"stopped on {signal_name}")
        self.signal_name, self.batches_done = signal_name, batches_done


class StopRequest:
    """The signal received by this rank (None until one arrives), noted while training: as a
    context manager it answers the signals inside its block only, and restores the handlers
    before (processes forked later, a multiprocessing pool's, must stay killable)."""

    def __init__(self):
        self.received = None
        self.previous = {}

    def __enter__(self):
        self.previous = {number: signal.signal(number, self.note) for number in SIGNALS}
        return self

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def note(self, number, frame):
        self.received = signal.Signals(number).name

    def agreed(self, device="cpu"):
        """Whether any rank received a signal (the same answer on every rank)."""
        flag = torch.tensor(float(self.received is not None), device=device)
        if utils.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    def name(self):
        return self.received or "a signal to another rank"


def ignore_in_worker(worker_id):
    """DataLoader worker_init_fn: the rank, not its workers, answers the signals."""
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)
