"""One training epoch and one evaluation pass of any head (the task object says what differs)."""
import contextlib
import math
import os

import torch
import torch.distributed as dist

import beam_search
import utils
from regularizers import dump_batch
from preemption import Preempted
from riemannian import optimizer_step
from SLRT_metrics import islr_performance, translation_performance, wer_list

# Metric that picks the best checkpoint, and whether larger is better.
BEST_METRIC = {"SLT": ("bleu4", True), "ISLR": ("top1_acc_pi", True), "CSLR": ("wer", False)}
# The model's loss and its logged components (those of disabled regularisers are absent).
LOSS_NAMES = ("loss", "ce_loss", "hyp_loss", "signcl_loss", "sst_loss")


def move_to_device(batch, device):
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def train_one_epoch(args, engine, data_loader, epoch, tracker=None, on_step=None,
                    hyp_optimizer=None, stop=None):
    """Runs the epoch's remaining DeepSpeed micro-steps (a resumed epoch starts at the next
    unseen batch); `on_step(batches_done)` runs after each that leaves no gradients waiting for
    an optimizer step (a state saved there misses nothing) and `hyp_optimizer` (riemannian.py)
    steps the hyperbolic geometry beside DeepSpeed. A micro-batch whose loss is NaN or Inf on any
    rank is skipped by every rank (see NonFiniteGuard). Returns the epoch averages of the logged
    scalars."""
    engine.train()
    sampler = data_loader.batch_sampler
    start = sampler.batches_done
    total = min(len(sampler), args.quick_break) if args.quick_break else len(sampler)
    steps = max(total - start, 0)
    if steps == 0:
        return {"loss": None, "lr": engine.get_lr()[0], "steps": 0}
    logger = utils.MetricLogger(header=f"Epoch: [{epoch}/{args.epochs}]")
    total_updates = utils.total_optimizer_steps(args, total)  # the learning-rate schedule's length
    sums = RunningMeans()
    guard = NonFiniteGuard(args.max_nonfinite, args.output_dir, epoch)
    updates, waiting = 0, False  # waiting: gradients accumulated since the last step
    batches = logger.log_every(data_loader, args.print_freq, steps,
                               per_item=args.batch_size * utils.get_world_size())
    for step, (src_input, tgt_input) in enumerate(batches):
        if step >= steps:
            break
        if hasattr(engine.module, "progress"):  # drives the hyperbolic CE weight schedule
            engine.module.progress = min(engine.global_steps / total_updates, 1.0)
        window, window_ends = accumulation_window(start + step, total,
                                                  args.gradient_accumulation_steps)
        engine.set_gradient_accumulation_boundary(window_ends)
        out = engine(move_to_device(src_input, args.device), move_to_device(tgt_input, args.device))
        if guard.check(out["loss"], start + step):
            optimizer_step(engine, out["loss"], hyp_optimizer, window)
            updates += window_ends
            waiting = not window_ends
            scalars = step_scalars(out, hyp_optimizer)
            sums.add(scalars)
            # Read the values back only when printing (one copy of them all, not one per name).
            if step % args.print_freq == 0 or step == steps - 1:
                log_step(args, engine, read_scalars(scalars), epoch, start + step, total, logger,
                         tracker)
        sampler.set_position(start + step + 1)
        guard.stop_if_exhausted(start + step + 1)
        if on_step is not None and not waiting:
            on_step(start + step + 1)
        if stop is not None and window_ends and not waiting and stop.agreed(args.device):
            raise Preempted(stop.name(), start + step + 1)
    return {"loss": None, **sums.averages(), "lr": engine.get_lr()[0], "steps": steps,
            "optimizer_steps": updates, "nonfinite_steps": guard.skipped}


def accumulation_window(position, total, size):
    """(micro-batches in the accumulation window holding micro-batch `position` of an epoch of
    `total`, whether `position` ends it). Windows of `size` start at the epoch's first batch; the
    last holds what is left, and is stepped with its loss divided by its own length, so a short
    epoch still trains and each step follows the mean gradient of its window."""
    first = position // size * size
    length = min(size, total - first)
    return length, position + 1 == first + length


def finite_on_every_rank(loss):
    """Whether the loss is finite on all ranks (one all-reduce: every rank gets the same answer)."""
    finite = torch.isfinite(loss.detach()).all().float()
    if utils.get_world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


class NonFiniteLossError(FloatingPointError):
    """Raised after --max_nonfinite consecutive non-finite losses; `batches_done` is the sampler
    position (the skipped batches included) at which training stopped."""

    def __init__(self, message, batches_done):
        super().__init__(message)
        self.batches_done = batches_done


class NonFiniteGuard:
    """Decides, in lockstep over ranks, whether a micro-batch's loss may be back-propagated.

    A NaN or Inf loss is never passed to engine.backward: back-propagating even `loss * 0` would
    give NaN gradients (0 * NaN is NaN) and, through clipping and Adam, NaN weights. Skipping
    backward and step on every rank leaves the weights and the optimizer moments untouched: the
    skipped micro-batch adds nothing to its accumulation window's mean (accumulation_window fixes
    the windows by position), and when it was the one ending the window, the gradients gathered
    so far are stepped with the next window's (no mid-epoch state is saved while they wait). Skips are printed and recorded in log_steps.txt;
    after `max_consecutive` in a row NonFiniteLossError stops training.
    """

    def __init__(self, max_consecutive, output_dir, epoch):
        self.max_consecutive, self.output_dir, self.epoch = max_consecutive, output_dir, epoch
        self.consecutive = 0
        self.skipped = 0

    def check(self, loss, step):
        if finite_on_every_rank(loss):
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        local = float(loss.detach().float())
        print(f"epoch {self.epoch} step {step}: non-finite loss (rank 0: {local}), update "
              f"skipped on every rank ({self.consecutive} in a row, {self.skipped} this epoch)")
        if self.output_dir and utils.is_main_process():
            utils.append_json_line(os.path.join(self.output_dir, "log_steps.txt"),
                                   {"epoch": self.epoch, "step": step, "skipped": "non-finite loss",
                                    "consecutive": self.consecutive})
        return False

    def stop_if_exhausted(self, batches_done):
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"stopped: {self.consecutive} consecutive non-finite losses (--max_nonfinite "
                f"{self.max_consecutive}) at epoch {self.epoch}, batch {batches_done}; the weights "
                "are those of the last finite step", batches_done)


def step_scalars(out, hyp_optimizer=None):
    """The detached scalars of one step: the loss, its components, the regularisers' statistics
    and the last Riemannian gradient norm."""
    scalars = {name: out[name].detach() for name in LOSS_NAMES if name in out}
    scalars.update(out.get("stats", {}))
    if hyp_optimizer is not None and hyp_optimizer.grad_norm is not None:
        scalars["hyp_grad_norm"] = hyp_optimizer.grad_norm
    return scalars


def read_scalars(scalars):
    """{name: float} with a single device-to-host copy."""
    values = torch.stack([value.detach().float().reshape(()) for value in scalars.values()])
    return dict(zip(scalars, values.tolist()))


class RunningMeans:
    """Per-name running sums of detached scalars, kept on the device until averaged."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, scalars):
        for name, value in scalars.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()
            self.counts[name] = self.counts.get(name, 0) + 1

    def averages(self):
        if not self.sums:
            return {}
        return read_scalars({name: total / self.counts[name] for name, total in self.sums.items()})


def log_step(args, engine, values, epoch, step, total, logger, tracker):
    """Prints and records one step's scalars (log_steps.txt on rank 0, W&B, TensorBoard)."""
    lr = engine.get_lr()[0]
    logger.update(**values, lr=lr)
    if args.output_dir and utils.is_main_process():
        utils.append_json_line(os.path.join(args.output_dir, "log_steps.txt"),
                               {"epoch": epoch, "step": step, **values, "lr": lr})
    if tracker is not None:
        tracker.log({**{f"train/{name}": value for name, value in values.items()},
                     "train/lr": lr, "epoch": epoch + step / total}, engine.global_steps)


class ShardedEvalSampler(torch.utils.data.Sampler):
    """Rank r takes items r, r+W, r+2W, ...; short ranks repeat their last item so every rank runs
    the same number of batches (ZeRO-3 needs the ranks in step); repeats are dropped on gather."""

    def __init__(self, size, rank, world_size):
        self.indices = list(range(rank, size, world_size))
        per_rank = math.ceil(size / world_size)
        if self.indices and len(self.indices) < per_rank:
            self.indices += [self.indices[-1]] * (per_rank - len(self.indices))
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def gather_in_order(local_items, size):
    """Undoes ShardedEvalSampler: returns the items of all ranks in dataset order."""
    per_rank = utils.all_gather_objects(local_items)
    world = len(per_rank)
    ordered = []
    for index in range(size):
        ordered.append(per_rank[index % world][index // world])
    return ordered


def score(task, refs, hyps):
    if task == "SLT":
        bleu, rouge = translation_performance(refs, hyps)
        return {**bleu, "rouge": rouge}
    if task == "ISLR":
        per_instance, per_class = islr_performance(refs, hyps)
        return {"top1_acc_pi": per_instance, "top1_acc_pc": per_class}
    return wer_list(references=refs, hypotheses=hyps)


def root_parameters_gathered(model, zero_stage):
    """ZeRO-3 gathers a module's parameters when its forward runs; generate() bypasses the top
    module's forward, so its own parameters (part_para) are gathered here."""
    if zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters(list(model.parameters(recurse=False)))


def pooled_decoding(args, model):
    """Whether predict() can use the pooled beam search (generate's ids up to float rounding):
    not where ZeRO-3 ranks must step together, nor for settings it does not reproduce."""
    if args.decode_pool <= 0 or args.num_beams < 2 or (args.zero_stage == 3
                                                         and utils.get_world_size() > 1):
        return False
    reasons = beam_search.unsupported_settings(model.mt5_model.generation_config, args.num_beams)
    if reasons and utils.is_main_process():
        print("evaluation decodes batch by batch: the pooled beam search does not support "
              + ", ".join(reasons))
    return not reasons


@torch.no_grad()
def predict(args, model, data_loader, tokenizer):
    """Generates a hypothesis per clip: the pose encoder runs once, then beam search, pooled
    over several batches (--decode_pool) or batch by batch."""
    model.eval()
    logger = utils.MetricLogger(header="Test:")
    batches = logger.log_every(data_loader, args.print_freq * 5)
    if pooled_decoding(args, model):
        outputs = pooled_predictions(args, model, batches)
    else:
        outputs = batch_predictions(args, model, batches)
    names, hyps, refs = [], [], []
    for batch_names, batch_refs, ids in outputs:
        hyps += tokenizer.batch_decode(ids, skip_special_tokens=True)
        refs += batch_refs
        names += batch_names
    return list(zip(names, hyps, refs))


def batch_predictions(args, model, batches):
    # Under ZeRO-3 every rank must keep running forward passes until the slowest beam ends.
    synced = args.zero_stage == 3 and utils.get_world_size() > 1
    for src_input, tgt_input in batches:
        with root_parameters_gathered(model, args.zero_stage):
            ids = model.generate(move_to_device(src_input, args.device),
                                 max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                                 synced_gpus=synced)
        yield src_input["name_batch"], tgt_input["gt_sentence"], ids


def pooled_predictions(args, model, batches):
    """(names, references, ids) per batch in loader order, decoded by the pooled search."""
    def encoded():
        for src_input, tgt_input in batches:
            with root_parameters_gathered(model, args.zero_stage):
                states, mask = model.encode(move_to_device(src_input, args.device))
            yield (src_input["name_batch"], tgt_input["gt_sentence"]), states, mask

    for (names, refs), ids in beam_search.pooled_generate_in_order(
            model.mt5_model, encoded(), args.num_beams, args.max_new_tokens, args.decode_pool):
        yield names, refs, ids


@torch.no_grad()
def dump_first_batch(args, engine, data_loader, phase):
    """--save_one_batch: writes the hyperbolic embeddings of the first batch to
    <output_dir>/<save_batch_name>_<phase>.npz. Every rank runs the forward through the engine
    (ZeRO-3 gathers parameters collectively, and only the engine's forward gathers those read
    outside their own module's forward); rank 0 writes its batch."""
    engine.eval()
    src_input, tgt_input = next(iter(data_loader))
    out = engine(move_to_device(src_input, args.device), move_to_device(tgt_input, args.device))
    if utils.is_main_process():
        path = os.path.join(args.output_dir, f"{args.save_batch_name}_{phase}.npz")
        dump_batch(path, out["hyp_embeddings"], out["stats"]["hyp_curvature"],
                   names=src_input["name_batch"], references=tgt_input["gt_sentence"])
        print(f"saved the hyperbolic embeddings of one {phase} batch to {path}")


def evaluate(args, engine, data_loader, task, phase):
    """Scores one split on all ranks with the task's predictions and metric; rank 0 writes the
    task's files ({phase}_tmp_pres/refs.txt, and CTM/STM for the CTC head)."""
    if args.save_one_batch and args.output_dir and "hyperbolic" in engine.module.regularizers:
        dump_first_batch(args, engine, data_loader, phase)
    dataset = data_loader.dataset
    rows = gather_in_order(task.predict(args, engine.module, data_loader), len(dataset))
    stats = task.score(rows, phase)
    if utils.is_main_process() and args.output_dir:
        task.write(args.output_dir, phase, rows, dataset)
    print(f"{phase}: " + "  ".join(f"{k} {v:.2f}" for k, v in stats.items()))
    return stats


def average_batchnorm_statistics(model):
    """Averages BatchNorm running statistics over the ranks (each rank only saw its own
    batches), so all ranks evaluate, and rank 0 saves, the same model."""
    world = utils.get_world_size()
    if world == 1:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                dist.all_reduce(buffer)
                buffer.div_(world)


def write_predictions(output_dir, phase, names, hyps, refs):
    """Uni-Sign's line format: `sample: NAME, prediction: TEXT` and `..., ground-truth: TEXT`."""
    with open(os.path.join(output_dir, f"{phase}_tmp_pres.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"sample: {n}, prediction: {h}\n" for n, h in zip(names, hyps))
    with open(os.path.join(output_dir, f"{phase}_tmp_refs.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"sample: {n}, ground-truth: {r}\n" for n, r in zip(names, refs))
