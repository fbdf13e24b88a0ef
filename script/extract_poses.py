"""Extracts COCO-WholeBody-133 poses from videos into Uni-Sign pose pickles or .pose files.

Runs in the video environment (`bash script/setup_video.sh` makes .venv-video):

    .venv-video/bin/python script/extract_poses.py videos/ --out poses/ --workers 4
    .venv-video/bin/python script/extract_poses.py 'raw/*.mp4' --out poses/ --format pose
    .venv-video/bin/python script/extract_poses.py clip.mp4 --out poses/ --estimator rtmpose

Inputs are videos, folders (searched recursively for videos; a clip is named by its path below
the folder) or globs; each gives OUT/NAME.pkl (or NAME.pose). Outputs are written to a temporary
file and renamed when whole, so a run that stops can be started again: clips whose output reads
back whole are skipped, the others (and left-over temporary files) done again. Videos that
cannot be read, or hold no person at all, give no file; they and the frames without a person
are listed at the end and in the summary file (OUT/extract_summary.json). The exit status is 1
when a video gave no file.
"""
import argparse
import glob
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import cli  # noqa: E402
import video_poses  # noqa: E402
from keypoints import DataError  # noqa: E402
from progress import Meter  # noqa: E402
from video_poses import PARTIAL, VideoError  # noqa: E402


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_flag(p, 'inputs', nargs='*', help='videos, folders or globs')
    cli.add_flag(p, '--out', metavar='DIR', help='output folder')
    cli.add_flag(p, '--format', choices=video_poses.OUTPUT_FORMATS, default='pkl',
                 help='pkl: Uni-Sign pose pickles (pixels); pose: pose-format files')
    cli.add_flag(p, '--estimator', choices=video_poses.ESTIMATORS, default='mediapipe',
                 help='mediapipe: MediaPipe Holistic (offline); rtmpose: RTMPose whole-body '
                      'through rtmlib (weights download on first use)')
    cli.add_flag(p, '--workers', type=cli.count, default=1, help='videos done in parallel')
    cli.add_flag(p, '--jobs', metavar='FILE',
                 help='JSON list of [video, output file] pairs, instead of inputs and --out')
    cli.add_flag(p, '--summary', metavar='FILE',
                 help='summary file (default OUT/extract_summary.json)')
    args = p.parse_args(argv)
    if args.jobs and (args.inputs or args.out):
        p.error('--jobs names every output: give no inputs or --out with it')
    if not args.jobs and not (args.inputs and args.out):
        p.error('give videos, folders or globs and --out DIR (or --jobs FILE)')
    if args.jobs and not args.summary:
        p.error('--jobs needs --summary FILE')
    return args


def find_videos(items):
    """[(name, video)] for videos, folders (recursive) and globs, in the given order."""
    found = []
    for item in items:
        if os.path.isdir(item):
            videos = sorted(path for path in glob.glob(os.path.join(item, '**', '*'),
                                                       recursive=True)
                            if video_poses.is_video(path) and os.path.isfile(path))
            if not videos:
                raise DataError(f"{item}: no videos ({', '.join(video_poses.VIDEO_EXTENSIONS)}) "
                                "in this folder")
            found += [(os.path.splitext(os.path.relpath(path, item))[0].replace(os.sep, '/'),
                       path) for path in videos]
        elif os.path.isfile(item):
            if not video_poses.is_video(item):
                raise DataError(f"{item}: not a video (expected "
                                f"{', '.join(video_poses.VIDEO_EXTENSIONS)})")
            found.append((os.path.splitext(os.path.basename(item))[0], item))
        else:
            videos = sorted(p for p in glob.glob(item, recursive=True) if video_poses.is_video(p))
            if not videos:
                raise DataError(f"{item}: no such video, folder or matching videos")
            found += [(os.path.splitext(os.path.basename(p))[0], p) for p in videos]
    return found


def job_list(args):
    """[(video, output file)], each output named once."""
    if args.jobs:
        with open(args.jobs, encoding='utf-8') as f:
            jobs = [tuple(pair) for pair in json.load(f)]
    else:
        jobs = [(video, os.path.join(args.out, f"{name}.{args.format}"))
                for name, video in find_videos(args.inputs)]
    outputs = {}
    for video, out in jobs:
        if out in outputs:
            raise DataError(f"{outputs[out]} and {video} would both be written to {out}; "
                            "rename one or give them in separate folders")
        outputs[out] = video
    return jobs


def check_estimator(estimator):
    """Stops before any video when the estimator cannot be loaded here."""
    if estimator == 'rtmpose':
        video_poses.rtmlib_wholebody()
        return
    try:
        import pose_format.utils.holistic  # noqa: F401
    except ImportError as error:
        raise VideoError(f"the mediapipe estimator is not installed in {sys.executable} "
                         f"({error}): create the video environment with "
                         f"`{video_poses.SETUP}` and run this script with "
                         ".venv-video/bin/python") from None


def extract_job(video, out, estimator):
    """One clip's summary entry; a bad video is reported in it, not raised."""
    entry = {'video': video, 'output': out}
    try:
        entry.update(video_poses.extract_clip(video, out, estimator), status='extracted')
    except (VideoError, DataError) as error:
        entry.update(status='failed', error=str(error))
    return entry


def remove_partials(out):
    for path in glob.glob(glob.escape(out) + PARTIAL + '*'):
        os.remove(path)


def run(jobs, estimator, workers, meter):
    """Summary entries of the clips in `jobs`, in their order, updating `meter` per clip."""
    if workers == 1 or len(jobs) <= 1:
        entries = []
        for video, out in jobs:
            entries.append(extract_job(video, out, estimator))
            meter.update()
        return entries
    results = {}
    with ProcessPoolExecutor(workers, mp_context=get_context('spawn')) as pool:
        futures = {pool.submit(extract_job, video, out, estimator): video for video, out in jobs}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            meter.update()
    return [results[video] for video, _ in jobs]


def report(entries, seconds, summary):
    """Prints what was done, the frames without a person and the failed videos."""
    counts = {status: sum(e['status'] == status for e in entries)
              for status in ('extracted', 'done before', 'failed')}
    print(f"extracted {counts['extracted']} of {len(entries)} clips in {seconds:.1f} s "
          f"({counts['done before']} done before, {counts['failed']} failed)")
    missing = [e for e in entries if e.get('without_person')]
    if missing:
        total = sum(e['without_person'] for e in missing)
        print(f"frames without a person (kept as estimated, not filled in): {total}")
        for e in missing:
            print(f"  {e['video']}: {e['without_person']} of {e['frames']} frames")
    failed = [e for e in entries if e['status'] == 'failed']
    if failed:
        print(f"videos that gave no file: {len(failed)}")
        for e in failed:
            print(f"  {e['error']}")
    print(f"summary: {summary}")


def main(argv=None):
    args = parse_args(argv)
    jobs = job_list(args)
    summary = args.summary or os.path.join(args.out, 'extract_summary.json')
    check_estimator(args.estimator)
    entries, todo = {}, []
    for video, out in jobs:
        remove_partials(out)
        if video_poses.is_complete(out):
            entries[video] = {'video': video, 'output': out, 'status': 'done before'}
        else:
            todo.append((video, out))
    start = time.monotonic()
    meter = Meter(len(jobs), 'extracting poses', unit='clips', seconds=30, final=True,
                  stream=sys.stderr, initial=len(jobs) - len(todo))
    for entry in run(todo, args.estimator, args.workers, meter):
        entries[entry['video']] = entry
    meter.close()
    ordered = [entries[video] for video, _ in jobs]
    os.makedirs(os.path.dirname(os.path.abspath(summary)), exist_ok=True)
    video_poses.write_atomic(summary, lambda f: f.write(json.dumps(
        {'estimator': args.estimator, 'clips': ordered}, indent=1).encode()))
    report(ordered, time.monotonic() - start, summary)
    return 1 if any(e['status'] == 'failed' for e in ordered) else 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except (VideoError, DataError) as error:
        sys.exit(f"extract_poses.py: error: {error}")
