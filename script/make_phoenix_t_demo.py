"""Generates PhoenixTDemo, a PHOENIX-2014-T-shaped translation and recognition set, download-free.

The sentences and pose clips are the Demo sign language's (demo/data.py samples the sentences
with its honest split: no dev or test sentence is in training, and every dev and test sentence
holds a gloss pair never seen in training; demo/signing.py renders them as COCO-WholeBody-133
poses). Each sign gets a German gloss (`TEACHER` -> `LEHRER`), and a small deterministic grammar
turns a gloss sequence into a lower-case, pre-tokenised German sentence, as PHOENIX-2014-T's
translations are: the finite verb comes second (after a fronted time adverb the subject follows
it), past is the perfect (`hat ... gekauft`, `ist ... gegangen`), future `wird ... kaufen`,
objects take gendered articles and adjective endings, negated indefinite objects take `kein`:

    GESTERN LEHRER BUCH ROT KAUFEN NICHT -> gestern hat der lehrer kein rotes buch gekauft .

Written the way the PHOENIX-2014-T release lays it out, with a tiny mT5 whose SentencePiece
tokenizer is trained offline on the training translations, glosses and the German prompt:

    <out>/PHOENIX-2014-T.{train,dev,test}.corpus.csv  name|video|start|end|speaker|orth|translation
    <out>/pose_format/<name>.pkl  {'keypoints': (T,1,133,2), 'scores': (T,1,133)}
    <out>/mt5/  <out>/meta.json

A set generated with the same settings is reused (`--overwrite` regenerates it).

    python script/make_phoenix_t_demo.py --out data/PhoenixTDemo [--seed 0 --n_train 2000 \
        --n_dev 150 --n_test 150]
"""
import argparse
import csv
import datetime
import json
import os
import pickle
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from config import PROMPT  # noqa: E402
from demo.data import DEFAULT_MT5, sample_splits, sentence_glosses  # noqa: E402
from demo.signing import LEXICON, synthesize_clip  # noqa: E402
from labels import read_corpus_csv  # noqa: E402

FORMAT_VERSION = 1
SPLITS = ('train', 'dev', 'test')
HEADER = ('name', 'video', 'start', 'end', 'speaker', 'orth', 'translation')
LANGUAGE_PROMPT = PROMPT.format('German')
SHOWS = ('tagesschau', 'heute')
SPLIT_YEARS = {'train': (2009, 2010, 2011), 'dev': (2012,), 'test': (2013,)}  # no shared broadcast

# ---------------------------------------------------------------------------------- language
# The German gloss of each Demo sign (PHOENIX writes glosses in upper case, umlauts spelled out).
GLOSSES = {
    'YESTERDAY': 'GESTERN', 'TOMORROW': 'MORGEN', 'ALWAYS': 'IMMER',
    'I': 'ICH', 'YOU': 'DU', 'TEACHER': 'LEHRER', 'FRIEND': 'FREUND', 'MOTHER': 'MUTTER',
    'DOCTOR': 'ARZT', 'CHILD': 'KIND',
    'BOOK': 'BUCH', 'APPLE': 'APFEL', 'CAR': 'AUTO', 'HOUSE': 'HAUS', 'LETTER': 'BRIEF',
    'BALL': 'BALL', 'CAKE': 'TORTE', 'WATER': 'WASSER',
    'BIG': 'GROSS', 'NEW': 'NEU', 'RED': 'ROT', 'OLD': 'ALT',
    'BUY': 'KAUFEN', 'SEE': 'SEHEN', 'WANT': 'WOLLEN', 'LIKE': 'MOEGEN', 'READ': 'LESEN',
    'WRITE': 'SCHREIBEN', 'EAT': 'ESSEN', 'DRINK': 'TRINKEN', 'GO': 'GEHEN',
    'SCHOOL': 'SCHULE', 'HOME': 'ZUHAUSE', 'STORE': 'LADEN',
    'HAPPY': 'FROH', 'TIRED': 'MUEDE', 'SICK': 'KRANK', 'NOT': 'NICHT',
}
TIMES = {'GESTERN': 'past', 'MORGEN': 'future', 'IMMER': 'always'}
SUBJECTS = {'ICH': ('ich', 1), 'DU': ('du', 2), 'LEHRER': ('der lehrer', 3),
            'FREUND': ('mein freund', 3), 'MUTTER': ('meine mutter', 3),
            'ARZT': ('der arzt', 3), 'KIND': ('das kind', 3)}
# noun and gender; None: a mass noun, without article
NOUNS = {'BUCH': ('buch', 'n'), 'APFEL': ('apfel', 'm'), 'AUTO': ('auto', 'n'),
         'HAUS': ('haus', 'n'), 'BRIEF': ('brief', 'm'), 'BALL': ('ball', 'm'),
         'TORTE': ('torte', 'f'), 'WASSER': ('wasser', None)}
# accusative indefinite article and the adjective ending after it, per gender
ACCUSATIVE = {'m': ('einen', 'en'), 'n': ('ein', 'es'), 'f': ('eine', 'e'), None: ('', 'es')}
ADJECTIVES = {'GROSS': 'groß', 'NEU': 'neu', 'ROT': 'rot', 'ALT': 'alt'}
# infinitive, present (1st, 2nd, 3rd person singular), participle, perfect auxiliary
VERBS = {'KAUFEN': ('kaufen', ('kaufe', 'kaufst', 'kauft'), 'gekauft', 'haben'),
         'SEHEN': ('sehen', ('sehe', 'siehst', 'sieht'), 'gesehen', 'haben'),
         'WOLLEN': ('wollen', ('will', 'willst', 'will'), 'gewollt', 'haben'),
         'MOEGEN': ('mögen', ('mag', 'magst', 'mag'), 'gemocht', 'haben'),
         'LESEN': ('lesen', ('lese', 'liest', 'liest'), 'gelesen', 'haben'),
         'SCHREIBEN': ('schreiben', ('schreibe', 'schreibst', 'schreibt'), 'geschrieben',
                       'haben'),
         'ESSEN': ('essen', ('esse', 'isst', 'isst'), 'gegessen', 'haben'),
         'TRINKEN': ('trinken', ('trinke', 'trinkst', 'trinkt'), 'getrunken', 'haben'),
         'GEHEN': ('gehen', ('gehe', 'gehst', 'geht'), 'gegangen', 'sein')}
AUXILIARIES = {'haben': ('habe', 'hast', 'hat'), 'sein': ('bin', 'bist', 'ist'),
               'werden': ('werde', 'wirst', 'wird')}
PAST_OF_BE = ('war', 'warst', 'war')
PLACES = {'SCHULE': 'zur schule', 'ZUHAUSE': 'nach hause', 'LADEN': 'in den laden'}
STATES = {'FROH': 'froh', 'MUEDE': 'müde', 'KRANK': 'krank'}
GERMAN_VOCABULARY = {*TIMES, *SUBJECTS, *NOUNS, *ADJECTIVES, *VERBS, *PLACES, *STATES, 'NICHT'}
assert set(GLOSSES) == set(LEXICON) and set(GLOSSES.values()) == GERMAN_VOCABULARY


def german_glosses(demo_glosses):
    """The German glosses of a Demo gloss sequence, in the Demo's sign order."""
    return [GLOSSES[g] for g in demo_glosses]


def parse_glosses(glosses):
    """Slots of `[TIME] SUBJECT (NOUN [ADJ] VERB | PLACE GEHEN | STATE) [NICHT]`."""
    rest = list(glosses)
    time = rest.pop(0) if rest and rest[0] in TIMES else None
    subject = rest.pop(0) if rest and rest[0] in SUBJECTS else None
    negated = bool(rest) and rest[-1] == 'NICHT'
    rest = rest[:-1] if negated else rest
    verb = rest.pop() if rest and rest[-1] in VERBS else None
    if subject is None or not rest or rest[0] in VERBS or len(rest) > (2 if verb else 1):
        raise ValueError(f"not a sentence of the grammar: {' '.join(glosses)}")
    return {'time': time, 'subject': subject, 'negated': negated, 'verb': verb,
            'complement': rest}


def noun_phrase(noun, adjective, negated):
    """Accusative indefinite noun phrase; negation turns `ein` into `kein`."""
    word, gender = NOUNS[noun]
    article, ending = ACCUSATIVE[gender]
    if negated:
        article = 'k' + article if article else 'kein'
    adjective = ADJECTIVES[adjective] + ending if adjective else ''
    return [w for w in (article, adjective, word) if w]


def complement_words(slots, negated):
    """Object, place or state, with the negation it carries (`kein` or `nicht`)."""
    head, *adjective = slots['complement']
    if head in NOUNS:
        return noun_phrase(head, adjective[0] if adjective else None, negated)
    if head not in PLACES and head not in STATES:
        raise ValueError(f"{head} is no object, place or state")
    return (['nicht'] if negated else []) + (PLACES.get(head) or STATES[head]).split()


def verb_bracket(verb, person, tense):
    """(finite verb, clause-final verb or None): the two parts of the German verb bracket."""
    if tense == 'future':
        return AUXILIARIES['werden'][person - 1], VERBS[verb][0] if verb else 'sein'
    if tense == 'past':
        if verb is None:
            return PAST_OF_BE[person - 1], None
        return AUXILIARIES[VERBS[verb][3]][person - 1], VERBS[verb][2]
    return (VERBS[verb][1] if verb else AUXILIARIES['sein'])[person - 1], None


def translate(glosses):
    """German sentence of a German gloss sequence: verb second, time adverb first, perfect past,
    `werden` future, `immer`/`nie` after the finite verb; lower case, punctuation a token."""
    slots = parse_glosses(glosses)
    subject, person = SUBJECTS[slots['subject']]
    tense = TIMES.get(slots['time'])
    finite, final = verb_bracket(slots['verb'], person, tense)
    always = tense == 'always'
    adverb = (['nie'] if slots['negated'] else ['immer']) if always else []
    middle = adverb + complement_words(slots, slots['negated'] and not always)
    if tense in ('past', 'future'):
        words = [slots['time'].lower(), finite, *subject.split(), *middle]
    else:
        words = [*subject.split(), finite, *middle]
    return ' '.join(words + ([final] if final else []) + ['.'])


# ---------------------------------------------------------------------------------- files
def dataset_paths(root):
    """Paths of every part of a PhoenixTDemo set under `root`."""
    paths = {'root': root, 'pose_dir': os.path.join(root, 'pose_format'),
             'mt5': os.path.join(root, 'mt5'), 'meta': os.path.join(root, 'meta.json')}
    paths.update({split: os.path.join(root, f'PHOENIX-2014-T.{split}.corpus.csv')
                  for split in SPLITS})
    return paths


def broadcast_names(rng, split, count):
    """(name, speaker) per sentence: weather broadcasts of 4-12 sentences, named as PHOENIX's
    (`11August_2010_Wednesday_tagesschau-3`), one signer per broadcast."""
    names, used = [], set()
    while len(names) < count:
        day = datetime.date(int(rng.choice(SPLIT_YEARS[split])), 1, 1) + datetime.timedelta(
            days=int(rng.integers(365)))
        stem = f"{day.day:02d}{day:%B}_{day.year}_{day:%A}_{SHOWS[rng.integers(len(SHOWS))]}"
        if stem in used:
            continue
        used.add(stem)
        speaker = f"Signer{rng.integers(1, 10):02d}"
        names += [(f"{stem}-{k}", speaker) for k in range(1, rng.integers(5, 14))]
    return names[:count]


def split_rows(records, split, seed):
    """Corpus rows of one split, in HEADER's order."""
    names = broadcast_names(np.random.default_rng([seed, SPLITS.index(split), 1]), split,
                            len(records))
    rows = []
    for (name, speaker), record in zip(names, records):
        orth = german_glosses(sentence_glosses(record))
        rows.append([name, f"{name}/1/*.png", -1, -1, speaker, ' '.join(orth), translate(orth)])
    return rows


def write_split(paths, split, records, seed):
    """Writes one split's pose files and its corpus file; returns its rows."""
    rows = split_rows(records, split, seed)
    for index, (row, record) in enumerate(zip(rows, records)):
        rng = np.random.default_rng([seed, SPLITS.index(split), 0, index])
        with open(os.path.join(paths['pose_dir'], row[0] + '.pkl'), 'wb') as f:
            pickle.dump(synthesize_clip(sentence_glosses(record), rng), f, protocol=4)
    with open(paths[split], 'w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f, delimiter='|', quoting=csv.QUOTE_NONE, lineterminator='\n')
        writer.writerows([HEADER, *rows])
    return rows


def check_honest(rows):
    """Raises when a dev or test translation also occurs in training."""
    train = {row[6] for row in rows['train']}
    shared = [row[6] for split in ('dev', 'test') for row in rows[split] if row[6] in train]
    if shared:
        raise ValueError(f"dev/test translations in training: {shared[:3]}")


def lexicon_words():
    """Every gloss and every word form of the grammar's tables (so that each character, `ß`
    included, is in the tokenizer even when no training sentence uses it)."""
    phrases = [*GLOSSES.values(), *(s for s, _ in SUBJECTS.values()), *(n for n, _ in
               NOUNS.values()), *ADJECTIVES.values(), *PLACES.values(), *STATES.values(),
               *PAST_OF_BE, 'kein nie immer nicht gestern morgen']
    for infinitive, present, participle, _ in VERBS.values():
        phrases += [infinitive, *present, participle]
    phrases += [form for forms in AUXILIARIES.values() for form in forms]
    return [w for phrase in phrases for w in phrase.split()]


def tokenizer_sentences(rows):
    """Training translations and glosses, then each word on its own line (SentencePiece
    proposes pieces only where contexts branch), and the prompt."""
    lines = [row[6] for row in rows] + [row[5] for row in rows]
    words = {w for line in lines for w in line.split() if w.isalpha()} | set(lexicon_words())
    return lines + sorted(words) + [LANGUAGE_PROMPT.strip()] * 4


def is_complete(paths, meta):
    """True when `paths` hold a finished set generated with `meta`'s settings."""
    try:
        with open(paths['meta'], encoding='utf-8') as f:
            stored = json.load(f)
        names = [e['name'] for split in SPLITS for e in read_corpus_csv(paths[split])]
    except (OSError, ValueError):
        return False
    mt5_files = [os.path.join(paths['mt5'], n) for n in ('config.json', 'spiece.model')]
    return (all(stored.get(k) == v for k, v in meta.items()) and all(map(os.path.isfile, mt5_files))
            and len(names) == sum(meta[f'n_{split}'] for split in SPLITS)
            and all(os.path.isfile(os.path.join(paths['pose_dir'], n + '.pkl')) for n in names))


def clear(paths):
    """Removes a previous set; meta.json goes first, so a half-written set is never reused."""
    if os.path.exists(paths['meta']):
        os.remove(paths['meta'])
    for stale in (paths['pose_dir'], paths['mt5']):
        shutil.rmtree(stale, ignore_errors=True)
    os.makedirs(paths['pose_dir'])


def make_phoenix_t_demo(root, seed=0, n_train=2000, n_dev=150, n_test=150, mt5_kwargs=None,
                        overwrite=False):
    """Generates PhoenixTDemo in `root` unless one with the same settings is there; returns its
    paths."""
    paths = dataset_paths(root)
    meta = {'format_version': FORMAT_VERSION, 'seed': seed, 'n_train': n_train, 'n_dev': n_dev,
            'n_test': n_test, 'mt5_kwargs': {**DEFAULT_MT5, **(mt5_kwargs or {})}}
    if not overwrite and is_complete(paths, meta):
        return paths
    clear(paths)
    from demo.tiny_mt5 import build_tiny_mt5  # imports transformers; only needed when generating
    records, held_out = sample_splits(np.random.default_rng(seed), n_train, n_dev, n_test)
    rows = {split: write_split(paths, split, records[split], seed) for split in SPLITS}
    check_honest(rows)
    build_tiny_mt5(paths['mt5'], tokenizer_sentences(rows['train']), seed=seed,
                   **meta['mt5_kwargs'])
    with open(paths['meta'], 'w', encoding='utf-8') as f:
        json.dump({**meta, 'held_out_pairs': [german_glosses(p) for p in held_out]}, f, indent=1)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_flag(parser, '--out', default='data/PhoenixTDemo')
    cli.add_flag(parser, '--seed', type=cli.seed, default=0)
    for name, default in (('n_train', 2000), ('n_dev', 150), ('n_test', 150),
                          ('d_model', DEFAULT_MT5['d_model'])):
        cli.add_flag(parser, '--' + name, type=cli.count, default=default)
    cli.add_flag(parser, '--overwrite', action='store_true', help='regenerate even if complete')
    args = parser.parse_args(argv)
    mt5_kwargs = {'d_model': args.d_model, 'd_ff': 2 * args.d_model}
    paths = make_phoenix_t_demo(args.out, args.seed, args.n_train, args.n_dev, args.n_test,
                                mt5_kwargs, args.overwrite)
    print(paths['root'])


if __name__ == '__main__':
    main()
