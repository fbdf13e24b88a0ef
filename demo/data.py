"""Generates the embedded Demo dataset: a procedural sign language rendered as whole-body poses.

Synthetic signers (rendered by demo/signing.py: hand shapes, arm paths, head and mouth
movements, co-articulation, detector noise) sign gloss sentences; with English translations and
a tiny random mT5, in Uni-Sign's formats, so training needs no download:

    <root>/pose_format/<name>.pkl  {'keypoints': (T,1,133,2) float32 pixels, 'scores': (T,1,133)}
    <root>/labels.{train,dev,test} gzip pickle: name -> {'name', 'gloss', 'text', 'video_path'}
    <root>/mt5/  <root>/corpus.txt  <root>/README  <root>/meta.json

Gloss order (time, subject, object, adjective, verb, negation) differs from English word order;
every dev and test sentence holds a (subject, predicate) or (object, verb) pair unseen in training.

    python -m demo.data --out data/Demo --seed 0
"""
import argparse
import gzip
import json
import os
import pickle
import shutil

import numpy as np

import cli
from cli import add_flag

from demo.signing import LEXICON, synthesize_clip

FORMAT_VERSION = 1
# tie=False: the output layer apart from the input embedding, as in google/mt5-base
DEFAULT_MT5 = dict(vocab_size=256, d_model=128, d_ff=256, num_layers=2, num_heads=4, d_kv=32,
                   tie=False)
SPLITS = ('train', 'dev', 'test')

# ---------------------------------------------------------------------------------- language
TIMES = {'YESTERDAY': 'past', 'TOMORROW': 'future', 'ALWAYS': 'always'}
SUBJECTS = {'I': ('I', 1), 'YOU': ('you', 2), 'TEACHER': ('the teacher', 3),
            'FRIEND': ('my friend', 3), 'MOTHER': ('my mother', 3),
            'DOCTOR': ('the doctor', 3), 'CHILD': ('the child', 3)}
PAST = {'BUY': 'bought', 'SEE': 'saw', 'WANT': 'wanted', 'LIKE': 'liked', 'READ': 'read',
        'WRITE': 'wrote', 'EAT': 'ate', 'DRINK': 'drank', 'GO': 'went'}
OBJECTS = {'BOOK': 'book', 'APPLE': 'apple', 'CAR': 'car', 'HOUSE': 'house',
           'LETTER': 'letter', 'BALL': 'ball', 'CAKE': 'cake', 'WATER': 'water'}
MASS_NOUNS = {'WATER'}
ADJECTIVES = {'BIG': 'big', 'NEW': 'new', 'RED': 'red', 'OLD': 'old'}
PLACES = {'SCHOOL': 'to school', 'HOME': 'home', 'STORE': 'to the store'}
STATES = {'HAPPY': 'happy', 'TIRED': 'tired', 'SICK': 'sick'}
VERB_OBJECTS = {'BUY': ['BOOK', 'APPLE', 'CAR', 'HOUSE', 'BALL', 'CAKE', 'WATER'],
                'SEE': ['BOOK', 'CAR', 'HOUSE', 'LETTER', 'BALL'],
                'WANT': list(OBJECTS), 'LIKE': list(OBJECTS), 'READ': ['BOOK', 'LETTER'],
                'WRITE': ['BOOK', 'LETTER'], 'EAT': ['APPLE', 'CAKE'], 'DRINK': ['WATER']}
PREDICATES = [*VERB_OBJECTS, *PLACES, *STATES]
TEMPLATE_WEIGHTS = {'transitive': 0.6, 'place': 0.2, 'state': 0.2}


def conjugate(verb, person, tense, negated):
    """English verb phrase for a verb gloss."""
    base = verb.lower()
    present = base + ('es' if base.endswith('o') else 's') if person == 3 else base
    if negated:
        aux = {'past': 'did not', 'future': 'will not', 'always': 'never'}.get(
            tense, 'does not' if person == 3 else 'do not')
        return f"{aux} {present if tense == 'always' else base}"
    forms = {'past': PAST[verb], 'future': 'will ' + base, 'always': 'always ' + present}
    return forms.get(tense, present)


def copula(person, tense, negated):
    """English 'to be'; 'not', 'always' and 'never' follow the finite verb."""
    finite = {'past': 'were' if person == 2 else 'was', 'future': 'will'}.get(
        tense, {1: 'am', 2: 'are', 3: 'is'}[person])
    adverb = ('never' if negated else 'always') if tense == 'always' else ('not' if negated else '')
    return ' '.join(w for w in (finite, adverb, 'be' if tense == 'future' else '') if w)


def noun_phrase(obj, adj):
    """Object with its article ('a'/'an' by the next sound); mass nouns take none."""
    words = ' '.join(([ADJECTIVES[adj]] if adj else []) + [OBJECTS[obj]])
    if obj in MASS_NOUNS:
        return words
    return ('an ' if words[0] in 'aeiou' else 'a ') + words


def sentence_text(s):
    """English for a sentence record: SVO, tense from the time sign, time word last."""
    subject, person = SUBJECTS[s['subj']]
    tense = TIMES.get(s['time'])
    if s['template'] == 'state':
        predicate = f"{copula(person, tense, s['neg'])} {STATES[s['state']]}"
    elif s['template'] == 'place':
        predicate = f"{conjugate('GO', person, tense, s['neg'])} {PLACES[s['place']]}"
    else:
        verb = conjugate(s['verb'], person, tense, s['neg'])
        predicate = f"{verb} {noun_phrase(s['obj'], s['adj'])}"
    when = f" {s['time'].lower()}" if tense in ('past', 'future') else ''
    words = f"{subject} {predicate}{when}"
    return words[0].upper() + words[1:] + '.'


def sentence_glosses(s):
    """Gloss order: [TIME] SUBJECT (OBJECT [ADJ] VERB | PLACE GO | STATE) [NOT]."""
    middle = {'transitive': [s['obj'], s['adj'], s['verb']],
              'place': [s['place'], 'GO'], 'state': [s['state']]}[s['template']]
    return [str(g) for g in [s['time'], s['subj'], *middle, 'NOT' if s['neg'] else None] if g]


def choose_held_out(rng, n_subject_pairs=6, n_object_pairs=4):
    """Gloss pairs seen only in dev/test; no gloss is in two pairs of the same kind, and object
    pairs come from verbs with several objects, so every gloss keeps partners in training."""
    subject_pairs = [(s, p) for s in SUBJECTS for p in PREDICATES]
    object_pairs = [(o, v) for v, objs in VERB_OBJECTS.items() if len(objs) > 2 for o in objs]
    picked = []
    for candidates, n in ((subject_pairs, n_subject_pairs), (object_pairs, n_object_pairs)):
        used = set()
        for i in rng.permutation(len(candidates)):
            if len(used) < 2 * n and not used & set(candidates[i]):
                picked.append(candidates[i])
                used.update(candidates[i])
    return picked


def sample_sentence(rng, pair=None):
    """Random sentence record of 3-6 glosses; `pair` (a gloss pair) is forced into it."""
    while True:
        template = rng.choice(list(TEMPLATE_WEIGHTS), p=list(TEMPLATE_WEIGHTS.values()))
        if pair is not None:
            template = ('transitive' if pair[0] in OBJECTS or pair[1] in VERB_OBJECTS else
                        'place' if pair[1] in PLACES else 'state')
        s = {'template': template, 'time': rng.choice([None, *TIMES]),
             'subj': pair[0] if pair and pair[0] in SUBJECTS else rng.choice(list(SUBJECTS)),
             'neg': bool(rng.random() < 0.3),
             'verb': None, 'obj': None, 'adj': None, 'place': None, 'state': None}
        if template == 'transitive':
            s['verb'] = pair[1] if pair else rng.choice(list(VERB_OBJECTS))
            objects = [pair[0]] if pair and pair[0] in OBJECTS else VERB_OBJECTS[s['verb']]
            s['obj'] = rng.choice(objects)
            if s['obj'] not in MASS_NOUNS and rng.random() < 0.4:
                s['adj'] = rng.choice(list(ADJECTIVES))
        else:
            heads = [pair[1]] if pair else list(PLACES if template == 'place' else STATES)
            s[template] = rng.choice(heads)
        if len(sentence_glosses(s)) >= 3:
            return s


def sample_splits(rng, n_train, n_dev, n_test):
    """Sentence records per split with distinct texts; dev/test each hold a held-out pair."""
    held_out = choose_held_out(rng)
    seen, splits = set(), {}
    for split, n in (('test', n_test), ('dev', n_dev), ('train', n_train)):
        records, attempts = [], 0
        while len(records) < n:
            attempts += 1
            if attempts > 200 * n + 1000:
                raise ValueError(f'cannot draw {n} distinct {split} sentences')
            pair = None if split == 'train' else held_out[rng.integers(len(held_out))]
            s = sample_sentence(rng, pair)
            text, glosses = sentence_text(s), sentence_glosses(s)
            pairs = {(a, b) for i, a in enumerate(glosses) for b in glosses[i + 1:]}
            if text in seen or (pair is None and pairs & set(held_out)):
                continue
            seen.add(text)
            records.append(s)
        splits[split] = records
    return splits, held_out


# ---------------------------------------------------------------------------------- files
def dataset_paths(root):
    """Paths of every part of a Demo set under `root`."""
    paths = {'root': root, 'pose_dir': os.path.join(root, 'pose_format'),
             'mt5': os.path.join(root, 'mt5'), 'corpus': os.path.join(root, 'corpus.txt'),
             'readme': os.path.join(root, 'README'), 'meta': os.path.join(root, 'meta.json')}
    paths.update({split: os.path.join(root, f'labels.{split}') for split in SPLITS})
    return paths


def is_complete(paths, meta):
    """True when `paths` hold a finished set generated with `meta`'s settings."""
    try:
        with open(paths['meta'], encoding='utf-8') as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return False
    needed = [paths[key] for key in (*SPLITS, 'corpus', 'readme')] + [
        os.path.join(paths['mt5'], name) for name in ('config.json', 'spiece.model')]
    n_poses = sum(meta[f'n_{split}'] for split in SPLITS)
    return (all(stored.get(k) == v for k, v in meta.items()) and all(map(os.path.isfile, needed))
            and os.path.isdir(paths['pose_dir']) and len(os.listdir(paths['pose_dir'])) == n_poses)


def write_split(paths, split, records, seed):
    """Writes one split's pose files and its gzip label dict; returns the labels."""
    labels = {}
    for i, s in enumerate(records):
        name, glosses = f'demo_{split}_{i:05d}', sentence_glosses(s)
        rng = np.random.default_rng([seed, SPLITS.index(split), i])
        with open(os.path.join(paths['pose_dir'], name + '.pkl'), 'wb') as f:
            pickle.dump(synthesize_clip(glosses, rng), f, protocol=4)
        labels[name] = {'name': name, 'gloss': glosses, 'text': sentence_text(s),
                        'video_path': name + '.mp4'}
    with gzip.open(paths[split], 'wb') as f:
        pickle.dump(labels, f, protocol=4)
    return labels


def tokenizer_sentences(corpus):
    """The corpus plus each word on a line of its own: SentencePiece only proposes pieces that
    end where contexts branch, and here e.g. 'mother' is always followed by a space."""
    return list(corpus) + sorted({word.strip('.') for line in corpus for word in line.split()})


def make_demo(root, seed=0, n_train=2000, n_dev=150, n_test=150, mt5_kwargs=None, overwrite=False):
    """Generates the Demo set in `root` unless a matching one is there; returns its paths."""
    paths = dataset_paths(root)
    mt5_kwargs = {**DEFAULT_MT5, **(mt5_kwargs or {})}
    meta = {'format_version': FORMAT_VERSION, 'seed': seed, 'n_train': n_train,
            'n_dev': n_dev, 'n_test': n_test, 'mt5_kwargs': mt5_kwargs}
    if not overwrite and is_complete(paths, meta):
        return paths
    if os.path.exists(paths['meta']):
        os.remove(paths['meta'])  # meta.json is written last: a half-written set is never reused
    for stale in (paths['pose_dir'], paths['mt5']):
        shutil.rmtree(stale, ignore_errors=True)
    os.makedirs(paths['pose_dir'])
    from demo.tiny_mt5 import build_tiny_mt5  # imports transformers; only needed when generating
    splits, held_out = sample_splits(np.random.default_rng(seed), n_train, n_dev, n_test)
    labels = {split: write_split(paths, split, splits[split], seed) for split in SPLITS}
    corpus = [item['text'] for item in labels['train'].values()]
    with open(paths['corpus'], 'w', encoding='utf-8') as f:
        f.write('\n'.join(corpus) + '\n')
    build_tiny_mt5(paths['mt5'], tokenizer_sentences(corpus), seed=seed, **mt5_kwargs)
    sizes = ' '.join(f"--n_{split} {meta['n_' + split]}" for split in SPLITS)
    with open(paths['readme'], 'w', encoding='utf-8') as f:
        f.write(f"Demo: a procedural sign language ({len(LEXICON)} glosses) rendered as "
                f"COCO-WholeBody poses in Uni-Sign's formats;\ndev and test sentences hold gloss "
                f"pairs unseen in training. mt5/ is a random tiny mT5 whose tokenizer\nwas trained "
                f"on corpus.txt (the training sentences). Generated by:\n"
                f"python -m demo.data --out {paths['root']} --seed {meta['seed']} {sizes}\n")
    with open(paths['meta'], 'w', encoding='utf-8') as f:
        json.dump({**meta, 'held_out_pairs': [list(p) for p in held_out]}, f, indent=1)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flag(parser, '--out', default='data/Demo')
    add_flag(parser, '--overwrite', action='store_true', help='regenerate even if complete')
    add_flag(parser, '--seed', type=cli.seed, default=0)
    for name, default in (('n_train', 2000), ('n_dev', 150), ('n_test', 150),
                          ('d_model', DEFAULT_MT5['d_model'])):
        add_flag(parser, '--' + name, type=cli.count, default=default)
    add_flag(parser, '--tied_mt5', action='store_true',
             help="tie the tiny mT5's output layer to its input embedding")
    args = parser.parse_args()
    mt5_kwargs = {'d_model': args.d_model, 'd_ff': 2 * args.d_model, 'tie': args.tied_mt5}
    paths = make_demo(args.out, args.seed, args.n_train, args.n_dev, args.n_test, mt5_kwargs,
                      args.overwrite)
    print(paths['root'])


if __name__ == '__main__':
    main()
