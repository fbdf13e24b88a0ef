"""CSL-News at full size, simulated: start-up, memory and reading of the trainer at N clips.

Writes a CSL-News-shaped set of --clips N clips under --out (bench/scale_data.py: Uni-Sign's
CSL-News JSON label file, a packed pose store whose index records CSL-News-like clip lengths,
and a tiny mT5; the clips' frames are SHORTENED ON DISK, clips of a shard sharing overlapping
frames, so that a million clips fit in a few GB), then runs the real entry point,
fine_tuning.py (CSL_News, SLT, a tiny model, --bucket_by_length), twice with one --output_dir:

  first    no training state and no pre-scan cache: labels, the pre-scan of every clip (in
           --workers processes), the sampler and its length buckets, then --batches training
           steps, then SIGTERM (the trainer saves a training state and exits 75);
  resumed  the same command again: it resumes from that state, the pre-scan's findings come
           from the cache, and it trains --batches more steps.

Measured from outside the trainer, by watching its processes every --poll seconds (psutil):
seconds from the command to each start-up line and to the first training step (log_steps.txt),
peak RSS of each rank's main process, RSS and USS (private memory) of each DataLoader worker
at its first and last sample (private dirty: pages a forked worker wrote or copied from the
rank, e.g. by touching its Python objects), and the bytes of the store each rank touched (the
resident size of its and its workers' maps of the store's files, per part; between the largest
over its processes and their sum). Run first and resumed runs on an otherwise idle machine for
timings. The size of the sampler state is
read from the saved training state. --ranks 2 runs under the deepspeed launcher; --parts K
packs the store in K parts (store_parts.py), which ranks open independently.

    python bench/scale.py --clips 1000000 --out /tmp [--ranks 2 --parts 2] [--report r.json]
"""
import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil
import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, BENCH]
import cli  # noqa: E402
import scale_data  # noqa: E402
from cli import add_flag  # noqa: E402

STARTUP_LINES = ('pre-scan train', 'train: ', 'pre-scan dev', 'dev: ', 'test: ',
                 'optimizer steps per epoch')
TINY_MODEL = ['--stgcn_channels', '8,16', '--hidden_dim', '16', '--temporal_layers', '1',
              '--num_beams', '1', '--max_new_tokens', '8', '--dtype', 'fp32']


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flag(parser, '--clips', type=cli.int_range(200, 2_000_000), default=10_000,
             help='clips of the simulated CSL-News (the last 1%% are dev and test)')
    add_flag(parser, '--out', default='/tmp', help='folder the set and the runs are kept in')
    add_flag(parser, '--ranks', type=cli.int_range(1, 8), default=1)
    add_flag(parser, '--parts', type=cli.count, default=1,
             help='pack the store in this many parts (1: one store)')
    add_flag(parser, '--workers', type=cli.non_negative_int, default=2,
             help='--num_workers of the trainer (pre-scan processes and DataLoader workers)')
    add_flag(parser, '--batches', type=cli.count, default=100, help='steps trained per run')
    add_flag(parser, '--batch_size', type=cli.count, default=16)
    add_flag(parser, '--frames_on_disk', type=cli.count, default=4,
             help='frames stored per clip (each clip reads its recorded length from there)')
    add_flag(parser, '--poll', type=cli.positive, default=0.5, help='seconds between samples')
    add_flag(parser, '--seed', type=cli.seed, default=0)
    add_flag(parser, '--report', help='also write the figures to this JSON file')
    add_flag(parser, '--keep', action='store_true', help='keep the output folder of the runs')
    return parser.parse_args(argv)


def check_disk(args):
    """Stops before writing when --out lacks the room for the set."""
    need = scale_data.store_bytes(args.clips, args.frames_on_disk, args.parts) + \
        args.clips * 400  # label file, store index, pre-scan caches
    os.makedirs(args.out, exist_ok=True)
    free = shutil.disk_usage(args.out).free
    print(f"disk: the set needs about {need / 2**30:.2f} GiB, {args.out} has "
          f"{free / 2**30:.1f} GiB free")
    if need * 1.2 > free:
        raise SystemExit(f"error: {args.out} lacks the room for {args.clips} clips")


def trainer_command(args, where, output_dir):
    script = [os.path.join(ROOT, 'fine_tuning.py')]
    launch = [sys.executable, '-m', 'deepspeed.launcher.runner', '--num_gpus', str(args.ranks),
              '--master_port', str(29500 + os.getpid() % 1000)] if args.ranks > 1 \
        else [sys.executable]
    return [*launch, *script, '--dataset', 'CSL_News', '--task', 'SLT',
            '--data_root', where['data_root'], '--pose_root', where['pose_root'],
            '--mt5_path', where['mt5'], '--output_dir', output_dir,
            '--batch-size', str(args.batch_size), '--gradient-accumulation-steps', '1',
            '--num_workers', str(args.workers), '--print_freq', '1', '--epochs', '1',
            '--bucket_by_length', '--seed', str(args.seed), *TINY_MODEL]


# ----------------------------------------------------------------------------- watching a run

def private_memory(pid):
    """{'rss', 'private_dirty', 'anonymous'} in bytes from /proc/PID/smaps_rollup. Private
    dirty pages are those the process wrote or copied from its parent (a forked worker that
    touches the parent's Python objects copies their pages); clean file pages of the store's
    maps are not among them."""
    fields = {}
    with open(f'/proc/{pid}/smaps_rollup', encoding='ascii') as f:
        for line in f:
            name, _, value = line.partition(':')
            if value.strip().endswith('kB'):
                fields[name] = int(value.split()[0]) * 1024
    return {'rss': fields['Rss'], 'private_dirty': fields['Private_Dirty'],
            'anonymous': fields['Anonymous']}


def store_maps(process, store_dir):
    """{file: resident bytes} of the process's maps of the store's files."""
    try:
        return {m.path: m.rss for m in process.memory_maps(grouped=True)
                if m.path.startswith(store_dir)}
    except (psutil.Error, OSError):
        return {}


class Watch:
    """Samples the trainer's processes: ranks (processes running fine_tuning.py) and their
    children (pre-scan processes, then DataLoader workers)."""

    def __init__(self, root_pid, store_dir):
        self.root, self.store_dir = psutil.Process(root_pid), store_dir
        self.rank_peak = {}  # rank pid -> peak RSS
        self.workers = {}  # worker pid -> {'rank', 'first', 'last', 'peak_rss'}
        self.touched = {}  # (rank pid, file) -> largest resident bytes seen, over processes
        self.training = False

    def ranks(self):
        found = [self.root] + self.root.children(recursive=True)
        return [p for p in found if _is_rank(p)]

    def sample(self):
        for rank in self.ranks():
            try:
                self.rank_peak[rank.pid] = max(self.rank_peak.get(rank.pid, 0),
                                               rank.memory_info().rss)
                children = rank.children(recursive=True)
            except psutil.Error:
                continue
            for process in [rank] + children:
                for file, rss in store_maps(process, self.store_dir).items():
                    key = (rank.pid, process.pid, file)
                    self.touched[key] = max(self.touched.get(key, 0), rss)
            if self.training:
                for worker in children:
                    self._sample_worker(rank.pid, worker)

    def _sample_worker(self, rank, worker):
        try:
            memory = private_memory(worker.pid)
        except (OSError, KeyError):
            return
        record = self.workers.setdefault(worker.pid, {'rank': rank, 'first': memory,
                                                      'peak_rss': 0})
        record['last'] = memory
        record['peak_rss'] = max(record['peak_rss'], memory['rss'])

    def touched_per_rank(self):
        """{rank pid: {file: (largest, summed)}} over the rank's processes: the pages of a file
        the rank's processes touched number at least the largest and at most the sum."""
        out = {}
        for (rank, _, file), rss in self.touched.items():
            low, high = out.setdefault(rank, {}).get(file, (0, 0))
            out[rank][file] = (max(low, rss), high + rss)
        return out


def _is_rank(process):
    try:
        line = process.cmdline()
    except psutil.Error:
        return False
    return any(part.endswith('fine_tuning.py') for part in line) and \
        not any('deepspeed.launcher' in part for part in line) and \
        process.parent() is not None and not _is_worker(process)


def _is_worker(process):
    parent = process.parent()
    try:
        return parent is not None and parent.cmdline() == process.cmdline()
    except psutil.Error:
        return False


def run_trainer(args, command, output_dir, store_dir):
    """Runs the command until --batches new steps are logged, then SIGTERM; returns figures."""
    log = os.path.join(output_dir, 'log_steps.txt')
    steps_before = _lines(log)
    env = {**os.environ, 'DS_ACCELERATOR': 'cpu', 'WANDB_MODE': 'disabled',
           'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, marks = [], {}
    reader = threading.Thread(target=_read_lines, args=(process, start, lines, marks))
    reader.start()
    watch, first_step = Watch(process.pid, store_dir), None
    while process.poll() is None:
        steps = _lines(log) - steps_before
        if steps >= 1 and first_step is None:
            first_step, watch.training = time.monotonic() - start, True
        watch.sample()
        if steps >= args.batches:
            os.killpg(process.pid, signal.SIGTERM)
            break
        time.sleep(args.poll)
    process.wait()
    reader.join()
    # 75: the trainer's preemption status; the deepspeed launcher, signalled too, ends 1 or -15
    if first_step is None or process.returncode not in (0, 75, 1, -signal.SIGTERM):
        sys.stdout.write(''.join(lines[-40:]))
        raise SystemExit(f"error: the trainer stopped (status {process.returncode}) before "
                         f"{args.batches} steps")
    return {'first_step_s': first_step, 'marks': marks, 'watch': watch,
            'steps': _lines(log) - steps_before, 'output': lines}


def _lines(path):
    if not os.path.isfile(path):
        return 0
    with open(path, encoding='utf-8') as f:
        return sum(1 for _ in f)


def _read_lines(process, start, lines, marks):
    for line in process.stdout:
        lines.append(line)
        for mark in STARTUP_LINES + ('resumed from',):
            if line.startswith(mark) and mark not in marks:
                marks[mark] = time.monotonic() - start


# ----------------------------------------------------------------------------- figures

def sampler_state_bytes(output_dir):
    """Serialized size of the sampler state in the newest training state (rank 0's file)."""
    state_dir = os.path.join(output_dir, 'training_state')
    with open(os.path.join(state_dir, 'latest'), encoding='utf-8') as f:
        tag = f.read().strip()
    for folder, _, files in os.walk(os.path.join(state_dir, tag)):
        for file in files:
            if file.endswith('model_states.pt'):
                state = torch.load(os.path.join(folder, file), map_location='cpu',
                                   weights_only=True)
                buffer = io.BytesIO()
                torch.save(state['sampler'], buffer)
                return state['sampler'], buffer.tell()
    raise SystemExit(f"error: no model states file under {state_dir}/{tag}")


def summarize(args, run, store_dir):
    """The figures of one run as a JSON-ready dict."""
    watch = run['watch']
    mib = 2 ** 20
    workers = [{'rank_pid': w['rank'], 'private_start_mib': w['first']['private_dirty'] / mib,
                'private_end_mib': w['last']['private_dirty'] / mib,
                'rss_start_mib': w['first']['rss'] / mib, 'rss_end_mib': w['last']['rss'] / mib,
                'peak_rss_mib': w['peak_rss'] / mib} for w in watch.workers.values()]
    touched = {}
    for rank, files in sorted(watch.touched_per_rank().items()):
        per_part = {}
        for file, (low, high) in files.items():
            part = os.path.relpath(os.path.dirname(file), store_dir)
            total = per_part.get(part, (0, 0))
            per_part[part] = (total[0] + low, total[1] + high)
        touched[rank] = {part: [round(low / mib, 1), round(high / mib, 1)]
                         for part, (low, high) in sorted(per_part.items())}
    prescan = {}
    for line in run['output']:
        if line.startswith('pre-scan ') and ' clips read' in line:
            phase, counts = line[len('pre-scan '):].split(':', 1)
            prescan[phase] = counts.split(' clips read')[0].strip()
    return {'first_step_s': round(run['first_step_s'], 1), 'prescan_read': prescan,
            'startup_marks_s': {k: round(v, 1) for k, v in run['marks'].items()},
            'steps': run['steps'],
            'rank_peak_rss_mib': [round(v / mib, 1) for v in watch.rank_peak.values()],
            'workers': [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in w.items()}
                        for w in workers],
            'store_touched_mib_per_rank': list(touched.values())}


def print_run(name, figures):
    print(f"\n{name}: first training step after {figures['first_step_s']} s "
          f"({figures['steps']} steps trained)")
    for mark, seconds in figures['startup_marks_s'].items():
        print(f"  {seconds:8.1f} s  {mark.strip()}")
    for phase, counts in figures['prescan_read'].items():
        print(f"  pre-scan {phase}: {counts} clips read (the others from the cache)")
    print(f"  peak RSS per rank: {', '.join(f'{v:.0f} MiB' for v in figures['rank_peak_rss_mib'])}")
    for worker in figures['workers']:
        print(f"  DataLoader worker of rank pid {worker['rank_pid']}: private dirty "
              f"{worker['private_start_mib']:.1f} -> {worker['private_end_mib']:.1f} MiB, RSS "
              f"{worker['rss_start_mib']:.1f} -> {worker['rss_end_mib']:.1f} MiB (peak "
              f"{worker['peak_rss_mib']:.1f})")
    for rank, parts in enumerate(figures['store_touched_mib_per_rank']):
        listed = ', '.join(f"{part}: {low}-{high} MiB" for part, (low, high) in parts.items())
        print(f"  store pages touched by rank {rank} (resident in its processes' maps of the "
              f"store; at least the largest, at most the sum over processes): {listed}")


def main(argv=None):
    args = parse_args(argv)
    check_disk(args)
    base = os.path.join(args.out, f'scale-{args.clips}')
    start = time.monotonic()
    where = scale_data.make(base, args.clips, args.parts, args.frames_on_disk, args.seed)
    print(f"set: {args.clips} clips in {where['pose_dir']} (made or kept in "
          f"{time.monotonic() - start:.0f} s); frames are shortened on disk: clips of a shard "
          f"share frames, each reading its recorded CSL-News-like length")
    output_dir = os.path.join(base, f'run-ranks{args.ranks}-parts{args.parts}')
    shutil.rmtree(output_dir, ignore_errors=True)
    command = trainer_command(args, where, output_dir)
    print('command:', ' '.join(command))
    store_dir = os.path.realpath(where['pose_dir'])
    report = {'clips': args.clips, 'ranks': args.ranks, 'parts': args.parts,
              'workers': args.workers, 'batch_size': args.batch_size,
              'frames_on_disk': args.frames_on_disk, 'command': command}
    for name in ('first', 'resumed'):
        report[name] = summarize(args, run_trainer(args, command, output_dir, store_dir),
                                 store_dir)
        print_run(f"{name} run", report[name])
    state, size = sampler_state_bytes(output_dir)
    report['sampler_state'] = {'state': state, 'bytes': size}
    cache_dir = os.path.join(output_dir, 'scan_cache')
    report['scan_cache_mib'] = round(sum(os.path.getsize(os.path.join(cache_dir, f))
                                         for f in os.listdir(cache_dir)) / 2**20, 1)
    print(f"\nsampler state in the checkpoint: {state} ({size} bytes serialized)")
    print(f"pre-scan cache: {report['scan_cache_mib']} MiB in {cache_dir}")
    if args.report:
        with open(args.report, 'w', encoding='utf-8') as f:
            json.dump(report, f, indent=2)
    if not args.keep:
        shutil.rmtree(output_dir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
