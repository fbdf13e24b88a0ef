"""Builds a fingerspelling translation set from real letter recordings, and scores its predictions.

The letters are MediaPipe Holistic `.pose` recordings of one signer per sign language, from the
fingerspelling lexicon that the `spoken-to-signed` package ships (MIT). A word is spelled by
chaining its letters' clips, with short interpolated transitions between them, a random speed
per letter and a small random affine transform and jitter per clip. Words are random
pronounceable letter strings; dev and test words never occur in training. The result uses the
Demo layout (`--dataset Demo --data_root <parent of --out>`): .pose files, Uni-Sign label files
whose text is the word's letters separated by spaces ("c a t"), and a tiny mT5.

    python script/make_fingerspelling_demo.py --lexicon spoken_to_signed-0.4.0-py3-none-any.whl \
        --out data/fingerspelling/Demo --language ase
    python script/make_fingerspelling_demo.py --score out/fingerspelling   # test predictions
"""
import argparse
import csv
import gzip
import io
import json
import os
import pickle
import re
import sys
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
import mediapipe_pose  # noqa: E402
from SLRT_metrics import bleu_1_to_4  # noqa: E402

LEXICON_IN_WHEEL = 'spoken_to_signed/assets/fingerspelling_lexicon/'
FACE_POINTS = sorted({source[1] for sources in mediapipe_pose.HOLISTIC_TO_WHOLEBODY.values()
                      for source in sources if source[0] == mediapipe_pose.FACE}, key=int)
VOWELS = set('aeiouy')
MT5 = dict(vocab_size=64, d_model=128, d_ff=256, num_layers=2, num_heads=4, d_kv=32)


# ----------------------------------------------------------------------------- letters

def lexicon_files(lexicon):
    """{relative path: bytes reader} of a lexicon folder, or of the spoken-to-signed wheel."""
    if os.path.isdir(lexicon):
        def read(rel):
            with open(os.path.join(lexicon, rel), 'rb') as f:
                return f.read()
        return read
    if not zipfile.is_zipfile(lexicon):
        raise SystemExit(f"{lexicon}: neither a lexicon folder nor the spoken-to-signed wheel")
    archive = zipfile.ZipFile(lexicon)
    return lambda rel: archive.read(LEXICON_IN_WHEEL + rel)


def letter_arrays(pose, source):
    """(T, P, 2) coordinates and (T, P) confidences in holistic_header(FACE_POINTS) order."""
    header = mediapipe_pose.holistic_header(1, 1, FACE_POINTS)
    offsets = mediapipe_pose.point_offsets(pose.header)
    wanted = [offsets.get((c.name, p)) for c in header.components for p in c.points]
    if None in wanted:
        raise SystemExit(f"{source}: not a MediaPipe Holistic recording with the needed points")
    data = np.ma.getdata(pose.body.data)[:, 0][:, wanted, :2].astype(np.float64)
    confidence = np.asarray(pose.body.confidence)[:, 0][:, wanted].astype(np.float64)
    return np.nan_to_num(data), np.where(np.isfinite(confidence), confidence, 0)


def load_letters(lexicon, language, fps):
    """({letter: (coords, confidences)} resampled to fps, (width, height)) for one language."""
    from pose_format import Pose
    read = lexicon_files(lexicon)
    rows = [r for r in csv.DictReader(io.TextIOWrapper(io.BytesIO(read('index.csv')), 'utf-8'))
            if r['signed_language'] == language and len(r['words']) == 1 and r['words'].isalpha()]
    if not rows:
        raise SystemExit(f"{lexicon}: no single-letter clips for sign language {language!r}")
    letters, size = {}, None
    for row in sorted(rows, key=lambda r: int(r.get('priority') or 0)):
        letter = row['words'].lower()
        if letter in letters:
            continue
        pose = Pose.read(read(row['path']))
        coords, confidence = letter_arrays(pose, row['path'])
        letters[letter] = mediapipe_pose.resample_frames(coords, confidence, pose.body.fps, fps)
        size = size or (pose.header.dimensions.width, pose.header.dimensions.height)
    return letters, size


# ----------------------------------------------------------------------------- spelling

def transition(last, first, count):
    """`count` frames between two (P, 2)/(P,) frames, linear where both are detected."""
    (end, end_conf), (start, start_conf) = last, first
    both = (end_conf > 0) & (start_conf > 0)
    frames, confs = [], []
    for k in range(1, count + 1):
        w = k / (count + 1)
        near, near_conf = (end, end_conf) if w < 0.5 else (start, start_conf)
        frames.append(np.where(both[:, None], (1 - w) * end + w * start, near))
        confs.append(np.where(both, np.minimum(end_conf, start_conf), near_conf))
    return np.array(frames).reshape(count, *end.shape), np.array(confs).reshape(count, *end_conf.shape)


def spell(word, letters, rng, transition_frames=3, speed=(0.8, 1.25), trim=2):
    """Chains the letters' clips of `word`: (T, P, 2) coordinates, (T, P) confidences."""
    pieces = []
    for letter in word:
        coords, confidence = letters[letter]
        cut_start, cut_end = rng.integers(0, trim + 1, 2)
        keep = slice(min(cut_start, len(coords) // 3), len(coords) - min(cut_end, len(coords) // 3))
        coords, confidence = mediapipe_pose.resample_frames(
            coords[keep], confidence[keep], rng.uniform(*speed), 1.0)
        if pieces:
            last = pieces[-1][0][-1], pieces[-1][1][-1]
            pieces.append(transition(last, (coords[0], confidence[0]), transition_frames))
        pieces.append((coords, confidence))
    return (np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]))


def augment(coords, confidence, rng, size, jitter=1.0):
    """A small random rotation, scale, shear and shift about the frame centre, plus jitter."""
    angle, scale, shear = rng.normal(0, 0.05), rng.uniform(0.9, 1.1), rng.normal(0, 0.04)
    matrix = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = matrix @ np.array([[1, shear], [0, 1]])
    centre = np.array(size, dtype=np.float64) / 2
    shift = rng.normal(0, 0.03, 2) * np.array(size)
    moved = (coords - centre) @ matrix.T + centre + shift
    moved = moved + rng.normal(0, jitter, moved.shape)
    return np.where(confidence[..., None] > 0, moved, 0.0), confidence


def make_words(rng, count, alphabet, lengths=(3, 7)):
    """`count` distinct random pronounceable words: consonants and vowels mostly alternate."""
    vowels = [c for c in alphabet if c in VOWELS] or list(alphabet)
    consonants = [c for c in alphabet if c not in VOWELS] or list(alphabet)
    words = set()
    while len(words) < count:
        length = rng.integers(lengths[0], lengths[1] + 1)
        vowel = rng.random() < 0.5
        letters = []
        for _ in range(length):
            letters.append(rng.choice(vowels if vowel else consonants))
            vowel = not vowel if rng.random() < 0.8 else vowel
        words.add(''.join(letters))
    return sorted(words)


def to_pose(coords, confidence, size, fps):
    from pose_format import Pose
    from pose_format.numpy import NumPyPoseBody
    header = mediapipe_pose.holistic_header(size[0], size[1], FACE_POINTS)
    data = np.zeros(coords.shape[:2] + (3,), dtype=np.float32)
    data[..., :2] = coords
    body = NumPyPoseBody(fps, data[:, None], confidence[:, None].astype(np.float32))
    return Pose(header, body)


# ----------------------------------------------------------------------------- data set

def split_words(rng, alphabet, n_train, n_dev, n_test):
    words = list(make_words(rng, n_train + n_dev + n_test, alphabet))
    rng.shuffle(words)
    held = words[:n_dev + n_test]
    return {'train': words[n_dev + n_test:], 'dev': held[:n_dev], 'test': held[n_dev:]}


def write_split(root, split, words, letters, size, fps, rng):
    labels = {}
    for index, word in enumerate(words):
        name = f"{split}_{index:05d}_{word}"
        coords, confidence = augment(*spell(word, letters, rng), rng, size)
        mediapipe_pose.write_pose(to_pose(coords, confidence, size, fps),
                                  os.path.join(root, 'pose_format', name + '.pose'))
        labels[name] = {'name': name, 'gloss': [c.upper() for c in word], 'text': ' '.join(word),
                        'video_path': name + '.pose'}
    with gzip.open(os.path.join(root, f'labels.{split}'), 'wb') as f:
        pickle.dump(labels, f)


def make_dataset(lexicon, out, language='ase', n_train=1500, n_dev=100, n_test=100, fps=12.5,
                 seed=0):
    """Writes the set to `out` (Demo layout) and returns its meta record."""
    from demo.tiny_mt5 import build_tiny_mt5
    request = {'language': language, 'fps': fps, 'seed': seed, 'n_train': n_train,
               'n_dev': n_dev, 'n_test': n_test}
    meta_path = os.path.join(out, 'meta.json')
    if os.path.isfile(meta_path):
        with open(meta_path, encoding='utf-8') as f:
            meta = json.load(f)
        if {k: meta.get(k) for k in request} == request:
            return meta  # already built with these settings
    rng = np.random.default_rng(seed)
    letters, size = load_letters(lexicon, language, fps)
    alphabet = sorted(letters)
    splits = split_words(rng, alphabet, n_train, n_dev, n_test)
    os.makedirs(os.path.join(out, 'pose_format'), exist_ok=True)
    for split, words in splits.items():
        write_split(out, split, words, letters, size, fps, rng)
    corpus = [' '.join(alphabet)] * 20 + [' '.join(w) for w in splits['train']]
    build_tiny_mt5(os.path.join(out, 'mt5'), corpus, **MT5)
    meta = {**request, 'letters': ''.join(alphabet)}
    with open(meta_path, 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=2)
    return meta


# ----------------------------------------------------------------------------- scoring

def edit_distance(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def read_tmp_file(path, field):
    pattern = re.compile(rf'sample: (.*?), {field}: (.*)')
    with open(path, encoding='utf-8') as f:
        return dict(pattern.fullmatch(line.rstrip('\n')).groups() for line in f if line.strip())


def score(output_dir, phase='test'):
    """Character accuracy (1 - letter edit distance / reference letters), word accuracy and
    BLEU-4 over letters, from the prediction files of either head (the CTC head writes the
    letters as upper-case glosses, the translator as lower-case text)."""
    hyps = {n: h.lower() for n, h in read_tmp_file(
        os.path.join(output_dir, f'{phase}_tmp_pres.txt'), 'prediction').items()}
    refs = {n: r.lower() for n, r in read_tmp_file(
        os.path.join(output_dir, f'{phase}_tmp_refs.txt'), 'ground-truth').items()}
    errors = sum(edit_distance(hyps.get(n, '').split(), r.split()) for n, r in refs.items())
    letters = sum(len(r.split()) for r in refs.values())
    exact = sum(hyps.get(n, '').split() == r.split() for n, r in refs.items())
    bleu4 = bleu_1_to_4(list(refs.values()), [hyps.get(n, '') for n in refs])['bleu4']
    return {'char_accuracy': 100 * (1 - errors / letters), 'word_accuracy': 100 * exact / len(refs),
            'bleu4': bleu4, 'clips': len(refs)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_flag(parser, '--lexicon',
                 help='fingerspelling_lexicon folder or spoken-to-signed wheel')
    cli.add_flag(parser, '--out', help='output folder, e.g. data/fingerspelling/Demo')
    cli.add_flag(parser, '--language', default='ase', help='sign language code (index.csv)')
    cli.add_flag(parser, '--n_train', type=cli.count, default=1500)
    cli.add_flag(parser, '--n_dev', type=cli.count, default=100)
    cli.add_flag(parser, '--n_test', type=cli.count, default=100)
    cli.add_flag(parser, '--fps', type=cli.positive, default=12.5)
    cli.add_flag(parser, '--seed', type=cli.seed, default=0)
    cli.add_flag(parser, '--score', metavar='OUTPUT_DIR', help='score test predictions instead')
    args = parser.parse_args(argv)
    if args.score:
        print(json.dumps(score(args.score)))
        return
    if not (args.lexicon and args.out):
        parser.error('--lexicon and --out are required (or --score)')
    meta = make_dataset(args.lexicon, args.out, args.language, args.n_train, args.n_dev,
                        args.n_test, args.fps, args.seed)
    print(json.dumps(meta))


if __name__ == '__main__':
    main()
