"""Trains and evaluates every head under DeepSpeed: the translator (mT5 writes text or glosses)
and the CTC recognizer, with one set of path checks, one pre-scan, one epoch loop and one
evaluation; what differs per head is the task object (tasks.py).

    deepspeed --num_gpus N fine_tuning.py --dataset CSL_Daily --task SLT --output_dir out/x
    python fine_tuning.py ...                     # one process, CPU or GPU
    python fine_tuning.py --eval --finetune out/x/best_checkpoint.pth ...
    deepspeed fine_tuning.py --task CSLR --head ctc --dataset PHOENIX2014 --output_dir out/cslr
"""
import datetime
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import checkpoint  # noqa: E402
import config  # noqa: E402
import ds_config  # noqa: E402
import engine as trainer  # noqa: E402
import label_cache  # noqa: E402
import mixing  # noqa: E402
import preemption  # noqa: E402
import resume_flags  # noqa: E402
import riemannian  # noqa: E402
import run_folder  # noqa: E402
import tracking  # noqa: E402
import scan_cache  # noqa: E402
import utils  # noqa: E402
from datasets import build_dataset  # noqa: E402
from gloss_to_text import GlossTextTask, load_lm_weights  # noqa: E402
from keypoints import DataError  # noqa: E402
from pose_encoder import check_checkpoint_file, load_encoder_weights  # noqa: E402
from sample_checks import clip_identities, split_overlaps, validate_samples  # noqa: E402
from samplers import ResumableDistributedSampler  # noqa: E402
from store_parts import PartedStore  # noqa: E402


SHOWN_PROBLEMS = 20  # skipped samples printed per split (bad_samples.txt lists them all)


def resolve_run_paths(args, task):
    """Looks up and checks every path the run needs, before any model is built."""
    paths = mixing.resolve_paths(args)  # a mix: each dataset's own, under "datasets"
    phases = ("dev", "test") if args.eval else config.PHASES
    config.validate_paths(paths, phases, need_mt5=task.needs_mt5,
                          need_poses=getattr(task, "needs_poses", True))
    if task.needs_mt5:
        from models import check_mt5_folder
        check_mt5_folder(paths["mt5_path"])
    if args.init_encoder and args.finetune:
        raise config.ConfigError("--init_encoder and --finetune both set: --finetune already "
                                 "loads the whole model, encoder included")
    if args.finetune:
        check_checkpoint_file(args.finetune, "--finetune")
    for flag, path in (("--init_encoder", args.init_encoder), ("--init_lm", args.init_lm)):
        if path:
            check_checkpoint_file(path, flag)
    args.mt5_path = paths["mt5_path"]
    return paths


def check_training_batches(args, splits):
    """Stops when the training split fills no batch: the sampler drops the last partial batch
    (every rank must take as many steps), so the run would not train at all."""
    if "train" not in splits:
        return
    clips, world = len(splits["train"]), utils.get_world_size()
    if clips < args.batch_size * world:
        raise config.ConfigError(
            f"the training split has {clips} clips, fewer than one batch of --batch-size "
            f"{args.batch_size} x {world} ranks: lower --batch-size")


def build_datasets(args, spec, paths, phases):
    """The splits, every clip checked before any model is built (see prescan)."""
    splits = {}
    for phase in phases:
        dataset = build_dataset(args, spec, paths, phase, cache_dir=scan_cache.cache_dir(
            args.output_dir), write_cache=utils.is_main_process())
        if dataset is None:
            continue
        dataset.skipped = prescan(args, dataset, phase, paths["labels"][phase])
        splits[phase] = dataset
        print(f"{phase}: {len(dataset)} clips from {paths['labels'][phase]}")
    label_cache.forget()
    overlaps = split_overlaps({phase: clip_identities(ds) for phase, ds in splits.items()})
    if overlaps:
        counts = ", ".join(f"{pair} {n}" for pair, n in overlaps.items())
        print(f"warning: clips in two splits (same name or pose file): {counts}; "
              "scores on a split that shares clips with training are inflated")
    if "dev" in phases and "dev" not in splits:
        print("no dev split for this dataset: the test split selects the best checkpoint")
        splits["dev"] = splits["test"]
    return splits


def prescan(args, dataset, phase, label_path):
    """Reads and checks every clip of a split: each rank its share, in --num_workers processes,
    reusing the findings cached in --output_dir for unchanged clips (scan_cache.py). Bad samples
    stop the run with a message naming their files and problems, or with --skip_bad_samples are
    dropped and returned (their messages)."""
    rank, world = utils.get_rank(), utils.get_world_size()
    path = scan_cache.cache_path(args.output_dir, phase) if args.output_dir else None
    title = f"pre-scan {phase}" + (f" (rank {rank})" if world > 1 else "")
    frames, problems, read = scan_cache.scan_split(
        dataset, dataset.rank_share(rank, world), path, args.num_workers, title,
        utils.all_gather_objects, write=utils.is_main_process())
    if path:
        print(f"pre-scan {phase}: {read} of {len(dataset)} clips read, the others' findings "
              f"from {path}")
    findings = frames, problems
    try:
        _, problems = validate_samples(dataset, args.skip_bad_samples, findings=findings)
    except DataError as error:
        raise DataError(f"{phase} split ({label_path}): {error}") from None
    if len(dataset) == 0:
        skipped = f" once its {len(problems)} bad samples are skipped" if problems else ""
        raise DataError(f"{label_path}: the {phase} split is empty{skipped}")
    for problem in problems[:SHOWN_PROBLEMS]:
        print(f"skipped ({phase}): {problem}")
    if len(problems) > SHOWN_PROBLEMS:
        print(f"skipped ({phase}): ... and {len(problems) - SHOWN_PROBLEMS} more")
    return problems


def report_skipped_samples(args, splits):
    """--skip_bad_samples: lists the skipped samples in <output_dir>/bad_samples.txt (rank 0)
    and returns a one-line summary, or None when nothing was skipped."""
    seen, lines, counts = set(), [], []
    for phase, dataset in splits.items():
        if id(dataset) not in seen and dataset.skipped:
            seen.add(id(dataset))
            lines += [f"{phase}\t{problem}" for problem in dataset.skipped]
            counts.append(f"{phase} {len(dataset.skipped)}")
    if not lines:
        return None
    summary = f"skipped {len(lines)} bad samples ({', '.join(counts)})"
    if args.output_dir:
        path = os.path.join(args.output_dir, "bad_samples.txt")
        if utils.is_main_process():
            checkpoint.atomic_write_text(path, "\n".join(lines) + "\n")
        summary += f", listed in {path}"
    print(summary)
    return summary


def rank_share(args, dataset):
    """From a parted store, each rank trains on the clips of its parts (store_parts.py), every
    rank as many batches as the smallest share fills; otherwise on its share of the epoch's
    global order (no arguments)."""
    rank, world = utils.get_rank(), utils.get_world_size()
    if world == 1 or not isinstance(dataset.store, PartedStore):
        return {}
    share = dataset.rank_share(rank, world)
    smallest = min(utils.all_gather_objects(len(share)))
    if smallest < args.batch_size:
        raise config.ConfigError(
            f"{dataset.store.directory}: a rank's parts hold {smallest} training clips, fewer "
            f"than one batch of --batch-size {args.batch_size}: lower --batch-size")
    return {'share': share, 'num_batches': smallest // args.batch_size}


def make_loader(args, dataset, train):
    # Training workers are not persistent: each epoch's workers must see dataset.set_epoch().
    common = dict(collate_fn=dataset.collate_fn, num_workers=args.num_workers,
                  worker_init_fn=preemption.ignore_in_worker if args.num_workers else None,
                  pin_memory=args.pin_mem and torch.cuda.is_available(),
                  persistent_workers=args.num_workers > 0 and not train)
    if not train:
        sampler = trainer.ShardedEvalSampler(len(dataset), utils.get_rank(), utils.get_world_size())
        return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                           **common)
    batches = getattr(dataset, "make_sampler", ResumableDistributedSampler)(
        len(dataset), utils.get_world_size(), utils.get_rank(), shuffle=True, seed=args.seed,
        drop_last=True, batch_size=args.batch_size, bucket_by_length=args.bucket_by_length,
        lengths=dataset.lengths() if args.bucket_by_length else None, **rank_share(args, dataset))
    # A private generator: starting an iterator must not draw from the global torch RNG, whose
    # state a resumed run restores exactly.
    generator = torch.Generator().manual_seed(args.seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, generator=generator, **common)


def build_model(args, task):
    """The task's model, with --finetune (the whole model), --init_encoder (the pose encoder,
    from a checkpoint of any head) or --init_lm (mT5, e.g. from --task G2T) loaded."""
    from models import load_checkpoint_weights
    model = task.build_model(args)
    if args.finetune:
        report = load_checkpoint_weights(model, args.finetune)
        print(f"loaded {args.finetune}: {report}")
    for path, load, what in ((args.init_encoder, load_encoder_weights, "pose encoder"),
                             (args.init_lm, load_lm_weights, "language model")):
        if path:
            print(f"{what} from {path}: {load(model, path)}")
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    if len(model.regularizers):
        print(f"regularisers: {', '.join(model.regularizers)}")
    return model


def init_engine(args, model, steps_per_epoch, config):
    """The DeepSpeed engine of `config` (ds_config.build) over every registered parameter (the
    hyperbolic geometry, which it never sees, has its own optimizer: riemannian.build)."""
    import deepspeed
    if args.dtype == "bf16" and args.device.type == "cpu":
        # DeepSpeed casts parameters only; CPU BatchNorm kernels also need the running
        # statistics in bf16 (CUDA's accept fp32 ones, so GPUs keep them in fp32).
        model.to(torch.bfloat16)
    optimizer = utils.create_optimizer(args, model)
    scheduler = utils.create_scheduler(args, optimizer, steps_per_epoch)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=config, dist_init_required=False)
    if args.zero_stage == 0 and utils.get_world_size() == 1:
        # With nothing to reduce, DeepSpeed's reduction would still flatten every gradient
        # into one buffer, divide it by one and copy it back (seconds per step on a CPU).
        engine.enable_backward_allreduce = False
    return engine


def is_better(best_metric, value, best):
    """Whether `value` beats `best` for a task's (metric name, higher is better)."""
    _, higher = best_metric
    return best is None or (value > best if higher else value < best)


def client_state(args, hyp_optimizer, **fields):
    """What a training state holds besides DeepSpeed's own: `fields`, the flags and the
    RiemannianAdam state."""
    fields["args"] = checkpoint.plain_args(args)
    if hyp_optimizer is not None:
        fields["riemannian"] = hyp_optimizer.state_dict()
    return fields


def resume_if_possible(args, engine, sampler, hyp_optimizer=None):
    """Continues from the latest training state in --output_dir (--resume auto): the next epoch
    after a finished one, or the next unseen batch of an interrupted one. Returns (first epoch,
    best dev metric so far, whether a state was resumed)."""
    if args.resume == "none" or args.overwrite or not args.output_dir:
        return 0, None, False
    tag = getattr(args, "resume_tag", None) or checkpoint.latest_training_state(args.output_dir)
    if tag is None:
        return 0, None, False
    state = checkpoint.load_training_state(engine, args.output_dir, tag)
    if hyp_optimizer is not None and "riemannian" in state:
        hyp_optimizer.load_state_dict(state["riemannian"])
    changes = resume_flags.changed_flags(state.get("args", {}), args)
    total = min(len(sampler), args.quick_break) if args.quick_break else len(sampler)
    resume_flags.rebuild_schedule(engine, args, changes,
                                  utils.optimizer_steps_per_epoch(args, total))
    print(f"resumed from {args.output_dir}/training_state/{tag}")
    if state["epoch_complete"]:
        return state["epoch"] + 1, state.get("best"), True
    sampler.load_state_dict(state["sampler"])
    return state["epoch"], state.get("best"), True


def step_saver(args, engine, sampler, epoch, best, hyp_optimizer=None):
    """Saves a mid-epoch training state every --save_every_steps micro-batches, at optimizer
    step boundaries only (gradients accumulated since the last step are not saved)."""
    def on_step(batches_done):
        at_boundary = batches_done % args.gradient_accumulation_steps == 0  # windows start at 0
        if args.output_dir and batches_done % args.save_every_steps == 0 and at_boundary:
            checkpoint.save_training_state(
                engine, args.output_dir, f"epoch{epoch}-step{batches_done}",
                client_state(args, hyp_optimizer, epoch=epoch, best=best, epoch_complete=False,
                             sampler=sampler.state_dict()), keep_last=args.keep_last)
    return on_step if args.save_every_steps else None


def run_evaluation_only(args, engine, loaders, task):
    results = {}
    for phase in ("dev", "test"):
        if phase in loaders and not (phase == "dev" and loaders["dev"] is loaders.get("test")):
            results[phase] = trainer.evaluate(args, engine, loaders[phase], task, phase)
    if utils.is_main_process() and args.output_dir:
        checkpoint.write_json(os.path.join(args.output_dir, "eval_metrics.json"), results)
    tracker = tracking.open_tracker(args, job="eval")
    tracker.log({f"{phase}/{name}": value for phase, stats in results.items()
                 for name, value in stats.items()}, engine.global_steps)
    tracker.finish()
    return results


def save_weights(args, engine, task, name, extra):
    """A weight file in --output_dir with the flags, the task's own fields (the CTC head's gloss
    vocabulary) and `extra`."""
    if args.output_dir:
        checkpoint.save_weights(engine, os.path.join(args.output_dir, name), args,
                                {**task.checkpoint_extras(), **extra})


def end_of_epoch(args, engine, hyp_optimizer, loaders, task, epoch, train_stats, best,
                 tracker):
    """Evaluates, logs and checkpoints one epoch; returns the updated best dev metric."""
    metric, _ = task.best_metric
    record = {**{f"train_{k}": v for k, v in train_stats.items()}, "epoch": epoch}
    trainer.average_batchnorm_statistics(engine.module)
    last = epoch == args.epochs - 1
    if (epoch + 1) % args.eval_every == 0 or last:
        phases = ("dev",) if args.skip_test_eval and not last else ("dev", "test")
        for phase in phases:
            stats = trainer.evaluate(args, engine, loaders[phase], task, phase)
            record.update({f"{phase}_{k}": v for k, v in stats.items()})
        if is_better(task.best_metric, record[f"dev_{metric}"], best):
            best = record[f"dev_{metric}"]
            save_weights(args, engine, task, "best_checkpoint.pth",
                         {"epoch": epoch, f"dev_{metric}": best})
        print(f"best dev {metric}: {best:.2f}")
    record[f"best_dev_{metric}"] = best
    save_weights(args, engine, task, f"checkpoint_{epoch}.pth", {"epoch": epoch})
    if args.output_dir:
        checkpoint.prune_epoch_weights(args.output_dir, args.keep_last)
        checkpoint.save_training_state(
            engine, args.output_dir, f"epoch{epoch}",
            client_state(args, hyp_optimizer, epoch=epoch, best=best, epoch_complete=True),
            keep_last=args.keep_last)
        if utils.is_main_process():
            utils.append_json_line(os.path.join(args.output_dir, "log.txt"), record)
    tracker.log(tracked_names(record), engine.global_steps)
    return best


def tracked_names(record):
    """An epoch's record under the trackers' names: `dev/bleu4`, `test/wer`, and the epoch's
    training averages as `train_epoch/loss` (apart from the per-step `train/loss`)."""
    names = {}
    for key, value in record.items():
        phase, _, name = key.partition("_")
        names[f"train_epoch/{name}" if phase == "train" else
              f"{phase}/{name}" if phase in ("dev", "test") else key] = value
    return names


def train_epoch_or_stop(args, engine, loaders, epoch, best, tracker, hyp_optimizer, stop):
    """One training epoch; after --max_nonfinite non-finite losses in a row, or on a
    preemption signal, saves a training state at the batch reached (resumable with the same
    --output_dir) and re-raises."""
    sampler = loaders["train"].batch_sampler
    try:
        stats = trainer.train_one_epoch(
            args, engine, loaders["train"], epoch, tracker,
            step_saver(args, engine, sampler, epoch, best, hyp_optimizer), hyp_optimizer, stop)
        if stop is not None and stop.agreed(args.device):  # before the evaluation, which is long
            raise preemption.Preempted(stop.name(), sampler.batches_done)
        return stats
    except (trainer.NonFiniteLossError, preemption.Preempted) as error:
        why = "non-finite loss" if isinstance(error, trainer.NonFiniteLossError) else str(error)
        save_stopped_state(args, engine, hyp_optimizer, sampler, epoch, best,
                           error.batches_done, why)
        raise


def save_stopped_state(args, engine, hyp_optimizer, sampler, epoch, best, batches_done, why):
    """A mid-epoch training state at `batches_done` of a run that stops early."""
    if not args.output_dir:
        return
    tag = checkpoint.save_training_state(
        engine, args.output_dir, f"epoch{epoch}-step{batches_done}",
        client_state(args, hyp_optimizer, epoch=epoch, best=best, epoch_complete=False,
                     sampler=sampler.state_dict(), stopped=why), keep_last=args.keep_last)
    print(f"{why}: saved the training state {args.output_dir}/training_state/{tag}; a run "
          "with the same --output_dir continues from it")


def train(args, engine, loaders, task, hyp_optimizer, stop=None):
    """The epochs from the resumed position on; returns (best dev metric, skipped steps).
    `stop`: a preemption.StopRequest that ends the run at a resumable point."""
    sampler = loaders["train"].batch_sampler
    start_epoch, best, resumed = resume_if_possible(args, engine, sampler, hyp_optimizer)
    tracker = tracking.open_tracker(args, resumed)
    nonfinite = 0
    try:
        for epoch in range(start_epoch, args.epochs):
            sampler.set_epoch(epoch)
            loaders["train"].dataset.set_epoch(epoch)
            train_stats = train_epoch_or_stop(args, engine, loaders, epoch, best, tracker,
                                              hyp_optimizer, stop)
            nonfinite += train_stats.get("nonfinite_steps", 0)
            best = end_of_epoch(args, engine, hyp_optimizer, loaders, task, epoch, train_stats,
                                best, tracker)
    finally:
        tracker.finish()
    return best, nonfinite


def build_run(args):
    """Everything a run needs, in the order that stops early: the task and every path, the
    splits (every clip checked) with the task's targets, then the model and the engine.
    Returns (task, loaders, engine, Riemannian optimizer or None, skipped-samples summary)."""
    spec = mixing.first_spec(args)
    args.language = spec.language  # stored with the checkpoints: the prompt's language
    task = GlossTextTask(args, spec) if args.task == "G2T" else mixing.build_task(args, spec)
    paths = resolve_run_paths(args, task)
    run_folder.check_sharing(args)
    resume_flags.check_resume_changes(args)
    deepspeed_config = ds_config.build(args)
    ds_config.write_run_files(args, deepspeed_config)
    utils.set_seed(args.seed)
    splits = mixing.build_splits(args, spec, paths, task, build_datasets)
    check_training_batches(args, splits)
    task.prepare(args, splits)
    model = build_model(args, task)
    task.check_splits(args, model, splits)
    skipped = report_skipped_samples(args, splits)
    loaders = {phase: make_loader(args, ds, train=phase == "train") for phase, ds in splits.items()
               if phase != "dev" or ds is not splits.get("test")}
    loaders.setdefault("dev", loaders["test"])  # one loader when test stands in for dev
    steps = len(loaders["train"]) if "train" in loaders else 1
    if args.quick_break:
        steps = min(steps, args.quick_break)
    if "train" in loaders:
        print(f"optimizer steps per epoch: {utils.optimizer_steps_per_epoch(args, steps)} "
              f"({steps} micro-batches, accumulation {args.gradient_accumulation_steps})")
    engine = init_engine(args, model, steps, deepspeed_config)
    return task, loaders, engine, riemannian.build(args, engine.module), skipped


def main(args):
    utils.keep_freed_memory(args.keep_freed_memory)
    utils.init_distributed(args)
    task, loaders, engine, hyp_optimizer, skipped = build_run(args)
    if args.eval:
        results = run_evaluation_only(args, engine, loaders, task)
        if skipped:
            print(skipped)
        return results
    start = time.time()
    with preemption.StopRequest() as stop:
        best, nonfinite = train(args, engine, loaders, task, hyp_optimizer, stop)
    print(f"training time {datetime.timedelta(seconds=int(time.time() - start))}")
    if nonfinite:
        print(f"skipped {nonfinite} updates with a non-finite loss (see log_steps.txt)")
    if skipped:
        print(skipped)
    return best


def run_command_line(main_function, args):
    """Runs `main_function(args)` holding the output folder (run_folder.py); bad input, a
    failed save and a stop on non-finite losses end the process with the message and exit
    status 1 instead of a traceback; a preemption signal with status 75 (preemption.py)."""
    try:
        lock = run_folder.prepare_output_dir(args)
        try:
            result = main_function(args)
        finally:
            if lock is not None:
                lock.release()
    except (config.ConfigError, DataError, trainer.NonFiniteLossError,
            checkpoint.SaveError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        if error.errno not in checkpoint.DISK_FULL:
            raise
        sys.exit(f"error: {checkpoint.disk_full_error(args.output_dir, error)}")
    except preemption.Preempted as stopped:
        print(f"{stopped}: exiting with status {preemption.PREEMPTED_STATUS} (resumable)")
        sys.exit(preemption.PREEMPTED_STATUS)
    utils.close_distributed()
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_command_line(main, utils.parse_args("fine_tuning.py"))
