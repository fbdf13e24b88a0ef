"""Continuous sign language recognition with a CTC head on the pose encoder (VAC / SMKD style).

    python cslr.py --dataset PhoenixDemo --output_dir out/cslr          # or, the same:
    deepspeed fine_tuning.py --task CSLR --head ctc --dataset PHOENIX2014 --output_dir out/cslr

`CTCRecognizer` is the pose encoder of models.SignTranslator (same modules and state-dict keys,
so `--finetune` from a translation or Uni-Sign checkpoint loads it) followed by
ctc_head.CTCHead: temporal convolution K5-P2-K5-P2, a two-layer BiLSTM and a gloss classifier
trained with sequence CTC, convolution CTC and distillation. Labels are sclite STM files
(PHOENIX-2014), PHOENIX-2014-T corpus files or Uni-Sign label files with gloss lists. The gloss
vocabulary is built from the training split and saved in every checkpoint. Each evaluation
scores the sequence and convolution outputs (WER, sclite conventions) and writes CTM hypotheses
and the reference STM for the official sclite scoring.
"""
import csv
import os
import time
from collections import Counter

import torch
import torch.nn as nn

import checkpoint
import config
import engine as trainer
import fine_tuning
import utils
from ctc_decode import beam_decode, greedy_decode
from ctc_head import DEFAULT_LOSS_WEIGHTS, CTCHead, GlossVocab, ctc_min_length
from datasets import (PARTS, DataError, S2T_Dataset, load_labels, open_packed_store,
                      validate_samples)
from models import ENCODER_PREFIXES, SignTranslator, init_linear, key_list, read_checkpoint
from SLRT_metrics import STM_END_TIME, wer_list, write_ctm, write_stm

# VAC pads each clip with 6 copies of its first and last frames and rounds it up to a multiple of
# the pooling stride, so K5-P2-K5-P2 gives exactly ceil(frames / 4) outputs.
EDGE_PAD, POOL_STRIDE = 6, 4


def parse_loss_weights(text):
    """'SeqCTC=1,ConvCTC=1,Dist=25' -> {'SeqCTC': 1.0, 'ConvCTC': 1.0, 'Dist': 25.0}."""
    try:
        return {name: float(value) for name, value in
                (item.split("=") for item in text.replace(" ", "").split(",") if item)}
    except ValueError:
        raise ValueError(f"--loss_weights {text!r}: expected NAME=WEIGHT,... with names "
                         f"among {', '.join(DEFAULT_LOSS_WEIGHTS)}") from None


# ----------------------------------------------------------------------------- labels

def read_stm_entries(path):
    """Entries of an sclite STM file (`ID CHANNEL SIGNER START END GLOSS ...`), in file order."""
    entries, seen = [], set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields or fields[0].startswith(";;"):
                continue
            if len(fields) < 5:
                raise DataError(f"{path}:{number}: expected `ID 1 SIGNER 0.0 {STM_END_TIME} "
                                f"GLOSS ...`, found {line.strip()!r}")
            if fields[0] in seen:
                raise DataError(f"{path}:{number}: sample {fields[0]} appears twice")
            seen.add(fields[0])
            entries.append(gloss_entry(fields[0], fields[5:], fields[2]))
    return entries


def read_corpus_csv(path):
    """Entries of a PHOENIX corpus file: `name|...|speaker|orth|...` (2014-T) or
    `id|folder|signer|annotation` (2014)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="|", quoting=csv.QUOTE_NONE)
        rows, columns = list(reader), set(reader.fieldnames or ())
    name = next((c for c in ("name", "id") if c in columns), None)
    gloss = next((c for c in ("orth", "annotation") if c in columns), None)
    signer = next((c for c in ("speaker", "signer") if c in columns), None)
    if name is None or gloss is None:
        raise DataError(f"{path}: expected a '|'-separated header with name (or id) and orth "
                        f"(or annotation) columns, found {sorted(columns)}")
    return [gloss_entry(row[name], row[gloss].split(), row.get(signer) or "signer") for row in rows]


def gloss_entry(name, glosses, signer):
    return {"name": name, "gloss": list(glosses), "text": " ".join(glosses),
            "pose_file": name + ".pkl", "signer": signer}


def load_gloss_labels(path):
    """Entries with name, gloss (list), pose_file and signer from an STM, a PHOENIX corpus file
    or a Uni-Sign label file."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: label file not found")
    if path.endswith(".stm"):
        return read_stm_entries(path)
    if path.endswith(".csv"):
        return read_corpus_csv(path)
    return [{**entry, "signer": "signer"} for entry in load_labels(path)]


class GlossDataset(S2T_Dataset):
    """S2T_Dataset (task CSLR) over entries from load_gloss_labels; once `vocab` is set, batches
    carry padded gloss ids `tgt_input['gloss_ids']` (B, S) and `tgt_input['gloss_lengths']` (B,).
    With a tokenizer, batches are also ready for the generating (mT5) head."""

    def __init__(self, label_path, pose_dir, phase, dataset_name, max_length=256, seed=0,
                 tokenizer=None, max_tgt_len=50):
        self.entries = load_gloss_labels(label_path)
        self.store = open_packed_store(pose_dir)
        self.pose_dir, self.phase, self.dataset_name = pose_dir, phase, dataset_name
        self.lang = config.dataset_language(dataset_name)
        self.max_length, self.seed, self.epoch, self._durations = max_length, seed, 0, {}
        self.tokenizer, self.task, self.max_tgt_len = tokenizer, "CSLR", max_tgt_len
        self.vocab = None

    def collate_fn(self, batch):
        src_input, tgt_input = super().collate_fn(batch)
        if self.vocab is not None:
            ids = [self.vocab.encode(glosses)[0] for glosses in tgt_input["gt_gloss"]]
            lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
            padded = torch.zeros(len(ids), max(int(lengths.max()), 1), dtype=torch.long)
            for row, sample_ids in enumerate(ids):
                padded[row, :len(sample_ids)] = torch.tensor(sample_ids, dtype=torch.long)
            tgt_input.update(gloss_ids=padded, gloss_lengths=lengths)
        return src_input, tgt_input


# ----------------------------------------------------------------------------- model

def padded_lengths(lengths):
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    return (lengths + POOL_STRIDE - 1) // POOL_STRIDE * POOL_STRIDE + 2 * EDGE_PAD


def pad_clip_edges(src_input):
    """Part tensors with EDGE_PAD copies of each clip's first frame before it and its last frame
    after it (VAC's padding), and the new lengths."""
    lengths = src_input.get("src_length_batch")
    if lengths is None:
        lengths = src_input["attention_mask"].sum(1)
    lengths = lengths.detach().cpu().long()
    new_lengths = padded_lengths(lengths)
    steps = torch.arange(int(new_lengths.max()))
    rows = torch.minimum((steps[None, :] - EDGE_PAD).clamp(min=0), lengths[:, None] - 1)
    device = src_input["body"].device
    batch = torch.arange(len(lengths), device=device)[:, None]
    return {part: src_input[part][batch, rows.to(device)] for part in PARTS}, new_lengths


class CTCRecognizer(nn.Module):
    """Pose encoder of models.SignTranslator (same key names) + CTCHead on its (B, T, 4C) output."""

    # The translator's encoder methods only touch the part encoders and part_para.
    encode_pose = SignTranslator.encode_pose
    encode_parts = getattr(SignTranslator, "encode_parts", None)

    def __init__(self, args, num_classes):
        super().__init__()
        channels = list(getattr(args, "stgcn_channels", (64, 128, 256)))
        hidden_dim = getattr(args, "hidden_dim", channels[-1])
        if hidden_dim != channels[-1]:
            raise ValueError(f"hidden_dim ({hidden_dim}) must equal the last ST-GCN width "
                             f"({channels[-1]})")
        # the translator's builder only creates the part encoders, so it runs on this module
        SignTranslator.build_pose_encoder(self, channels, getattr(args, "temporal_layers", 3),
                                          getattr(args, "temporal_kernel", 5))
        self.part_para = nn.Parameter(torch.zeros(hidden_dim * len(PARTS)))
        # Both hands share one encoder. Normalised apart in training (Uni-Sign) its BatchNorm
        # keeps running statistics of the mixture, so evaluation sees other statistics than
        # training did; one joint batch keeps the two consistent.
        hands = getattr(args, "hands_batch", "auto")
        self.hands_batch = "joint" if hands == "auto" else hands
        self.apply(init_linear)  # the translator's initialisation, before the head is added
        weights = parse_loss_weights(getattr(args, "loss_weights", "")) or None
        self.head = CTCHead(hidden_dim * len(PARTS), num_classes,
                            hidden_size=getattr(args, "ctc_hidden", 1024),
                            share_classifier=getattr(args, "share_classifier", True),
                            weight_norm=getattr(args, "weight_norm", True), loss_weights=weights)

    def output_lengths(self, frames):
        """CTC frames the head gives for clips of `frames` frames."""
        return self.head.conv1d.output_lengths(padded_lengths(frames))

    def forward(self, src_input, tgt_input=None):
        """conv_logits / seq_logits (T', B, C) and feat_len (B,); with targets also 'loss' and
        'stats' (the weighted terms: seqctc_loss, convctc_loss, dist_loss)."""
        parts, lengths = pad_clip_edges(src_input)
        out = self.head(self.encode_pose(parts), lengths)
        if tgt_input is None or "gloss_ids" not in tgt_input:
            return out
        device = out["seq_logits"].device
        loss, loss_parts = self.head.loss(out, tgt_input["gloss_ids"].to(device),
                                          tgt_input["gloss_lengths"].to(device))
        return {**out, "loss": loss,
                "stats": {f"{name.lower()}_loss": value for name, value in loss_parts.items()}}


def load_pretrained(model, state, source, need_head=False):
    """Loads the pose encoder (required) and any head weights of matching shape from a CTC,
    translation or Uni-Sign state dict; mT5, projection and RGB keys are reported and skipped."""
    expected = model.state_dict()
    usable = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    absent = [k for k in expected if k not in usable]
    required = ENCODER_PREFIXES + (("head.",) if need_head else ())
    missing = [f"{k} {tuple(state[k].shape) if k in state else 'absent'}" for k in absent
               if k.startswith(required)]
    if missing:
        raise RuntimeError(f"checkpoint {source} does not fit the recognizer: "
                           f"[{key_list(missing)}] (expected shapes follow the flags)")
    model.load_state_dict(usable, strict=False)
    skipped = Counter(k.split(".")[0] for k in state if k not in usable)
    head_keys = [k for k in expected if k.startswith("head.")]
    return {"source": source, "loaded_keys": len(usable),
            "head_loaded": f"{sum(k in usable for k in head_keys)}/{len(head_keys)}",
            "skipped": dict(skipped)}


# ----------------------------------------------------------------------------- data set-up

def resolve_run_paths(args):
    """Label files and pose folders of the run, all checked before anything is built."""
    paths = config.resolve_paths(args.dataset, args.data_root, args.pose_root, args.mt5_path)
    config.validate_paths(paths, ("dev", "test") if args.eval else config.PHASES, need_mt5=False)
    if args.finetune and not os.path.isfile(args.finetune):
        raise config.ConfigError(f"--finetune checkpoint {args.finetune} does not exist")
    if args.eval and not args.finetune:
        raise config.ConfigError("--eval needs --finetune CHECKPOINT (a CTC recognizer)")
    return paths


def build_datasets(args, paths, phases):
    splits = {}
    for phase in phases:
        label_path = paths["labels"][phase]
        if label_path is None:
            continue
        splits[phase] = GlossDataset(label_path, paths["pose_dirs"][phase], phase, args.dataset,
                                     max_length=args.max_length, seed=args.seed)
        splits[phase].pose_fps = getattr(args, "pose_fps", None)
        if len(splits[phase]) == 0:
            raise DataError(f"{label_path}: the {phase} split is empty")
        print(f"{phase}: {len(splits[phase])} clips from {label_path}")
    if "dev" not in splits:
        print("no dev split for this dataset: the test split selects the best checkpoint")
        splits["dev"] = splits["test"]
    return splits


def choose_vocab(splits, pretrained):
    """The --finetune checkpoint's vocabulary when it has one, else the training split's."""
    if pretrained is not None and "gloss_vocab" in pretrained:
        vocab = GlossVocab.from_state_dict(pretrained["gloss_vocab"])
        print(f"gloss vocabulary from the checkpoint: {len(vocab) - 1} glosses + blank")
    elif "train" in splits:
        vocab = GlossVocab.build(entry["gloss"] for entry in splits["train"].entries)
        print(f"gloss vocabulary from the training split: {len(vocab) - 1} glosses + blank")
    else:
        raise DataError("the --finetune checkpoint has no gloss vocabulary (gloss_vocab)")
    if "train" in splits:
        unknown = unknown_glosses(vocab, (e["gloss"] for e in splits["train"].entries))
        if unknown:
            print(f"train: {sum(unknown.values())} glosses not in the vocabulary are left out "
                  f"of the targets: {format_counts(unknown)}")
    for dataset in splits.values():
        dataset.vocab = vocab
    return vocab


def unknown_glosses(vocab, gloss_sequences):
    """Counter of the glosses of `gloss_sequences` that the vocabulary lacks."""
    return Counter(g for seq in gloss_sequences for g in (seq.split() if isinstance(seq, str)
                                                          else seq) if g not in vocab.stoi)


def format_counts(counter, limit=10):
    text = ", ".join(f"{g} x{n}" for g, n in counter.most_common(limit))
    return text + (f" ... (+{len(counter) - limit} more)" if len(counter) > limit else "")


def check_training_clips(model, dataset, vocab, skip_bad):
    """Reads every training clip once; clips too short for their gloss sequence after pooling
    (and unreadable ones) stop the run, or are dropped with --skip_bad_samples, named either way."""
    _, problems = validate_samples(dataset, skip_bad)
    for problem in problems:
        print(f"skipped: {problem}")
    pooled = model.output_lengths(dataset.lengths()).tolist()
    needed = [ctc_min_length(vocab.encode(entry["gloss"])[0]) for entry in dataset.entries]
    short = [i for i, (have, need) in enumerate(zip(pooled, needed)) if have < need]
    named = [f"{dataset.entries[i]['name']} ({pooled[i]} CTC frames for {needed[i]} labels)"
             for i in short]
    if short and not skip_bad:
        raise DataError(f"{len(short)} training clips are shorter than their gloss sequence "
                        f"after pooling: {key_list(named, 10)} (--skip_bad_samples drops them)")
    if short:
        print(f"skipped {len(short)} clips too short for CTC: {key_list(named, 10)}")
        dataset.keep(sorted(set(range(len(dataset))) - set(short)))


# ----------------------------------------------------------------------------- evaluation

def decode_batch(logits, lengths, beam):
    return beam_decode(logits, lengths, beam_size=beam, batch_first=False) if beam > 1 \
        else greedy_decode(logits, lengths, batch_first=False)


@torch.no_grad()
def predict(args, model, data_loader, vocab):
    """(name, sequence hypothesis, conv hypothesis, reference, CTC frames) per clip of this rank."""
    model.eval()
    rows = []
    logger = utils.MetricLogger(header="Test:")
    for src_input, tgt_input in logger.log_every(data_loader, args.print_freq * 5):
        out = model(trainer.move_to_device(src_input, args.device))
        lengths = out["feat_len"].tolist()
        seq = decode_batch(out["seq_logits"], lengths, args.ctc_beam)
        conv = decode_batch(out["conv_logits"], lengths, args.ctc_beam)
        for row in zip(src_input["name_batch"], seq, conv, tgt_input["gt_gloss"], lengths):
            rows.append((row[0], " ".join(vocab.decode(row[1])), " ".join(vocab.decode(row[2])),
                         row[3], row[4]))
    return rows


def evaluate(args, model, data_loader, vocab, phase):
    """WER of the sequence and the conv outputs on one split (all ranks); rank 0 writes the
    hypothesis CTM files, the reference STM and Uni-Sign's prediction files."""
    dataset = data_loader.dataset
    rows = trainer.gather_in_order(predict(args, model, data_loader, vocab), len(dataset))
    names, hyps, conv_hyps, refs, frames = map(list, zip(*rows))
    stats = wer_list(refs, hyps)
    stats.update({f"conv_{k}": v for k, v in wer_list(refs, conv_hyps).items()})
    unknown = unknown_glosses(vocab, refs)
    stats["unknown_glosses"] = sum(unknown.values())
    if unknown:
        print(f"{phase}: {stats['unknown_glosses']} reference glosses are not in the vocabulary "
              f"and count as errors: {format_counts(unknown)}")
    too_short = [n for n, r, f in zip(names, refs, frames) if f < len(r.split())]
    if too_short:
        print(f"{phase}: {len(too_short)} clips have fewer CTC frames than reference glosses: "
              f"{key_list(too_short, 10)}")
    if utils.is_main_process() and args.output_dir:
        signers = {e["name"]: e.get("signer", "signer") for e in dataset.entries}
        write_scoring_files(args.output_dir, phase, names, hyps, conv_hyps, refs, signers)
    print(f"{phase}: " + "  ".join(f"{k} {v:.2f}" for k, v in stats.items()))
    return stats


def write_scoring_files(output_dir, phase, names, hyps, conv_hyps, refs, signers):
    """output-hypothesis-{phase}[-conv].ctm and groundtruth-{phase}.stm, sorted by id as sclite
    wants, plus {phase}_tmp_pres.txt / {phase}_tmp_refs.txt."""
    order = sorted(range(len(names)), key=lambda i: names[i])
    ids = [names[i] for i in order]
    write_ctm(os.path.join(output_dir, f"output-hypothesis-{phase}.ctm"), ids,
              [hyps[i] for i in order])
    write_ctm(os.path.join(output_dir, f"output-hypothesis-{phase}-conv.ctm"), ids,
              [conv_hyps[i] for i in order])
    write_stm(os.path.join(output_dir, f"groundtruth-{phase}.stm"), ids,
              [refs[i] for i in order], [signers.get(i, "signer") for i in ids])
    trainer.write_predictions(output_dir, phase, names, hyps, refs)


# ----------------------------------------------------------------------------- training

def init_engine(args, model, steps_per_epoch):
    """fine_tuning.init_engine, plus VAC's step schedule (--sched multistep --lr_steps 20,35)."""
    if args.sched != "multistep":
        return fine_tuning.init_engine(args, model, steps_per_epoch)
    import deepspeed
    if args.dtype == "bf16" and args.device.type == "cpu":
        model.to(torch.bfloat16)  # as fine_tuning.init_engine: CPU BatchNorm wants bf16 statistics
    optimizer = utils.create_optimizer(args, model)
    updates = max(1, steps_per_epoch // args.gradient_accumulation_steps)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[epoch * updates for epoch in args.lr_steps], gamma=0.2)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=utils.deepspeed_config(args),
                                           dist_init_required=False)
    return engine


def average_batchnorm_statistics(model):
    """Averages BatchNorm running statistics over the ranks (each rank only saw its own
    batches), so all ranks evaluate, and rank 0 saves, the same model."""
    world = utils.get_world_size()
    if world == 1:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                torch.distributed.all_reduce(buffer)
                buffer.div_(world)


def save_weights(engine, args, vocab, name, extra):
    if args.output_dir:
        checkpoint.save_weights(engine, os.path.join(args.output_dir, name), args,
                                {"gloss_vocab": vocab.state_dict(), **extra})


def end_of_epoch(args, engine, loaders, vocab, epoch, train_stats, best, wandb_run):
    """Evaluates dev and test, logs and checkpoints one epoch; returns the best dev WER."""
    record = {**{f"train_{k}": v for k, v in train_stats.items()}, "epoch": epoch}
    average_batchnorm_statistics(engine.module)
    last = epoch == args.epochs - 1
    if (epoch + 1) % args.eval_every == 0 or last:
        phases = ("dev",) if args.skip_test_eval and not last else ("dev", "test")
        for phase in phases:
            stats = evaluate(args, engine.module, loaders[phase], vocab, phase)
            record.update({f"{phase}_{k}": v for k, v in stats.items()})
        if fine_tuning.is_better("CSLR", record["dev_wer"], best):
            best = record["dev_wer"]
            save_weights(engine, args, vocab, "best_checkpoint.pth",
                         {"epoch": epoch, "dev_wer": best})
        print(f"best dev wer: {best:.2f}")
    record["best_dev_wer"] = best
    save_weights(engine, args, vocab, f"checkpoint_{epoch}.pth", {"epoch": epoch})
    if args.output_dir:
        checkpoint.prune_epoch_weights(args.output_dir, args.keep_last)
        checkpoint.save_training_state(engine, args.output_dir, f"epoch{epoch}",
                                       {"epoch": epoch, "best": best, "epoch_complete": True},
                                       keep_last=args.keep_last)
        if utils.is_main_process():
            utils.append_json_line(os.path.join(args.output_dir, "log.txt"), record)
    if wandb_run is not None:
        wandb_run.log({k.replace("_", "/", 1): v for k, v in record.items() if v is not None})
    return best


def evaluate_only(args, model, loaders, vocab):
    results = {phase: evaluate(args, model, loaders[phase], vocab, phase)
               for phase in ("dev", "test") if phase in loaders
               and not (phase == "dev" and loaders["dev"] is loaders.get("test"))}
    if utils.is_main_process() and args.output_dir:
        checkpoint.write_json(os.path.join(args.output_dir, "eval_metrics.json"), results)
    return results


def build_run(args):
    """Data, vocabulary and model of the run (pretrained weights loaded, clips checked)."""
    paths = resolve_run_paths(args)
    utils.set_seed(args.seed)
    pretrained = None
    if args.finetune:
        pretrained = torch.load(args.finetune, map_location="cpu", weights_only=True)
    splits = build_datasets(args, paths, ("dev", "test") if args.eval else config.PHASES)
    vocab = choose_vocab(splits, pretrained)
    model = CTCRecognizer(args, vocab.num_classes)
    if pretrained is not None:
        _, state = read_checkpoint(pretrained)
        report = load_pretrained(model, state, args.finetune, need_head=args.eval)
        print(f"loaded {args.finetune}: {report}")
    if "train" in splits:
        check_training_clips(model, splits["train"], vocab, args.skip_bad_samples)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    loaders = {phase: fine_tuning.make_loader(args, dataset, phase == "train")
               for phase, dataset in splits.items()
               if phase != "dev" or dataset is not splits.get("test")}
    loaders.setdefault("dev", loaders["test"])  # one loader when test stands in for dev
    return loaders, vocab, model


def main(args):
    """CTC training and evaluation; expects parsed flags and no process group yet."""
    utils.keep_freed_memory(args.keep_freed_memory)
    utils.init_distributed(args)
    loaders, vocab, model = build_run(args)
    steps = len(loaders["train"]) if "train" in loaders else 1
    if args.quick_break:
        steps = min(steps, args.quick_break)
    engine = init_engine(args, model, steps)
    if args.eval:
        return evaluate_only(args, engine.module, loaders, vocab)
    sampler = loaders["train"].batch_sampler
    start_epoch, best = fine_tuning.resume_if_possible(args, engine, sampler)
    wandb_run = fine_tuning.init_wandb(args)
    start = time.time()
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        loaders["train"].dataset.set_epoch(epoch)
        stats = fine_tuning.train_epoch_or_stop(args, engine, loaders, epoch, best, wandb_run,
                                                hyp_optimizer=None)
        best = end_of_epoch(args, engine, loaders, vocab, epoch, stats, best, wandb_run)
    print(f"training time {time.time() - start:.0f} s")
    if wandb_run is not None:
        wandb_run.finish()
    return best


def parse_args(argv=None):
    """The trainer's flags, defaulting to CTC recognition on PhoenixDemo."""
    return utils.parse_args("cslr.py", argv, dict(task="CSLR", head="ctc", dataset="PhoenixDemo"))


if __name__ == "__main__":
    fine_tuning.run_command_line(main, parse_args())
