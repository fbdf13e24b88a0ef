"""One training step of Uni-Sign's own model code against this trainer's, side by side.

Both sides get the same weights and the same batches, and both train the way their own scripts
do: a DeepSpeed engine (fp32, one rank) over AdamW. Uni-Sign's side imports `models.Uni_Sign`
from a checkout of ZechengLi19/Uni-Sign given with --reference (it is not shipped here), loads
mT5 with its own `from_pretrained` call, and steps AdamW over the parameter groups Uni-Sign's
timm `create_optimizer` forms (no weight decay on biases and 1-D parameters), with DeepSpeed's
config from Uni-Sign's own `utils.get_train_ds_config` at --zero_stage (2, Uni-Sign's
default). This trainer's side builds its model and DeepSpeed config
(`ds_config.generated`, the ZeRO stage resolved as a run resolves it) with the trainer's
defaults, its engine with `fine_tuning.init_engine` (the trainer's optimizer), and keeps freed
memory for reuse on a CPU as the trainer does (--keep_freed_memory auto). Trainer flags go
through --ours, e.g. --ours=--zero_stage=2. Uni-Sign's RGB branch is off, so the
torchvision it imports for that branch is replaced by an empty module when it is absent.

mT5 has mt5-base's layer shapes (d_model 768, its 250,112-token vocabulary with the output layer
apart from the input embedding) and random weights; `small` keeps 2+2 layers, `base` all 12+12.
Each step is forward, backward and optimizer step; the forward is split by module hooks into the
pose encoder, the mT5 encoder, the decoder and the rest (prompt and target tokens, output layer,
loss). Times are the process's CPU time (one thread unless OMP_NUM_THREADS says otherwise) and
the wall clock, medians over --repeats interleaved rounds, each side in a fresh process; peak
memory is the process's ru_maxrss (CPU) or torch.cuda.max_memory_allocated. The loss of the
first batch is compared with dropout off on both sides.

    git clone https://github.com/ZechengLi19/Uni-Sign ../Uni-Sign
    OMP_NUM_THREADS=1 python bench/vs_unisign.py --reference ../Uni-Sign --size small --steps 3
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from cli import count, seed  # noqa: E402  (imports nothing named like Uni-Sign's modules)
from step_phases import PHASES, per_step, phase_clock, phase_hooks  # noqa: E402
SIDES = ('unisign', 'ours')


# --------------------------------------------------------------------------- shared inputs

def prepare(opts, directory):
    """Writes the shared mT5 folder (untied, with its tokenizer), the full state dict and the
    batches into `directory`; returns the loss-free summary of the batches."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, HERE)
    from train_step import build_model, make_batch, make_pool, make_tokenizer
    mt5_dir = os.path.join(directory, 'mt5')
    os.makedirs(mt5_dir)
    tokenizer = make_tokenizer(mt5_dir, opts.seed)
    model = build_model(opts.size, tokenizer, None, opts.seed)
    model.mt5_model.save_pretrained(mt5_dir)
    tokenizer.save_pretrained(mt5_dir)
    torch.save(model.state_dict(), os.path.join(directory, 'weights.pt'))
    pool = argparse.Namespace(seed=opts.seed, batch_size=opts.batch_size, mean_frames=120,
                              cv=0.35, steps=opts.steps + 1)
    lengths, sentences, _, random_batches = make_pool(pool)
    batches = []
    for k, indices in enumerate(random_batches[:opts.steps + 1]):
        src, tgt = make_batch(indices, lengths, sentences, tokenizer, False, k)
        batches.append(({key: src[key] for key in ('body', 'left', 'right', 'face_all',
                                                   'attention_mask')},
                        {'gt_sentence': tgt['gt_sentence']}))
    torch.save(batches, os.path.join(directory, 'batches.pt'))
    return [int(b[0]['attention_mask'].sum()) for b in batches]


# ------------------------------------------------------------------------- the two sides

def unisign_side(opts, directory):
    """Uni-Sign's model, its optimizer groups and its DeepSpeed config, from --reference."""
    sys.path.insert(0, os.path.abspath(opts.reference))
    from transformers import MT5ForConditionalGeneration, T5Tokenizer  # noqa: F401  (before the stub)
    try:
        import torchvision  # noqa: F401  (Uni-Sign's RGB branch, off here)
    except ImportError:
        sys.modules['torchvision'] = types.ModuleType('torchvision')
    import config as reference_config
    reference_config.mt5_path = os.path.join(directory, 'mt5')
    import utils as reference_utils
    from models import Uni_Sign
    args = argparse.Namespace(hidden_dim=256, dataset='CSL_Daily', rgb_support=False,
                              label_smoothing=0.2, task='SLT')
    model = Uni_Sign(args)
    ds = reference_utils.get_train_ds_config(offload=False, dtype='fp32', stage=opts.zero_stage)
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # timm's param_groups_weight_decay
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith('.bias') else decay).append(p)
    groups = [{'params': no_decay, 'weight_decay': 0.0}, {'params': decay, 'weight_decay': 1e-4}]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, eps=1e-9, weight_decay=0.0)

    def make_engine(model, ds):  # as Uni-Sign's fine_tuning.py calls it
        import deepspeed
        return deepspeed.initialize(model=model, optimizer=optimizer, config=ds,
                                    dist_init_required=False)[0]
    return model, make_engine, ds, lambda batch: batch


def our_side(opts, directory):
    """This trainer's model (from the same mT5 folder), optimizer and DeepSpeed config."""
    sys.path.insert(0, ROOT)
    import ds_config
    import utils
    import config
    from datasets import TextTargets
    from flags import parse_args
    from models import SignTranslator
    args = parse_args('bench', ['--mt5_path', os.path.join(directory, 'mt5'), '--dtype', 'fp32',
                                '--batch-size', str(opts.batch_size),
                                '--gradient-accumulation-steps', '1'] + opts.ours_flags)
    ds_config.resolve_zero_stage(args)
    model = SignTranslator(args)
    utils.keep_freed_memory(args.keep_freed_memory)  # as fine_tuning.main does
    targets = TextTargets(model.mt5_tokenizer, config.get_dataset('CSL_Daily').prompt,
                          max_tgt_len=50)

    def collate(batch):  # the trainer's collate tokenises prompt and targets
        src, tgt = dict(batch[0]), dict(batch[1], gt_gloss=[''] * len(batch[1]['gt_sentence']))
        targets(src, tgt)
        return src, tgt

    def make_engine(model, ds):  # the trainer's own engine: its optimizer and one-rank path
        import fine_tuning
        return fine_tuning.init_engine(args, model, opts.steps + 1, ds)  # warm-up + timed
    return model, make_engine, ds_config.generated(args), collate


# ------------------------------------------------------------------------------- the worker

def init_process_group():
    import deepspeed
    os.environ.update(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1')
    os.environ.setdefault('MASTER_PORT', str(29500 + os.getpid() % 1000))
    backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def loss_without_dropout(model, batch):
    """The first batch's loss with dropout off (BatchNorm in training mode, as in a step)."""
    saved = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for module, _ in saved:
        module.p = 0.0
    with torch.no_grad():
        loss = model(*batch)['loss'].item()
    for module, p in saved:
        module.p = p
    return loss


def run_side(opts, side):
    """Worker: builds one side, checks the loss of the first batch, then times --steps steps."""
    torch.manual_seed(opts.seed)
    init_process_group()
    directory = opts.workdir
    build = unisign_side if side == 'unisign' else our_side
    model, make_engine, ds, collate = build(opts, directory)
    model.load_state_dict(torch.load(os.path.join(directory, 'weights.pt')), strict=True)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model.to(device).train()
    batches = [collate(b) for b in torch.load(os.path.join(directory, 'batches.pt'))]
    batches = [tuple({k: v.to(device) if torch.is_tensor(v) else v for k, v in part.items()}
                     for part in b) for b in batches]
    first_loss = loss_without_dropout(model, batches[0])
    ds.update(train_micro_batch_size_per_gpu=opts.batch_size, gradient_accumulation_steps=1,
              gradient_clipping=1.0, steps_per_print=10 ** 9)
    engine = make_engine(model, ds)
    clock = phase_clock(device)
    spent = phase_hooks(model, clock)
    one_step(engine, batches[0], clock, spent)  # warm-up
    spent.update(dict.fromkeys(PHASES, 0.0))
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    start, start_cpu = time.perf_counter(), time.process_time()
    forward = sum(one_step(engine, batch, clock, spent) for batch in batches[1:])
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    steps = len(batches) - 1
    peak = (torch.cuda.max_memory_allocated() if device.type == 'cuda'
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30
    return {'side': side, 'seconds': seconds / steps, 'cpu_seconds': cpu / steps,
            'phases': per_step(spent, forward, steps), 'peak_gb': peak,
            'loss': first_loss}


def one_step(engine, batch, clock, spent):
    """Forward, backward and optimizer step; returns the forward's time, adds the others'."""
    begin = clock()
    loss = engine(*batch)['loss']
    forward = clock() - begin
    begin = clock()
    engine.backward(loss)
    spent['backward'] += clock() - begin
    begin = clock()
    engine.step()
    spent['optimizer'] += clock() - begin
    return forward


# ---------------------------------------------------------------------------------- driver

def run_worker(opts, side):
    command = [sys.executable, os.path.abspath(__file__), '--worker', side,
               '--workdir', opts.workdir, '--reference', opts.reference, '--size', opts.size,
               '--batch_size', str(opts.batch_size), '--steps', str(opts.steps),
               '--seed', str(opts.seed), '--zero_stage', str(opts.zero_stage)]
    return run_side_process(command + [f'--ours={flag}' for flag in opts.ours_flags], side)


def run_side_process(command, side):
    """Runs one side's worker in a fresh process; its result, the last JSON line it prints."""
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"side"')]
    if done.returncode or not lines:
        raise SystemExit(f"error: the {side} side failed (exit {done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def median(runs, key, phase=None):
    return statistics.median(r['phases'][phase] if phase else r[key] for r in runs)


def report(results, frames):
    """The table: per phase and in all, seconds per step on each side and the ratio."""
    uni, ours = results['unisign'], results['ours']
    lines = [f"clips of {', '.join(map(str, frames[1:]))} frames in the timed batches",
             f"{'per step':28s} {'Uni-Sign':>9s} {'this':>9s} {'ratio':>7s}"]
    for phase in PHASES:
        a, b = median(uni, None, phase), median(ours, None, phase)
        lines.append(f"{phase:28s} {a:8.3f}s {b:8.3f}s {a / max(b, 1e-9):6.2f}x")
    for key, what in (('cpu_seconds', 'step, CPU time'), ('seconds', 'step, wall clock')):
        a, b = median(uni, key), median(ours, key)
        lines.append(f"{what:28s} {a:8.3f}s {b:8.3f}s {a / b:6.2f}x")
    a, b = median(uni, 'peak_gb'), median(ours, 'peak_gb')
    lines.append(f"{'peak memory':28s} {a:7.2f}GB {b:7.2f}GB {b / a:6.2f}x (this / Uni-Sign)")
    la, lb = uni[0]['loss'], ours[0]['loss']
    lines.append(f"loss of the first batch (dropout off): Uni-Sign {la:.7f}, this {lb:.7f}, "
                 f"relative difference {abs(la - lb) / abs(la):.1e}")
    return lines


def parse_options(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_shared_options(p)
    p.add_argument('--steps', type=count, default=3, help="timed steps per side (after one warm-up)")
    p.add_argument('--repeats', type=count, default=1, help="interleaved rounds of both sides")
    p.add_argument('--seed', type=seed, default=0)
    p.add_argument('--zero_stage', type=int, default=2, choices=[0, 1, 2, 3],
                   help="Uni-Sign's ZeRO stage (its scripts' default: 2)")
    p.add_argument('--ours', dest='ours_flags', action='append', default=[],
                   help="a trainer flag for this trainer's side (repeat: --ours=--flag --ours=v)")
    p.add_argument('--json', default='', help="also write the raw results here")
    p.add_argument('--worker', default='', choices=['', *SIDES], help=argparse.SUPPRESS)
    p.add_argument('--workdir', default='', help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    check_reference(p, opts.reference)
    return opts


def add_shared_options(p):
    """The Uni-Sign checkout, the model size and the batch size (both benches against it)."""
    p.add_argument('--reference', required=True,
                   help="a checkout of ZechengLi19/Uni-Sign (its models.py, stgcn_layers/, "
                        "utils.py, config.py)")
    p.add_argument('--size', default='small', choices=['small', 'base'])
    p.add_argument('--batch_size', type=count, default=4)


def check_reference(parser, reference):
    """A parser error unless `reference` looks like a Uni-Sign checkout."""
    for name in ('models.py', 'utils.py', 'config.py'):
        if not os.path.isfile(os.path.join(reference, name)):
            parser.error(f"--reference {reference}: no {name} (a Uni-Sign checkout is needed)")


def run_description(opts):
    """The first line of a report: torch, its threads and the model size."""
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), size {opts.size}")


def main(argv=None):
    opts = parse_options(argv)
    if opts.worker:
        print(json.dumps(run_side(opts, opts.worker)))
        return
    print(f"{run_description(opts)}, batch {opts.batch_size}, {opts.steps} timed steps per "
          f"side, Uni-Sign's ZeRO stage {opts.zero_stage}")
    with tempfile.TemporaryDirectory() as directory:
        opts.workdir = directory
        frames = prepare(opts, directory)
        results = {side: [] for side in SIDES}
        for round_index in range(opts.repeats):
            for side in SIDES:
                results[side].append(run_worker(opts, side))
                print(f"  round {round_index + 1} {side}: "
                      f"{results[side][-1]['cpu_seconds']:.3f} CPU s/step", flush=True)
    print('\n'.join(report(results, frames)))
    if opts.json:
        with open(opts.json, 'w') as f:
            json.dump({'options': vars(opts), 'results': results}, f, indent=1)


if __name__ == '__main__':
    main()
