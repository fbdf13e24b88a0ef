"""Resuming a training state under another ZeRO stage or another number of ranks.

A DeepSpeed state holds the optimizer partitioned for the stage and the ranks that wrote it.
When a rerun changes either, the state is converted once to DeepSpeed's universal checkpoint
(one file per parameter and optimizer moment, `deepspeed.checkpoint.ds_to_universal`) under
training_state/<tag>.universal, and the engine loads it with `load_universal`, re-partitioning
for the new layout. Every file of the state is first read with the weights-only loader
(checkpoint.load_state_file), because the converter unpickles with no such guard.

What converts: the number of ranks under ZeRO 1, 2 or 3, and the stage between 1 and 2 (this
DeepSpeed's universal loader for stage 3 reads only what its stage-3 converter writes). A
float32 state without ZeRO (stage 0) needs no conversion: each rank loads it whole. A state
saved in mid-epoch keeps its number of ranks: its sampler position counts the old global
batches (resume from an epoch's end instead).
"""
import os
import shutil
import subprocess
import sys

import checkpoint
import utils
from config import ConfigError

LAYOUT_FLAGS = ("zero_stage", "world_size")
UNIVERSAL_SUFFIX = ".universal"
STATE_NAMES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def convertible(changes, tag):
    """Whether a resume whose refused changes are `changes` ({flag: (old, new)}) from the state
    `tag` goes through a universal checkpoint; ConfigError when it is only a layout change that
    cannot be converted."""
    if not changes or set(changes) - set(LAYOUT_FLAGS):
        return False
    stages = changes.get("zero_stage")
    if stages and not set(stages) <= {1, 2}:
        old, new = stages
        raise ConfigError(
            f"the training state {tag} was saved under ZeRO stage {old}; DeepSpeed's universal "
            f"checkpoint carries a state between stages 1 and 2 only, not to stage {new}: rerun "
            f"with --zero_stage {old}, use another --output_dir, or start afresh with --overwrite")
    check_epoch_end(changes, tag)
    return True


def loads_as_saved(changes, tag, args):
    """Whether a float32 state saved without ZeRO (stage 0: every rank holds the whole optimizer
    state) resumes on another number of ranks as it is, with no conversion."""
    if set(changes) != {"world_size"} or args.zero_stage != 0 or args.dtype != "fp32":
        return False
    check_epoch_end(changes, tag)
    return True


def check_epoch_end(changes, tag):
    """ConfigError when the number of ranks changes for a state saved in mid-epoch."""
    if "world_size" in changes:
        old, new = changes["world_size"]
        if "-step" in tag:
            raise ConfigError(
                f"the training state {tag} was saved in mid-epoch by {old} ranks, and its position "
                f"counts their batches; this run has {new}: resume it with {old} ranks (an epoch's "
                "end can be resumed with any number), use another --output_dir, or start afresh "
                "with --overwrite")


def universal_tag(output_dir, tag):
    """Converts the state `tag` (on rank 0, once; the other ranks wait) and returns the tag of
    its universal form."""
    root = os.path.join(output_dir, "training_state")
    target = tag + UNIVERSAL_SUFFIX
    if utils.is_main_process() and not os.path.isdir(os.path.join(root, target)):
        convert(root, tag, target)
    utils.barrier()
    return target


def convert(root, tag, target):
    source = os.path.join(root, tag)
    for name in sorted(os.listdir(source)):
        if name.endswith(".pt"):
            checkpoint.load_state_file(os.path.join(source, name), map_location="cpu")
    staging = os.path.join(root, ".staging", target)
    shutil.rmtree(staging, ignore_errors=True)
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
               "--input_folder", source, "--output_folder", staging, "--inject_missing_state",
               "--num_extract_workers", "1", "--num_merge_workers", "1"]
    print(f"converting {source} to DeepSpeed's universal checkpoint (another ZeRO stage or "
          "number of ranks)")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"the training state {source} cannot be converted for another ZeRO "
                          f"stage or number of ranks ({done.stderr.strip()[-300:]}): rerun "
                          "with its ZeRO stage and ranks, or start afresh with --overwrite")
    for name in os.listdir(source):  # what the converter does not carry: flags, random states
        if name == checkpoint.FLAGS_FILE or name.startswith("rng_rank"):
            shutil.copy2(os.path.join(source, name), staging)
    name_for_every_stage(staging)
    os.replace(staging, os.path.join(root, target))


def name_for_every_stage(folder):
    """The engine state (client state, scheduler) under the names ZeRO 0-2 and ZeRO 3 read it
    by; with a universal checkpoint the weights come from its per-parameter files instead."""
    names = [os.path.join(folder, name) for name in STATE_NAMES]
    present = [path for path in names if os.path.isfile(path)]
    for path in names:
        if present and not os.path.exists(path):
            shutil.copy2(present[0], path)
