"""Generates PhoenixDemo, a PHOENIX-2014-style recognition set, from the Demo sign language.

The sentences, glosses and pose clips come from demo/data.py; this writes them the way the
PHOENIX-2014 release and Uni-Sign lay them out, so `--dataset PhoenixDemo --task CSLR --head ctc`
runs with no download:

    <out>/phoenix2014-groundtruth-{train,dev,test}.stm  `ID 1 SIGNER 0.0 1.79769e+308 GLOSS ...`
    <out>/pose_format/<ID>.pkl  {'keypoints': (T,1,133,2), 'scores': (T,1,133)}
    <out>/meta.json

Ids look like PHOENIX's (`14April_2010_Wednesday_tagesschau_default-3`: one weather broadcast,
several sentences) and each broadcast has one of nine signers. `--unseen GLOSS ...` keeps those
glosses out of training, so dev and test hold out-of-vocabulary glosses as the real dev and test do.

    python script/make_phoenix_demo.py --out data/PhoenixDemo
"""
import argparse
import datetime
import json
import os
import pickle
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from SLRT_metrics import read_stm, write_stm  # noqa: E402
from demo.data import sample_splits, sentence_glosses, synthesize_clip  # noqa: E402

FORMAT_VERSION = 1
SPLITS = ('train', 'dev', 'test')
SHOWS = ('tagesschau', 'heute')
# Broadcast years per split, so no broadcast is shared between splits.
SPLIT_YEARS = {'train': (2009, 2010, 2011), 'dev': (2012,), 'test': (2013,)}


def dataset_paths(root):
    paths = {'root': root, 'pose_dir': os.path.join(root, 'pose_format'),
             'meta': os.path.join(root, 'meta.json')}
    paths.update({split: os.path.join(root, f'phoenix2014-groundtruth-{split}.stm')
                  for split in SPLITS})
    return paths


def broadcast_ids(rng, split, count):
    """(sample id, signer) per sentence: broadcasts of 4-12 sentences, PHOENIX's naming."""
    ids, used = [], set()
    while len(ids) < count:
        day = datetime.date(int(rng.choice(SPLIT_YEARS[split])), 1, 1) + datetime.timedelta(
            days=int(rng.integers(365)))
        show = SHOWS[rng.integers(len(SHOWS))]
        stem = f"{day.day:02d}{day:%B}_{day.year}_{day:%A}_{show}_default"
        if stem in used:
            continue
        used.add(stem)
        # PHOENIX writes the signer capitalised in train and in lower case in dev and test
        signer = f"{'Signer' if split == 'train' else 'signer'}{rng.integers(1, 10):02d}"
        ids += [(f"{stem}-{k}", signer) for k in range(rng.integers(4, 13))]
    return ids[:count]


def split_records(seed, n_train, n_dev, n_test, unseen):
    """Demo sentence records per split; training sentences never contain an `unseen` gloss."""
    extra = 2 * n_train if unseen else 0
    splits, _ = sample_splits(np.random.default_rng(seed), n_train + extra, n_dev, n_test)
    splits['train'] = [s for s in splits['train'] if not set(sentence_glosses(s)) & set(unseen)]
    if len(splits['train']) < n_train:
        raise ValueError(f"only {len(splits['train'])} training sentences avoid {unseen}")
    splits['train'] = splits['train'][:n_train]
    return splits


def write_split(paths, split, records, seed):
    """Writes one split's pose files and its STM file; returns {id: glosses}."""
    rng = np.random.default_rng([seed, SPLITS.index(split), 1])
    ids = broadcast_ids(rng, split, len(records))
    glosses = [sentence_glosses(s) for s in records]
    for index, ((sample_id, _), sentence) in enumerate(zip(ids, glosses)):
        clip_rng = np.random.default_rng([seed, SPLITS.index(split), 0, index])
        clip = synthesize_clip(sentence, clip_rng)
        with open(os.path.join(paths['pose_dir'], sample_id + '.pkl'), 'wb') as f:
            pickle.dump(clip, f, protocol=4)
    write_stm(paths[split], [i for i, _ in ids], glosses, [s for _, s in ids])
    return dict(zip((i for i, _ in ids), glosses))


def is_complete(paths, meta):
    """True when `root` holds a finished set generated with the same settings."""
    try:
        with open(paths['meta'], encoding='utf-8') as f:
            if json.load(f) != meta:
                return False
        return all(os.path.isfile(os.path.join(paths['pose_dir'], sample_id + '.pkl'))
                   for split in SPLITS for sample_id in read_stm(paths[split]))
    except (OSError, ValueError):
        return False


def make_phoenix_demo(root, seed=0, n_train=1000, n_dev=100, n_test=100, unseen=(),
                      overwrite=False):
    """Generates (or reuses, when the settings match) PhoenixDemo in `root`; returns its paths."""
    paths = dataset_paths(root)
    meta = {'format_version': FORMAT_VERSION, 'seed': seed, 'n_train': n_train, 'n_dev': n_dev,
            'n_test': n_test, 'unseen': sorted(unseen)}
    if not overwrite and is_complete(paths, meta):
        return paths
    shutil.rmtree(paths['pose_dir'], ignore_errors=True)
    if os.path.exists(paths['meta']):
        os.remove(paths['meta'])
    os.makedirs(paths['pose_dir'])
    records = split_records(seed, n_train, n_dev, n_test, meta['unseen'])
    for split in SPLITS:
        write_split(paths, split, records[split], seed)
    with open(paths['meta'], 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=1)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_flag(parser, '--out', default='data/PhoenixDemo')
    cli.add_flag(parser, '--seed', type=cli.seed, default=0)
    cli.add_flag(parser, '--n_train', type=cli.count, default=1000)
    cli.add_flag(parser, '--n_dev', type=cli.count, default=100)
    cli.add_flag(parser, '--n_test', type=cli.count, default=100)
    cli.add_flag(parser, '--unseen', nargs='*', default=[],
                         help='glosses kept out of training (e.g. SICK)')
    cli.add_flag(parser, '--overwrite', action='store_true')
    args = parser.parse_args(argv)
    paths = make_phoenix_demo(args.out, args.seed, args.n_train, args.n_dev, args.n_test,
                              args.unseen, args.overwrite)
    print(paths['root'])


if __name__ == '__main__':
    main()
