"""Training-step and evaluation speed and peak memory of a trimmed vocabulary against mT5's full
250,112 tokens, at mt5-small or mt5-base layer shapes with random weights.

    python bench/trim_vocab.py --shape small --kept 3000 --layers 1 --threads 1

Each vocabulary runs in a fresh subprocess (so each peak is its own): an mT5 with the output
layer apart from the input embedding (mt5-base's layout, which trimming slices both of), a
training step (forward with the translator's `target_logits real` rows, backward, AdamW step) on
random encoder inputs of --src_len positions and targets of --tgt_len tokens, and an evaluation
(beam search with --num_beams, --max_new_tokens). Times are the median of --steps, as wall
clock and as the process's CPU time (with --threads 1 the CPU time of one thread, which other
jobs on a shared machine disturb less); peak memory is ru_maxrss on CPU,
torch.cuda.max_memory_allocated on CUDA. The last columns are the full vocabulary's figure
divided by the trimmed one's, measured in the same run. --kept 3000 is about the size
MMTLB-style trimming leaves for a corpus such as PHOENIX-2014-T's (German, ~3k words).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cli import count  # noqa: E402

FULL_VOCAB = 250112
SHAPES = {'small': dict(d_model=512, d_ff=1024, num_heads=6, d_kv=64),
          'base': dict(d_model=768, d_ff=2048, num_heads=12, d_kv=64)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--shape', choices=sorted(SHAPES), default='small', help='mT5 layer shapes')
    p.add_argument('--kept', type=count, default=3000, help='trimmed vocabulary size')
    p.add_argument('--layers', type=count, default=1, help='encoder and decoder layers each')
    p.add_argument('--batch', type=count, default=4, help='sentences per batch')
    p.add_argument('--src_len', type=count, default=64, help='encoder positions (prompt + frames)')
    p.add_argument('--tgt_len', type=count, default=24, help='target tokens per sentence')
    p.add_argument('--steps', type=count, default=3, help='timed repetitions (after one warm-up)')
    p.add_argument('--num_beams', type=count, default=4)
    p.add_argument('--max_new_tokens', type=count, default=20)
    p.add_argument('--threads', type=count, default=1, help='torch threads (CPU)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--worker_vocab', type=count, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def timed(fn, steps, sync):
    """(median wall s, median CPU s) of `steps` calls after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(steps):
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def worker(args):
    """One vocabulary's figures, as a JSON line."""
    import torch
    import torch.nn.functional as F
    from transformers import MT5Config, MT5ForConditionalGeneration
    from transformers.modeling_outputs import BaseModelOutput
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mt5_layout
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = MT5Config(vocab_size=args.worker_vocab, num_layers=args.layers,
                       num_decoder_layers=args.layers, feed_forward_proj='gated-gelu',
                       dropout_rate=0.0, **SHAPES[args.shape])
    model = mt5_layout.set_tied(MT5ForConditionalGeneration(config), False).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = torch.randn(args.batch, args.src_len, config.d_model, device=device)
    labels = torch.randint(3, args.worker_vocab, (args.batch, args.tgt_len), device=device)
    labels[:, -1] = 1
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        states = model.encoder(inputs_embeds=inputs).last_hidden_state
        decoder = model.decoder(input_ids=model._shift_right(labels), encoder_hidden_states=states,
                                use_cache=False).last_hidden_state
        logits = model.lm_head(decoder.flatten(0, 1))
        F.cross_entropy(logits, labels.flatten(), label_smoothing=0.2).backward()
        optimizer.step()

    model.train()
    train = timed(train_step, args.steps, sync)
    model.eval()

    @torch.no_grad()
    def evaluate():
        states = model.encoder(inputs_embeds=inputs).last_hidden_state
        model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                       num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                       min_new_tokens=args.max_new_tokens)  # every step runs: equal work

    evaluation = timed(evaluate, args.steps, sync)
    peak = (torch.cuda.max_memory_allocated() if device.type == 'cuda'
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({'vocab': args.worker_vocab, 'params': params, 'train_wall': train[0],
                      'train_cpu': train[1], 'eval_wall': evaluation[0],
                      'eval_cpu': evaluation[1], 'peak_bytes': peak}))


def run_worker(argv, vocab):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, '--worker_vocab',
                           str(vocab)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the worker for vocabulary {vocab} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker_vocab:
        return worker(args)
    rows = [run_worker(argv, vocab) for vocab in (FULL_VOCAB, args.kept)]
    print(f"mt5-{args.shape} shapes, {args.layers}+{args.layers} layers, batch {args.batch} x "
          f"{args.src_len} inputs / {args.tgt_len} targets, beams {args.num_beams} x "
          f"{args.max_new_tokens} tokens, {args.threads} thread(s), {args.device}")
    print(f"{'vocab':>7} {'params':>7} {'train s':>8} {'train cpu':>9} {'eval s':>7} "
          f"{'eval cpu':>8} {'peak MB':>8}")
    for r in rows:
        print(f"{r['vocab']:>7} {r['params'] / 1e6:>6.1f}M {r['train_wall']:>8.3f} "
              f"{r['train_cpu']:>9.3f} {r['eval_wall']:>7.3f} {r['eval_cpu']:>8.3f} "
              f"{r['peak_bytes'] / 2 ** 20:>8.0f}")
    full, kept = rows
    ratios = {key: full[key] / kept[key] for key in
              ('train_wall', 'train_cpu', 'eval_wall', 'eval_cpu', 'peak_bytes')}
    print("full / trimmed: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return ratios


if __name__ == '__main__':
    main()
