"""Gloss-to-text translation (`--task G2T`): MMTLB's second stage, the language model alone.

mT5 reads the dataset's prompt followed by a clip's gloss sequence (tokenised as text) and
writes its sentence; no pose is read, so the run needs label files that carry both (CSL-Daily,
PHOENIX-2014-T and the Demo sets). It is scored by BLEU/ROUGE as SLT is. The model's weights
are mT5's under `mt5_model.`, the keys of the translator's language model, so a translation
run starts its mT5 from a G2T checkpoint with `--init_lm CKPT` (load_lm_weights).

- `GlossTranslator`: the model (training loss, beam search and the encoder states the pooled
  beam search reads, as models.SignTranslator has them).
- `GlossTextDataset`: a split's (name, gloss string, sentence) entries; entries without glosses
  are bad samples (reported, or left out with --skip_bad_samples).
- `GlossTextTask`: tasks.TextTask's scoring and prediction files for this model and data.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import config
import engine as trainer
import label_cache
import mt5_layout
import scan_cache
import utils
from datasets import TextTargets
from keypoints import DataError
from pose_encoder import flag_differences, key_list, read_checkpoint
from sample_checks import describe_problems, split_overlaps
from tasks import UNK_CHECKED_TEXTS, TextTask, check_unknown_rate, check_vocabulary

IGNORE_INDEX = -100
LM_PREFIX = "mt5_model."


class GlossTranslator(nn.Module):
    """Prompt + gloss tokens -> mT5 -> text."""

    def __init__(self, args, tokenizer=None):
        from models import load_mt5, load_tokenizer, prompt_of
        super().__init__()
        self.args = args
        self.label_smoothing = args.label_smoothing
        self.compute_fp32_loss = args.compute_fp32_loss
        self.lang, self.prompt = prompt_of(args)
        self.mt5_model = load_mt5(args.mt5_path)
        self.mt5_tokenizer = tokenizer or load_tokenizer(args.mt5_path)
        if getattr(args, "gradient_checkpointing", False):
            self.mt5_model.gradient_checkpointing_enable({"use_reentrant": False})
        self.regularizers = nn.ModuleDict()  # the trainer reports regularisers: none here

    def embed_inputs(self, src_input):
        """mT5 encoder inputs: prompt + gloss embeddings (B, P+G, D) and their mask (B, P+G)."""
        device = self.mt5_model.device
        ids = torch.cat([src_input["prefix_ids"], src_input["gloss_ids"]], dim=1).to(device)
        mask = torch.cat([src_input["prefix_mask"], src_input["gloss_mask"]], dim=1).to(device)
        return self.mt5_model.get_input_embeddings()(ids), mask

    def forward(self, src_input, tgt_input):
        inputs_embeds, attention_mask = self.embed_inputs(src_input)
        labels = tgt_input["labels"].to(inputs_embeds.device)
        decoder_input_ids = self.mt5_model.prepare_decoder_input_ids_from_labels(labels=labels)
        encoder_states = self.mt5_model.encoder(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            return_dict=True).last_hidden_state
        decoder_states = self.mt5_model.decoder(
            input_ids=decoder_input_ids, encoder_hidden_states=encoder_states,
            encoder_attention_mask=attention_mask, use_cache=False,
            return_dict=True).last_hidden_state
        real = labels != IGNORE_INDEX  # the vocabulary projection of real target tokens only
        logits = self.mt5_model.lm_head(decoder_states[real])
        if self.compute_fp32_loss:
            logits = logits.float()
        loss = F.cross_entropy(logits, labels[real], label_smoothing=self.label_smoothing)
        return {"loss": loss, "ce_loss": loss.detach()}

    @torch.no_grad()
    def generate(self, src_input, max_new_tokens=100, num_beams=4, **generate_kwargs):
        """Token ids by the Hugging Face `generate` (extra keyword arguments go there)."""
        inputs_embeds, attention_mask = self.embed_inputs(src_input)
        return self.mt5_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                       max_new_tokens=max_new_tokens, num_beams=num_beams,
                                       **generate_kwargs)

    @torch.no_grad()
    def encode(self, src_input):
        """mT5 encoder states and their mask, as generate() computes them."""
        inputs_embeds, attention_mask = self.embed_inputs(src_input)
        states = self.mt5_model.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                        return_dict=True).last_hidden_state
        return states, attention_mask


class GlossTextTargets(TextTargets):
    """TextTargets (prompt and target ids) plus the gloss sequence's ids and mask."""

    def __call__(self, src_input, tgt_input):
        super().__call__(src_input, tgt_input)
        glosses = self.tokenizer(tgt_input["gt_gloss"], padding="longest", return_tensors="pt")
        src_input["gloss_ids"] = glosses["input_ids"].long()
        src_input["gloss_mask"] = glosses["attention_mask"].long()


class GlossTextDataset(torch.utils.data.Dataset):
    """A split's label entries as (name, gloss string, sentence); no pose is read."""
    store = None  # no pose store: every rank trains on its share of the global order

    def __init__(self, label_path, phase, spec, cache_dir=None, write_cache=True):
        self.label_path, self.phase = label_path, phase
        self.entries, self.label_problems = label_cache.split_entries(
            label_path, spec.label_format, phase, spec.held_out, cache_dir, write=write_cache)
        self.targets = None
        self.skipped = []

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        entry = self.entries[index]
        return entry["name"], " ".join(entry["gloss"]), entry["text"]

    def set_epoch(self, epoch):
        pass  # no random frame sampling: nothing depends on the epoch

    def target_texts(self):
        return self.entries.column("text")

    def gloss_texts(self):
        return self.entries.column("gloss")

    def lengths(self):
        """Glosses per entry (what --bucket_by_length groups by)."""
        return [len(glosses.split()) for glosses in self.gloss_texts()]

    def keep(self, indices):
        self.entries = self.entries.take(np.asarray(indices, dtype=np.int64))

    def check(self, skip_bad):
        """Unusable label entries and entries without glosses stop the run naming the file, or
        with skip_bad are left out; returns their messages."""
        names = self.entries.column("name")
        empty = [i for i, glosses in enumerate(self.gloss_texts()) if not glosses.strip()]
        problems = self.label_problems + [
            f"{self.label_path}: entry {names[i]!r} has no glosses (--task G2T translates "
            "gloss sequences)" for i in empty]
        if problems and not skip_bad:
            raise DataError(f"{self.phase} split ({self.label_path}): "
                            + describe_problems(problems, len(self) + len(self.label_problems)))
        if empty:
            self.keep(sorted(set(range(len(self))) - set(empty)))
        if len(self) == 0:
            raise DataError(f"{self.label_path}: the {self.phase} split has no entry with glosses")
        self.label_problems = []
        return problems

    def collate_fn(self, batch):
        names, glosses, texts = zip(*batch)
        src_input = {"name_batch": list(names)}
        tgt_input = {"gt_sentence": list(texts), "gt_gloss": list(glosses)}
        if self.targets is not None:
            self.targets(src_input, tgt_input)
        return src_input, tgt_input


class GlossTextTask(TextTask):
    """mT5 translates gloss sequences into sentences, scored as SLT."""
    needs_poses = False

    def __init__(self, args, spec):
        self.task, self.spec, self.tokenizer = "SLT", spec, None
        self.best_metric = trainer.BEST_METRIC["SLT"]
        self.level = spec.scoring_level("G2T")

    def build_splits(self, args, spec, paths, phases):
        """The label splits (no pose read), checked; test stands in for a missing dev."""
        splits = {}
        for phase in phases:
            if paths["labels"][phase] is None:
                continue
            dataset = GlossTextDataset(paths["labels"][phase], phase, spec,
                                       scan_cache.cache_dir(args.output_dir),
                                       utils.is_main_process())
            dataset.skipped = dataset.check(args.skip_bad_samples)
            splits[phase] = dataset
            print(f"{phase}: {len(dataset)} gloss-sentence pairs from {paths['labels'][phase]}")
        overlaps = split_overlaps({phase: [(name, name) for name in ds.entries.column("name")]
                                   for phase, ds in splits.items()})
        if overlaps:
            print(f"warning: entries in two splits (same name): {overlaps}")
        if "dev" in phases and "dev" not in splits:
            print("no dev split for this dataset: the test split selects the best checkpoint")
            splits["dev"] = splits["test"]
        return splits

    def prepare(self, args, splits):
        """The tokenizer, its coverage of the sentences and of the glosses, and the targets."""
        from models import load_tokenizer
        self.tokenizer = load_tokenizer(args.mt5_path)
        check_vocabulary(args.mt5_path, self.tokenizer)
        phase = next(p for p in ("train", "dev", "test") if p in splits)
        cache = scan_cache.cache_dir(args.output_dir)
        check_unknown_rate(args.mt5_path, self.tokenizer, splits[phase].target_texts(),
                           args.max_unk_rate, UNK_CHECKED_TEXTS[phase], cache,
                           utils.is_main_process())
        check_unknown_rate(args.mt5_path, self.tokenizer, splits[phase].gloss_texts(),
                           args.max_unk_rate, f"{phase} glosses", cache, utils.is_main_process())
        targets = GlossTextTargets(self.tokenizer, self.spec.prompt, args.max_tgt_len)
        for dataset in splits.values():
            dataset.targets = targets

    def build_model(self, args):
        return GlossTranslator(args, tokenizer=self.tokenizer)


def load_lm_weights(model, path_or_state_dict, source=None):
    """Loads only the language model (every `mt5_model.` key) from a G2T checkpoint, or from any
    translator's, into a translator; its output-layer layout is the checkpoint's
    (mt5_layout.match_state). Every mT5 key must be there with the model's shape; the rest is
    left as it is. Returns {'source', 'loaded_keys', 'skipped'} (counts of other keys)."""
    source, state = read_checkpoint(path_or_state_dict, source)
    if not hasattr(model, "mt5_model"):
        raise config.ConfigError(f"--init_lm {source}: this model has no language model")
    lm_state = {k: v for k, v in state.items() if k.startswith(LM_PREFIX)}
    mt5_layout.match_state(model, lm_state)
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(LM_PREFIX)}
    problems = [f"{k} {tuple(lm_state[k].shape) if k in lm_state else 'absent'} vs "
                f"{tuple(v.shape)}" for k, v in expected.items()
                if k not in lm_state or lm_state[k].shape != v.shape]
    if problems:
        raise config.ConfigError(
            f"checkpoint {source} has no language model of this shape: [{key_list(problems)}]"
            f"{flag_differences(path_or_state_dict, model)} (load the --mt5_path the "
            "checkpoint was trained with)")
    model.load_state_dict({k: lm_state[k] for k in expected}, strict=False)
    skipped = {}
    for key in state:
        if key not in expected:
            skipped[key.split(".")[0]] = skipped.get(key.split(".")[0], 0) + 1
    return {"source": source, "loaded_keys": len(expected), "skipped": skipped}
