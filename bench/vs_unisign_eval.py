"""Evaluation with Uni-Sign's own model code against this trainer's, side by side.

Uni-Sign's side imports `models.Uni_Sign` from a checkout given with --reference and evaluates
as its fine_tuning.evaluate does, batch by batch under torch.no_grad: the teacher-forced forward
`stack_out = model(src_input, tgt_input)`, then `model.generate(stack_out, max_new_tokens=...,
num_beams=...)` (Hugging Face's beam search, the mT5 encoder run again from the forward's input
embeddings). This trainer's side builds its model with the trainer's defaults (as
bench/vs_unisign.py does for a training step), loads the weights as --finetune does, and runs
engine.predict's decoding: the pooled beam search over --decode_pool beam rows (the trainer's
default) where it applies, batch by batch otherwise. Both sides get the same weights and batches (bench/vs_unisign.py's prepare: mt5-base
layer shapes, untied output layer of 250,112 rows; `small` 2+2 layers, `base` 12+12).

Random weights never pick end-of-sentence, so the shared weights scale the output layer's EOS
row by --eos_scale: its logit then swings far above or below the others with the decoder state,
and sentences end at varied lengths (the distribution is printed). Both sides' generated ids must
be equal sentence by sentence, or the bench stops with an error. Each side runs in a fresh
process; times are the process's CPU time (one thread with OMP_NUM_THREADS=1) and the wall clock
of the evaluation loop, and peak memory is that of the evaluation (resident set high-water mark
reset once the model and batches are ready; torch.cuda.max_memory_allocated on CUDA). Module
hooks split each side's time into the pose encoder, the mT5 encoder, the decoder and the rest
(output layer, loss and search; bench/step_phases.py).

    OMP_NUM_THREADS=1 python bench/vs_unisign_eval.py --reference ../Uni-Sign --size small
"""
import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vs_unisign  # noqa: E402  (imports nothing named like Uni-Sign's modules)
from cli import count, non_negative, seed  # noqa: E402
from peak_memory import peak_memory_mb, reset_peak_memory, resident_mb  # noqa: E402
from step_phases import EVAL_PHASES, eval_split, phase_clock, phase_hooks, split_lines  # noqa: E402

SIDES = vs_unisign.SIDES
LM_HEAD = 'mt5_model.lm_head.weight'


# --------------------------------------------------------------------------- shared inputs

def prepare(opts, directory):
    """vs_unisign.prepare's mT5 folder, weights and batches, with the EOS row scaled."""
    frames = vs_unisign.prepare(argparse.Namespace(seed=opts.seed, size=opts.size,
                                                   batch_size=opts.batch_size,
                                                   steps=opts.batches - 1), directory)
    with open(os.path.join(directory, 'mt5', 'config.json')) as f:
        eos = json.load(f)['eos_token_id']
    path = os.path.join(directory, 'weights.pt')
    weights = torch.load(path)
    scale_row(weights, LM_HEAD, eos, opts.eos_scale)
    torch.save(weights, path)
    return frames


def scale_row(weights, name, row, factor):
    """Scales one output row in place; the output layer must not be the input embedding."""
    if weights[name].data_ptr() == weights['mt5_model.shared.weight'].data_ptr():
        raise ValueError("the output layer is tied to the input embedding")
    weights[name][row] *= factor


def load_batches(directory, device):
    batches = torch.load(os.path.join(directory, 'batches.pt'))
    loaded = []
    for k, (src, tgt) in enumerate(batches):
        src = {key: value.to(device) for key, value in src.items()}
        src['name_batch'] = [f'clip{k}_{i}' for i in range(len(tgt['gt_sentence']))]
        loaded.append((src, dict(tgt)))
    return loaded


# ------------------------------------------------------------------------- the two sides

def unisign_evaluation(opts, directory, device):
    """Uni-Sign's model and its fine_tuning.evaluate loop (forward, then generate)."""
    # The training-step pieces (optimizer groups, DeepSpeed config) are built and left unused.
    model = vs_unisign.unisign_side(argparse.Namespace(**vars(opts), zero_stage=2), directory)[0]
    model.load_state_dict(torch.load(os.path.join(directory, 'weights.pt')), strict=True)
    model.to(device).eval()
    batches = load_batches(directory, device)

    def evaluate():
        with torch.no_grad():
            for src_input, tgt_input in batches:
                stack_out = model(src_input, tgt_input)
                stack_out['loss'].item()  # fine_tuning.evaluate logs it
                yield model.generate(stack_out, max_new_tokens=opts.max_new_tokens,
                                     num_beams=opts.num_beams)
    return model, evaluate


def our_flags(opts, directory):
    return ['--mt5_path', os.path.join(directory, 'mt5'), '--batch-size', str(opts.batch_size),
            '--num_beams', str(opts.num_beams), '--max_new_tokens', str(opts.max_new_tokens),
            ] + opts.ours_flags


def our_evaluation(opts, directory, device):
    """This trainer's model (trainer defaults) and engine.predict's decoding."""
    import config
    import engine
    import utils
    from datasets import TextTargets
    from flags import parse_args
    from models import SignTranslator, load_checkpoint_weights
    args = parse_args('bench', our_flags(opts, directory))
    args.device = device
    utils.keep_freed_memory(args.keep_freed_memory)  # as fine_tuning.main does
    model = SignTranslator(args)
    load_checkpoint_weights(model, os.path.join(directory, 'weights.pt'))  # as --finetune does
    model.to(device).eval()
    targets = TextTargets(model.mt5_tokenizer, config.get_dataset('CSL_Daily').prompt,
                          max_tgt_len=50)
    batches = load_batches(directory, device)
    for src, tgt in batches:  # the trainer's collate tokenises prompt and targets
        tgt['gt_gloss'] = [''] * len(tgt['gt_sentence'])
        targets(src, tgt)

    def evaluate():
        with torch.no_grad():
            decode = (engine.pooled_predictions if engine.pooled_decoding(args, model)
                      else engine.batch_predictions)
            for _, _, ids in decode(args, model, iter(batches)):
                yield ids
    return model, evaluate


# ------------------------------------------------------------------------------- the worker

def run_side(opts, side):
    """Worker: builds one side, then evaluates every batch; writes the ids to --ids_file."""
    torch.manual_seed(opts.seed)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    build = unisign_evaluation if side == 'unisign' else our_evaluation
    model, evaluate = build(opts, opts.workdir, device)
    clock = phase_clock(device)
    spent = phase_hooks(model, clock)
    ready_mb = resident_mb()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    reset_peak_memory(device)
    start, start_cpu, begin = time.perf_counter(), time.process_time(), clock()
    ids = [row.tolist() for batch in evaluate() for row in batch.cpu()]
    if device.type == 'cuda':
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    phases = eval_split(spent, clock() - begin)
    with open(opts.ids_file, 'w') as f:
        json.dump(ids, f)
    return {'side': side, 'seconds': seconds, 'cpu_seconds': cpu,
            'peak_gb': peak_memory_mb(device) / 1024, 'ready_gb': ready_mb / 1024,
            'sentences': len(ids), 'phases': phases}


# ---------------------------------------------------------------------------------- driver

def run_worker(opts, side):
    ids_file = os.path.join(opts.workdir, f'{side}.json')
    command = [sys.executable, os.path.abspath(__file__), '--worker', side,
               '--workdir', opts.workdir, '--ids_file', ids_file, '--reference', opts.reference]
    for name in ('size', 'batch_size', 'batches', 'num_beams', 'max_new_tokens', 'eos_scale',
                 'seed'):
        command += [f'--{name}', str(getattr(opts, name))]
    command += [f'--ours={flag}' for flag in opts.ours_flags]
    result = vs_unisign.run_side_process(command, side)
    with open(ids_file) as f:
        return result, json.load(f)


def generated_lengths(ids, eos):
    """New tokens per sentence, its end-of-sentence included (rows start with the decoder's
    start token and are padded after the end)."""
    lengths = []
    for row in ids:
        tokens = row[1:]
        lengths.append(tokens.index(eos) + 1 if eos in tokens else len(tokens))
    return lengths


def first_difference(a, b):
    """Index of the first sentence whose ids differ (None: all equal)."""
    if len(a) != len(b):
        return min(len(a), len(b))
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def report(opts, results, lengths):
    """Lines: the generated lengths, per side CPU s, wall s and peak GB, and the ratios."""
    uni, ours = results['unisign'], results['ours']
    histogram = collections.Counter(lengths)
    lines = [f"{len(lengths)} sentences, {opts.batches} batches of {opts.batch_size}, "
             f"{opts.num_beams} beams, at most {opts.max_new_tokens} new tokens, EOS row x "
             f"{opts.eos_scale:g}",
             f"new tokens per sentence (EOS included): min {min(lengths)}, median "
             f"{statistics.median(lengths):g}, max {max(lengths)}; "
             + ', '.join(f"{n}: {histogram[n]}" for n in sorted(histogram)),
             f"{'evaluation':16s} {'Uni-Sign':>9s} {'this':>9s} {'ratio':>7s}"]
    for key, what in (('cpu_seconds', 'CPU time'), ('seconds', 'wall clock')):
        a, b = uni[key], ours[key]
        lines.append(f"{what:16s} {a:8.2f}s {b:8.2f}s {a / b:6.2f}x (Uni-Sign / this)")
    a, b = uni['peak_gb'], ours['peak_gb']
    lines.append(f"{'peak memory':16s} {a:7.2f}GB {b:7.2f}GB {b / a:6.2f}x (this / Uni-Sign)")
    lines.append(f"{'ready (before)':16s} {uni['ready_gb']:7.2f}GB {ours['ready_gb']:7.2f}GB")
    lines.append("generated ids: identical, sentence by sentence")
    if 'phases' in uni and 'phases' in ours:
        lines += ["where the time goes (ratio: Uni-Sign / this)",
                  *split_lines(['Uni-Sign', 'this'], [uni['phases'], ours['phases']],
                               EVAL_PHASES, 'in all')]
    return lines


def parse_options(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    vs_unisign.add_shared_options(p)
    p.add_argument('--batches', type=count, default=8)
    p.add_argument('--num_beams', type=count, default=4)
    p.add_argument('--max_new_tokens', type=count, default=20)
    p.add_argument('--eos_scale', type=non_negative, default=4.0,
                   help="factor on the output layer's EOS row (sentences end at varied lengths)")
    p.add_argument('--seed', type=seed, default=0)
    p.add_argument('--ours', dest='ours_flags', action='append', default=[],
                   help="a trainer flag for this trainer's side (repeat: --ours=--flag --ours=v)")
    p.add_argument('--json', default='', help="also write the raw results here")
    p.add_argument('--worker', default='', choices=['', *SIDES], help=argparse.SUPPRESS)
    p.add_argument('--workdir', default='', help=argparse.SUPPRESS)
    p.add_argument('--ids_file', default='', help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    vs_unisign.check_reference(p, opts.reference)
    return opts


def main(argv=None):
    opts = parse_options(argv)
    if opts.worker:
        print(json.dumps(run_side(opts, opts.worker)))
        return
    print(vs_unisign.run_description(opts))
    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as directory:
        opts.workdir = directory
        prepare(opts, directory)
        with open(os.path.join(directory, 'mt5', 'config.json')) as f:
            eos = json.load(f)['eos_token_id']
        for side in SIDES:
            results[side], outputs[side] = run_worker(opts, side)
            print(f"  {side}: {results[side]['cpu_seconds']:.2f} CPU s", flush=True)
    wrong = first_difference(outputs['unisign'], outputs['ours'])
    if wrong is not None:
        sys.exit(f"error: generated ids differ at sentence {wrong}: Uni-Sign "
                 f"{outputs['unisign'][wrong:wrong + 1]}, this {outputs['ours'][wrong:wrong + 1]}")
    print('\n'.join(report(opts, results, generated_lengths(outputs['unisign'], eos))))
    if opts.json:
        with open(opts.json, 'w') as f:
            json.dump({'options': vars(opts), 'results': results, 'ids': outputs}, f, indent=1)


if __name__ == '__main__':
    main()
