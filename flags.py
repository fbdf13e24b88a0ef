"""The trainer's flags: one parser, one default per flag, and the refusal of flags that cannot act.

Every flag answers to both spellings (cli.py). After parsing, `refusals` lists each flag that
would do nothing in the requested configuration (a CTC-head flag for the mT5 head, a
regulariser's setting without the regulariser, a learning-rate floor for a schedule without one,
...): the run stops with `error:` and the reasons before any data is read or model built.
Defaults that depend on other flags are resolved where they act (Geo-Sign's --alpha 0.7 when
--use_hyperbolic is set: regularizers.build_regularizers).
"""
import argparse
import importlib.util
import sys

import config
import augment
import config_file
import fusion
import language_models
import mix_flags
import progressive
import regularizers
from cli import (ArgumentParser, add_flag, count, count_list, float_range, fraction, int_range,
                 non_negative, non_negative_int, odd_count, positive, seed, zero_stage)
from ctc_head import DEFAULT_CONV_TYPE, DEFAULT_LOSS_WEIGHTS, min_input_length
from keypoints import DEFAULT_MAX_FRAMES
from pose_encoder import SPEED_CHOICES, SPEED_DEFAULTS

DESCRIPTION = ("Trains and evaluates a pose-to-text translator, or a CTC gloss recognizer "
               "(--task CSLR --head ctc), under DeepSpeed. Every flag also answers to its other "
               "spelling (--batch-size or --batch_size); a flag that cannot act with the "
               "others stops the run with the reason.")
CTC_MIN_FRAMES = min_input_length(DEFAULT_CONV_TYPE)
target_length = int_range(2)  # mT5 targets end with </s>: one token leaves no text


def get_args_parser():
    """Flags of Uni-Sign's scripts (both spellings accepted) plus this trainer's own, one
    argument group per topic (the headings of --help)."""
    p = argparse.ArgumentParser("Pose-to-text sign language trainer", add_help=False)
    add_config_flag(p)
    add_data_flags(p)
    add_model_flags(p)
    add_optimisation_flags(p)
    add_run_flags(p)
    add_generation_flags(p)
    add_distributed_flags(p)
    add_speed_flags(p)
    add_tracking_flags(p)
    add_recognition_flags(p)
    regularizers.add_regularizer_flags(p)  # --use_signcl, --use_sst, --use_hyperbolic and theirs
    progressive.add_progressive_flags(p, add_flag)  # --mapper, --init_lm
    fusion.add_fusion_flags(p)  # --fusion hypernet and its settings
    augment.add_augment_flags(p)  # --aug_rotate, --aug_scale, ... (training poses)
    language_models.add_lm_flags(p, add_flag)  # --lm, --lang_code
    mix_flags.add_mixing_flags(p, add_flag)  # --mix_weights, --best_dataset, --dataset_root
    return p


def add_config_flag(p):
    """--config: flag values read from a YAML or JSON file (config_file.py)."""
    g = p.add_argument_group("configuration file")
    add_flag(g, "--config", default=None, metavar="FILE",
             help="YAML or JSON file of flag values (keys in either spelling, e.g. "
                  "batch_size: 8); flags on the command line override it")


def add_optimisation_flags(p):
    """Optimisation flags, with Uni-Sign's names and defaults."""
    g = p.add_argument_group("optimisation")
    add_flag(g, "--batch-size", type=count, default=16, help="micro-batch per rank")
    add_flag(g, "--gradient-accumulation-steps", type=count, default=8,
             help="micro-batches per optimizer step")
    add_flag(g, "--gradient-clipping", type=non_negative, default=1.0,
             help="max gradient norm (0: no clipping)")
    add_flag(g, "--epochs", type=count, default=20, help="training epochs")
    add_flag(g, "--opt", type=str, default="adamw", help="adamw | adam | sgd")
    add_flag(g, "--opt-eps", type=positive, default=1.0e-9, help="Adam epsilon")
    add_flag(g, "--opt-betas", type=fraction, default=None, nargs="+", metavar="BETA",
             help="Adam beta1 beta2 (default: 0.9 0.999)")
    add_flag(g, "--adam_kernel", default="fused", choices=["fused", "foreach", "loop"],
             help="Adam/AdamW update: fused (one pass over each tensor), foreach, or loop "
                  "(torch's per-tensor loop, what Uni-Sign's AdamW runs on a CPU); the same "
                  "update up to float rounding")
    add_flag(g, "--clip-grad", type=non_negative, default=None, help="alias of --gradient-clipping when set")
    add_flag(g, "--momentum", type=fraction, default=0.9, help="SGD momentum (--opt sgd)")
    add_flag(g, "--weight-decay", type=non_negative, default=1e-4,
             help="weight decay (not on biases and norms)")
    add_flag(g, "--sched", type=str, default="cosine",
             choices=["cosine", "linear", "constant", "multistep"],
             help="cosine (Uni-Sign), linear, constant, or multistep (VAC: x0.2 at --lr_steps)")
    add_flag(g, "--lr", type=positive, default=1.0e-3, help="peak learning rate")
    add_flag(g, "--min-lr", type=non_negative, default=None,
             help="floor of the cosine schedule (cosine_with_min_lr); unset: Uni-Sign's cosine to 0")
    add_flag(g, "--warmup-epochs", type=non_negative, default=0,
             help="epochs of linear warm-up (fractions allowed)")
    add_flag(g, "--label_smoothing", type=fraction, default=0.2,
             help="label smoothing of mT5's cross-entropy")


def add_distributed_flags(p):
    """Distributed and DeepSpeed flags."""
    g = p.add_argument_group("distributed training and DeepSpeed")
    add_flag(g, "--world_size", type=count, default=None,
             help="refused: the launcher sets the process group (deepspeed --num_gpus/--num_nodes)")
    add_flag(g, "--dist_url", default=None, help="refused, as --world_size")
    add_flag(g, "--local_rank", type=non_negative_int, default=0, help="set by the deepspeed launcher")
    add_flag(g, "--node_local_storage", action="store_true",
             help="no shared filesystem: each node keeps its training states in its own "
                  "--output_dir (several nodes only)")
    add_flag(g, "--offload", action="store_true",
             help="ZeRO-Offload (stage 1-3): optimizer states, and under ZeRO-3 parameters, in "
                  "CPU memory, stepped by DeepSpeed's CPU Adam (--opt adam/adamw)")
    add_flag(g, "--deepspeed_config", default="", metavar="FILE",
             help="a DeepSpeed JSON merged over the generated config: the file wins key by key, "
                  "nested sections merged; keys that mirror a flag (micro-batch, accumulation, "
                  "train_batch_size, gradient_clipping, ZeRO stage, offload device, node-local "
                  "storage, fp16/bf16 enabled) must equal it or be \"auto\"; 'optimizer'/'scheduler' are refused")
    add_flag(g, "--gradient_checkpointing", action="store_true",
             help="recompute activations in the backward pass (mT5 blocks and ST-GCN chains): "
                  "less memory, more time; same gradients")
    add_flag(g, "--dtype", default=None, choices=["bf16", "fp16", "fp32"],
         help="default: bf16 on a GPU that supports it, fp32 otherwise")
    add_flag(g, "--zero_stage", type=zero_stage, default="auto",
             help="DeepSpeed ZeRO stage 0-3, or auto: a resumed state's stage; 2 on several "
                  "ranks, with --offload or under bf16/fp16; 0 for float32 on one rank, where "
                  "ZeRO only adds copies")
    add_flag(g, "--compute_fp32_loss", action="store_true",
             help="cross-entropy on float32 logits under bf16/fp16")


def add_run_flags(p):
    """Output, resuming, evaluation schedule and logging flags."""
    g = p.add_argument_group("output, resuming and evaluation")
    add_flag(g, "--output_dir", default="", metavar="DIR",
             help="folder of checkpoints, logs, predictions and training states "
                  "(default: none, nothing is saved)")
    add_flag(g, "--finetune", default="", metavar="FILE",
             help="initialise from a {'model': state_dict} checkpoint")
    add_flag(g, "--init_encoder", default="", metavar="FILE",
         help="initialise only the pose encoder, from a checkpoint of any head (e.g. CTC)")
    add_flag(g, "--seed", type=seed, default=42, help="random seed (data order, sampling, init)")
    add_flag(g, "--eval", action="store_true", help="evaluate only")
    add_flag(g, "--num_workers", type=non_negative_int, default=8,
             help="DataLoader and pre-scan processes per rank")
    add_flag(g, "--pin-mem", action="store_true", dest="pin_mem",
             help="pin DataLoader batches in memory (the default)")
    add_flag(g, "--no-pin-mem", action="store_false", dest="pin_mem", help="do not pin them")
    p.set_defaults(pin_mem=True)
    add_flag(g, "--quick_break", type=non_negative_int, default=0, help="end each epoch after N steps (0: full)")
    add_flag(g, "--resume", default="auto", choices=["auto", "none"],
         help="auto: continue from the latest training state in --output_dir")
    add_flag(g, "--overwrite", action="store_true",
             help="start afresh in an --output_dir that holds another run, removing its files")
    add_flag(g, "--keep_last", type=non_negative_int, default=2, help="epoch checkpoints kept besides the best")
    add_flag(g, "--save_every_steps", type=non_negative_int, default=0,
         help="also save a resumable training state every N micro-batches (0: per epoch only)")
    add_flag(g, "--bucket_by_length", action="store_true", help="batch clips of similar length")
    add_flag(g, "--print_freq", type=count, default=10,
             help="progress line every N steps when not on a terminal")
    add_flag(g, "--eval_every", type=count, default=1, help="evaluate every N epochs (and the last)")
    add_flag(g, "--skip_test_eval", action="store_true", help="only evaluate dev during training")


def add_data_flags(p):
    """Dataset, task and path flags (paths default to config.py)."""
    g = p.add_argument_group("data")
    add_flag(g, "--dataset", default="CSL_Daily",
             help=f"registered dataset: {', '.join(config.DATASETS)}; A+B trains on their "
                  "mix (docs/mixed_corpora.md)")
    add_flag(g, "--task", default="SLT", choices=["SLT", "ISLR", "CSLR", "G2T"],
             help="SLT: sentences (BLEU, ROUGE); ISLR: one label (top-1); CSLR: glosses (WER); "
                  "G2T: gloss-to-text pretraining of mT5 (no poses)")
    add_flag(g, "--max_length", type=count, default=256, help="frames kept per clip")
    add_flag(g, "--max_frames_per_clip", type=count, default=DEFAULT_MAX_FRAMES,
             help="refuse clips with more frames (guards memory against expanding pickles)")
    add_flag(g, "--pose_fps", type=positive, default=None,
         help="resample MediaPipe .pose inputs to this frame rate (pickles are used as stored)")
    add_flag(g, "--max_tgt_len", type=target_length, default=50, help="target tokens kept")
    add_flag(g, "--max_unk_rate", type=float_range(0, 1), default=0.05,
             help="stop before training when more of the training targets' tokens (with "
                  "--eval: the dev references') than this are <unk> under the mT5 tokenizer "
                  "(1: never)")
    add_flag(g, "--data_root", default=None, metavar="DIR",
             help="label root (default ./data or $SIGN_DATA_ROOT)")
    add_flag(g, "--pose_root", default=None, metavar="DIR",
             help="pose root (default ./dataset or $SIGN_POSE_ROOT)")
    add_flag(g, "--mt5_path", default=None, metavar="DIR",
             help="mT5 directory (default from config.py)")
    add_flag(g, "--rgb_support", action="store_true", help="not supported: pose-only trainer")
    add_flag(g, "--online_video", default=None,
             help="refused: translate.py translates videos (python translate.py --checkpoint "
                  "CKPT.pth VIDEO.mp4)")


def add_model_flags(p):
    """Pose encoder widths (Uni-Sign's defaults) and how its frames enter mT5."""
    g = p.add_argument_group("model")
    add_flag(g, "--hidden_dim", type=count, default=256,
             help="width of each body part's features (the last --stgcn_channels)")
    add_flag(g, "--stgcn_channels", type=count_list, default=[64, 128, 256],
             help="ST-GCN widths, block by block")
    add_flag(g, "--temporal_layers", type=count, default=3,
             help="temporal ST-GCN blocks after the spatial ones")
    add_flag(g, "--temporal_kernel", type=odd_count, default=5,
             help="frames seen by each temporal convolution (odd)")
    add_flag(g, "--pose_positions", default="none", choices=["none", "sinusoidal"],
         help="add sinusoidal frame positions to the pose embeddings (none: Uni-Sign); helps "
              "when the output order is not implied by content, as in fingerspelling")


def add_speed_flags(p):
    """Speed switches (pose_encoder.SPEED_DEFAULTS holds their defaults); each keeps Uni-Sign's
    loss up to float rounding."""
    g = p.add_argument_group("speed (each keeps Uni-Sign's loss up to float rounding)")

    def switch(name, help):
        add_flag(g, "--" + name, default=SPEED_DEFAULTS[name], choices=SPEED_CHOICES[name],
                 help=help)
    switch("graph_product", "ST-GCN graph product: matmul (no permute copy) or einsum (Uni-Sign's)")
    switch("temporal_conv", "ST-GCN temporal conv: direct, or Winograd F(4,k) (fewer FLOPs, "
                            "memory-bound transforms)")
    switch("hands_batch", "both hands through their shared encoder as one batch (auto: on CUDA "
                          "only); joint also normalises them with one BatchNorm statistic, as "
                          "evaluation does (auto means joint for the CTC head)")
    switch("target_logits", "vocabulary projection and loss on real target tokens only, or on "
                            "every position")
    switch("embed_once", "one embedding lookup for the prompt and the decoder inputs")
    add_flag(g, "--compile_encoder", action="store_true", default=SPEED_DEFAULTS["compile_encoder"],
             help="torch.compile the ST-GCN part encoders (no gain measured on CPU)")
    add_flag(g, "--keep_freed_memory", default="auto", choices=["auto", "on", "off"],
             help="glibc keeps freed blocks for reuse instead of unmapping them (auto: on CPU runs)")


def add_generation_flags(p):
    """Decoding flags."""
    g = p.add_argument_group("decoding (evaluation)")
    add_flag(g, "--num_beams", type=count, default=4, help="beam width (1: greedy)")
    add_flag(g, "--max_new_tokens", type=count, default=100, help="longest output in tokens")
    add_flag(g, "--decode_pool", type=non_negative_int, default=64,
         help="beam rows of several evaluation batches decoded together, with the tokens of "
              "batch by batch up to float32 rounding (0: Hugging Face generate per batch)")


def add_tracking_flags(p):
    """Weights & Biases tracking and bad-input handling."""
    g = p.add_argument_group("tracking and bad input")
    add_flag(g, "--wandb", action="store_true", help="log to Weights & Biases")
    add_flag(g, "--wandb_project", default="sign-pose-trainer", help="W&B project (with --wandb)")
    add_flag(g, "--wandb_run_name", default=None, help="W&B run name (with --wandb)")
    add_flag(g, "--tensorboard", action="store_true",
             help="write TensorBoard events to OUTPUT_DIR/tensorboard")
    add_flag(g, "--skip_bad_samples", action="store_true",
         help="skip unreadable or invalid clips (counted and logged) instead of stopping")
    add_flag(g, "--max_nonfinite", type=non_negative_int, default=10,
         help="stop (saving a training state) after N consecutive NaN/Inf losses; 0: never")


def add_recognition_flags(p):
    """--task CSLR --head ctc: VAC's CTC head on the pose encoder (models.CTCRecognizer)."""
    weights = ",".join(f"{k}={v:g}" for k, v in DEFAULT_LOSS_WEIGHTS.items())
    g = p.add_argument_group("continuous recognition with a CTC head")
    add_flag(g, "--head", default="generate", choices=["generate", "ctc"],
         help="CSLR: generate (mT5 writes the glosses) or ctc (VAC's CTC head, no mT5)")
    add_flag(g, "--ctc_beam", type=count, default=1, help="CTC prefix beam width (1: greedy)")
    add_flag(g, "--ctc_hidden", type=count, default=1024, help="CTC head conv/BiLSTM width")
    add_flag(g, "--share_classifier", action=argparse.BooleanOptionalAction, default=True,
         help="one classifier for the conv and BiLSTM outputs (SMKD)")
    add_flag(g, "--weight_norm", action=argparse.BooleanOptionalAction, default=True,
         help="unit-norm classifier columns (SMKD)")
    add_flag(g, "--loss_weights", default=weights, help="CTC head loss weights, NAME=W,...")
    add_flag(g, "--lr_steps", type=count_list, default=[20, 35],
         help="epochs where --sched multistep multiplies the lr by 0.2")


def parse_args(description, argv=None, defaults=None):
    """Parsed flags, from the command line over its --config file (config_file.py); a flag that
    cannot act in the requested configuration stops here with `error:` and the reason (see
    refusals), before anything is built. args.given_flags: the dests given (file included)."""
    parser = ArgumentParser(description, parents=[get_args_parser()],
                            usage="%(prog)s [-h] [--config FILE] [flags]",
                            description=DESCRIPTION)
    parser.set_defaults(**(defaults or {}))
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        argv = config_file.expand(parser, argv)
    except config_file.ConfigFileError as error:
        parser.error(str(error))
    args = parser.parse_args(argv)
    if args.clip_grad is not None:
        args.gradient_clipping = args.clip_grad
    given = explicit_flags(parser, argv)
    problems = refusals(args, given)
    if problems:  # the reasons alone: the usage text would bury them
        parser.exit(2, f"{parser.prog}: error: " + "\n  ".join(problems) + "\n")
    args.given_flags = frozenset(given)  # not a flag: checkpoint.plain_args leaves it out
    return args


# ---------------------------------------------------------------- flags that cannot act

def explicit_flags(parser, argv=None):
    """The dests of the flags given on the command line (not those left at their default)."""
    saved = [(action, action.default) for action in parser._actions]
    saved_defaults, parser._defaults = parser._defaults, {}
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given = parser.parse_args(sys.argv[1:] if argv is None else argv)
    finally:
        for action, default in saved:
            action.default = default
        parser._defaults = saved_defaults
    return set(vars(given))


MT5_FLAGS = ("num_beams", "max_new_tokens", "decode_pool", "label_smoothing", "max_tgt_len",
             "max_unk_rate", "mt5_path", "target_logits", "embed_once", "compute_fp32_loss")
CTC_FLAGS = ("ctc_beam", "ctc_hidden", "share_classifier", "weight_norm", "loss_weights")
REGULARIZER_FLAGS = {
    "use_signcl": ("signcl_weight", "signcl_max_distance", "signcl_pos_samples",
                   "signcl_neg_samples"),
    "use_sst": ("sst_num", "sst_dim", "sst_weight", "sst_attention", "sst_temperature"),
    "use_hyperbolic": ("hyp_dim", "init_c", "hyp_lr", "hyp_stabilize", "alpha",
                       "label_smoothing_hyp", "hyp_text_emb_src", "hyp_text_cmp",
                       "clip_grad_norm_hyp", "save_one_batch", "save_batch_name"),
}
NEVER_READ = {
    "alpha_reg": "has no effect (Geo-Sign accepts it and never reads it either)",
    "max_eval_samples": "has no effect (Geo-Sign accepts it and never reads it either); "
                        "--save_one_batch saves one batch",
    "world_size": "the process group comes from the launcher (deepspeed --num_gpus N "
                  "[--num_nodes M --hostfile F]), not from this flag",
    "dist_url": "the process group comes from the launcher's MASTER_ADDR/MASTER_PORT, not "
                "from this flag",
    "online_video": "fine_tuning.py does not translate videos; translate.py does, extracting "
                    "the poses first (bash script/setup_video.sh once): python translate.py "
                    "--checkpoint CHECKPOINT.pth VIDEO.mp4 (docs/video.md)",
}


def flag(dest):
    return "--" + dest


def refusals(args, explicit):
    """Messages for the flags that cannot act with these settings (empty: all act)."""
    problems = [f"{flag(d)}: {why}" for d, why in NEVER_READ.items() if d in explicit]
    problems += model_refusals(args, explicit)
    problems += head_refusals(args, explicit)
    problems += regularizer_refusals(args, explicit)
    problems += schedule_refusals(args, explicit)
    problems += run_refusals(args, explicit)
    problems += progressive.progressive_refusals(args, explicit)
    problems += fusion.fusion_refusals(args, explicit)
    problems += augment.augment_refusals(args, explicit)
    problems += language_models.lm_refusals(args, explicit)
    problems += mix_flags.mixing_refusals(args, explicit)
    problems += value_refusals(args)
    return problems


def model_refusals(args, explicit):
    problems = []
    if args.rgb_support:
        problems.append("--rgb_support: the RGB branch is not part of this pose-only trainer")
    if args.stgcn_channels[-1] != args.hidden_dim:
        problems.append(f"--hidden_dim {args.hidden_dim} must equal the last --stgcn_channels "
                        f"width {args.stgcn_channels[-1]}")
    if mix_flags.is_mixed(args):
        pass  # a mix: mixing_refusals checks each of its datasets
    elif args.dataset not in config.DATASETS:
        problems.append(f"--dataset {args.dataset}: unknown; known: {', '.join(config.DATASETS)} "
                        "(add one in config.py's DATASETS)")
    elif not config.DATASETS[args.dataset].supports(args.task):
        problems.append(f"--task {args.task}: the labels of --dataset {args.dataset} support "
                        f"{', '.join(config.DATASETS[args.dataset].tasks)} (G2T needs glosses "
                        "and sentences: SLT and CSLR)")
    return problems


def head_refusals(args, explicit):
    if args.head == "ctc":
        if args.task != "CSLR":
            return [f"--head ctc recognises gloss sequences: use it with --task CSLR, not "
                    f"--task {args.task}"]
        problems = [f"{flag(d)} acts on mT5, which --head ctc does not build"
                    for d in MT5_FLAGS if d in explicit]
        if args.pose_positions != "none":
            problems.append("--pose_positions: frame positions are added to mT5's input; the "
                            "CTC head's BiLSTM already sees frame order")
        for name, why in (("use_hyperbolic", "aligns pose with text"),
                          ("use_sst", "contrasts pose with text")):
            if getattr(args, name):
                problems.append(f"{flag(name)} {why}, and --head ctc has no text side (SignCL "
                                "works: --use_signcl acts on the CTC head's frame features)")
        return problems
    return [f"{flag(d)} configures the CTC head: it needs --task CSLR --head ctc"
            for d in CTC_FLAGS if d in explicit]


def regularizer_refusals(args, explicit):
    problems = []
    for switch, settings in REGULARIZER_FLAGS.items():
        if not getattr(args, switch):
            problems += [f"{flag(d)} sets a regulariser that is off: add {flag(switch)}"
                         for d in settings if d in explicit]
    for d in ("clip_grad_norm_euclid", "clip_grad_norm_hyp"):
        if d in explicit and not args.manual_grad_clip:
            problems.append(f"{flag(d)} acts with --manual_grad_clip only "
                            "(otherwise --gradient-clipping bounds every gradient)")
    return problems


def schedule_refusals(args, explicit):
    problems = []
    if "min_lr" in explicit and args.sched != "cosine":
        problems.append(f"--min-lr floors the cosine schedule; --sched {args.sched} has no floor")
    if "lr_steps" in explicit and args.sched != "multistep":
        problems.append("--lr_steps are the epochs where --sched multistep lowers the lr; "
                        f"--sched is {args.sched}")
    if "warmup_epochs" in explicit and args.sched == "multistep":
        problems.append("--warmup-epochs: --sched multistep has no warm-up")
    optimizer = args.opt.lower()
    if optimizer == "sgd":
        problems += [f"{flag(d)} is an Adam setting; --opt is sgd"
                     for d in ("opt_eps", "opt_betas", "adam_kernel") if d in explicit]
    elif args.offload and "adam_kernel" in explicit:
        problems.append("--adam_kernel picks torch's Adam; --offload steps DeepSpeed's CPU Adam")
    elif "momentum" in explicit:
        problems.append(f"--momentum is an SGD setting; --opt is {args.opt}")
    return problems


def run_refusals(args, explicit):
    problems = []
    if "wandb" not in explicit:
        problems += [f"{flag(d)} names the Weights & Biases run: add --wandb"
                     for d in ("wandb_project", "wandb_run_name") if d in explicit]
    if not args.output_dir:
        problems += [f"{flag(d)} writes into the output folder: add --output_dir"
                     for d in ("save_every_steps", "keep_last", "save_one_batch", "overwrite",
                               "tensorboard", "node_local_storage")
                     if d in explicit]
    if "decode_pool" in explicit and args.num_beams < 2 and args.head != "ctc":
        problems.append("--decode_pool pools beam search; --num_beams 1 decodes greedily")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        problems.append("--tensorboard needs the tensorboard package: pip install tensorboard")
    if args.overwrite and args.eval:
        problems.append("--overwrite replaces a run in --output_dir; --eval trains none")
    problems += deepspeed_refusals(args)
    if args.compute_fp32_loss and args.dtype == "fp32":
        problems.append("--compute_fp32_loss: with --dtype fp32 the loss is float32 already")
    return problems


def deepspeed_refusals(args):
    problems = []
    if args.offload and args.zero_stage == 0:
        problems.append("--offload moves a ZeRO optimizer's states to CPU; --zero_stage 0 has "
                        "no ZeRO optimizer (use --zero_stage 1, 2 or 3)")
    if args.gradient_checkpointing and args.eval:
        problems.append("--gradient_checkpointing recomputes activations for the backward pass; "
                        "--eval trains none")
    if args.offload and args.opt.lower() not in ("adam", "adamw"):
        problems.append(f"--offload steps with DeepSpeed's CPU Adam; --opt {args.opt} has no "
                        "CPU version (use --opt adamw or adam)")
    return problems


def value_refusals(args):
    """Values in range one by one (cli.py's types) that cannot work together."""
    problems = []
    if args.opt_betas is not None and len(args.opt_betas) != 2:
        problems.append(f"--opt-betas takes two values (beta1 beta2), got {len(args.opt_betas)}")
    if args.warmup_epochs > args.epochs:
        problems.append(f"--warmup-epochs {args.warmup_epochs:g} is longer than --epochs "
                        f"{args.epochs}: the learning rate would never reach --lr")
    if args.min_lr is not None and args.min_lr >= args.lr:
        problems.append(f"--min-lr {args.min_lr:g} must be below --lr {args.lr:g}")
    if args.head == "ctc" and args.max_length < CTC_MIN_FRAMES:
        problems.append(f"--max_length {args.max_length}: the CTC head's temporal convolutions "
                        f"need at least {CTC_MIN_FRAMES} frames per clip")
    return problems
