"""What differs per head, as one small object per task; the run around it is fine_tuning.py's.

- `TextTask` (SLT, ISLR, and CSLR with --head generate): mT5 writes text or the gloss string.
  Batches carry the prompt and target ids (datasets.TextTargets); predictions come from beam
  search (engine.predict); SLT is scored by BLEU/ROUGE, ISLR by top-1, CSLR by WER, at the
  dataset's scoring level; Uni-Sign's prediction files are written.
- `GlossTask` (CSLR with --head ctc): models.CTCRecognizer. The gloss vocabulary comes from the
  --finetune checkpoint or the training split and is saved in every checkpoint; batches carry
  gloss ids (datasets.GlossTargets); predictions are greedy or prefix-beam CTC decodes of the
  sequence and convolution outputs, both scored by WER; CTM hypotheses and the reference STM
  are written for sclite beside Uni-Sign's prediction files.
"""
import os
from collections import Counter

import torch

import config
import engine as trainer
import scan_cache
import utils
from ctc_decode import beam_decode, greedy_decode
from ctc_head import GlossVocab, ctc_min_length
from datasets import GlossTargets, TextTargets
from keypoints import DataError
from labels import LINE_BREAKS
from pose_encoder import key_list, load_checkpoint_file
from SLRT_metrics import normalize_for_scoring, official_wer, wer_list, write_ctm, write_stm


# What check_unknown_rate names, by the split whose texts it measured.
UNK_CHECKED_TEXTS = {"train": "training targets", "dev": "dev references",
                     "test": "test references"}


def build_task(args, spec):
    """The task object of the run's --task and --head on a registered dataset."""
    return GlossTask(args, spec) if args.head == "ctc" else TextTask(args, spec)


class TextTask:
    """mT5 writes the targets: sentences (SLT, ISLR) or gloss strings (CSLR)."""
    needs_mt5 = True

    def __init__(self, args, spec):
        self.task, self.spec = args.task, spec
        self.best_metric = trainer.BEST_METRIC[args.task]
        self.level = spec.scoring_level(args.task)
        self.tokenizer = None

    def prepare(self, args, splits):
        """Loads the tokenizer and gives every split the mT5 targets."""
        from models import load_tokenizer
        self.tokenizer = load_tokenizer(args.mt5_path, args)
        check_vocabulary(args.mt5_path, self.tokenizer)
        # --eval loads no training split: its references show the tokenizer's coverage instead.
        checked = next((phase for phase in ("train", "dev", "test") if phase in splits), None)
        if checked is not None:
            check_unknown_rate(args.mt5_path, self.tokenizer, splits[checked].target_texts(),
                               args.max_unk_rate, UNK_CHECKED_TEXTS[checked],
                               scan_cache.cache_dir(args.output_dir), utils.is_main_process())
        targets = TextTargets(self.tokenizer, self.spec.prompt, args.max_tgt_len)
        for dataset in splits.values():
            dataset.targets = targets

    def build_model(self, args):
        from models import SignTranslator
        return SignTranslator(args, tokenizer=self.tokenizer)

    def check_splits(self, args, model, splits):
        pass

    def predict(self, args, model, data_loader):
        return trainer.predict(args, model, data_loader, self.tokenizer)

    def score(self, rows, phase):
        _, hyps, refs = self.normalized(rows)
        stats = trainer.score(self.task, refs, hyps)
        if self.task == "CSLR":
            stats.update(official_scores(self.spec, refs, hyps))
        return stats

    def write(self, output_dir, phase, rows, dataset):
        trainer.write_predictions(output_dir, phase, *self.normalized(rows))

    def normalized(self, rows):
        """(names, hypotheses, references) as they are scored and written: a line break the
        model writes reads as a space, as in the references (labels.checked_entry), so the
        prediction files hold one line per clip and re-score to the same figures."""
        names, hyps, refs = map(list, zip(*rows))
        hyps = [hyp.translate(LINE_BREAKS) for hyp in hyps]
        refs, hyps = normalize_for_scoring(refs, hyps, self.level)
        return names, hyps, refs

    def checkpoint_extras(self):
        return {}


def check_vocabulary(mt5_path, tokenizer, model_vocab=None):
    """Stops when the tokenizer has ids the mT5 embeddings lack (a tokenizer and a model that do
    not belong together); a larger model vocabulary, as google/mt5-base has, is fine. The model's
    vocabulary size is `model_vocab`, or read from mt5_path's config.json."""
    if model_vocab is None:
        from transformers import AutoConfig
        model_vocab = AutoConfig.from_pretrained(mt5_path).vocab_size
    if len(tokenizer) > model_vocab:
        raise config.ConfigError(
            f"the tokenizer in {mt5_path} has {len(tokenizer)} tokens but the mT5 model "
            f"{os.path.join(mt5_path, 'config.json')} has vocab_size {model_vocab}: token ids from "
            f"{model_vocab} on would index past its embeddings")


def unknown_rate(tokenizer, texts, chunk=20000):
    """The share of the texts' tokens (</s> left out) that the tokenizer maps to <unk>."""
    texts, unknown, total = list(texts), 0, 0
    unk = tokenizer.unk_token_id
    for begin in range(0, len(texts), chunk):  # a million texts' ids at once would take GBs
        ids = tokenizer(texts[begin:begin + chunk], add_special_tokens=False,
                        return_attention_mask=False)["input_ids"]
        unknown += sum(row.count(unk) for row in ids)
        total += sum(map(len, ids))
    return unknown / total if total else 0.0


def check_unknown_rate(mt5_path, tokenizer, texts, max_rate, what, cache_dir=None, write=True):
    """Stops when more than `max_rate` of the texts' tokens are unknown to the tokenizer: a
    tokenizer for other languages or scripts, or a broken folder, would train on <unk>. With
    cache_dir the rate is kept there (written with `write`) for the same texts and tokenizer
    files (a resume)."""
    rate = scan_cache.cached_value(cache_dir, f'unknown_rate {what}', [mt5_path, texts],
                                   lambda: unknown_rate(tokenizer, texts), write)
    if rate > max_rate:
        raise config.ConfigError(
            f"the tokenizer in {mt5_path} maps {rate:.1%} of the {what}' tokens to <unk> "
            f"(--max_unk_rate {max_rate:g}): it does not cover this language or script; use "
            "the matching mT5 folder, or raise --max_unk_rate if this is intended")
    return rate


class GlossTask:
    """The CTC head recognises gloss sequences; scored by WER of both its outputs."""
    needs_mt5 = False

    def __init__(self, args, spec):
        if args.eval and not args.finetune:
            raise config.ConfigError("--eval with --head ctc needs --finetune CHECKPOINT (its "
                                     "gloss vocabulary and head come from there)")
        self.spec, self.beam = spec, args.ctc_beam
        self.best_metric = trainer.BEST_METRIC["CSLR"]
        self.vocab = None

    def prepare(self, args, splits):
        """The gloss vocabulary (the --finetune checkpoint's, else the training split's) and
        the CTC targets of every split."""
        saved = load_checkpoint_file(args.finetune) if args.finetune else {}
        if isinstance(saved, dict) and "gloss_vocab" in saved:
            self.vocab = GlossVocab.from_state_dict(saved["gloss_vocab"])
            print(f"gloss vocabulary from the checkpoint: {len(self.vocab) - 1} glosses + blank")
        elif "train" in splits:
            self.vocab = GlossVocab.build(entry["gloss"] for entry in splits["train"].entries)
            print(f"gloss vocabulary from the training split: {len(self.vocab) - 1} glosses + blank")
        else:
            raise DataError(f"{args.finetune}: the checkpoint has no gloss vocabulary (gloss_vocab)")
        if "train" in splits:
            unknown = unknown_glosses(self.vocab, (e["gloss"] for e in splits["train"].entries))
            if unknown:
                print(f"train: {sum(unknown.values())} glosses not in the vocabulary are left out "
                      f"of the targets: {format_counts(unknown)}")
        targets = GlossTargets(self.vocab)
        for dataset in splits.values():
            dataset.targets = targets

    def build_model(self, args):
        from models import CTCRecognizer
        return CTCRecognizer(args, self.vocab.num_classes)

    def check_splits(self, args, model, splits):
        """Training clips too short for their gloss sequence after pooling stop the run, or are
        dropped with --skip_bad_samples, named either way."""
        if "train" not in splits:
            return
        dataset = splits["train"]
        pooled = model.output_lengths(dataset.lengths()).tolist()
        needed = [ctc_min_length(self.vocab.encode(entry["gloss"])[0]) for entry in dataset.entries]
        short = [i for i, (have, need) in enumerate(zip(pooled, needed)) if have < need]
        named = [f"{dataset.entries[i]['name']} ({pooled[i]} CTC frames for {needed[i]} labels)"
                 for i in short]
        if short and not args.skip_bad_samples:
            raise DataError(f"{len(short)} training clips are shorter than their gloss sequence "
                            f"after pooling: {key_list(named, 10)} (--skip_bad_samples drops them)")
        if short:
            print(f"skipped {len(short)} clips too short for CTC: {key_list(named, 10)}")
            dataset.skipped = list(getattr(dataset, "skipped", [])) + named
            dataset.keep(sorted(set(range(len(dataset))) - set(short)))

    @torch.no_grad()
    def predict(self, args, model, data_loader):
        """(name, sequence hypothesis, conv hypothesis, reference, CTC frames) per clip."""
        model.eval()
        rows = []
        logger = utils.MetricLogger(header="Test:")
        for src_input, tgt_input in logger.log_every(data_loader, args.print_freq * 5):
            out = model(trainer.move_to_device(src_input, args.device))
            lengths = out["feat_len"].tolist()
            seq = decode_batch(out["seq_logits"], lengths, self.beam)
            conv = decode_batch(out["conv_logits"], lengths, self.beam)
            for name, s, c, ref, frames in zip(src_input["name_batch"], seq, conv,
                                               tgt_input["gt_gloss"], lengths):
                rows.append((name, " ".join(self.vocab.decode(s)), " ".join(self.vocab.decode(c)),
                             ref, frames))
        return rows

    def score(self, rows, phase):
        names, hyps, conv_hyps, refs, frames = map(list, zip(*rows))
        stats = wer_list(refs, hyps)
        stats.update(official_scores(self.spec, refs, hyps))
        stats.update({f"conv_{k}": v for k, v in wer_list(refs, conv_hyps).items()})
        stats.update(official_scores(self.spec, refs, conv_hyps, prefix="conv_"))
        unknown = unknown_glosses(self.vocab, refs)
        stats["unknown_glosses"] = sum(unknown.values())
        if unknown:
            print(f"{phase}: {stats['unknown_glosses']} reference glosses are not in the "
                  f"vocabulary and count as errors: {format_counts(unknown)}")
        too_short = [n for n, r, f in zip(names, refs, frames) if f < len(r.split())]
        if too_short:
            print(f"{phase}: {len(too_short)} clips have fewer CTC frames than reference glosses: "
                  f"{key_list(too_short, 10)}")
        return stats

    def write(self, output_dir, phase, rows, dataset):
        """output-hypothesis-{phase}[-conv].ctm and groundtruth-{phase}.stm, sorted by id as
        sclite wants, plus {phase}_tmp_pres.txt / {phase}_tmp_refs.txt."""
        names, hyps, conv_hyps, refs, _ = map(list, zip(*rows))
        signers = {e["name"]: e.get("signer", "signer") for e in dataset.entries}
        order = sorted(range(len(names)), key=lambda i: names[i])
        ids = [names[i] for i in order]
        write_ctm(os.path.join(output_dir, f"output-hypothesis-{phase}.ctm"), ids,
                  [hyps[i] for i in order])
        write_ctm(os.path.join(output_dir, f"output-hypothesis-{phase}-conv.ctm"), ids,
                  [conv_hyps[i] for i in order])
        write_stm(os.path.join(output_dir, f"groundtruth-{phase}.stm"), ids,
                  [refs[i] for i in order], [signers.get(i, "signer") for i in ids])
        trainer.write_predictions(output_dir, phase, names, hyps, refs)

    def checkpoint_extras(self):
        return {"gloss_vocab": self.vocab.state_dict()}


def official_scores(spec, refs, hyps, prefix=""):
    """The WER after the dataset's official gloss rewriting ({prefix}official_wer, ...), as
    published PHOENIX figures are computed; nothing for datasets without one."""
    if spec.official_wer is None:
        return {}
    scores = official_wer(refs, hyps, variant=spec.official_wer)
    return {f"{prefix}official_{name}": value for name, value in scores.items()}


def decode_batch(logits, lengths, beam):
    return beam_decode(logits, lengths, beam_size=beam, batch_first=False) if beam > 1 \
        else greedy_decode(logits, lengths, batch_first=False)


def unknown_glosses(vocab, gloss_sequences):
    """Counter of the glosses of `gloss_sequences` that the vocabulary lacks."""
    return Counter(g for seq in gloss_sequences for g in (seq.split() if isinstance(seq, str)
                                                          else seq) if g not in vocab.stoi)


def format_counts(counter, limit=10):
    text = ", ".join(f"{g} x{n}" for g, n in counter.most_common(limit))
    return text + (f" ... (+{len(counter) - limit} more)" if len(counter) > limit else "")
