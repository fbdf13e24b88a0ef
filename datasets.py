"""Datasets: a split of a registered dataset as pose clips with their targets, and the batch.

`build_dataset` is the one place a split is made from the registry (config.DatasetSpec): its
label format, its held-out rule and its prompt. `S2T_Dataset` reads each clip through the pose
layer (poses.py), from pose files or a packed store (pose_store.py), and `collate_fn` is the one
batch every model receives: poses.collate_clips for the encoder input, the reference strings,
and the targets of the head being trained (`TextTargets` for mT5, `GlossTargets` for CTC).

The names Uni-Sign's code imports from here (load_part_kp, read_pose, S2T_Dataset, ...) keep
working.
"""
import os
import random

import numpy as np
import torch

import augment
import config
import label_cache
from keypoints import (DEFAULT_MAX_FRAMES, NUM_KEYPOINTS, PART_JOINTS, PARTS,  # noqa: F401
                       SCORE_THRESHOLD, DataError, check_frame_count, clip_span)
from labels import load_labels, read_label_entries  # noqa: F401
from pose_store import clip_name, clip_names
from store_parts import PartedStore, open_store, parts_of
from poses import (clip_parts, collate_clips, load_part_kp, pad_repeat_last, read_pose,  # noqa: F401
                   sample_frame_indices)
from sample_checks import validate_samples  # noqa: F401



class TextTargets:
    """Adds mT5's inputs to a batch: the prompt ids and mask, and the target ids (padding -100)."""

    def __init__(self, tokenizer, prompt, max_tgt_len):
        self.tokenizer, self.prompt, self.max_tgt_len = tokenizer, prompt, max_tgt_len

    def __call__(self, src_input, tgt_input):
        sentences = tgt_input['gt_sentence']
        prefix = self.tokenizer([self.prompt] * len(sentences), padding='longest',
                                truncation=True, return_tensors='pt')
        src_input['prefix_ids'] = prefix['input_ids'].long()
        src_input['prefix_mask'] = prefix['attention_mask'].long()
        target = self.tokenizer(sentences, padding='longest', truncation=True,
                                max_length=self.max_tgt_len, return_tensors='pt')
        labels = target['input_ids'].long()
        labels[labels == self.tokenizer.pad_token_id] = -100
        tgt_input['labels'] = labels


class GlossTargets:
    """Adds the CTC targets to a batch: padded gloss ids 'gloss_ids' (B, S) and 'gloss_lengths'
    (B,); glosses the vocabulary lacks are left out (the task counts them)."""

    def __init__(self, vocab):
        self.vocab = vocab

    def __call__(self, src_input, tgt_input):
        ids = [self.vocab.encode(glosses)[0] for glosses in tgt_input['gt_gloss']]
        lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
        padded = torch.zeros(len(ids), max(int(lengths.max()), 1), dtype=torch.long)
        for row, sample_ids in enumerate(ids):
            padded[row, :len(sample_ids)] = torch.tensor(sample_ids, dtype=torch.long)
        tgt_input.update(gloss_ids=padded, gloss_lengths=lengths)


def held_out_split(entries, phase, fraction):
    """A corpus shipped as one list: its last `fraction` is dev and test (as Uni-Sign does with
    CSL-News's last 1%), the rest is train."""
    boundary = int(len(entries) * (1 - fraction))
    return entries[:boundary] if phase == 'train' else entries[boundary:]


class S2T_Dataset(torch.utils.data.Dataset):
    """Pose clips with their sentence (or gloss string, for task CSLR) for one split.

    Items are (name, {part: (T, V, 3)}, text, gloss string); collate_fn builds the padded batch
    and, with `targets` (or a tokenizer, which means TextTargets with the dataset's prompt),
    the head's target tensors. Training clips longer than max_length get a random sorted subset
    of frames, other phases an evenly spaced one. The random subset is drawn from a generator
    seeded by (seed, epoch, index), so it does not depend on workers and a resumed run draws the
    same frames; the trainer calls set_epoch() before each epoch's DataLoader iterator starts.
    Clips come from a packed pose store when pose_dir holds one or packed_dir names one. An
    unusable label entry stops construction, or with defer_label_errors is left out and its
    message kept in `label_problems` for validate_samples to report. The entries are a
    ClipTable (compact arrays, clip_table.py), kept in cache_dir for the next start
    (label_cache.py).
    """
    pose_fps = None  # `.pose` inputs are resampled to this rate when set

    def __init__(self, label_path, pose_dir, phase, dataset_name='CSL_Daily', max_length=256,
                 tokenizer=None, task='SLT', max_tgt_len=50, seed=0, packed_dir=None,
                 defer_label_errors=False, pose_fps=None, targets=None, spec=None,
                 max_frames=DEFAULT_MAX_FRAMES, cache_dir=None, write_cache=True):
        self.spec = spec or config.get_dataset(dataset_name)
        self.entries, self.label_problems = label_cache.split_entries(
            label_path, self.spec.label_format, phase, self.spec.held_out, cache_dir,
            write=write_cache)
        if self.label_problems and not defer_label_errors:
            raise DataError(self.label_problems[0])
        self.store = open_store(pose_dir, packed_dir)
        self.pose_dir, self.phase, self.dataset_name = pose_dir, phase, dataset_name
        self.lang = self.spec.language
        self.max_length, self.task, self.seed, self.pose_fps = max_length, task, seed, pose_fps
        if targets is None and tokenizer is not None:
            targets = TextTargets(tokenizer, self.spec.prompt, max_tgt_len)
        self.targets = targets
        self.max_frames = max_frames
        self.epoch = 0
        self.augment = None  # augment.PoseAugment of the training split (build_dataset)
        self._frames = np.full(len(self.entries), -1, dtype=np.int32)  # -1: not read yet
        self._clip_names = None

    def __len__(self):
        return len(self.entries)

    def __str__(self):
        return f'#total {len(self)}'

    def pose_path(self, index):
        return os.path.join(self.pose_dir, self.entries.value('pose_file', index))

    def clip_name(self, index):
        return clip_name(self.entries.value('pose_file', index))

    def clip_names(self):
        """Store names of every entry's pose file, as a numpy bytes array."""
        if self._clip_names is None or len(self._clip_names) != len(self):
            self._clip_names = clip_names(self.entries.columns['pose_file'])
        return self._clip_names

    def rank_share(self, rank, world):
        """The sample indices rank `rank` of `world` checks and, from a parted store, trains on:
        the clips of its parts (store_parts.py); otherwise every world-th sample from `rank`."""
        if world > 1 and isinstance(self.store, PartedStore):
            owners = parts_of(self.clip_names(), self.store.parts)
            return np.flatnonzero(np.isin(owners, self.store.rank_parts(rank, world)))
        return np.arange(rank, len(self), world, dtype=np.int64)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def read_clip(self, index):
        """read_pose() of an entry's pose file; also remembers the clip's duration."""
        if self.store is not None:
            name = self.clip_name(index)
            check_frame_count(f"{self.store.directory} (clip {name!r})", 'keypoints',
                              self.store.length(name), self.max_frames)
            pose = self.store.read(name)
        else:
            pose = read_pose(self.pose_path(index), fps=self.pose_fps, max_frames=self.max_frames)
        if self._frames[index] < 0:  # known after the pre-scan: workers then never write here
            self._frames[index] = clip_span(pose)[1]
        return pose

    def __getitem__(self, index):
        entry = self.entries[index]
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        pose = self.read_clip(index)
        if self.augment is not None:
            pose = self.augment(pose, (self.seed, self.epoch, index))
        parts = clip_parts(pose, self.max_length, self.phase == 'train', rng)
        gloss = ' '.join(entry['gloss'])
        text = gloss if self.task == 'CSLR' else entry['text']
        return entry['name'], parts, text, gloss

    def target_texts(self):
        """The strings mT5 is trained to write: sentences, or gloss strings for task CSLR."""
        return self.entries.column('gloss' if self.task == 'CSLR' else 'text')

    def set_frames(self, indices, frames):
        """Records clip lengths found by the pre-scan."""
        self._frames[np.asarray(indices, dtype=np.int64)] = frames

    def lengths(self):
        """Clip lengths after sampling (a list); reads (once) the pose files not yet seen
        (a packed store's index knows every length)."""
        unknown = np.flatnonzero(self._frames < 0)
        if len(unknown) and self.store is not None:
            names = self.clip_names()[unknown]
            self._frames[unknown] = self.store.spans(names)[:, 1]
        else:
            for index in unknown.tolist():
                self.read_clip(index)
        return np.minimum(self._frames, self.max_length).tolist()

    def keep(self, indices):
        """Restricts the dataset to the given entry indices (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        self._frames = self._frames[indices]
        self.entries = self.entries.take(indices)
        self._clip_names = None

    def collate_fn(self, batch):
        names, clips, texts, glosses = zip(*batch)
        src_input = collate_clips(clips, names)
        tgt_input = {'gt_sentence': list(texts), 'gt_gloss': list(glosses)}
        if self.targets is not None:
            self.targets(src_input, tgt_input)
        return src_input, tgt_input


def build_dataset(args, spec, paths, phase, targets=None, cache_dir=None, write_cache=True):
    """The `phase` split of a registered dataset for the run's flags (None if it has none);
    its label entries are kept in cache_dir (written with write_cache). The training split gets
    the run's pose augmentation (augment.py), the others none."""
    label_path = paths['labels'][phase]
    if label_path is None:
        return None
    dataset = S2T_Dataset(label_path, paths['pose_dirs'][phase], phase, dataset_name=args.dataset,
                          max_length=args.max_length, task=args.task, seed=args.seed,
                          defer_label_errors=True, pose_fps=args.pose_fps, targets=targets,
                          spec=spec, max_frames=args.max_frames_per_clip, cache_dir=cache_dir,
                          write_cache=write_cache)
    if phase == 'train':
        dataset.augment = augment.from_args(args)
    return dataset
