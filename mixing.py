"""Mixed corpora: `--dataset A+B[+C]` trains one model on several registered datasets.

Training draws from the union of the datasets' training splits. Every clip keeps what its own
dataset's registry entry says (config.DatasetSpec): its label format and pose folder when read,
and its prompt (the language of its text) in the batch. How many clips of each dataset an epoch
holds follows the datasets' sizes, or --mix_weights; an epoch draws as many clips as the union
holds (MixedSampler). Evaluation scores each dataset's dev and test split on its own, at its
own scoring level (config.DatasetSpec.scoring_level: characters for Chinese, words otherwise),
and logs `dev_NAME/metric` per dataset; the dev metric of --best_dataset (default: the first
dataset named) picks the best checkpoint.

Each dataset finds its files under --data_root and --pose_root through its own templates, or
under the folder --dataset_root NAME=DIR gives it. The mix must agree on one mT5 folder.
fine_tuning.py calls resolve_paths, build_task, build_splits and, through the training split,
its sampler; flags.py adds add_mixing_flags and mixing_refusals.
"""
import argparse
import os

import numpy as np
import torch

import config
import engine as trainer
import scan_cache
import utils
from mix_flags import dataset_names, is_mixed
from poses import collate_clips
from samplers import ResumableDistributedSampler
from store_parts import PartedStore
from tasks import TextTask, build_task as build_single_task, check_unknown_rate, \
    check_vocabulary

CACHE_FOLDER = "mixed"  # <output_dir>/mixed/NAME/: each dataset's pre-scan and label caches


def first_spec(args):
    """The registry entry of the dataset (of a mix: its first one, whose language the model
    keeps for translating clips that come with no prompt)."""
    return config.get_dataset(dataset_names(args.dataset)[0])


def resolve_paths(args):
    """config.resolve_paths of the dataset; for a mix, each dataset's own paths, checked here
    (under 'datasets'), and the one mT5 folder they agree on."""
    if not is_mixed(args):
        return config.resolve_paths(args.dataset, args.data_root, args.pose_root, args.mt5_path)
    roots = dict(item.split("=", 1) for item in args.dataset_root or [])
    phases = ("dev", "test") if args.eval else config.PHASES
    own = {}
    for name in dataset_names(args.dataset):
        root = roots.get(name)
        own[name] = config.resolve_paths(name, root or args.data_root, root or args.pose_root,
                                         args.mt5_path)
        try:
            config.validate_paths(own[name], phases, need_mt5=False)
        except config.ConfigError as error:
            raise config.ConfigError(f"dataset {name} of the mix: {error}") from None
    models = {paths["mt5_path"] for paths in own.values()}
    if len(models) > 1:
        listed = ", ".join(f"{name}: {paths['mt5_path']}" for name, paths in own.items())
        raise config.ConfigError(f"the datasets of the mix come with different mT5 folders "
                                 f"({listed}): choose the one to train with --mt5_path")
    return {"mt5_path": models.pop(), "labels": {}, "pose_dirs": {}, "datasets": own}


def build_task(args, spec):
    """tasks.build_task for one dataset; a MixedTask for a mix."""
    return MixedTask(args) if is_mixed(args) else build_single_task(args, spec)


def build_splits(args, spec, paths, task, build_datasets):
    """The run's splits: `build_datasets` (fine_tuning's: every clip pre-scanned) of the
    dataset, or of each dataset of a mix joined per phase; a task that reads no poses builds
    its own."""
    phases = ("dev", "test") if args.eval else config.PHASES
    if not getattr(task, "needs_poses", True):
        return task.build_splits(args, spec, paths, phases)
    if not is_mixed(args):
        return build_datasets(args, spec, paths, phases)
    names, parts = dataset_names(args.dataset), {}
    for name in names:
        print(f"dataset {name} of the mix:")
        folder = os.path.join(args.output_dir, CACHE_FOLDER, name) if args.output_dir else None
        own_args = argparse.Namespace(**{**vars(args), "dataset": name, "output_dir": folder})
        parts[name] = build_datasets(own_args, config.get_dataset(name),
                                     paths["datasets"][name], phases)
    check_stores(parts)
    return {phase: MixedDataset({name: parts[name][phase] for name in names},
                                args.mix_weights if phase == "train" else None)
            for phase in parts[names[0]]}


def check_stores(parts):
    """A parted store splits its clips among ranks; the mixed draws read any clip on any rank."""
    if utils.get_world_size() == 1:
        return
    for name, splits in parts.items():
        store = getattr(splits.get("train"), "store", None)
        if isinstance(store, PartedStore):
            raise config.ConfigError(f"dataset {name} of the mix reads the parted store "
                                     f"{store.directory}, whose parts belong to ranks: mixes "
                                     "draw every clip on any rank; pack it as one store")


class MixedDataset(torch.utils.data.Dataset):
    """One phase of a mix: the datasets' splits one after the other (index = offset of the
    dataset + index in its split). Items and batches are S2T_Dataset's plus, per clip, the name
    of its dataset and its prompt ('dataset', 'prompt' in the batch's targets)."""
    store = None  # each split reads its own poses

    def __init__(self, parts, weights=None):
        self.names, self.parts = list(parts), list(parts.values())
        self.offsets = np.cumsum([0] + [len(part) for part in self.parts])
        self.weights = weights
        self.targets = None
        self.skipped = [f"{name}: {problem}" for name, part in parts.items()
                        for problem in getattr(part, "skipped", [])]

    def __len__(self):
        return int(self.offsets[-1])

    def sizes(self):
        return [len(part) for part in self.parts]

    def locate(self, index):
        """(position of the dataset in the mix, index in its split)."""
        source = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return source, index - int(self.offsets[source])

    def __getitem__(self, index):
        source, own = self.locate(index)
        return (source, *self.parts[source][own])

    def set_epoch(self, epoch):
        for part in self.parts:
            part.set_epoch(epoch)

    def lengths(self):
        return [length for part in self.parts for length in part.lengths()]

    def target_texts(self):
        return [text for part in self.parts for text in part.target_texts()]

    def collate_fn(self, batch):
        sources, names, clips, texts, glosses = zip(*batch)
        src_input = collate_clips(clips, names)
        tgt_input = {'gt_sentence': list(texts), 'gt_gloss': list(glosses),
                     'dataset': [self.names[s] for s in sources],
                     'prompt': [self.parts[s].spec.prompt for s in sources]}
        if self.targets is not None:
            self.targets(src_input, tgt_input)
        return src_input, tgt_input

    def make_sampler(self, dataset_len, *args, **kwargs):
        """The training batch sampler (fine_tuning.make_loader's arguments): a MixedSampler."""
        return MixedSampler(self.sizes(), self.weights, self.names, dataset_len, *args, **kwargs)


def quotas(count, weights):
    """How many of `count` draws each weight gets: proportional, rounded by largest
    remainders (they add up to count)."""
    weights = np.asarray(weights, dtype=np.float64)
    exact = count * weights / weights.sum()
    shares = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - shares), kind="stable")[:count - int(shares.sum())]
    shares[extra] += 1
    return shares


class MixedSampler(ResumableDistributedSampler):
    """ResumableDistributedSampler over a MixedDataset whose epoch holds, of its
    len(union) draws, each dataset's quota of the weights (default: the sizes, so every clip
    is drawn once). A dataset's clips are drawn in a fresh permutation of its split (repeated
    when its quota exceeds it), then all draws are shuffled together; length bucketing, rank
    shares and resuming are the parent's. The weights are part of the saved state."""

    def __init__(self, sizes, weights, names, dataset_len, *args, **kwargs):
        if kwargs.get("share") is not None:
            raise ValueError("a mixed sampler draws from the whole union, not from a share")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.names = list(names)
        self.offsets = np.cumsum(np.concatenate([[0], self.sizes]))[:-1]
        weights = self.sizes if weights is None else np.asarray(weights, dtype=np.float64)
        self.weights = (weights / weights.sum()).tolist()
        super().__init__(dataset_len, *args, **kwargs)

    def _draw(self, rng, count):
        draws = []
        for offset, size, quota in zip(self.offsets, self.sizes, quotas(count, self.weights)):
            own = rng.permutation(size) if self.shuffle else np.arange(size)
            draws.append(offset + np.resize(own, quota))
        order = np.concatenate(draws)
        return order[rng.permutation(count)] if self.shuffle else order

    def draw_counts(self, epoch=None):
        """{dataset: clips} of this rank's batches of an epoch."""
        sources = np.searchsorted(self.offsets, self.batch_array(epoch).reshape(-1), "right") - 1
        return dict(zip(self.names, np.bincount(sources, minlength=len(self.names)).tolist()))

    def __iter__(self):
        counts = self.draw_counts()
        total = sum(counts.values())
        print(f"epoch {self.epoch} draws: " + ", ".join(
            f"{name} {n} ({n / total:.1%})" for name, n in counts.items()))
        return super().__iter__()

    def state_dict(self):
        return {**super().state_dict(), "weights": self.weights}

    def load_state_dict(self, state):
        saved = state.get("weights")
        if saved is None or not np.allclose(saved, self.weights):
            raise ValueError(f"the saved order drew the datasets with weights {saved}, this "
                             f"sampler with {self.weights}")
        super().load_state_dict(state)


class MixedTextTargets:
    """datasets.TextTargets with each clip's own prompt (the batch's 'prompt' list)."""

    def __init__(self, tokenizer, max_tgt_len):
        self.tokenizer, self.max_tgt_len = tokenizer, max_tgt_len

    def __call__(self, src_input, tgt_input):
        prefix = self.tokenizer(tgt_input['prompt'], padding='longest', truncation=True,
                                return_tensors='pt')
        src_input['prefix_ids'] = prefix['input_ids'].long()
        src_input['prefix_mask'] = prefix['attention_mask'].long()
        target = self.tokenizer(tgt_input['gt_sentence'], padding='longest', truncation=True,
                                max_length=self.max_tgt_len, return_tensors='pt')
        labels = target['input_ids'].long()
        labels[labels == self.tokenizer.pad_token_id] = -100
        tgt_input['labels'] = labels


class MixedTask(TextTask):
    """The translator (TextTask, whose model and prediction it keeps) on a mix: one TextTask
    per dataset scores and writes its own rows; the metrics are `NAME/metric`, and --best_dataset's dev metric picks the best
    checkpoint."""
    needs_mt5 = True

    def __init__(self, args):
        self.names = dataset_names(args.dataset)
        self.tasks = {name: TextTask(args, config.get_dataset(name)) for name in self.names}
        self.best_dataset = args.best_dataset or self.names[0]
        metric, higher = trainer.BEST_METRIC[args.task]
        self.best_metric = (f"{self.best_dataset}/{metric}", higher)
        self.tokenizer, self.sizes = None, {}

    def prepare(self, args, splits):
        """The tokenizer (its coverage checked per dataset), the per-clip-prompt targets, and
        each split's dataset sizes (the rows scored are in that order)."""
        from models import load_tokenizer
        self.tokenizer = load_tokenizer(args.mt5_path, args)
        check_vocabulary(args.mt5_path, self.tokenizer)
        checked = next(phase for phase in ("train", "dev", "test") if phase in splits)
        for name, part in zip(splits[checked].names, splits[checked].parts):
            check_unknown_rate(args.mt5_path, self.tokenizer, part.target_texts(),
                               args.max_unk_rate, f"{name} {checked} targets",
                               scan_cache.cache_dir(args.output_dir), utils.is_main_process())
        targets = MixedTextTargets(self.tokenizer, args.max_tgt_len)
        for phase, dataset in splits.items():
            dataset.targets = targets
            self.sizes[phase] = dataset.sizes()
        for task in self.tasks.values():
            task.tokenizer = self.tokenizer
        levels = ", ".join(f"{name} {task.level}-level" for name, task in self.tasks.items())
        print(f"mix of {', '.join(self.names)}: scored per dataset ({levels}); the best "
              f"checkpoint is picked by dev {self.best_metric[0]}")

    def per_dataset(self, rows, phase):
        """(name, its rows) in the order of the phase's MixedDataset."""
        begin = 0
        for name, size in zip(self.names, self.sizes[phase]):
            yield name, rows[begin:begin + size]
            begin += size

    def score(self, rows, phase):
        stats = {}
        for name, own in self.per_dataset(rows, phase):
            stats.update({f"{name}/{key}": value
                          for key, value in self.tasks[name].score(own, phase).items()})
        return stats

    def write(self, output_dir, phase, rows, dataset):
        """Each dataset's prediction files: {phase}_{NAME}_tmp_pres.txt / _tmp_refs.txt."""
        for (name, own), part in zip(self.per_dataset(rows, phase), dataset.parts):
            self.tasks[name].write(output_dir, f"{phase}_{name}", own, part)

    def checkpoint_extras(self):
        return {}
