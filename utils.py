"""Command-line flags, distributed set-up, DeepSpeed configuration and small run helpers."""
import argparse
import contextlib
import datetime
import json
import os
import random
import socket
import time
from collections import defaultdict

import numpy as np
import torch
import torch.distributed as dist

import regularizers
from ctc_head import DEFAULT_LOSS_WEIGHTS


def _add(parser, *names, **kwargs):
    """Registers a flag under both its dash and underscore spellings (--batch-size/--batch_size)."""
    spellings = []
    for name in names:
        stem = name[2:]
        for variant in (name, "--" + stem.replace("-", "_"), "--" + stem.replace("_", "-")):
            if variant not in spellings:
                spellings.append(variant)
    kwargs.setdefault("dest", names[0][2:].replace("-", "_"))
    parser.add_argument(*spellings, **kwargs)


def _int_list(text):
    return [int(x) for x in str(text).replace(",", " ").split()]


def get_args_parser():
    """Flags of Uni-Sign's scripts (both spellings accepted) plus this trainer's own."""
    p = argparse.ArgumentParser("Pose-to-text sign language trainer", add_help=False)
    add_optimisation_flags(p)
    add_distributed_flags(p)
    add_run_flags(p)
    add_data_flags(p)
    add_model_flags(p)
    add_speed_flags(p)
    add_generation_flags(p)
    add_tracking_flags(p)
    add_recognition_flags(p)
    regularizers.add_regularizer_flags(p)  # --use_signcl, --use_sst, --use_hyperbolic and theirs
    return p


def add_optimisation_flags(p):
    """Optimisation flags, with Uni-Sign's names and defaults."""
    _add(p, "--batch-size", type=int, default=16)
    _add(p, "--gradient-accumulation-steps", type=int, default=8)
    _add(p, "--gradient-clipping", type=float, default=1.0)
    _add(p, "--epochs", type=int, default=20)
    _add(p, "--opt", type=str, default="adamw", help="adamw | adam | sgd")
    _add(p, "--opt-eps", type=float, default=1.0e-9)
    _add(p, "--opt-betas", type=float, default=None, nargs="+")
    _add(p, "--clip-grad", type=float, default=None, help="alias of --gradient-clipping when set")
    _add(p, "--momentum", type=float, default=0.9)
    _add(p, "--weight-decay", type=float, default=1e-4)
    _add(p, "--sched", type=str, default="cosine", help="cosine | linear | constant | multistep (CTC head)")
    _add(p, "--lr", type=float, default=1.0e-3)
    _add(p, "--min-lr", type=float, default=1.0e-8)
    _add(p, "--warmup-epochs", type=float, default=0)
    _add(p, "--label_smoothing", type=float, default=0.2)


def add_distributed_flags(p):
    """Distributed and DeepSpeed flags."""
    _add(p, "--world_size", type=int, default=1)
    _add(p, "--dist_url", default="env://")
    _add(p, "--local_rank", type=int, default=0)
    _add(p, "--offload", action="store_true", help="ZeRO offload of optimizer and parameters")
    _add(p, "--dtype", default=None, choices=["bf16", "fp16", "fp32"],
         help="default: bf16 on a GPU that supports it, fp32 otherwise")
    _add(p, "--zero_stage", type=int, default=2, choices=[0, 1, 2, 3])
    _add(p, "--compute_fp32_loss", action="store_true")


def add_run_flags(p):
    """Output, resuming, evaluation schedule and logging flags."""
    _add(p, "--output_dir", default="")
    _add(p, "--finetune", default="", help="initialise from a {'model': state_dict} checkpoint")
    _add(p, "--init_encoder", default="",
         help="initialise only the pose encoder, from a checkpoint of any head (e.g. CTC)")
    _add(p, "--seed", type=int, default=42)
    _add(p, "--eval", action="store_true", help="evaluate only")
    _add(p, "--num_workers", type=int, default=8)
    _add(p, "--pin-mem", action="store_true", dest="pin_mem")
    _add(p, "--no-pin-mem", action="store_false", dest="pin_mem")
    p.set_defaults(pin_mem=True)
    _add(p, "--quick_break", type=int, default=0, help="end each epoch after N steps (0: full)")
    _add(p, "--resume", default="auto", choices=["auto", "none"],
         help="auto: continue from the latest training state in --output_dir")
    _add(p, "--keep_last", type=int, default=2, help="epoch checkpoints kept besides the best")
    _add(p, "--save_every_steps", type=int, default=0,
         help="also save a resumable training state every N micro-batches (0: per epoch only)")
    _add(p, "--bucket_by_length", action="store_true", help="batch clips of similar length")
    _add(p, "--print_freq", type=int, default=10)
    _add(p, "--eval_every", type=int, default=1, help="evaluate every N epochs (and the last)")
    _add(p, "--skip_test_eval", action="store_true", help="only evaluate dev during training")


def add_data_flags(p):
    """Dataset, task and path flags (paths default to config.py)."""
    _add(p, "--dataset", default="CSL_Daily")
    _add(p, "--task", default="SLT", choices=["SLT", "ISLR", "CSLR"])
    _add(p, "--max_length", type=int, default=256, help="frames kept per clip")
    _add(p, "--pose_fps", type=float, default=None,
         help="resample MediaPipe .pose inputs to this frame rate (pickles are used as stored)")
    _add(p, "--max_tgt_len", type=int, default=50, help="target tokens kept")
    _add(p, "--data_root", default=None, help="label root (default ./data or $SIGN_DATA_ROOT)")
    _add(p, "--pose_root", default=None, help="pose root (default ./dataset or $SIGN_POSE_ROOT)")
    _add(p, "--mt5_path", default=None, help="mT5 directory (default from config.py)")
    _add(p, "--rgb_support", action="store_true", help="not supported: pose-only trainer")
    _add(p, "--online_video", default="")


def add_model_flags(p):
    """Pose encoder widths (Uni-Sign's defaults) and how its frames enter mT5."""
    _add(p, "--hidden_dim", type=int, default=256)
    _add(p, "--stgcn_channels", type=_int_list, default=[64, 128, 256])
    _add(p, "--temporal_layers", type=int, default=3)
    _add(p, "--temporal_kernel", type=int, default=5)
    _add(p, "--pose_positions", default="none", choices=["none", "sinusoidal"],
         help="add sinusoidal frame positions to the pose embeddings (none: Uni-Sign); helps "
              "when the output order is not implied by content, as in fingerspelling")


def add_speed_flags(p):
    """Speed switches (models.py); each keeps Uni-Sign's loss up to float rounding."""
    _add(p, "--graph_product", default="matmul", choices=["matmul", "einsum"],
         help="ST-GCN graph product: matmul (no permute copy) or einsum (Uni-Sign's)")
    _add(p, "--temporal_conv", default="direct", choices=["direct", "winograd"],
         help="ST-GCN temporal conv: direct, or Winograd F(4,k) (fewer FLOPs, memory-bound transforms)")
    _add(p, "--hands_batch", default="auto", choices=["auto", "on", "off", "joint"],
         help="both hands through their shared encoder as one batch (auto: on CUDA only); "
              "joint also normalises them with one BatchNorm statistic, as evaluation does "
              "(default of the CTC head)")
    _add(p, "--target_logits", default="real", choices=["real", "all"],
         help="vocabulary projection and loss on real target tokens only, or on every position")
    _add(p, "--embed_once", default="on", choices=["on", "off"],
         help="one embedding lookup for the prompt and the decoder inputs")
    _add(p, "--compile_encoder", action="store_true",
         help="torch.compile the ST-GCN part encoders (no gain measured on CPU)")
    _add(p, "--keep_freed_memory", default="auto", choices=["auto", "on", "off"],
         help="glibc keeps freed blocks for reuse instead of unmapping them (auto: on CPU runs)")


def add_generation_flags(p):
    """Decoding flags."""
    _add(p, "--num_beams", type=int, default=4)
    _add(p, "--max_new_tokens", type=int, default=100)
    _add(p, "--decode_pool", type=int, default=64,
         help="beam rows of several evaluation batches decoded together, with the same output "
              "as batch by batch (0: Hugging Face generate per batch)")


def add_tracking_flags(p):
    """Weights & Biases tracking and bad-input handling."""
    _add(p, "--wandb", action="store_true", help="log to Weights & Biases")
    _add(p, "--wandb_project", default="sign-pose-trainer")
    _add(p, "--wandb_run_name", default=None)
    _add(p, "--skip_bad_samples", action="store_true",
         help="skip unreadable or invalid clips (counted and logged) instead of stopping")
    _add(p, "--max_nonfinite", type=int, default=10,
         help="stop (saving a training state) after N consecutive NaN/Inf losses; 0: never")


def add_recognition_flags(p):
    """--task CSLR --head ctc: VAC's CTC head on the pose encoder (see cslr.py)."""
    weights = ",".join(f"{k}={v:g}" for k, v in DEFAULT_LOSS_WEIGHTS.items())
    g = p.add_argument_group("continuous recognition with a CTC head")
    _add(g, "--head", default="generate", choices=["generate", "ctc"],
         help="CSLR: generate (mT5 writes the glosses) or ctc (CTC head, cslr.py)")
    _add(g, "--ctc_beam", type=int, default=1, help="CTC prefix beam width (1: greedy)")
    _add(g, "--ctc_hidden", type=int, default=1024, help="CTC head conv/BiLSTM width")
    _add(g, "--share_classifier", action=argparse.BooleanOptionalAction, default=True,
         help="one classifier for the conv and BiLSTM outputs (SMKD)")
    _add(g, "--weight_norm", action=argparse.BooleanOptionalAction, default=True,
         help="unit-norm classifier columns (SMKD)")
    _add(g, "--loss_weights", default=weights, help="CTC head loss weights, NAME=W,...")
    _add(g, "--lr_steps", type=_int_list, default=[20, 35],
         help="epochs where --sched multistep multiplies the lr by 0.2")


def parse_args(description, argv=None, defaults=None):
    parser = argparse.ArgumentParser(description, parents=[get_args_parser()])
    parser.set_defaults(**(defaults or {}))
    args = parser.parse_args(argv)
    if args.clip_grad is not None:
        args.gradient_clipping = args.clip_grad
    if args.rgb_support:
        parser.error("--rgb_support: the RGB branch is not part of this pose-only trainer")
    if args.stgcn_channels[-1] != args.hidden_dim:
        parser.error(f"--hidden_dim {args.hidden_dim} must equal the last --stgcn_channels "
                     f"width {args.stgcn_channels[-1]}")
    return args


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

def deepspeed_config(args):
    """The DeepSpeed config dict for these flags (ZeRO stage, dtype, offload, accumulation)."""
    offload = {"device": "cpu" if args.offload else "none"}
    config = {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "gradient_clipping": euclidean_clip_norm(args),
        "steps_per_print": 10 ** 9,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {
            "stage": args.zero_stage,
            "offload_param": offload if args.zero_stage == 3 else {"device": "none"},
            "offload_optimizer": offload,
            "stage3_param_persistence_threshold": 1e4,
            "stage3_max_live_parameters": 3e7,
            "stage3_prefetch_bucket_size": 3e7,
        },
        "wall_clock_breakdown": False,
    }
    if args.dtype == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale_window": 100}
    elif args.dtype == "bf16":
        config["bf16"] = {"enabled": True}
    return config


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
    groups = param_groups(model, args.weight_decay)
    name = args.opt.lower()
    betas = tuple(args.opt_betas) if args.opt_betas else (0.9, 0.999)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr, eps=args.opt_eps, betas=betas)
    if name == "adam":
        return torch.optim.Adam(groups, lr=args.lr, eps=args.opt_eps, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    raise ValueError(f"--opt {args.opt}: expected adamw, adam or sgd")


def optimizer_steps_per_epoch(args, steps_per_epoch):
    return max(1, steps_per_epoch // args.gradient_accumulation_steps)


def total_optimizer_steps(args, steps_per_epoch):
    """Optimizer steps of the whole run (the length of the learning-rate schedule)."""
    return max(1, int(args.epochs * optimizer_steps_per_epoch(args, steps_per_epoch)))


def create_scheduler(args, optimizer, steps_per_epoch):
    """Warm-up then cosine (Uni-Sign's transformers 'cosine'), counted in optimizer steps."""
    from transformers import get_scheduler
    return get_scheduler(
        name=args.sched, optimizer=optimizer,
        num_warmup_steps=int(args.warmup_epochs * optimizer_steps_per_epoch(args, steps_per_epoch)),
        num_training_steps=total_optimizer_steps(args, steps_per_epoch),
    )


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

    def log_every(self, iterable, print_freq, total=None):
        total = total or len(iterable)
        start = time.time()
        for i, item in enumerate(iterable):
            yield item
            if print_freq and (i % print_freq == 0 or i == total - 1):
                elapsed = time.time() - start
                stats = "  ".join(f"{k}: {v:.4g}" for k, v in self.last.items())
                print(f"{self.header} [{i + 1}/{total}]  {stats}  ({elapsed / (i + 1):.3f} s/it)",
                      flush=True)


def append_json_line(path, record):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
