"""The DeepSpeed configuration of a run: generated from the flags, with a user's
--deepspeed_config JSON merged over it, and written with the flags into the output folder.

Precedence: the file wins key by key, and nested sections (zero_optimization, fp16, ...) are
merged key by key too, so a file that sets only zero_optimization.reduce_bucket_size keeps the
generated ZeRO stage. The keys in OWNED mirror a flag the trainer also reads elsewhere (batch
size and accumulation for the sampler and schedule, the ZeRO stage for evaluation, the dtype for
casts, --offload for the optimizer choice): the file may repeat the flag's value or write
"auto" (the flag's value), and any other value stops the run naming both. The file may not
hold 'optimizer' or 'scheduler' sections: the trainer builds both from --opt, --lr and --sched
(under --offload, DeepSpeed's CPU Adam: utils.create_optimizer).
"""
import copy
import json
import os

import checkpoint
import config_file
import utils
from config import ConfigError

AUTO = "auto"
SECTIONS_OWNED = {"optimizer": "--opt, --lr, --opt-betas, --opt-eps and --weight-decay",
                  "scheduler": "--sched, --warmup-epochs and --min-lr"}


def generated(args):
    """The DeepSpeed config the flags alone give (ZeRO stage, dtype, offload, accumulation)."""
    offload = {"device": "cpu" if args.offload else "none"}
    config = {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "gradient_clipping": utils.euclidean_clip_norm(args),
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
        "checkpoint": {"use_node_local_storage": args.node_local_storage,
                       "load_universal": getattr(args, "load_universal", False)},
    }
    if args.dtype == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale_window": 100}
    elif args.dtype == "bf16":
        config["bf16"] = {"enabled": True}
    return config


def resolve_zero_stage(args, saved=None):
    """Replaces --zero_stage auto by a stage, before anything is built; `saved`: the flags of
    the training state the run resumes, if any."""
    if args.zero_stage != AUTO:
        return
    args.zero_stage, why = auto_zero_stage(args, saved or {})
    print(f"ZeRO stage {args.zero_stage} (--zero_stage auto: {why})")


def auto_zero_stage(args, saved):
    """(stage, reason): the resumed state's stage, the --deepspeed_config file's, ZeRO-2 where
    it partitions something, carries --offload or keeps master weights for bf16/fp16 anyway,
    and 0 for float32 on one rank. There ZeRO-1/2 partition nothing but keep a second float32
    copy of the weights and flatten every gradient into it: stage 0 steps the weights in place,
    with the same update, and its state resumes on any number of ranks as it is."""
    if saved.get("zero_stage") in (0, 1, 2, 3):
        return saved["zero_stage"], "the stage of the training state resumed"
    if args.deepspeed_config:
        found, stage = lookup(load_user_config(args.deepspeed_config),
                              ("zero_optimization", "stage"))
        if found and stage in (0, 1, 2, 3):
            return stage, f"zero_optimization.stage of {args.deepspeed_config}"
    if utils.get_world_size() > 1:
        return 2, f"{utils.get_world_size()} ranks share the optimizer states"
    if args.offload:
        return 2, "--offload moves the ZeRO optimizer's states to CPU"
    if args.dtype in ("bf16", "fp16"):
        return 2, f"{args.dtype} keeps float32 master weights under any stage"
    return 0, "one rank in float32, where ZeRO would only copy the weights and gradients"


def clip_flag(args):
    return "--clip_grad_norm_euclid" if args.manual_grad_clip else "--gradient-clipping"


def offloaded(device):
    return device not in (None, "none")


def owned_keys(args):
    """(key path, flag text, the flag's value, how a file value reads) of every key the trainer
    owns; `read` maps the file's value to the flag's terms."""
    same = lambda value: value  # noqa: E731
    enabled = lambda value: bool(value)  # noqa: E731
    return [
        (("train_micro_batch_size_per_gpu",), f"--batch-size {args.batch_size}",
         args.batch_size, same),
        (("gradient_accumulation_steps",),
         f"--gradient-accumulation-steps {args.gradient_accumulation_steps}",
         args.gradient_accumulation_steps, same),
        (("train_batch_size",), f"--batch-size x --gradient-accumulation-steps x "
         f"{utils.get_world_size()} ranks", args.batch_size * args.gradient_accumulation_steps
         * utils.get_world_size(), same),
        (("gradient_clipping",), f"{clip_flag(args)} {utils.euclidean_clip_norm(args):g}",
         utils.euclidean_clip_norm(args), float),
        (("zero_optimization", "stage"), f"--zero_stage {args.zero_stage}", args.zero_stage,
         same),
        (("zero_optimization", "offload_optimizer", "device"),
         "--offload" if args.offload else "no --offload", args.offload, offloaded),
        (("checkpoint", "use_node_local_storage"),
         "--node_local_storage" if args.node_local_storage else "no --node_local_storage",
         args.node_local_storage, enabled),
        *[((section, "enabled"), f"--dtype {args.dtype}", args.dtype == dtype, enabled)
          for section, dtype in (("fp16", "fp16"), ("bf16", "bf16"), ("bfloat16", "bf16"))],
    ]


def lookup(config, path):
    """(found, value) of a nested key."""
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return False, None
        config = config[key]
    return True, config


def resolve_owned(args, user, path_text):
    """The user config with "auto" owned values replaced by the flags'; ConfigError naming the
    file and the flag for each owned key that disagrees, and for optimizer/scheduler sections."""
    user = copy.deepcopy(user)
    problems = [f"'{name}': the trainer builds it from {flags}; remove the section"
                for name, flags in SECTIONS_OWNED.items() if name in user]
    for path, flag_text, value, read in owned_keys(args):
        found, given = lookup(user, path)
        if not found:
            continue
        name = ".".join(path)
        if given == AUTO:
            parent = lookup(user, path[:-1])[1] if len(path) > 1 else user
            parent[path[-1]] = generated_value(args, path, value)
        elif not agrees(read, given, value):
            problems.append(f"{name} is {json.dumps(given)} but the flags give {flag_text}: "
                            "set the flag instead, or write \"auto\"")
    if problems:
        raise ConfigError(f"--deepspeed_config {path_text}: " + "\n  ".join(problems))
    return user


def agrees(read, given, value):
    try:
        return read(given) == value
    except (TypeError, ValueError):
        return False


def generated_value(args, path, value):
    """What "auto" stands for at `path` (the generated config's value where it has one)."""
    found, own = lookup(generated(args), path)
    return own if found else value


def load_user_config(path):
    """The JSON object in `path`; ConfigError naming the file when it is missing or not one."""
    try:
        with open(path, encoding="utf-8") as f:
            user = json.load(f)
    except OSError as error:
        raise ConfigError(f"--deepspeed_config {path}: cannot be read "
                          f"({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"--deepspeed_config {path}: not valid JSON ({error})") from None
    if not isinstance(user, dict):
        raise ConfigError(f"--deepspeed_config {path}: expected a JSON object of DeepSpeed "
                          f"settings, got a {type(user).__name__}")
    return user


def merged(base, override):
    """`base` with `override` written over it key by key, dictionaries merged recursively."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build(args):
    """The effective DeepSpeed config: the generated one, with --deepspeed_config over it."""
    config = generated(args)
    if args.deepspeed_config:
        user = load_user_config(args.deepspeed_config)
        config = merged(config, resolve_owned(args, user, args.deepspeed_config))
    return config


def write_run_files(args, config):
    """On the main rank: ds_config.json (the effective DeepSpeed config), args.json (every
    flag) and run.yaml (the flags given, reusable with --config: config_file.py) in
    --output_dir, each written atomically."""
    if not (args.output_dir and utils.is_main_process()):
        return
    with checkpoint.reporting_save_errors(args.output_dir,
                                          "ds_config.json, args.json and run.yaml"):
        os.makedirs(args.output_dir, exist_ok=True)
        checkpoint.write_json(os.path.join(args.output_dir, "ds_config.json"), config)
        checkpoint.write_json(os.path.join(args.output_dir, "args.json"),
                              checkpoint.plain_args(args))
        config_file.write_run_yaml(args, args.output_dir, checkpoint.atomic_write_text)
