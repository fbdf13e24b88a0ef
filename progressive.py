"""The flags of MMTLB's progressive pretraining, and the refusal of those that cannot act.

The stages: (1) the pose encoder learns glosses with the CTC head (`--task CSLR --head ctc`);
(2) the language model learns to translate gloss sequences into text (`--task G2T`, no poses
read, gloss_to_text.py); (3) translation (`--task SLT`) starts its pose encoder from stage 1
(`--init_encoder`) and its language model from stage 2 (`--init_lm`), joined by MMTLB's
visual-language mapper (`--mapper mlp`, mapper.py). flags.py adds these flags and these
refusals to its own.
"""
from mapper import MAPPERS

# Flags that act on the poses or the pose encoder: a G2T run reads neither.
POSE_FLAGS = ("max_length", "max_frames_per_clip", "pose_fps", "pose_root", "stgcn_channels",
              "hidden_dim", "temporal_layers", "temporal_kernel", "pose_positions",
              "graph_product", "temporal_conv", "hands_batch", "compile_encoder", "init_encoder",
              "mapper")
# The translator's speed switches; the G2T model computes its loss on real tokens, in one way.
TRANSLATOR_SWITCHES = ("target_logits", "embed_once")


def add_progressive_flags(p, add_flag):
    """--mapper and --init_lm (the task G2T is one of --task's choices)."""
    g = p.add_argument_group("progressive pretraining (MMTLB)")
    add_flag(g, "--mapper", default="linear", choices=list(MAPPERS),
             help="how pose features enter mT5: linear (Uni-Sign's pose_proj) or mlp (MMTLB's "
                  "visual-language mapper, two layers with a ReLU)")
    add_flag(g, "--init_lm", default="",
             help="initialise only the language model (mT5), from a checkpoint of --task G2T "
                  "(or any translator)")


def progressive_refusals(args, explicit):
    """Messages for the flags of the stages that cannot act with these settings."""
    if args.task == "G2T":
        return g2t_refusals(args, explicit)
    problems = []
    if args.head == "ctc":
        problems += [f"--{name} acts on mT5 and its input, which --head ctc does not build"
                     for name in ("mapper", "init_lm") if name in explicit]
    if args.init_lm and args.finetune:
        problems.append("--init_lm and --finetune both set: --finetune already loads the whole "
                        "model, mT5 included")
    return problems


def g2t_refusals(args, explicit):
    """--task G2T reads gloss and sentence pairs only: no pose, no pose encoder."""
    problems = [f"--{name} acts on poses or the pose encoder; --task G2T reads neither (it "
                "translates glosses)" for name in POSE_FLAGS if name in explicit]
    problems += [f"--{name}: --task G2T computes its loss on the real target tokens, in one "
                 "way" for name in TRANSLATOR_SWITCHES if name in explicit]
    if "init_lm" in explicit:
        problems.append("--init_lm: --task G2T trains the language model; continue from a G2T "
                        "checkpoint with --finetune")
    problems += [f"--{name}: its regulariser reads pose features, which --task G2T has none of"
                 for name in ("use_signcl", "use_sst", "use_hyperbolic") if getattr(args, name)]
    return problems
