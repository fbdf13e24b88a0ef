"""Training-step speed of the pose-to-mT5 translator, each speed switch against Uni-Sign's way.

Rows (each in a fresh subprocess, rounds repeated and interleaved with --repeats; the table shows
the median):
  baseline      Uni-Sign's configuration: models.UNISIGN_SPEED, random batches, the tokenizer
                running inside forward
  graph_product, temporal_conv, hands_batch, target_logits, embed_once
                one models.py switch on (temporal_conv: Winograd)
  pretokenized  prompt and targets tokenised by the collate (as datasets.py does), not in forward
  bucketing     samplers.py --bucket_by_length batches (less padding)
  malloc        glibc keeps freed memory (utils.keep_freed_memory, the trainer's
                --keep_freed_memory): large gradient buffers are reused, not page-faulted in
                again every step
  all_on        every row above; `defaults` is what the trainer runs by default (the models.py
                defaults, pre-tokenised, bucketing, --keep_freed_memory auto: on CPU only)
  bf16, compile (with --with_bf16 / --with_compile) all_on under bf16 autocast / torch.compile:
                not exact, and compile costs minutes on CPU
A step is forward + backward with fresh gradients (as DeepSpeed gives), plus an AdamW step with
--optimizer. Every row trains on the same clips: a pool of 50 batches' worth of clip lengths is
drawn from a CSL-Daily-like distribution (20,654 clips, about 23 h at 30 fps: mean 120 frames,
lognormal with coefficient of variation --cv, at most 256 frames), the bucketing sampler cuts
it into batches, the middle batch of each of --steps length strata is kept, and the random rows
train on a random partition of exactly those clips. Poses are random; padding repeats the last
frame as the collate does. samples/s counts real clips; on CPU the speed-up is also given by
the process's CPU time, which other jobs on a shared machine disturb less than the wall clock.
Peak memory is the process's ru_maxrss on CPU (`rise`: its rise over the resident model and
batches, which the malloc row's retained heap makes look smaller; allocator noise is tens of
MB) and torch.cuda.max_memory_allocated on CUDA. MFU (CUDA) divides the FLOPs executed, counted by
torch.utils.flop_counter, by the GPU's dense bf16 peak. Last, the loss of one batch with every
switch on is compared with the baseline's.

    OMP_NUM_THREADS=1 python bench/train_step.py --size small --steps 6 --repeats 2
    python bench/train_step.py --layers        # conv layout and graph product, one layer
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import config  # noqa: E402
import cli  # noqa: E402
from cli import add_flag  # noqa: E402
from flags import get_args_parser  # noqa: E402
from datasets import TextTargets  # noqa: E402
from poses import collate_clips  # noqa: E402
from models import SPEED_DEFAULTS, UNISIGN_SPEED, SignTranslator  # noqa: E402
from samplers import ResumableDistributedSampler, padding_fraction  # noqa: E402
from utils import keep_freed_memory  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_phases import PHASES, per_step, phase_clock, phase_hooks, split_lines  # noqa: E402

JOINTS = {'body': 9, 'left': 21, 'right': 21, 'face_all': 18}
MT5_SHAPES = {  # d_ff, heads and d_kv of mt5-base; 'tiny' is for smoke runs
    'tiny': dict(d_model=64, d_ff=128, num_heads=2, d_kv=32, num_layers=1, vocab_size=1000),
    'small': dict(d_model=768, d_ff=2048, num_heads=12, d_kv=64, num_layers=2, vocab_size=250112),
    'base': dict(d_model=768, d_ff=2048, num_heads=12, d_kv=64, num_layers=12, vocab_size=250112),
}
ENCODER_CHANNELS = {'tiny': [16, 32], 'small': [64, 128, 256], 'base': [64, 128, 256]}
LEVERS = {'graph_product': 'matmul', 'temporal_conv': 'winograd', 'hands_batch': 'on',
          'target_logits': 'real', 'embed_once': 'on'}
ALL_ON = dict(SPEED_DEFAULTS, **LEVERS)
EXACT_ROWS = ('baseline', *LEVERS, 'pretokenized', 'bucketing', 'malloc', 'all_on', 'defaults')
# dense bf16 tensor-core peaks (FLOP/s)
GPU_PEAKS = {'H100': 989.4e12, 'H200': 989.4e12, 'A100': 312e12, 'L40S': 362e12, 'A10': 125e12}
WORDS = [c + v for c in 'bdfgklmnprst' for v in 'aeiou']


# ------------------------------------------------------------------------ model and batches

def make_tokenizer(directory, seed=0):
    """A SentencePiece T5 tokenizer over WORDS (one token per word), trained offline."""
    from transformers import T5Tokenizer
    from demo.tiny_mt5 import train_spiece
    rng = np.random.default_rng(seed)
    corpus = [' '.join(rng.choice(WORDS, 12)) for _ in range(400)]
    corpus += [config.get_dataset('CSL_Daily').prompt] * 100  # whole-word prompt tokens, as mT5's vocabulary has
    with open(os.path.join(directory, 'spiece.model'), 'wb') as f:
        f.write(train_spiece(corpus, vocab_size=len(WORDS) + 80))
    return T5Tokenizer.from_pretrained(directory, extra_ids=0, legacy=False)


def build_model(size, tokenizer, vocab_size=None, seed=0, tie=False, **flags):
    """The translator at `size` with random weights (mT5 built from a config, no download); its
    output layer apart from the input embedding as in google/mt5-base, or tied with `tie`;
    `flags` override the trainer's flags (Uni-Sign's speed switches by default)."""
    from transformers import MT5Config, MT5ForConditionalGeneration

    import mt5_layout
    shape = dict(MT5_SHAPES[size])
    shape['vocab_size'] = vocab_size or shape['vocab_size']
    mt5_config = MT5Config(num_decoder_layers=shape['num_layers'], feed_forward_proj='gated-gelu',
                           pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **shape)
    torch.manual_seed(seed)
    mt5 = MT5ForConditionalGeneration(mt5_config)
    if not tie:
        mt5_layout.set_tied(mt5, False)
        with torch.no_grad():
            mt5.lm_head.weight.normal_()  # mT5's initialisation of an untied output layer
    channels = ENCODER_CHANNELS[size]
    args = get_args_parser().parse_args([])  # the trainer's defaults
    vars(args).update(dataset='CSL_Daily', stgcn_channels=channels, hidden_dim=channels[-1],
                      **{**UNISIGN_SPEED, **flags})
    return SignTranslator(args, mt5_model=mt5, tokenizer=tokenizer)


def clip_lengths(count, mean, cv, rng, max_frames=256):
    sigma = np.sqrt(np.log(1 + cv ** 2))
    frames = rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma, count)
    return np.clip(np.round(frames), 8, max_frames).astype(np.int64)


def make_pool(opts):
    """(clip lengths, sentences, bucketed batches, random batches) over the same clips."""
    rng = np.random.default_rng(opts.seed)
    pool = 50 * opts.batch_size  # one bucket chunk of samplers.py's default multiplier
    lengths = clip_lengths(pool, opts.mean_frames, opts.cv, rng)
    words = np.clip(np.round(lengths / 11 * rng.lognormal(0, 0.3, pool)), 2, 48).astype(int)
    sentences = [' '.join(rng.choice(WORDS, n)) for n in words]
    sampler = ResumableDistributedSampler(pool, 1, 0, shuffle=True, seed=opts.seed,
                                          drop_last=True, batch_size=opts.batch_size,
                                          lengths=lengths, bucket_by_length=True)
    bucketed = sorted(sampler.rank_batches(), key=lambda b: lengths[b].mean())
    # the middle batch of each of --steps equal length strata
    keep = np.unique(((np.arange(opts.steps) + 0.5) * len(bucketed) / opts.steps).astype(int))
    bucketed = [bucketed[k] for k in keep]
    clips = rng.permutation(np.concatenate(bucketed))
    random_batches = [clips[k:k + opts.batch_size].tolist()
                      for k in range(0, len(clips), opts.batch_size)]
    return lengths, sentences, bucketed, random_batches


def make_batch(indices, lengths, sentences, tokenizer, pretokenized, seed):
    """One batch as the trainer's datasets collate it (poses.collate_clips and, pre-tokenised,
    datasets.TextTargets with CSL-Daily's prompt), from random poses."""
    g = torch.Generator().manual_seed(seed)
    clips = [{part: torch.rand(int(lengths[i]), v, 3, generator=g) for part, v in JOINTS.items()}
             for i in indices]
    src = collate_clips(clips, [f'clip{i}' for i in indices])
    tgt = {'gt_sentence': [sentences[i] for i in indices], 'gt_gloss': [''] * len(indices)}
    if pretokenized:
        TextTargets(tokenizer, config.get_dataset('CSL_Daily').prompt, max_tgt_len=50)(src, tgt)
    return src, tgt


def to_device(batch, device):
    return tuple({k: v.to(device) if torch.is_tensor(v) else v for k, v in part.items()}
                 for part in batch)


# ------------------------------------------------------------------------------------ rows

def row_settings(row):
    """{'speed', 'pretokenized', 'bucketed', 'bf16', 'malloc'} of a row."""
    plain = dict(speed=dict(UNISIGN_SPEED), pretokenized=False, bucketed=False, bf16=False,
                 malloc='off')
    every = dict(speed=dict(ALL_ON), pretokenized=True, bucketed=True, bf16=False, malloc='on')
    if row == 'baseline':
        return plain
    if row in LEVERS:
        return dict(plain, speed=dict(UNISIGN_SPEED, **{row: LEVERS[row]}))
    if row in ('pretokenized', 'bucketing'):
        return dict(plain, **{'bucketed' if row == 'bucketing' else row: True})
    if row == 'malloc':
        return dict(plain, malloc='on')
    if row == 'defaults':
        return dict(every, speed=dict(SPEED_DEFAULTS), malloc='auto')
    if row in ('all_on', 'bf16', 'compile'):
        return dict(every, bf16=row == 'bf16',
                    speed=dict(ALL_ON, compile_encoder=row == 'compile'))
    raise ValueError(f"unknown row {row!r}")


def current_rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def train_step(model, batch, device, bf16, optimizer=None, clock=None, spent=None):
    """One step; with `clock`, adds the backward and optimizer times to `spent` and returns
    the forward's."""
    clock = clock or time.perf_counter
    spent = spent if spent is not None else dict.fromkeys(PHASES, 0.0)
    model.zero_grad(set_to_none=True)
    begin = clock()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(*batch)['loss']
    forward, begin = clock() - begin, clock()
    loss.backward()
    spent['backward'] += clock() - begin
    begin = clock()
    if optimizer is not None:
        optimizer.step()
    spent['optimizer'] += clock() - begin
    return forward


def run_row(opts, row):
    """Worker: times one row and returns its measurements as a dict."""
    device = torch.device(opts.device)
    settings = row_settings(row)
    keep_freed_memory(settings['malloc'])
    speed, pretokenized, bf16 = settings['speed'], settings['pretokenized'], settings['bf16']
    tokenizer = make_tokenizer(opts.tokenizer_dir)
    model = build_model(opts.size, tokenizer, opts.vocab_size, opts.seed,
                        opts.tied_output).to(device).train()
    model.set_speed(**speed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5) if opts.optimizer else None
    lengths, sentences, bucket_batches, random_batches = make_pool(opts)
    indices = bucket_batches if settings['bucketed'] else random_batches
    batches = [to_device(make_batch(ix, lengths, sentences, tokenizer, pretokenized, k), device)
               for k, ix in enumerate(indices)]
    rss_before = current_rss_mb()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for batch in batches[:2 if speed.get('compile_encoder') else 1]:  # warm-up (and compile)
        train_step(model, batch, device, bf16, optimizer)
    synchronize(device)
    warmup = time.perf_counter() - start
    clock = phase_clock(device)
    spent = (dict.fromkeys(PHASES, 0.0) if speed.get('compile_encoder')  # hooks break graphs
             else phase_hooks(model, clock))
    start, start_cpu = time.perf_counter(), time.process_time()
    forward = sum(train_step(model, batch, device, bf16, optimizer, clock, spent)
                  for batch in batches)
    synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    if device.type == 'cuda':
        peak = rise = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rise = peak - rss_before
    samples = sum(len(ix) for ix in indices)
    result = {'row': row, 'seconds': seconds, 'cpu_seconds': cpu_seconds, 'samples': samples,
              'steps': len(batches),
              'warmup_s': warmup, 'peak_mb': peak, 'rise_mb': rise,
              'padding': padding_fraction(indices, lengths)}
    if not speed.get('compile_encoder'):
        result['phases'] = per_step(spent, forward, len(batches))
    if opts.count_flops or device.type == 'cuda':
        result['flops'] = count_flops(model, batches, device, bf16)
    return result


def count_flops(model, batches, device, bf16):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        for batch in batches:
            train_step(model, batch, device, bf16)
    return counter.get_total_flops()


def check_loss(opts):
    """Worker: the loss of one batch with every switch off, then on (same weights, same batch,
    same dropout masks); returns both."""
    device = torch.device(opts.device)
    torch.backends.cudnn.allow_tf32 = False  # compare the math, not TF32 rounding
    tokenizer = make_tokenizer(opts.tokenizer_dir)
    model = build_model(opts.size, tokenizer, opts.vocab_size, opts.seed,
                        opts.tied_output).to(device).train()
    lengths, sentences, _, random_batches = make_pool(opts)
    losses = {}
    for name, speed, pretokenized in (('baseline', UNISIGN_SPEED, False), ('all_on', ALL_ON, True)):
        model.set_speed(**speed)
        batch = make_batch(random_batches[0], lengths, sentences, tokenizer, pretokenized, 0)
        torch.manual_seed(opts.seed)
        with torch.no_grad():
            losses[name] = model(*to_device(batch, device))['loss'].item()
    return losses


# ------------------------------------------------------------------------- one-layer timings

def time_forward_backward(fn, x, repeats):
    """Median seconds of fn(x).backward(grad) over `repeats` runs after one warm-up."""
    times = []
    for k in range(repeats + 1):
        inp = x.detach().requires_grad_()
        start = time.perf_counter()
        out = fn(inp)
        out.backward(torch.ones_like(out))
        if k:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def layer_timings(opts):
    """The temporal conv in NCHW vs channels-last storage, and one GraphConv with each graph
    product, at batch x frames x hand joints; rows of (what, ms, ms, ratio)."""
    import torch.nn as nn
    from stgcn_layers import Graph, GraphConv, set_graph_product
    n, t, v = opts.batch_size, int(opts.mean_frames), 21
    rows = []
    conv = nn.Conv2d(256, 256, (5, 1), padding=(2, 0))
    x = torch.randn(n, 256, t, v)
    nchw = time_forward_backward(conv, x, opts.layer_repeats)
    conv_cl = conv.to(memory_format=torch.channels_last)
    cl = time_forward_backward(conv_cl, x.contiguous(memory_format=torch.channels_last),
                               opts.layer_repeats)
    rows.append(('temporal conv 256->256 (5x1): NCHW vs channels_last', nchw, cl))
    A = torch.tensor(Graph('right').A, dtype=torch.float32)
    for cin, cout in ((64, 128), (256, 256)):
        layer = GraphConv(cin, cout, A, graph_product='einsum')
        x = torch.randn(n, cin, t, v)
        einsum = time_forward_backward(layer, x, opts.layer_repeats)
        set_graph_product(layer, 'matmul')
        matmul = time_forward_backward(layer, x, opts.layer_repeats)
        rows.append((f'GraphConv {cin}->{cout}: einsum vs matmul', einsum, matmul))
    return rows


# ---------------------------------------------------------------------------------- driver

def machine_description(device):
    cpu = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    text = (f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    if device.type == 'cuda':
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def gpu_peak(device, override):
    if override:
        return override * 1e12
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_PEAKS.items() if key in name), None)


def worker_command(opts, mode, row=None):
    command = [sys.executable, os.path.abspath(__file__), '--worker', mode,
               '--size', opts.size, '--device', opts.device, '--batch_size', str(opts.batch_size),
               '--steps', str(opts.steps), '--mean_frames', str(opts.mean_frames),
               '--cv', str(opts.cv), '--seed', str(opts.seed),
               '--tokenizer_dir', opts.tokenizer_dir]
    if row:
        command += ['--row', row]
    if opts.vocab_size:
        command += ['--vocab_size', str(opts.vocab_size)]
    command += ['--optimizer'] * opts.optimizer + ['--count_flops'] * opts.count_flops
    command += ['--tied_output'] * opts.tied_output
    return command


def run_worker(opts, mode, row=None):
    done = subprocess.run(worker_command(opts, mode, row), capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{')]
    if done.returncode or not lines:
        raise RuntimeError(f"{mode} {row or ''} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def selected_rows(opts, device):
    rows = opts.rows.split(',') if opts.rows else list(EXACT_ROWS)
    rows += ['bf16'] * opts.with_bf16 + ['compile'] * opts.with_compile
    if rows[0] != 'baseline':
        rows.insert(0, 'baseline')
    return list(dict.fromkeys(rows))


def median_rate(runs, clock='seconds'):
    return statistics.median(r['samples'] / r[clock] for r in runs)


def summarise(results, device, peak_flops):
    """Table lines: median samples/s per row and its ratio to the baseline, by wall clock and
    (CPU) by the process's CPU time, which other jobs on a shared machine disturb less."""
    on_cpu = device.type == 'cpu'
    base = median_rate(results['baseline'])
    base_cpu = median_rate(results['baseline'], 'cpu_seconds')
    header = f"{'row':16s} {'exact':5s} {'samples/s':>9s} {'x base':>7s} "
    header += f"{'x base (CPU time)':>17s} " if on_cpu else ''
    header += f"{'ms/step':>8s} {'padding':>7s} {'peak MB':>8s}"
    header += f" {'rise MB':>8s}" if on_cpu else ''
    header += f" {'MFU':>6s}" if peak_flops else ''
    header += f" {'GFLOP/s':>8s}" if any('flops' in r[0] for r in results.values()) else ''
    lines = [header]
    for row, runs in results.items():
        rate = median_rate(runs)
        step_ms = statistics.median(1e3 * r['seconds'] / r['steps'] for r in runs)
        exact = 'yes' if row in EXACT_ROWS else 'no'
        line = f"{row:16s} {exact:5s} {rate:9.3f} {rate / base:6.2f}x "
        line += f"{median_rate(runs, 'cpu_seconds') / base_cpu:16.2f}x " if on_cpu else ''
        line += (f"{step_ms:8.0f} {100 * runs[0]['padding']:6.1f}% "
                 f"{statistics.median(r['peak_mb'] for r in runs):8.0f}")
        line += f" {statistics.median(r['rise_mb'] for r in runs):8.0f}" if on_cpu else ''
        if 'flops' in runs[0]:
            achieved = statistics.median(r['flops'] / r['seconds'] for r in runs)
            line += f" {100 * achieved / peak_flops:5.1f}%" if peak_flops else ''
            line += f" {achieved / 1e9:8.1f}"
        lines.append(line)
    return lines


def phase_table(results, device):
    """Seconds per step of each phase (CPU time on a CPU), Uni-Sign's configuration against
    the trainer's defaults (or the fastest exact row run), medians over the rounds."""
    shown = [row for row in ('defaults', 'all_on', *results) if row != 'baseline'
             and row in results and 'phases' in results[row][0]][:1]
    if not shown or 'phases' not in results['baseline'][0]:
        return []
    clock = 'CPU time' if device.type == 'cpu' else 'wall clock'
    splits = [{phase: statistics.median(r['phases'][phase] for r in results[row])
               for phase in PHASES} for row in ('baseline', shown[0])]
    return [f"\nwhere a step goes ({clock}; ratio: baseline / {shown[0]})",
            *split_lines(['baseline', shown[0]], splits)]


def parse_options(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_flag(p, '--size', default='small', choices=list(MT5_SHAPES))
    add_flag(p, '--vocab_size', type=cli.count, default=None, help="override the mT5 vocabulary")
    add_flag(p, '--tied_output', action='store_true',
             help="tie mT5's output layer to its input embedding (mt5-base keeps them apart)")
    add_flag(p, '--device', default='auto', help="auto, cpu or cuda")
    add_flag(p, '--batch_size', type=cli.count, default=4)
    add_flag(p, '--steps', type=cli.count, default=6, help="batches timed per row")
    add_flag(p, '--repeats', type=cli.count, default=1, help="interleaved rounds over all rows")
    add_flag(p, '--rows', default='', help="comma-separated subset of rows")
    add_flag(p, '--mean_frames', type=cli.positive, default=120)
    add_flag(p, '--cv', type=cli.non_negative, default=0.35, help="clip-length coefficient of variation")
    add_flag(p, '--seed', type=cli.seed, default=0)
    add_flag(p, '--optimizer', action='store_true', help="include an AdamW step")
    add_flag(p, '--count_flops', action='store_true', help="FLOPs on CPU too (extra pass)")
    add_flag(p, '--with_bf16', action='store_true', help="add a bf16-autocast row")
    add_flag(p, '--with_compile', action='store_true', help="add a torch.compile row")
    add_flag(p, '--peak_tflops', type=cli.positive, default=None, help="for MFU on unknown GPUs")
    add_flag(p, '--layers', action='store_true', help="one-layer timings only")
    add_flag(p, '--layer_repeats', type=cli.count, default=5)
    add_flag(p, '--json', default='', help="also write the raw results here")
    add_flag(p, '--worker', default='', help=argparse.SUPPRESS)
    add_flag(p, '--row', default='', help=argparse.SUPPRESS)
    add_flag(p, '--tokenizer_dir', default='', help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.device == 'auto':
        opts.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return opts


def main(argv=None):
    opts = parse_options(argv)
    if opts.worker:
        result = run_row(opts, opts.row) if opts.worker == 'row' else check_loss(opts)
        print(json.dumps(result))
        return
    device = torch.device(opts.device)
    print(machine_description(device))
    if opts.layers:
        for what, first, second in layer_timings(opts):
            print(f"{what:55s} {1e3 * first:8.1f} ms {1e3 * second:8.1f} ms  "
                  f"ratio {first / second:.2f}")
        return
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        opts.tokenizer_dir = tokenizer_dir
        make_tokenizer(tokenizer_dir)
        rows = selected_rows(opts, device)
        results = {row: [] for row in rows}
        for round_index in range(opts.repeats):
            for row in rows:
                results[row].append(run_worker(opts, 'row', row))
                print(f"  round {round_index + 1} {row}: "
                      f"{results[row][-1]['samples'] / results[row][-1]['seconds']:.3f} samples/s",
                      flush=True)
        losses = run_worker(opts, 'check')
    print(f"\nsize {opts.size} (output layer {'tied' if opts.tied_output else 'untied'}), batch "
          f"{opts.batch_size}, {opts.steps} batches per row, median of {opts.repeats} round(s), "
          f"device {device.type}; MFU vs dense bf16 peak")
    print('\n'.join(summarise(results, device, gpu_peak(device, opts.peak_tflops))))
    print('\n'.join(phase_table(results, device)))
    rel = abs(losses['all_on'] - losses['baseline']) / abs(losses['baseline'])
    print(f"loss on one batch: baseline {losses['baseline']:.6f}, all on {losses['all_on']:.6f}, "
          f"relative difference {rel:.1e}")
    if opts.json:
        with open(opts.json, 'w') as f:
            json.dump({'options': vars(opts), 'results': results, 'losses': losses}, f, indent=1)


if __name__ == '__main__':
    main()
