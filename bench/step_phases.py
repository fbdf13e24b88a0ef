"""Where a training step's or an evaluation's time goes: forward hooks charge each module's time
to the pose encoder, the mT5 encoder or the decoder; the rest of a training forward (prompt and
target tokens, output layer, loss), the backward and the optimizer step are timed around them,
and in evaluation the rest is the output layer and the beam search. Shared by the benches that
compare with Uni-Sign's computation."""
import time

import torch

PHASES = ('pose encoder', 'mT5 encoder', 'decoder', 'tokens, output layer, loss', 'backward',
          'optimizer')
FORWARD_PARTS = PHASES[:3]
EVAL_PHASES = (*FORWARD_PARTS, 'output layer, search')
POSE_MODULES = ('proj_linear.', 'gcn_modules.', 'fusion_gcn_modules.')
HOOKED = {'mt5_model.encoder': 'mT5 encoder', 'mt5_model.decoder': 'decoder',
          'pose_proj': 'pose encoder'}


def phase_clock(device):
    """CPU time on a CPU; on CUDA the wall clock once the queued kernels are done."""
    if device.type == 'cpu':
        return time.process_time
    return lambda: (torch.cuda.synchronize(), time.perf_counter())[1]


def phase_hooks(model, clock):
    """Forward-time accumulators per phase, filled by hooks on the modules of each phase."""
    spent = dict.fromkeys(PHASES, 0.0)
    for name, module in model.named_modules():
        phase = HOOKED.get(name)
        if phase is None and name.startswith(POSE_MODULES) and name.count('.') == 1:
            phase = 'pose encoder'
        if phase is None:
            continue

        def start(module, inputs, phase=phase):
            module._bench_started = clock()

        def stop(module, inputs, output, phase=phase):
            spent[phase] += clock() - module._bench_started
        module.register_forward_pre_hook(start)
        module.register_forward_hook(stop)
    return spent


def per_step(spent, forward, steps):
    """The phases' seconds per step, the forward's remainder charged to tokens and loss."""
    split = dict(spent)
    split['tokens, output layer, loss'] = forward - sum(spent[p] for p in FORWARD_PARTS)
    return {phase: seconds / steps for phase, seconds in split.items()}


def eval_split(spent, total):
    """Seconds of each evaluation phase, the rest of `total` charged to the output layer and
    the search."""
    split = {phase: spent[phase] for phase in FORWARD_PARTS}
    split['output layer, search'] = total - sum(split.values())
    return split


def split_lines(names, splits, phases=PHASES, unit='per step'):
    """Table lines: seconds of each phase for each side, and the first over the last."""
    lines = [f"{unit:28s} " + ' '.join(f'{name:>12s}' for name in names) + '    ratio']
    for phase in phases:
        values = [split[phase] for split in splits]
        lines.append(f"{phase:28s} " + ' '.join(f'{v:11.3f}s' for v in values)
                     + f" {values[0] / max(values[-1], 1e-9):7.2f}x")
    return lines
