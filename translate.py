"""Translates pose files (.pkl or .pose) to text with a trained translator, or to glosses with a
CTC recognizer (--head ctc).

    python translate.py --checkpoint out/x/best_checkpoint.pth clips/ extra.pose 'more/*.pkl'
    python translate.py --checkpoint out/x/best_checkpoint.pth --export models/x   # one folder
    python translate.py --model models/x clips/ --format jsonl --output translations.jsonl
    python translate.py --checkpoint out/x/best_checkpoint.pth signing.mp4 --keep_poses poses/

A checkpoint written by fine_tuning.py holds the training flags; its mT5 directory (tokenizer
and config) is the one it was trained with, or --mt5_path. An exported folder holds everything
(model_export.py: model.safetensors, config.json with the flags, the tokenizer, a model card
README.md) and translates exactly as its checkpoint. Inputs are files, globs or folders (searched
recursively for .pkl and .pose); clips are named by their path below the folder, or by their
file name, without extension. Videos (.mp4 .avi .mov .mkv .webm .m4v) are inputs too: their
poses are extracted first (video_poses.py, in the environment `bash script/setup_video.sh`
makes). Output: `name<TAB>text` lines, or JSON lines with --format jsonl.
A model trained on a mix of datasets (`--dataset A+B`, mixing.py) saw each clip with its own
dataset's prompt: --dataset NAME says which dataset of the mix the clips belong to (default: the
first), and its prompt is the one given.
In another program, `Translator` loads a model once and translates lists of inputs:

    translator = Translator.load('out/x/best_checkpoint.pth', '--device', 'cpu')
    translator(['clip.pkl', 'clips/'])  # [(name, text)], as this script prints them

Clips are batched in input order and padded as in training (with copies of their last frame,
which the temporal convolutions see), so a clip's translation can depend slightly on its batch:
the trainer's --batch-size and --num_beams reproduce its evaluation predictions exactly, and
--batch_size 1 makes every translation independent of the others.
"""
import glob
import json
import os
import sys

import torch

import beam_search
import cli
import config
import model_export
import progress
import video_poses
from config import ConfigError
from ctc_head import GlossVocab
from keypoints import DataError
from mix_flags import dataset_names
from poses import clip_parts, collate_clips, read_pose
from run_folder import check_writable_file, check_writable_folder
from tasks import check_unknown_rate, check_vocabulary, decode_batch

POSE_EXTENSIONS = ('.pkl', '.pose')
PROGRESS_EVERY = 100  # clips between progress lines on a stream that is not a terminal
# Flags of the model's shape that a checkpoint without stored flags can be given here.
MODEL_FLAGS = ('dataset', 'stgcn_channels', 'hidden_dim', 'temporal_layers', 'temporal_kernel')


class UsageError(Exception):
    """A problem with the command line or its inputs; the message says which."""


def parse_args(argv=None, inputs_required=True):
    p = cli.ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()))
    cli.add_flag(p, 'inputs', nargs='*', help='pose files, videos, globs or folders')
    g = p.add_argument_group('model (one of --checkpoint, --model)')
    source = g.add_mutually_exclusive_group(required=True)
    cli.add_flag(source, '--checkpoint', metavar='FILE',
                 help="fine_tuning.py weight file ({'model', 'args'})")
    cli.add_flag(source, '--model', metavar='DIR', help='folder written by --export')
    cli.add_flag(g, '--mt5_path', metavar='DIR', help='mT5 folder (tokenizer, config) for --checkpoint')
    cli.add_flag(g, '--export', metavar='DIR',
                    help='write the model as one folder (weights, config, tokenizer, card) to DIR')
    cli.add_flag(g, '--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                 help='torch device to run on')
    cli.add_flag(g, '--dtype', choices=['fp32', 'bf16', 'fp16'], default='fp32',
                 help='weights and activations precision')
    g = p.add_argument_group('decoding')
    cli.add_flag(g, '--num_beams', type=cli.count, help="beam width (default: the checkpoint's)")
    cli.add_flag(g, '--batch_size', type=cli.count, default=8,
                 help='clips per batch (1: each translation independent of the others)')
    cli.add_flag(g, '--max_new_tokens', type=cli.count,
                 help="longest output in tokens (default: the checkpoint's)")
    cli.add_flag(g, '--decode_pool', type=cli.non_negative_int,
                    help="beam rows of several batches decoded together, same output "
                         "(default 64; 0: batch by batch)")
    cli.add_flag(g, '--ctc_beam', type=cli.count,
                    help="CTC recognizer: prefix beam width, 1 greedy (default: the checkpoint's)")
    g = p.add_argument_group('input and output')
    cli.add_flag(g, '--max_length', type=cli.count,
                    help="frames kept per clip (default: the checkpoint's)")
    cli.add_flag(g, '--fps', type=cli.positive, help='resample .pose clips to this frame rate')
    cli.add_flag(g, '--max_unk_rate', type=cli.float_range(0, 1),
                    help="stop when more of the prompt's tokens than this are <unk> under the "
                         "mT5 tokenizer (default: the checkpoint's; 1: never)")
    cli.add_flag(g, '--skip_bad_samples', action='store_true',
                    help='skip unreadable or invalid pose files (counted) instead of stopping')
    cli.add_flag(g, '--format', choices=['tsv', 'jsonl'], default='tsv',
                 help='tsv: name<TAB>text lines; jsonl: one JSON object per clip')
    cli.add_flag(g, '--output', metavar='FILE', help='output file (default: standard output)')
    g = p.add_argument_group('checkpoints without stored flags')
    cli.add_flag(g, '--dataset',
                    help="prompt language / flags for checkpoints without stored flags; for a "
                         "model trained on a mix (--dataset A+B): the dataset of the mix the "
                         "clips belong to, whose prompt is given (default: the first)")
    cli.add_flag(g, '--stgcn_channels', type=cli.count_list, help='ST-GCN widths')
    cli.add_flag(g, '--hidden_dim', type=cli.count, help='width of each body part\'s features')
    cli.add_flag(g, '--temporal_layers', type=cli.count, help='temporal ST-GCN blocks')
    cli.add_flag(g, '--temporal_kernel', type=cli.odd_count, help='temporal kernel size (odd)')
    video_poses.add_video_flags(p)
    args = p.parse_args(argv)
    if inputs_required and not args.inputs and not args.export:
        p.error('give pose files or videos to translate, or --export DIR')
    return args


# ----------------------------------------------------------------------------- model

MT5_ONLY = ('--num_beams', '--max_new_tokens', '--decode_pool', '--max_unk_rate', '--mt5_path')


def refuse_flags(args, flags, source):
    """Flags that cannot act on this model's head stop here, before it is built."""
    head = model_export.head_of(flags)
    given = {name for name in MT5_ONLY if getattr(args, name[2:]) is not None}
    refused = sorted(given) if head == 'ctc' else (['--ctc_beam'] if args.ctc_beam else [])
    if refused:
        what = ("a CTC recognizer (--head ctc), which writes glosses without mT5" if head == 'ctc'
                else "a translator, which has no CTC head")
        raise UsageError(f"{', '.join(refused)} cannot act: {source} is {what}")


def load_from_checkpoint(path, args, overrides):
    from models import (CTCRecognizer, SignTranslator, load_checkpoint_file,
                        load_checkpoint_weights)
    if os.path.isdir(path):
        raise UsageError(f"--checkpoint {path} is a folder, not a weight file (a folder written "
                         "by --export is read with --model)")
    if not os.path.isfile(path):
        raise UsageError(f"--checkpoint {path} does not exist")
    saved = load_checkpoint_file(path)
    stored = saved.get('args') if isinstance(saved, dict) else None
    if is_mix(stored):  # --dataset picks a dataset of the mix, kept in the flags as trained
        overrides = dict(overrides, dataset=None)
    elif args.dataset and isinstance(stored, dict) and stored.get('language') \
            and stored.get('dataset') not in (None, args.dataset):
        raise UsageError(f"--dataset {args.dataset} cannot act on --checkpoint {path}: it stores "
                         f"its dataset ({stored['dataset']}) and prompt language; --dataset is "
                         "for checkpoints without stored flags, and for models of a mix")
    flags = model_export.model_flags(stored, overrides)
    refuse_flags(args, flags, f"--checkpoint {path}")
    mix_member(args, flags)
    if flags.task == 'G2T':
        raise UsageError(f"--checkpoint {path} is a gloss-to-text model (--task G2T): it reads "
                         "glosses, not poses; start a translator's mT5 from it with "
                         "fine_tuning.py --init_lm")
    info = {k: v for k, v in saved.items() if k not in ('model', 'args')} \
        if isinstance(saved, dict) else {}
    if model_export.head_of(flags) == 'ctc':
        if not isinstance(info.get('gloss_vocab'), dict):
            raise UsageError(f"--checkpoint {path} is a CTC recognizer without its gloss "
                             "vocabulary (gloss_vocab): use a checkpoint written by fine_tuning.py")
        model = CTCRecognizer(flags, GlossVocab.from_state_dict(info['gloss_vocab']).num_classes)
    else:
        flags.mt5_path = args.mt5_path or flags.mt5_path
        if not flags.mt5_path or not os.path.isdir(flags.mt5_path):
            raise UsageError(f"mT5 folder {flags.mt5_path!r} (tokenizer and config for {path}) "
                             "not found; pass --mt5_path")
        model = SignTranslator(flags)
    load_checkpoint_weights(model, saved, source=path)
    return model, flags, info


def load_model(args):
    """(model, flags, info) from --checkpoint or --model, with the checks of its head."""
    if args.checkpoint:
        overrides = {name: getattr(args, name) for name in MODEL_FLAGS}
        overrides['ctc_beam'] = args.ctc_beam
        model, flags, info = load_from_checkpoint(args.checkpoint, args, overrides)
    else:
        stored = model_export.read_flags(args.model)
        fixed = [f"--{name}" for name in (*MODEL_FLAGS, 'mt5_path') if getattr(args, name)
                 and not (name == 'dataset' and is_mix(stored))]
        if fixed:
            raise UsageError(f"{', '.join(fixed)} cannot act on --model {args.model}: an "
                             "exported folder holds its own flags, tokenizer and mT5 config")
        flags = model_export.model_flags(stored)
        refuse_flags(args, flags, f"--model {args.model}")
        mix_member(args, flags)
        model, flags, info = model_export.load_exported(args.model)
        flags.ctc_beam = args.ctc_beam or flags.ctc_beam
    if model_export.head_of(flags) == 'translator':
        use_prompt_of(model, args, flags)
        check_vocabulary(flags.mt5_path, model.mt5_tokenizer, model.mt5_model.config.vocab_size)
        max_unk_rate = flags.max_unk_rate if args.max_unk_rate is None else args.max_unk_rate
        check_unknown_rate(flags.mt5_path, model.mt5_tokenizer, [model.prompt], max_unk_rate,
                           "prompt")
    return model, flags, info


def is_mix(stored):
    """Whether stored flags are those of a model trained on a mix of datasets."""
    return isinstance(stored, dict) and isinstance(stored.get('dataset'), str) and \
        len(dataset_names(stored['dataset'])) > 1


def mix_member(args, flags):
    """The dataset of the model's mix the clips belong to (--dataset, default the first);
    None for a model of one dataset."""
    names = dataset_names(flags.dataset)
    if len(names) == 1:
        return None
    if args.dataset is not None and args.dataset not in names:
        raise UsageError(f"--dataset {args.dataset} is not a dataset of the mix the model was "
                         f"trained on ({flags.dataset}); choose one of {', '.join(names)}")
    return args.dataset or names[0]


def use_prompt_of(model, args, flags):
    """For a mix's model, its prompt becomes that of the clips' dataset, said on stderr."""
    name = mix_member(args, flags)
    if name is None:
        return
    spec = config.get_dataset(name)
    model.lang, model.prompt = spec.language, spec.prompt
    how = '--dataset' if args.dataset else "the mix's first dataset; --dataset NAME picks another"
    print(f"translating clips of {name} ({how}; the model was trained on {flags.dataset}): "
          f"prompt {spec.prompt!r}", file=sys.stderr)


# ----------------------------------------------------------------------------- inputs

def readable(path):
    return path.endswith(POSE_EXTENSIONS) or video_poses.is_video(path)


def collect_inputs(items, video=None, skipped_videos=None):
    """[(name, path)] for files, globs and folders, in the given order (folders and globs sorted).
    Videos are replaced by the pose files extracted from them (see video_clips)."""
    clips = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(p for p in glob.glob(os.path.join(item, '**', '*'), recursive=True)
                           if readable(p) and os.path.isfile(p))
            if not found:
                raise UsageError(f"{item}: no .pkl or .pose files or videos in this folder")
            clips += [(os.path.splitext(os.path.relpath(p, item))[0].replace(os.sep, '/'), p)
                      for p in found]
        elif os.path.isfile(item):
            if not readable(item):
                raise UsageError(f"{item}: not a pose file (expected .pkl or .pose) or a video")
            clips.append((os.path.splitext(os.path.basename(item))[0], item))
        else:
            found = sorted(p for p in glob.glob(item, recursive=True) if readable(p))
            if not found:
                raise UsageError(f"{item}: no such file, folder or matching pose files")
            clips += [(os.path.splitext(os.path.basename(p))[0], p) for p in found]
    return video_clips(clips, video, skipped_videos)


def video_clips(clips, args=None, skipped=None):
    """`clips` with each video's path replaced by its extracted pose pickle; `args`: this
    script's flags (estimator, workers, --keep_poses, --skip_bad_samples; default: defaults).
    A video that gives no poses stops here, or with --skip_bad_samples goes to `skipped`."""
    videos = [(name, path) for name, path in clips if video_poses.is_video(path)]
    refused = video_poses.video_refusals(args, bool(videos)) if args else []
    if refused:
        raise UsageError(refused[0])
    if not videos:
        return clips
    estimator = getattr(args, 'pose_estimator', None) or 'mediapipe'
    if getattr(args, 'keep_poses', None):
        check_writable_folder(args.keep_poses, "--keep_poses")
    try:
        targets = video_poses.pose_targets(videos, estimator, getattr(args, 'keep_poses', None))
        failed = video_poses.extract_videos(targets, estimator,
                                            getattr(args, 'video_workers', None) or 1)
    except video_poses.VideoError as error:
        raise UsageError(str(error)) from None
    if failed and not getattr(args, 'skip_bad_samples', False):
        raise UsageError(f"{'; '.join(failed.values())} (--skip_bad_samples skips such files)")
    for reason in failed.values():
        print(f"skipped {reason}", file=sys.stderr)
        if skipped is not None:
            skipped.append(reason)
    return [(name, targets.get(path, path)) for name, path in clips if path not in failed]


def read_batches(clips, batch_size, max_length, fps, skip_bad, skipped):
    """Yields ([names], [paths], batch); bad files raise, or with skip_bad go to `skipped`."""
    names, paths, parts = [], [], []
    for name, path in clips:
        try:
            parts.append(clip_parts(read_pose(path, fps=fps), max_length))
        except DataError as error:
            if not skip_bad:
                raise UsageError(f"{error} (--skip_bad_samples skips such files)") from None
            skipped.append(str(error))
            print(f"skipped {error}", file=sys.stderr)
            continue
        names.append(name)
        paths.append(path)
        if len(parts) == batch_size:
            yield names, paths, collate_clips(parts, names)
            names, paths, parts = [], [], []
    if parts:
        yield names, paths, collate_clips(parts, names)


# ----------------------------------------------------------------------------- translation

def format_line(name, path, text, fmt):
    if fmt == 'jsonl':
        return json.dumps({'name': name, 'file': path, 'text': text}, ensure_ascii=False) + '\n'
    return f"{name}\t{' '.join(text.split())}\n"  # tabs and newlines would break the columns


@torch.no_grad()
def clip_texts(model, clips, args, flags, info, skipped):
    """(name, path, text) per readable clip, in input order; with --skip_bad_samples the messages
    of unreadable ones go to `skipped`. Beam search is pooled over batches (--decode_pool) where
    it reproduces generate; a CTC recognizer gives the glosses of its sequence output."""
    max_length = args.max_length or flags.max_length
    batches = read_batches(clips, args.batch_size, max_length, args.fps, args.skip_bad_samples,
                           skipped)
    if model_export.head_of(flags) == 'ctc':
        results = gloss_texts(model, batches, args, flags, info)
    else:
        results = mt5_texts(model, batches, args, flags)
    for names, paths, texts in results:
        yield from zip(names, paths, texts)


def translate(model, clips, args, flags, info, out):
    """Writes one line per readable clip to `out`, in input order; returns (translated, skipped
    messages)."""
    skipped, done = [], 0
    texts = progress.track(clip_texts(model, clips, args, flags, info, skipped), len(clips),
                           'translating', PROGRESS_EVERY, stream=sys.stderr)
    for name, path, text in texts:
        out.write(format_line(name, path, text, args.format))
        out.flush()
        done += 1
    return done, skipped


def on_device(batch, device):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def gloss_texts(model, batches, args, flags, info):
    """(names, paths, gloss strings) per batch, decoded as the trainer's evaluation does."""
    vocab = GlossVocab.from_state_dict(info['gloss_vocab'])
    for names, paths, batch in batches:
        out = model(on_device(batch, args.device))
        hypotheses = decode_batch(out['seq_logits'], out['feat_len'].tolist(),
                                  flags.ctc_beam)
        yield names, paths, [' '.join(vocab.decode(ids)) for ids in hypotheses]


def mt5_texts(model, batches, args, flags):
    beams = args.num_beams or flags.num_beams
    max_new_tokens = args.max_new_tokens or flags.max_new_tokens
    pool = 64 if args.decode_pool is None else args.decode_pool
    pooled = pool > 0 and not beam_search.unsupported_settings(
        model.mt5_model.generation_config, beams)
    for names, paths, ids in (pooled_ids if pooled else batch_ids)(
            model, batches, args, beams, max_new_tokens, pool):
        yield names, paths, model.mt5_tokenizer.batch_decode(ids, skip_special_tokens=True)


def batch_ids(model, batches, args, beams, max_new_tokens, pool):
    for names, paths, batch in batches:
        yield names, paths, model.generate(on_device(batch, args.device),
                                           max_new_tokens=max_new_tokens, num_beams=beams)


def pooled_ids(model, batches, args, beams, max_new_tokens, pool):
    """(names, paths, ids) per batch in input order, each batch as soon as it and all batches
    before it are decoded."""
    def encoded():
        for names, paths, batch in batches:
            states, mask = model.encode(on_device(batch, args.device))
            yield (names, paths), states, mask

    for (names, paths), ids in beam_search.pooled_generate_in_order(
            model.mt5_model, encoded(), beams, max_new_tokens, pool):
        yield names, paths, ids


class Translator:
    """A model loaded once, with the checks above, that translates inputs in this process."""

    def __init__(self, args):
        self.args = args
        self.model, self.flags, self.info = load_model(args)
        self.placed = False

    @classmethod
    def load(cls, source, *options):
        """From a checkpoint file or an exported folder; `options` are this script's flags."""
        kind = '--model' if os.path.isdir(source) else '--checkpoint'
        return cls(parse_args([kind, source, *options], inputs_required=False))

    @property
    def head(self):
        return model_export.head_of(self.flags)

    def ready(self):
        """The model on --device in --dtype, in evaluation mode (after any export)."""
        if not self.placed:
            dtype = {'fp32': torch.float32, 'bf16': torch.bfloat16,
                     'fp16': torch.float16}[self.args.dtype]
            self.model.to(device=self.args.device, dtype=dtype).eval()
            self.placed = True
        return self.model

    def results(self, clips, skipped):
        """(name, path, text) per readable clip of collect_inputs' [(name, path)]."""
        return clip_texts(self.ready(), clips, self.args, self.flags, self.info, skipped)

    def __call__(self, inputs):
        """[(name, text)] for files, globs and folders, in the order this script prints them."""
        return [(name, text) for name, _, text in self.results(collect_inputs(inputs), [])]

    def write(self, clips, out):
        return translate(self.ready(), clips, self.args, self.flags, self.info, out)


def main(argv=None):
    args = parse_args(argv)
    if args.output:
        check_writable_file(args.output, "--output")
    if args.export:
        check_writable_folder(args.export, "--export")
    video_skipped = []
    clips = collect_inputs(args.inputs, args, video_skipped)
    translator = Translator(args)
    if args.export:
        model_export.export(translator.model, translator.flags, translator.info, args.export)
        print(f"exported the model to {args.export}", file=sys.stderr)
    if not clips:
        return
    out = open(args.output, 'w', encoding='utf-8') if args.output else sys.stdout
    try:
        done, skipped = translator.write(clips, out)
    finally:
        if args.output:
            out.close()
    skipped += video_skipped
    message = f"translated {done} of {len(clips) + len(video_skipped)} clips"
    print(message + (f", skipped {len(skipped)} bad files" if skipped else ''), file=sys.stderr)


if __name__ == '__main__':
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    try:
        main()
    except (UsageError, ConfigError, DataError) as error:
        sys.exit(f"translate.py: error: {error}")
