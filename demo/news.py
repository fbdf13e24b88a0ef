"""Generates a CSL-News-shaped set in the Demo sign language: long clips, subtitles, no glosses.

Uni-Sign pretrains on CSL-News, news broadcasts cut into clips of a few seconds with their
subtitles. This writes that layout with clips of the Demo language (demo/data.py), so
pretraining.py runs with no download and its checkpoints fine-tune on the Demo set:

    <out>/CSL_News/CSL_News_Labels.json  [{"video": "NAME.mp4", "pose": "NAME.pkl", "text": ...}]
    <out>/CSL_News/pose_format/NAME.pkl   as Uni-Sign's pose extraction writes them: lists of
                                          per-frame keypoints (1, 133, 2) divided by the frame
                                          size and scores (1, 133)
    <out>/CSL_News/meta.json

A clip lasts 2-15 s at 25 fps (uniform) and signs as many whole sentences as fit, then rests;
its text is their translations. Names follow CSL-News (PROGRAMME_DATE_START-END_ID). No sentence
holds a gloss pair that the Demo set of the same seed keeps for dev and test, so pretraining
never sees a Demo evaluation sentence. As in Uni-Sign, the last 1% of the list is held out.

    python -m demo.news --out data --n 2000 --seed 0
    python -m demo.data --out data/Demo --seed 0          # the tiny mT5 both sets use
    deepspeed pretraining.py --data_root data --pose_root data --mt5_path data/Demo/mt5 ...
"""
import argparse
import datetime
import json
import os
import pickle
import shutil

import numpy as np

import cli
from cli import add_flag

from demo.data import choose_held_out, sample_sentence, sentence_glosses, sentence_text
from demo.signing import clip_knots, knots_frames, render_clip, sample_signer

FORMAT_VERSION = 1
FPS = 25
SECONDS = (2, 15)
FRAME_SIZE = 512  # pixels; the rendered signer stands in a 512 x 512 frame
CLIPS_PER_BROADCAST = 20
PROGRAMMES = ('Evening-News', 'Morning-Report', 'Weekly-Review')
LABEL_FILE = 'CSL_News_Labels.json'
RNG_STREAM = 3  # demo/data.py draws its clips from streams 0-2 (its splits)


def news_paths(out):
    """Where config.py's CSL_News entry looks with --data_root out --pose_root out."""
    root = os.path.join(out, 'CSL_News')
    return {'root': root, 'labels': os.path.join(root, LABEL_FILE),
            'pose_dir': os.path.join(root, 'pose_format'), 'meta': os.path.join(root, 'meta.json')}


def allowed_sentence(rng, held_out):
    """A random sentence record holding none of the Demo set's held-out gloss pairs."""
    while True:
        s = sample_sentence(rng)
        glosses = sentence_glosses(s)
        pairs = {(a, b) for i, a in enumerate(glosses) for b in glosses[i + 1:]}
        if not pairs & held_out:
            return s


def news_clip(rng, n_frames, held_out):
    """(Uni-Sign pose dict, text) of a clip of n_frames: as many whole sentences as fit, then
    rest; a first sentence longer than n_frames (at most ~160 frames) lengthens the clip."""
    signer = sample_signer(rng)
    sentences, knots = [], None
    while knots is None or knots_frames(knots) < n_frames:
        candidate = sentences + [allowed_sentence(rng, held_out)]
        glosses = [g for s in candidate for g in sentence_glosses(s)]
        longer = clip_knots(glosses, rng, signer)
        if sentences and knots_frames(longer) > n_frames:
            break
        sentences, knots = candidate, longer
    pose = render_clip(knots, signer, rng, n_frames)
    text = ' '.join(sentence_text(s) for s in sentences)
    return pose, text


def uni_sign_layout(pose):
    """Per-frame lists with coordinates divided by the frame size, as Uni-Sign's extraction
    stores them."""
    keypoints = pose['keypoints'] / np.float32(FRAME_SIZE)
    return {'keypoints': list(keypoints), 'scores': list(pose['scores'])}


def clip_name(index, start, length):
    """CSL-News style name: broadcasts of CLIPS_PER_BROADCAST consecutive clips, one a day;
    start is the clip's first frame in its broadcast."""
    broadcast = index // CLIPS_PER_BROADCAST
    day = datetime.date(2020, 1, 1) + datetime.timedelta(days=broadcast)
    programme = PROGRAMMES[broadcast % len(PROGRAMMES)]
    return f"{programme}_{day:%Y%m%d}_{start}-{start + length}_{index}"


def write_clips(pose_dir, n, seed):
    """Writes n pose files; returns the label list."""
    held_out = {tuple(pair) for pair in choose_held_out(np.random.default_rng(seed))}
    labels, start = [], 0
    for index in range(n):
        rng = np.random.default_rng([seed, RNG_STREAM, index])
        n_frames = int(rng.integers(SECONDS[0] * FPS, SECONDS[1] * FPS + 1))
        pose, text = news_clip(rng, n_frames, held_out)
        start = 0 if index % CLIPS_PER_BROADCAST == 0 else start
        name = clip_name(index, start, len(pose['scores']))
        start += len(pose['scores'])
        with open(os.path.join(pose_dir, name + '.pkl'), 'wb') as f:
            pickle.dump(uni_sign_layout(pose), f, protocol=4)
        labels.append({'video': name + '.mp4', 'pose': name + '.pkl', 'text': text})
    return labels


def is_complete(paths, meta):
    try:
        with open(paths['meta'], encoding='utf-8') as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return False
    poses = os.listdir(paths['pose_dir']) if os.path.isdir(paths['pose_dir']) else []
    return (stored == meta and os.path.isfile(paths['labels'])
            and sum(name.endswith('.pkl') for name in poses) == meta['n'])


def make_news(out, n=2000, seed=0, overwrite=False):
    """Writes n clips and their label list under out/CSL_News unless a matching set is there;
    returns its paths."""
    paths = news_paths(out)
    meta = {'format_version': FORMAT_VERSION, 'n': n, 'seed': seed, 'fps': FPS,
            'seconds': list(SECONDS)}
    if not overwrite and is_complete(paths, meta):
        return paths
    if os.path.exists(paths['meta']):
        os.remove(paths['meta'])  # written last: a half-written set is never reused
    shutil.rmtree(paths['pose_dir'], ignore_errors=True)
    os.makedirs(paths['pose_dir'])
    labels = write_clips(paths['pose_dir'], n, seed)
    with open(paths['labels'], 'w', encoding='utf-8') as f:
        json.dump(labels, f, ensure_ascii=False, indent=1)
    with open(paths['meta'], 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=1)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flag(parser, '--out', default='data', help='writes OUT/CSL_News (default: data)')
    add_flag(parser, '--n', type=cli.count, default=2000, help='clips')
    add_flag(parser, '--seed', type=cli.seed, default=0, help='random seed; sentences avoid the held-out pairs of the Demo set of this seed')
    add_flag(parser, '--overwrite', action='store_true', help='regenerate even if complete')
    args = parser.parse_args(argv)
    paths = make_news(args.out, args.n, args.seed, args.overwrite)
    print(paths['root'])


if __name__ == '__main__':
    main()
