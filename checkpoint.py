"""Checkpoints: Uni-Sign-compatible weight files and resumable DeepSpeed training states.

Weight files hold `{'model': state_dict, ...}` like Uni-Sign's `checkpoint_{epoch}.pth` and
`best_checkpoint.pth`, so `--finetune` accepts ours and theirs. Every file and directory is first
written under a temporary name, flushed, then renamed, so a run killed while saving leaves the
previous checkpoint intact.
"""
import collections
import contextlib
import errno
import glob
import json
import os
import pickle
import random
import shutil

import numpy as np
import torch

import utils
from durable import fsync_dir
from config import ConfigError


FLAGS_FILE = "flags.json"  # in each training state: the run's flags


class SaveError(OSError):
    """A save that failed for lack of space or permission; the message names the folder and the
    last complete training state, which the atomic saves left as it was."""

    def __str__(self):
        return self.strerror


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # raised by writes only, never by reads


def disk_full_error(output_dir, error):
    """SaveError for a full disk met while writing anything else of the run (a log, the
    predictions), naming the file when known and the last complete training state."""
    written = f"{error.filename}" if error.filename else f"the run's files in {output_dir}"
    return SaveError(error.errno, f"could not write {written} ({os.strerror(error.errno)}); "
                                  f"{intact_state(output_dir)}")


def intact_state(output_dir):
    latest = latest_training_state(output_dir) if output_dir else None
    return (f"the last complete training state, {output_dir}/training_state/{latest}, is "
            "intact: free space and rerun with the same --output_dir to continue from it"
            if latest else "no training state had been saved yet")


@contextlib.contextmanager
def reporting_save_errors(output_dir, what):
    """Turns a full disk (or a folder that stopped being writable) during a save into SaveError."""
    try:
        yield
    except OSError as error:
        if isinstance(error, SaveError) or error.errno not in (
                errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO):
            raise
        raise SaveError(error.errno, f"could not save {what} in {output_dir} "
                                     f"({os.strerror(error.errno)}); {intact_state(output_dir)}"
                        ) from None


def _atomic_write(path, mode, write):
    """Writes through `write(file)` to a temporary file, syncs it, then renames it over `path`."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj, path):
    _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(path, text):
    _atomic_write(path, "w", lambda f: f.write(text))


def plain_args(args):
    """The flags as plain values, loadable with torch.load(weights_only=True)."""
    keep = (str, int, float, bool, type(None))
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, keep) or (isinstance(value, list) and all(isinstance(v, keep) for v in value)):
            out[key] = value
    return out


def full_state_dict(engine):
    """The whole model's state dict on rank 0 (gathered from ZeRO-3 partitions when needed)."""
    if engine.zero_optimization_stage() != 3:
        return engine.module.state_dict()
    gathered = engine._zero3_consolidated_16bit_state_dict()
    if not utils.is_main_process():
        return gathered
    # ZeRO-3 gathers a tensor shared by two modules (left and right hands) under one name only;
    # restore every alias so the file has the same keys as an unpartitioned model's. Tensors
    # outside ZeRO (the hyperbolic geometry, see hyperbolic.py) are whole on every rank already.
    first_name = {}
    for name, tensor in engine.module.state_dict(keep_vars=True).items():
        alias = first_name.setdefault(id(tensor), name)
        if name in gathered:
            continue
        if not hasattr(tensor, "ds_id"):
            gathered[name] = tensor.detach()
        elif alias in gathered:
            gathered[name] = gathered[alias]
        else:
            raise RuntimeError(f"ZeRO-3 state dict lacks {name} and any alias of it")
    return gathered


def save_weights(engine, path, args, extra=None):
    """Writes `{'model': state_dict, 'args': flags, **extra}` on rank 0; all ranks must call."""
    state = full_state_dict(engine)
    if utils.is_main_process():
        state = {k: v.detach().cpu() for k, v in state.items()}
        with reporting_save_errors(os.path.dirname(path) or ".", os.path.basename(path)):
            atomic_torch_save({"model": state, "args": plain_args(args), **(extra or {})}, path)
    utils.barrier()


def save_training_state(engine, output_dir, tag, client_state, keep_last=2):
    """Saves model, optimizer, scheduler and scaler states (every rank's shard) and every rank's
    random state under <output_dir>/training_state/<tag>, then points `latest` at it.

    Everything is written under training_state/.staging, synced to disk, and renamed into place
    before `latest` moves, so a run killed at any moment of a save resumes from the previous
    state. A save under the tag `latest` names already goes to a new name (see _unused_tag), so
    no step deletes the state `latest` points at. Returns the tag used.
    """
    with reporting_save_errors(output_dir, f"the training state {tag}"):
        return _save_training_state(engine, output_dir, tag, client_state, keep_last)


def _save_training_state(engine, output_dir, tag, client_state, keep_last):
    root = os.path.join(output_dir, "training_state")
    staging = os.path.join(root, ".staging")
    writer = writes_training_states(engine)
    if writer:
        shutil.rmtree(staging, ignore_errors=True)  # what an interrupted save left
    utils.barrier()
    engine.save_checkpoint(staging, tag=tag, client_state=client_state, save_latest=False)
    if writer and "args" in client_state:  # readable before any model is built
        atomic_write_text(os.path.join(staging, tag, FLAGS_FILE), json.dumps(client_state["args"]))
    atomic_torch_save(capture_rng_state(), os.path.join(staging, tag, f"rng_rank{utils.get_rank()}.pt"))
    utils.barrier()
    final_tag = None
    if writer:
        _fsync_tree(os.path.join(staging, tag))
        final_tag = _unused_tag(root, tag)
        final = os.path.join(root, final_tag)
        shutil.rmtree(final, ignore_errors=True)  # a state never pointed at (see _unused_tag)
        os.replace(os.path.join(staging, tag), final)
        fsync_dir(root)
        atomic_write_text(os.path.join(root, "latest"), final_tag)
        prune_training_states(root, keep_last)
    return utils.all_gather_objects(final_tag)[0]


def writes_training_states(engine):
    """Whether this rank moves training states into place: rank 0, or with node-local storage
    (--node_local_storage) the first rank of each node, in its node's own folder."""
    if engine.use_node_local_storage():
        return int(os.environ.get("LOCAL_RANK", "0")) == 0
    return utils.is_main_process()


def _unused_tag(root, tag):
    """`tag`, unless `latest` names it (a restarted run saving the same position again): then the
    first free `tag.N`, so the state `latest` points at stays whole until the pointer moves."""
    if latest_training_state(os.path.dirname(root)) != tag:
        return tag
    number = 1
    while os.path.exists(os.path.join(root, f"{tag}.{number}")):
        number += 1
    return f"{tag}.{number}"


def _fsync_tree(directory):
    """Flushes every file under `directory`, and the directories themselves, to disk."""
    for parent, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(parent, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(parent)


def prune_training_states(root, keep_last):
    """Keeps the newest `keep_last` states (and the one `latest` names); removes what killed
    atomic writes of the pointer left behind."""
    for name in os.listdir(root):
        if name.startswith("latest.tmp-"):
            os.remove(os.path.join(root, name))
    latest = latest_training_state(os.path.dirname(root))
    tags = sorted((d for d in os.listdir(root) if d.startswith("epoch") and d != latest),
                  key=lambda d: os.path.getmtime(os.path.join(root, d)))
    keep_others = keep_last - 1 if latest is not None else keep_last
    for tag in (tags[:len(tags) - keep_others] if keep_last > 0 else []):
        shutil.rmtree(os.path.join(root, tag), ignore_errors=True)


def saved_flags(output_dir, tag):
    """The flags a training state was saved with ({} for states saved without them)."""
    path = os.path.join(output_dir, "training_state", tag, FLAGS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def latest_training_state(output_dir):
    """The tag `latest` points at, or None when the directory holds no complete state."""
    root = os.path.join(output_dir, "training_state")
    pointer = os.path.join(root, "latest")
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        tag = f.read().strip()
    return tag if tag and os.path.isdir(os.path.join(root, tag)) else None


def state_classes():
    """The classes besides tensors and containers that DeepSpeed writes into training states:
    plain data holders whose unpickling runs no code of the file's choosing."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, collections.Counter,
            collections.OrderedDict, collections.defaultdict]


def load_state_file(path, map_location=None):
    """One file of a training state, loaded with torch's weights-only unpickler (DeepSpeed's
    own loader allows any code): a tampered file that names another global is refused."""
    try:
        with torch.serialization.safe_globals(state_classes()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()
        refused = next((line.strip() for line in reason if "GLOBAL" in line), reason[0][:200])
        raise ConfigError(f"{path}: refused to load ({refused}): a training state holds "
                          "tensors and plain values only; this file was altered or is not "
                          "one") from None


def load_training_state(engine, output_dir, tag):
    """Restores a state written by save_training_state through load_state_file; returns its
    client_state."""
    root = os.path.join(output_dir, "training_state")
    engine.checkpoint_engine.load = load_state_file
    try:
        path, client_state = engine.load_checkpoint(root, tag=tag)
    except ConfigError:
        raise
    except Exception as error:  # DeepSpeed raises many kinds for damaged or foreign states
        path, reason = None, f" ({type(error).__name__}: {str(error).strip()[:200]})"
    else:
        reason = ""
    if path is None:
        raise ConfigError(
            f"the training state {os.path.join(root, tag)} cannot be loaded{reason}: it is "
            f"damaged or from another setup; point {root}/latest at an earlier state, or start "
            "afresh with --overwrite")
    rng_file = os.path.join(root, tag, f"rng_rank{utils.get_rank()}.pt")
    if os.path.isfile(rng_file):
        restore_rng_state(load_state_file(rng_file))
    return client_state or {}


def capture_rng_state():
    """This rank's python, numpy, torch (and CUDA) random states."""
    name, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state):
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def prune_epoch_weights(output_dir, keep_last):
    """Keeps the newest `keep_last` checkpoint_{epoch}.pth files (best_checkpoint.pth is separate)
    and removes the partial weight files of runs killed while writing them."""
    if not utils.is_main_process():
        return
    for partial in glob.glob(os.path.join(output_dir, "*.pth.tmp-*")):
        os.remove(partial)  # only this process writes weights, and none of its writes is open
    if keep_last <= 0:
        return
    files = glob.glob(os.path.join(output_dir, "checkpoint_*.pth"))
    files.sort(key=lambda p: int(os.path.basename(p)[len("checkpoint_"):-len(".pth")]))
    for path in files[:-keep_last]:
        os.remove(path)


def write_json(path, record):
    atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")

