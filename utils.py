"""Distributed set-up, optimizer and schedule, and logging helpers (the DeepSpeed config:
ds_config.py)."""
import contextlib
import datetime
import json
import math
import os
import random
import socket
from collections import defaultdict

import numpy as np
import torch
import torch.distributed as dist

import progress

from flags import get_args_parser, parse_args  # noqa: F401  (Uni-Sign's scripts import them from here)


# ---------------------------------------------------------------- distributed

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(args):
    """Joins the process group the launcher describes, or a one-process group for plain python."""
    import deepspeed
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    args.rank = int(os.environ["RANK"])
    args.world_size = int(os.environ["WORLD_SIZE"])
    args.local_rank = int(os.environ.get("LOCAL_RANK", 0))
    args.distributed = args.world_size > 1
    if torch.cuda.is_available():
        torch.cuda.set_device(args.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(minutes=30))
    if backend == "gloo":
        release_shared_memory_name(args.rank, args.world_size)
    args.device = torch.device("cuda", args.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if args.dtype is None:
        args.dtype = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    silence_other_ranks(args.rank == 0)


def close_distributed():
    """Ends the process group once every rank is done. Left to interpreter exit, gloo's threads
    are torn down during shutdown, which now and then aborts a finished rank ("terminate called
    without an active exception") and fails the whole launch."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        from deepspeed.utils import groups
        groups._WORLD_GROUP = None  # its clone of the destroyed group; a later run makes one anew


def keep_freed_memory(mode="auto"):
    """Has glibc serve large blocks from its heap and keep them after free (mallopt: no mmap,
    no trimming); returns whether it applied.

    On CPU every training step frees and allocates the same large buffers (the vocabulary-sized
    gradients of mT5 are 768 MB each); by default glibc unmaps each and the next step
    page-faults it in again. Kept, they are reused: about +30% steps/s (bench/train_step.py,
    row malloc), at the cost of up to about 1 GB more resident memory. `auto`: CPU runs only."""
    if mode == "off" or (mode == "auto" and torch.cuda.is_available()):
        return False
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    never = -1  # mallopt(3): a trim threshold of -1 disables trimming
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, never))


def shared_memory_path(rank):
    """The /dev/shm file in which DeepSpeed's CPU all-reduce keeps this rank's buffer (69 MB)."""
    return os.path.join("/dev/shm", f"deepspeed_allreduce_buffer_{os.getuid()}_"
                                    f"{os.environ['MASTER_ADDR']}_{os.environ['MASTER_PORT']}_{rank}")


def release_shared_memory_name(rank, world_size):
    """Unlinks this rank's all-reduce buffer file once every rank has mapped it.

    DeepSpeed's CPU backend (when its launcher sets LOCAL_SIZE) never unlinks these files, so each
    run with a new master port left 69 MB per rank in /dev/shm until the machine ran out of memory.
    The mappings outlive the name: the memory is freed when the ranks exit, killed or not."""
    if os.environ.get("LOCAL_SIZE") != str(world_size):
        return
    if world_size > 1:
        dist.barrier()  # every rank has opened its peers' files during init
    with contextlib.suppress(FileNotFoundError):
        os.unlink(shared_memory_path(rank))


def silence_other_ranks(is_main):
    """Only rank 0 prints unless print(..., force=True)."""
    import builtins
    builtin_print = builtins.print

    def print_main(*a, **kw):
        if kw.pop("force", False) or is_main:
            builtin_print(*a, **kw)
    builtins.print = print_main


def get_rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process():
    return get_rank() == 0


def barrier():
    if get_world_size() > 1:
        dist.barrier()


def all_gather_objects(obj):
    """Gathers a picklable object from every rank into a list ordered by rank."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ---------------------------------------------------------------- DeepSpeed

def euclidean_clip_norm(args):
    """Gradient-norm bound of the DeepSpeed-optimised parameters: --clip_grad_norm_euclid with
    Geo-Sign's --manual_grad_clip, --gradient-clipping otherwise."""
    return args.clip_grad_norm_euclid if args.manual_grad_clip else args.gradient_clipping


def riemannian_clip_norm(args):
    """Gradient-norm bound of the RiemannianAdam parameters, clipped on their own:
    --clip_grad_norm_hyp with --manual_grad_clip, --gradient-clipping otherwise."""
    return args.clip_grad_norm_hyp if args.manual_grad_clip else args.gradient_clipping


def param_groups(model, weight_decay):
    """Weight decay on matrices only (biases, norms and 1-d parameters are not decayed)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(args, model):
    """The optimizer of --opt over param_groups; under --offload (ZeRO-Offload), DeepSpeed's CPU
    Adam with the same settings (DeepSpeed refuses torch's optimizers there; SGD is refused at
    parsing). Its C++ extension is compiled on first use, then cached."""
    groups = param_groups(model, args.weight_decay)
    name = args.opt.lower()
    betas = tuple(args.opt_betas) if args.opt_betas else (0.9, 0.999)
    if args.offload and name in ("adamw", "adam"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, lr=args.lr, betas=betas, eps=args.opt_eps,
                                adamw_mode=name == "adamw")
    if name in ("adamw", "adam"):
        adam = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return adam(groups, lr=args.lr, eps=args.opt_eps, betas=betas, **adam_kernel(args))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    raise ValueError(f"--opt {args.opt}: expected adamw, adam or sgd")


def adam_kernel(args):
    """torch's Adam implementation for --adam_kernel. The fused kernel updates each tensor in one
    pass instead of about ten; under ZeRO the tensors are DeepSpeed's flat partitions, so the
    update of mT5's two 250,112-row tables is one pass over memory rather than ten."""
    kernel = getattr(args, "adam_kernel", "loop")
    return {"fused": {"fused": True}, "foreach": {"foreach": True},
            "loop": {"foreach": False}}[kernel]


def optimizer_steps_per_epoch(args, steps_per_epoch):
    """Accumulation windows per epoch, the last one possibly short (engine.accumulation_window)."""
    return max(1, math.ceil(steps_per_epoch / args.gradient_accumulation_steps))


def total_optimizer_steps(args, steps_per_epoch):
    """Optimizer steps of the whole run (the length of the learning-rate schedule)."""
    return max(1, int(args.epochs * optimizer_steps_per_epoch(args, steps_per_epoch)))


def create_scheduler(args, optimizer, steps_per_epoch):
    """The learning-rate schedule, counted in optimizer steps: warm-up then cosine (Uni-Sign's
    transformers 'cosine'; with --min-lr, 'cosine_with_min_lr'), linear or constant; or VAC's
    multistep (x0.2 at each epoch of --lr_steps)."""
    from transformers import get_scheduler
    updates = optimizer_steps_per_epoch(args, steps_per_epoch)
    if args.sched == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[epoch * updates for epoch in args.lr_steps], gamma=0.2)
    name, options = args.sched, {}
    if name == "cosine" and args.min_lr is not None:
        name, options = "cosine_with_min_lr", {"min_lr": args.min_lr}
    return get_scheduler(
        name=name, optimizer=optimizer, num_warmup_steps=int(args.warmup_epochs * updates),
        num_training_steps=total_optimizer_steps(args, steps_per_epoch),
        scheduler_specific_kwargs=options)


# ---------------------------------------------------------------- logging

class MetricLogger:
    """Running averages of scalar metrics with a periodic one-line print."""

    def __init__(self, header=""):
        self.header = header
        self.sums = defaultdict(float)
        self.counts = defaultdict(int)
        self.last = {}

    def update(self, **values):
        for k, v in values.items():
            v = float(v)
            self.sums[k] += v
            self.counts[k] += 1
            self.last[k] = v

    def averages(self):
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def log_every(self, iterable, print_freq, total=None, per_item=None):
        """The items of `iterable`, with progress (progress.track): a bar on a terminal, else
        a line every `print_freq` items; `per_item`: clips per item, for the clips/s figure."""
        total = total or len(iterable)
        return progress.track(iterable, total, self.header, print_freq, stats=lambda: self.last,
                              per_item=per_item, show=is_main_process())


def append_json_line(path, record):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
