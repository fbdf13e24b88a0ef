"""The flags of mixed corpora (`--dataset A+B[+C]`, mixing.py) and the refusal of the mixes and
flags that cannot act. Light on imports: flags.py reads it."""
import argparse
import math

import config

SEPARATOR = "+"
MIX_FLAGS = ("mix_weights", "best_dataset", "dataset_root")


def dataset_names(dataset):
    return dataset.split(SEPARATOR)


def is_mixed(args):
    return SEPARATOR in args.dataset


def weight_list(text):
    """--mix_weights: positive numbers separated by commas (they need not sum to 1)."""
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas, "
                                         "e.g. 0.7,0.3") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every weight must be a positive number")
    return values


def add_mixing_flags(p, add_flag):
    """--mix_weights, --best_dataset and --dataset_root (a mix is --dataset A+B)."""
    g = p.add_argument_group("mixed corpora (--dataset A+B[+C])")
    add_flag(g, "--mix_weights", type=weight_list, default=None, metavar="W1,W2",
             help="share of each dataset of the mix in the training draws, in --dataset's "
                  "order (normalised; default: proportional to the training splits' sizes)")
    add_flag(g, "--best_dataset", default=None, metavar="NAME",
             help="dataset of the mix whose dev metric picks the best checkpoint (default: "
                  "the first one in --dataset)")
    add_flag(g, "--dataset_root", nargs="+", default=None, metavar="NAME=DIR",
             help="a mixed dataset's own root: its labels and poses are looked up under DIR "
                  "instead of --data_root and --pose_root")


def mixing_refusals(args, explicit):
    """Messages for mix flags without a mix, and for mixes that cannot train together."""
    names = dataset_names(args.dataset)
    if len(names) == 1:
        return [f"--{name}: acts on a mix of datasets (--dataset A{SEPARATOR}B), not on one "
                "dataset" for name in MIX_FLAGS if name in explicit]
    problems = []
    unknown = [name for name in names if name not in config.DATASETS]
    if unknown:
        problems.append(f"--dataset {args.dataset}: unknown {', '.join(unknown)}; known: "
                        f"{', '.join(config.DATASETS)}")
    if len(set(names)) < len(names):
        problems.append(f"--dataset {args.dataset}: a dataset is named twice (weight it with "
                        "--mix_weights instead)")
    if args.task in ("CSLR", "G2T"):
        problems.append(f"--task {args.task} on a mix: each dataset has its own gloss "
                        "vocabulary, which one model cannot share; mix SLT (or ISLR) datasets")
    for name in names:
        if name in config.DATASETS and not config.DATASETS[name].supports(args.task):
            problems.append(f"--dataset {args.dataset}: the labels of {name} support "
                            f"{', '.join(config.DATASETS[name].tasks)}, not --task {args.task} "
                            "(every dataset of a mix trains the same task)")
    if args.mix_weights is not None and len(args.mix_weights) != len(names):
        problems.append(f"--mix_weights gives {len(args.mix_weights)} weights for the "
                        f"{len(names)} datasets of --dataset {args.dataset}")
    if args.best_dataset is not None and args.best_dataset not in names:
        problems.append(f"--best_dataset {args.best_dataset} is not one of {', '.join(names)}")
    problems += root_problems(args.dataset_root or [], names)
    return problems


def root_problems(items, names):
    problems = []
    for item in items:
        name, equals, folder = item.partition("=")
        if not equals or not folder:
            problems.append(f"--dataset_root {item}: give NAME=DIR")
        elif name not in names:
            problems.append(f"--dataset_root {item}: {name} is not one of {', '.join(names)}")
    return problems
