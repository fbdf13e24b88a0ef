"""Guards for a run's output folder, taken before any data is read or model built: the folder
is writable, a fresh start never replaces another run's checkpoints unless asked to, and only
one run writes into it at a time.

A fresh start (--resume none, or no training state to resume from) in a folder that holds
weight files, training states or a log of another run stops, unless --overwrite is given: then
that run's files are removed first (a resumable state included: the run starts afresh), so no
pruning, resume or log mixes the two runs. The lock
file `run.lock` names the process that holds the folder (host, pid, start); a second run stops
at once, and a lock left by a process that no longer exists on this host (its pid free, or
reused by a process started later) is taken over. Only
rank 0 (the launcher's RANK) checks and locks: the other ranks share its folder.

Several nodes share one output folder on a shared filesystem (the default; check_sharing stops
the run when a node does not see rank 0's folder). Without one, --node_local_storage gives each
node its own --output_dir: each node's first rank (LOCAL_RANK 0) checks and locks its folder and
keeps there the training states its ranks resume from; weights, logs and predictions are
written on rank 0's node only.
"""
import datetime
import glob
import json
import os
import shutil
import socket
import uuid

import checkpoint
import utils
from config import ConfigError

LOCK_NAME = "run.lock"
RUN_FILES = ("best_checkpoint.pth", "checkpoint_*.pth", "training_state", "log.txt",
             "log_steps.txt", "eval_metrics.json")


def is_rank_zero():
    return int(os.environ.get("RANK", "0")) == 0


def is_folder_leader(args):
    """Whether this rank checks and locks the output folder: rank 0, and with
    --node_local_storage the first rank of every node."""
    if getattr(args, "node_local_storage", False):
        return int(os.environ.get("LOCAL_RANK", "0")) == 0
    return is_rank_zero()


def check_writable_folder(path, flag="--output_dir"):
    """Creates the folder when missing; ConfigError when it is a file or cannot be written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-probe-{os.getpid()}")
        with open(probe, "w", encoding="utf-8") as f:
            f.write("probe")
        os.remove(probe)
    except OSError as error:
        raise ConfigError(f"{flag} {path} cannot be written: {error.strerror or error}") from None


def check_writable_file(path, flag):
    """An output file: its folder must exist and be writable, and the path must not be a folder."""
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder, not a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{flag} {path}: the folder {folder} is not writable")


def other_run_files(output_dir):
    """The files and folders of an earlier run in `output_dir` (sorted names)."""
    found = []
    for pattern in RUN_FILES:
        found += [os.path.basename(p) for p in glob.glob(os.path.join(output_dir, pattern))]
    return sorted(found)


def check_fresh_start(args):
    """Stops a fresh start over another run's files; --overwrite removes them (and so starts
    afresh even where a training state could be resumed)."""
    resumable = args.resume == "auto" and checkpoint.latest_training_state(args.output_dir)
    if resumable and not args.overwrite:
        return
    found = other_run_files(args.output_dir)
    if not found:
        return
    why = "--resume none" if args.resume == "none" else "no training state to resume from"
    if not args.overwrite:
        raise ConfigError(
            f"--output_dir {args.output_dir} holds another run ({', '.join(found)}) and this run "
            f"would start afresh ({why}), replacing its checkpoints: use another --output_dir, "
            "or add --overwrite to replace that run")
    print(f"--overwrite: removing the earlier run in {args.output_dir}: {', '.join(found)}")
    for name in found:
        path = os.path.join(args.output_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def process_start_ticks(pid):
    """When process `pid` started, in clock ticks since boot (Linux /proc), or None where
    unknown: with the pid it tells a lock's process from a later one given the same pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])  # the 22nd field; the process name before ")" may hold spaces
    except (OSError, IndexError, ValueError):
        return None


def holder_gone(holder):
    """True when a lock written on this host names a process that no longer runs: its pid is
    free, or now belongs to a process started at another time (a restarted container reuses
    pids, even this process's own)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or not process_alive(pid):
        return isinstance(pid, int)
    recorded, now = holder.get("start_ticks"), process_start_ticks(pid)
    return recorded is not None and now is not None and recorded != now


class RunLock:
    """`run.lock` in the output folder, held from acquire() to release()."""

    def __init__(self, output_dir):
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                      "started": datetime.datetime.now().isoformat(timespec="seconds"),
                      "start_ticks": process_start_ticks(os.getpid())}
        self.held = False

    def acquire(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.take_over_if_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.owner, f)
            self.held = True
            return self
        raise ConfigError(f"could not take the lock {self.path}")

    def holder(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}  # a lock being written, or damaged: treated as held by an unknown process

    def take_over_if_stale(self):
        """Removes a lock whose process is gone (same host); ConfigError when it is alive."""
        holder = self.holder()
        if holder.get("host") == self.owner["host"] and holder_gone(holder):
            print(f"taking over {self.path}: its process {holder['pid']} (started "
                  f"{holder.get('started')}) no longer runs")
            os.remove(self.path)
            return
        where = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
        raise ConfigError(
            f"--output_dir {os.path.dirname(self.path)} is in use by the run of {where} since "
            f"{holder.get('started', '?')} (lock file {self.path}): wait for it to end or use "
            "another --output_dir; if that run is gone (another host), remove the lock file")

    def release(self):
        if self.held and self.holder() == self.owner:
            os.remove(self.path)
        self.held = False


def prepare_output_dir(args):
    """The folder's leader (is_folder_leader): the folder writable, a fresh start allowed, the
    lock taken (returned, or None without --output_dir or on other ranks)."""
    if not args.output_dir or not is_folder_leader(args):
        return None
    check_writable_folder(args.output_dir)
    lock = RunLock(args.output_dir).acquire()
    try:
        if not args.eval:
            check_fresh_start(args)
    except ConfigError:
        lock.release()
        raise
    return lock


def check_sharing(args):
    """After the process group starts: with several nodes, whether every node's first rank sees
    the file rank 0 writes into --output_dir must match the declared storage (shared, or
    --node_local_storage); ConfigError otherwise. Returns the number of nodes."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    nodes = sum(utils.all_gather_objects(local_rank == 0))
    if nodes == 1 and args.node_local_storage:
        raise ConfigError("--node_local_storage gives each node its own --output_dir, and this "
                          "run has one node: leave it out")
    if nodes == 1 or not args.output_dir:
        return nodes
    marker = os.path.join(args.output_dir, ".shared-folder-check")
    token = uuid.uuid4().hex if utils.is_main_process() else None
    token = utils.all_gather_objects(token)[0]
    if utils.is_main_process():
        checkpoint.atomic_write_text(marker, token)
    utils.barrier()
    seen = local_rank != 0 or _reads(marker) == token
    sharing = utils.all_gather_objects(seen)
    utils.barrier()
    if utils.is_main_process():
        os.remove(marker)
    if not args.node_local_storage and not all(sharing):
        blind = [rank for rank, saw in enumerate(sharing) if not saw]
        raise ConfigError(f"--output_dir {args.output_dir} is not shared by the {nodes} nodes "
                          f"(ranks {blind} do not see what rank 0 writes there): put it on a "
                          "shared filesystem, or add --node_local_storage to keep one folder "
                          "per node")
    if args.node_local_storage and all(sharing):
        raise ConfigError(f"--node_local_storage: --output_dir {args.output_dir} is shared by "
                          f"the {nodes} nodes, which would write the same files: leave the "
                          "flag out, or give each node a folder of its own")
    return nodes


def _reads(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None
