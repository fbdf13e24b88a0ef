"""Checks every label entry and pose file of a dataset's splits, as the trainers' pre-scan does.

    python script/check_data.py --dataset CSL_Daily
    python script/check_data.py --dataset Demo --data_root data --report data_report.json

Paths come from config.py and the same --dataset/--data_root/--pose_root flags as the trainer.
Prints every bad sample with its file and problem, the count of each kind of problem and clip
length statistics per split, and warns of clips found in two splits; --report also writes them
as JSON. While reading it shows a progress bar on a terminal, otherwise a line every 30 s and
one when each split is done. Exit status: 0 when everything is usable, 1 when any sample is bad or a split has no
usable sample, 2 when a label file or pose folder cannot be used at all.
"""
import json
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import config  # noqa: E402
import cli  # noqa: E402
from run_folder import check_writable_file  # noqa: E402
from cli import add_flag  # noqa: E402
from datasets import S2T_Dataset  # noqa: E402
from keypoints import DataError  # noqa: E402
from keypoints import DEFAULT_MAX_FRAMES  # noqa: E402
import progress  # noqa: E402
from sample_checks import (PROGRESS_SECONDS, clip_identities, length_stats,  # noqa: E402
                           problem_kind, scan_samples, split_overlaps)


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()))
    g = parser.add_argument_group('data (as the trainer finds it)')
    add_flag(g, '--dataset', default='CSL_Daily',
                        help=f"one of {', '.join(config.DATASETS)}")
    add_flag(g, '--data_root', default=None, metavar='DIR', help='label root (see config.py)')
    add_flag(g, '--pose_root', default=None, metavar='DIR', help='pose root (see config.py)')
    add_flag(g, '--splits', default=','.join(config.PHASES), help='comma-separated')
    g = parser.add_argument_group('checks (the trainer\'s flags of the same name)')
    add_flag(g, '--max_length', type=cli.count, default=256,
                        help='frames the trainer keeps per clip (counts the longer clips)')
    add_flag(g, '--max_frames_per_clip', type=cli.count, default=DEFAULT_MAX_FRAMES,
             help='refuse clips with more frames, as the trainer does')
    add_flag(g, '--pose_fps', type=cli.positive, default=None,
             help='.pose inputs are resampled to this rate, as the trainer does with it')
    g = parser.add_argument_group('running and output')
    add_flag(g, '--workers', type=cli.count, default=os.cpu_count() or 1,
                        help='reading processes (default: all cores)')
    add_flag(g, '--report', default=None, metavar='FILE',
             help='also write the report to this JSON file')
    return parser.parse_args(argv)


def check_split(args, phase, label_path, pose_dir):
    """The report of one split: its samples, every problem and the clip lengths."""
    dataset = S2T_Dataset(label_path, pose_dir, phase, dataset_name=args.dataset,
                          max_length=args.max_length, defer_label_errors=True,
                          max_frames=args.max_frames_per_clip, pose_fps=args.pose_fps)
    meter = progress.Meter(len(dataset), f"checking {phase}", seconds=PROGRESS_SECONDS,
                           final=True)  # off a terminal: a line now and then, and at the end
    durations, pose_problems = scan_samples(dataset, workers=args.workers, progress=meter)
    problems = [{'name': None, 'file': label_path, 'problem': message}
                for message in dataset.label_problems]
    problems += [{'name': dataset.entries[index]['name'], 'file': dataset.pose_path(index),
                  'problem': pose_problems[index]} for index in sorted(pose_problems)]
    for problem in problems:
        problem['kind'] = problem_kind(problem['problem'])
    lengths = list(durations.values())
    return {'label_file': label_path, 'pose_dir': pose_dir,
            'samples': len(dataset) + len(dataset.label_problems), 'usable': len(durations),
            'bad': len(problems), 'problem_counts': dict(Counter(p['kind'] for p in problems)),
            'problems': problems, 'clip_frames': length_stats(lengths),
            'max_length': args.max_length,
            'longer_than_max_length': sum(n > args.max_length for n in lengths),
            'clips': clip_identities(dataset)}


def check_dataset(args):
    """{'dataset', 'splits': {phase: report}, 'bad'}; raises ConfigError/DataError when a label
    file or pose folder cannot be used at all."""
    paths = config.resolve_paths(args.dataset, args.data_root, args.pose_root)
    phases = [phase for phase in args.splits.split(',') if phase]
    unknown = sorted(set(phases) - set(config.PHASES))
    if unknown:
        raise config.ConfigError(f"unknown split(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(config.PHASES)}")
    config.validate_paths(paths, phases, need_mt5=False)
    splits = {phase: check_split(args, phase, paths['labels'][phase], paths['pose_dirs'][phase])
              for phase in phases if paths['labels'][phase] is not None}
    overlaps = split_overlaps({phase: split.pop('clips') for phase, split in splits.items()})
    empty = [phase for phase, split in splits.items() if split['usable'] == 0]
    return {'dataset': args.dataset, 'splits': splits, 'overlaps': overlaps, 'empty': empty,
            'bad': sum(split['bad'] for split in splits.values())}


def print_report(report):
    for phase, split in report['splits'].items():
        print(f"{phase}: {split['usable']} of {split['samples']} samples usable "
              f"({split['label_file']}, poses in {split['pose_dir']})")
        for problem in split['problems']:
            print(f"  [{problem['kind']}] {problem['problem']}")
        if split['problem_counts']:
            counts = ', '.join(f"{kind} {n}" for kind, n in split['problem_counts'].items())
            print(f"  problems: {counts}")
        stats = split['clip_frames']
        if stats:
            print(f"  clip frames: min {stats['min']}, mean {stats['mean']}, median "
                  f"{stats['median']:g}, 95% {stats['p95']:g}, max {stats['max']}; "
                  f"{split['longer_than_max_length']} longer than {split['max_length']}")
    for pair, count in report['overlaps'].items():
        print(f"warning: {count} clips of {pair.split('/')[1]} are also in {pair.split('/')[0]} "
              "(same name or pose file)")
    for phase in report['empty']:
        print(f"error: the {phase} split has no usable sample (the trainer stops on it)")
    verdict = f"{report['bad']} bad samples" if report['bad'] else "every sample is usable"
    print(f"{report['dataset']}: {verdict}")


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.report:
            check_writable_file(args.report, "--report")
        report = check_dataset(args)
    except (config.ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_report(report)
    if args.report:
        with open(args.report, 'w', encoding='utf-8') as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
    return 1 if report['bad'] or report['empty'] else 0


if __name__ == '__main__':
    sys.exit(main())
