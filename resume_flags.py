"""Which flags may differ when a run resumes from its training state, and what happens to each.

Every trainer flag is in one of two tables. HONOURED flags take effect in the resumed run (the
learning-rate schedule is rebuilt for a changed --lr, --epochs, --warmup-epochs, --min-lr or
--lr_steps: the new schedule continues from the optimizer steps already taken); REFUSED flags
would change the model, the data order or the optimizer state the training state holds, so the
run stops before training with the reason and the two ways out. `tests/test_resume_flags.py`
checks every parser flag is in a table.
"""
import bisect
import collections
import os

import checkpoint
import ds_config
import reshard
import utils
from config import ConfigError

# Read afresh by the resumed run.
HONOURED = {
    "epochs", "lr", "min_lr", "warmup_epochs", "lr_steps", "eval_every", "print_freq",
    "save_every_steps", "keep_last", "skip_test_eval", "num_workers", "pin_mem",
    "max_nonfinite", "num_beams", "max_new_tokens", "decode_pool", "ctc_beam", "wandb",
    "wandb_project", "wandb_run_name", "tensorboard", "data_root", "pose_root", "mt5_path",
    "output_dir", "resume", "overwrite", "local_rank", "node_local_storage", "compile_encoder",
    "keep_freed_memory", "graph_product", "temporal_conv", "target_logits", "embed_once",
    "gradient_clipping", "clip_grad", "clip_grad_norm_euclid", "clip_grad_norm_hyp",
    "save_one_batch", "save_batch_name", "max_unk_rate", "eval", "gradient_checkpointing",
    "config",  # the path only: the values it gave are compared flag by flag
    "dataset_root", "adam_kernel",  # the same optimizer state, updated by another kernel
}
MODEL = "the saved weights have the shape and meaning these flags gave them"
DATA = "the saved sampler position counts batches of the saved data order"
OPTIMIZER = "the saved optimizer state was built with these settings"
LOSS = "the run would continue under another loss than the one it was trained with"
REFUSED = {
    **dict.fromkeys(("dataset", "task", "head", "stgcn_channels", "hidden_dim",
                     "temporal_layers", "temporal_kernel", "pose_positions", "ctc_hidden",
                     "share_classifier", "weight_norm", "use_signcl", "use_sst",
                     "use_hyperbolic", "sst_num", "sst_dim", "sst_attention", "hyp_dim",
                     "hyp_text_cmp", "hyp_text_emb_src", "init_c", "finetune", "init_encoder",
                     "rgb_support", "hands_batch", "mapper", "init_lm", "fusion",
                     "fusion_shortcut", "lm", "lang_code"), MODEL),
    **dict.fromkeys(("batch_size", "gradient_accumulation_steps", "seed", "bucket_by_length",
                     "max_length", "pose_fps", "quick_break", "skip_bad_samples",
                     "max_frames_per_clip",
                     "max_tgt_len", "aug_rotate", "aug_scale", "aug_shift", "aug_speed",
                     "aug_joint_dropout", "mix_weights"), DATA),
    "best_dataset": "the saved best dev score was measured on this dataset of the mix",
    **dict.fromkeys(("opt", "opt_eps", "opt_betas", "momentum", "weight_decay", "sched",
                     "zero_stage", "offload", "deepspeed_config", "dtype", "hyp_lr",
                     "hyp_stabilize", "manual_grad_clip"), OPTIMIZER),
    **dict.fromkeys(("label_smoothing", "loss_weights", "signcl_weight", "signcl_max_distance",
                     "signcl_pos_samples", "signcl_neg_samples", "sst_weight",
                     "sst_temperature", "alpha", "label_smoothing_hyp", "compute_fp32_loss",
                     "fusion_dropout"),
                    LOSS),
    "world_size": "the number of ranks (deepspeed --num_gpus/--num_nodes) the saved optimizer "
                  "shards and sampler position were written by",
    **dict.fromkeys(("dist_url", "online_video", "alpha_reg", "max_eval_samples"),
                    "refused at parsing already"),
}


def changed_flags(saved, args):
    """{flag: (saved value, this run's value)} for the flags of both tables that differ."""
    current = vars(args)
    return {name: (saved[name], current[name]) for name in sorted(HONOURED | set(REFUSED))
            if name in saved and name in current and saved[name] != current[name]}


def check_changes(saved, args, state_path):
    """Prints each changed flag with what happens to it; ConfigError naming the refused ones.
    A changed ZeRO stage or number of ranks alone is not refused: it sets `args.load_universal`,
    and the state is resumed through DeepSpeed's universal checkpoint (reshard.py). Returns the
    honoured changes."""
    changes = changed_flags(saved, args)
    refused = {name: change for name, change in changes.items() if name in REFUSED}
    how = "honoured"
    if reshard.loads_as_saved(refused, os.path.basename(state_path), args):
        refused, how = {}, "a state without ZeRO loads whole on every rank"
    elif reshard.convertible(refused, os.path.basename(state_path)):
        args.load_universal, refused = True, {}
        how = "through DeepSpeed's universal checkpoint"
    if refused:
        lines = [f"--{name} {old} -> {new}: {REFUSED[name]}"
                 for name, (old, new) in refused.items()]
        raise ConfigError(
            f"resuming {state_path} with changed flags that cannot act on a resumed run:\n  "
            + "\n  ".join(lines) + "\n  rerun with the saved values, use another --output_dir, "
            "or start afresh with --overwrite")
    for name, (old, new) in changes.items():
        print(f"resume: --{name} {old} -> {new} "
              f"({how if name in reshard.LAYOUT_FLAGS else 'honoured'})")
    return changes


def rebuild_schedule(engine, args, changes, updates_per_epoch):
    """After a resume with a changed --lr or --lr_steps, puts the new values into the restored
    scheduler (its state holds the old ones) and sets the learning rate of the step reached; its
    lambdas already follow the new --epochs, --warmup-epochs and --min-lr, which are not part
    of its state."""
    scheduler = engine.lr_scheduler
    if scheduler is None or not ({"lr", "lr_steps"} & set(changes)):
        return
    groups = scheduler.optimizer.param_groups
    scheduler.base_lrs = [args.lr] * len(groups)
    step = scheduler.last_epoch
    if hasattr(scheduler, "milestones"):  # multistep, counted in optimizer steps
        scheduler.milestones = collections.Counter(e * updates_per_epoch for e in args.lr_steps)
        factors = [scheduler.gamma ** bisect.bisect_right(sorted(scheduler.milestones), step)]
    else:
        factors = [fn(step) for fn in scheduler.lr_lambdas]
    for group, base, factor in zip(groups, scheduler.base_lrs, factors * len(groups)):
        group["lr"] = base * factor
    scheduler._last_lr = [group["lr"] for group in groups]


def check_resume_changes(args):
    """Before anything is built: the flags that differ from those of the training state the run
    will resume from, each honoured or refused (the tables above); resolves --zero_stage auto."""
    if args.resume == "none" or args.overwrite or not args.output_dir or args.eval:
        ds_config.resolve_zero_stage(args)
        return {}  # --overwrite starts afresh: rank 0 removes the states the other ranks see
    tag = agreed_training_state(args)
    saved = checkpoint.saved_flags(args.output_dir, tag) if tag else None
    ds_config.resolve_zero_stage(args, saved)
    if not saved:
        return {}
    changes = check_changes(saved, args, f"{args.output_dir}/training_state/{tag}")
    if getattr(args, "load_universal", False):
        args.resume_tag = reshard.universal_tag(args.output_dir, tag)
    return changes


def agreed_training_state(args):
    """The tag of the training state every rank resumes from (each reads `latest` in its own
    node's folder); ConfigError when the ranks see different ones."""
    tag = checkpoint.latest_training_state(args.output_dir)
    tags = utils.all_gather_objects(tag)
    if len(set(tags)) > 1:
        seen = ", ".join(f"rank {rank}: {t or 'none'}" for rank, t in enumerate(tags))
        raise ConfigError(
            f"the ranks see different training states in --output_dir {args.output_dir} "
            f"({seen}): with one folder per node (--node_local_storage) every node's folder "
            "must hold the same states; copy the latest one over, or start afresh with "
            "--overwrite")
    return tag
