"""Poses from videos: COCO-WholeBody-133 keypoints per frame, by MediaPipe Holistic or RTMPose.

Two sides. In the core environment, `extract_videos` runs script/extract_poses.py in the video
environment (.venv-video, made by `bash script/setup_video.sh`; or the python named by
SIGN_VIDEO_PYTHON), because MediaPipe's Holistic wheels pin numpy<2 and protobuf<5, which the
core stack cannot take; translate.py and the web demo read videos through it. In the video
environment, `extract_clip` reads a video with pose-format's reader and estimates its poses:

- mediapipe: pose-format's `load_holistic` (MediaPipe Holistic, its models in the wheel), mapped
  to COCO-WholeBody-133 by the table of mediapipe_pose.py; `.pose` output keeps the Holistic file.
- rtmpose: rtmlib's `Wholebody` (RTMPose whole-body, Uni-Sign's own estimator; its ONNX weights
  download on first use); of the people found in a frame, the one whose confident joints span
  the largest box, weighted by their mean confidence, is kept (`select_person`).

Pickles hold {'keypoints': float32 (T, 1, 133, 2) in pixels, 'scores': float32 (T, 1, 133)}, as
Uni-Sign's. A frame in which no joint scores above keypoints.SCORE_THRESHOLD is a frame without
a person: it stays in the clip as the estimator gave it (never filled in) and is counted; a
video none of whose frames holds a person, or that cannot be decoded, gives no file.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.abspath(__file__))
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v')
ESTIMATORS = ('mediapipe', 'rtmpose')
OUTPUT_FORMATS = ('pkl', 'pose')
SETUP = "bash script/setup_video.sh"
DEFAULT_PYTHON = os.path.join(ROOT, '.venv-video', 'bin', 'python')
EXTRACT_SCRIPT = os.path.join(ROOT, 'script', 'extract_poses.py')
PARTIAL = '.partial-'  # infix of the temporary files outputs are written to
HOLISTIC_CONFIG = {'model_complexity': 1}


class VideoError(Exception):
    """A video that cannot be read or holds no person, or a missing estimator; says which."""


def is_video(path):
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


# ----------------------------------------------------------------------------- core side

def add_video_flags(p):
    """translate.py's flags for video inputs."""
    import cli
    g = p.add_argument_group('video input (poses extracted first, see docs/video.md)')
    cli.add_flag(g, '--pose_estimator', choices=ESTIMATORS,
                 help='estimator for video inputs (default mediapipe: MediaPipe Holistic; '
                      "rtmpose: RTMPose whole-body through rtmlib, Uni-Sign's own)")
    cli.add_flag(g, '--video_workers', type=cli.count,
                 help='videos whose poses are extracted in parallel (default 1)')
    cli.add_flag(g, '--keep_poses', metavar='DIR',
                 help='write the extracted pose pickles to DIR as NAME.pkl (default: a cache '
                      'folder keyed by the video content, $SIGN_VIDEO_CACHE or '
                      '~/.cache/signpose/video_poses)')


def video_refusals(args, has_video):
    """Messages for video flags given when no input is a video."""
    given = [f"--{name}" for name in ('pose_estimator', 'video_workers', 'keep_poses')
             if getattr(args, name, None) is not None]
    if given and not has_video:
        return [f"{', '.join(given)} cannot act: no input is a video "
                f"({', '.join(VIDEO_EXTENSIONS)})"]
    return []


def video_python():
    """The video environment's python, or VideoError naming the setup command."""
    python = os.environ.get('SIGN_VIDEO_PYTHON') or DEFAULT_PYTHON
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        source = 'SIGN_VIDEO_PYTHON' if os.environ.get('SIGN_VIDEO_PYTHON') else 'the default'
        raise VideoError(f"video input needs the pose-extraction environment, and its python "
                         f"({python}, {source}) is missing: create it with `{SETUP}` (or set "
                         "SIGN_VIDEO_PYTHON to a python with mediapipe and pose-format)")
    return python


def cache_dir():
    return os.environ.get('SIGN_VIDEO_CACHE') or os.path.join(
        os.path.expanduser('~'), '.cache', 'signpose', 'video_poses')


def content_key(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()[:24]


def pose_targets(videos, estimator, keep_poses=None):
    """{video: pickle path}: keep_poses/NAME.pkl, or the cache file of the video's content."""
    targets = {}
    for name, video in videos:
        if keep_poses:
            targets[video] = os.path.join(keep_poses, name + '.pkl')
        else:
            targets[video] = os.path.join(cache_dir(), estimator, content_key(video) + '.pkl')
    return targets


def extract_videos(targets, estimator='mediapipe', workers=1, python=None):
    """Extracts {video: pickle path} in the video environment (finished files are kept);
    returns {video: reason} for the videos that gave no file."""
    python = python or video_python()
    with tempfile.TemporaryDirectory(prefix='video_poses_') as work:
        jobs, summary = os.path.join(work, 'jobs.json'), os.path.join(work, 'summary.json')
        with open(jobs, 'w', encoding='utf-8') as f:
            json.dump(sorted(targets.items()), f)
        env = dict(os.environ, GLOG_minloglevel='2', TF_CPP_MIN_LOG_LEVEL='2')
        done = subprocess.run([python, EXTRACT_SCRIPT, '--jobs', jobs, '--estimator', estimator,
                               '--workers', str(workers), '--summary', summary],
                              stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        sys.stderr.write(done.stdout)  # the report; standard output is for translations
        if not os.path.isfile(summary):
            raise VideoError(f"pose extraction in {python} stopped (exit status "
                             f"{done.returncode}) before its report; see the messages above")
        with open(summary, encoding='utf-8') as f:
            report = json.load(f)
    return {clip['video']: clip['error'] for clip in report['clips'] if clip.get('error')}


# ----------------------------------------------------------------------------- video side

def read_video(path):
    """(width, height, fps, frames): RGB frames (an iterator), by pose-format's video reader."""
    from simple_video_utils.frames import read_frames_exact
    from simple_video_utils.metadata import video_metadata
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such video file")
    try:
        meta = video_metadata(path)
    except Exception as error:  # PyAV reports broken containers with many exception types
        raise VideoError(f"{path}: unreadable video ({_cause(error)})") from None
    if not (meta.width > 0 and meta.height > 0 and meta.fps and meta.fps > 0):
        raise VideoError(f"{path}: the video gives a {meta.width}x{meta.height} frame at "
                         f"{meta.fps} fps")
    return meta.width, meta.height, float(meta.fps), _checked_frames(path, read_frames_exact(path))


def _cause(error):
    cause = error.__cause__ or error
    return f"{type(cause).__name__}: {cause}"


def _checked_frames(path, frames):
    count = 0
    try:
        for frame in frames:
            count += 1
            yield frame
    except Exception as error:
        raise VideoError(f"{path}: unreadable video after {count} frames "
                         f"({_cause(error)})") from None
    if count == 0:
        raise VideoError(f"{path}: no frame could be decoded")


def holistic_pose(path):
    """The video's MediaPipe Holistic pose-format `Pose` (pose-format's load_holistic)."""
    try:
        from pose_format.utils.holistic import load_holistic
    except ImportError as error:
        raise VideoError(f"the mediapipe estimator is not installed here ({error}): create the "
                         f"video environment with `{SETUP}`") from None
    width, height, fps, frames = read_video(path)
    return load_holistic(frames, fps=fps, width=width, height=height,
                         additional_holistic_config=dict(HOLISTIC_CONFIG), reuse=False)


def holistic_wholebody(pose, folder):
    """(keypoints (T, 133, 2) in pixels, scores (T, 133)) of a Holistic `Pose`, by
    mediapipe_pose.py's table (the pose goes through a .pose file in `folder`)."""
    import numpy as np

    import mediapipe_pose
    handle, path = tempfile.mkstemp(suffix='.pose', prefix='holistic' + PARTIAL, dir=folder)
    os.close(handle)
    try:
        mediapipe_pose.write_pose(pose, path)
        clip = mediapipe_pose.read_pose_file(path)
    finally:
        os.remove(path)
    size = np.array([pose.header.dimensions.width, pose.header.dimensions.height])
    return clip['keypoints'][:, 0] * size, clip['scores'][:, 0]


_RTMLIB = {}


def rtmlib_wholebody():
    """rtmlib's whole-body RTMPose, loaded once per process (its weights download once)."""
    if 'model' not in _RTMLIB:
        try:
            from rtmlib import Wholebody
        except ImportError:
            raise VideoError("the rtmpose estimator needs rtmlib and onnxruntime, not installed "
                             f"here: VIDEO_EXTRA='rtmlib onnxruntime' {SETUP}") from None
        _RTMLIB['model'] = Wholebody(mode='balanced', backend='onnxruntime', device='cpu',
                                     to_openpose=False)
    return _RTMLIB['model']


def select_person(keypoints, scores, threshold=None):
    """(133, 2), (133,) of the signer among rtmlib's (N, 133, 2) and (N, 133): the person whose
    joints above `threshold` span the largest box, times their mean score; zeros for N = 0."""
    import numpy as np

    from keypoints import NUM_KEYPOINTS, SCORE_THRESHOLD
    threshold = SCORE_THRESHOLD if threshold is None else threshold
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, NUM_KEYPOINTS, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, NUM_KEYPOINTS)
    if len(scores) == 0:
        return np.zeros((NUM_KEYPOINTS, 2)), np.zeros(NUM_KEYPOINTS)
    ranks = []
    for points, score in zip(keypoints, scores):
        confident = points[score > threshold]
        span = confident.max(0) - confident.min(0) if len(confident) > 1 else np.zeros(2)
        ranks.append(span[0] * span[1] * score.clip(0).mean())
    best = int(np.argmax(ranks))
    return keypoints[best], scores[best]


def rtmpose_arrays(path, model=None):
    """(keypoints (T, 133, 2) in pixels, scores (T, 133), width, height, fps) by RTMPose."""
    import numpy as np
    model = model or rtmlib_wholebody()
    width, height, fps, frames = read_video(path)
    picked = [select_person(*model(np.ascontiguousarray(frame[..., ::-1])))  # rtmlib takes BGR
              for frame in frames]
    return (np.stack([k for k, _ in picked]), np.stack([s for _, s in picked]), width, height,
            fps)


def frames_without_person(scores):
    import numpy as np

    from keypoints import SCORE_THRESHOLD
    return int((np.asarray(scores) <= SCORE_THRESHOLD).all(-1).sum())


def extract_clip(video, out, estimator='mediapipe'):
    """Writes the poses of `video` to `out` (.pkl or .pose, atomically); returns {'frames',
    'without_person'}. VideoError when the video is unreadable or holds no person at all."""
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    if estimator == 'mediapipe':
        pose = holistic_pose(video)
        keypoints, scores = holistic_wholebody(pose, folder)
        size, fps = (pose.header.dimensions.width, pose.header.dimensions.height), pose.body.fps
    elif estimator == 'rtmpose':
        pose = None
        keypoints, scores, *size, fps = rtmpose_arrays(video)
    else:
        raise VideoError(f"unknown estimator {estimator!r}; one of {', '.join(ESTIMATORS)}")
    missing = frames_without_person(scores)
    if missing == len(scores):
        raise VideoError(f"{video}: no person found in any of its {len(scores)} frames")
    if out.endswith('.pose'):
        if pose is None:
            from mediapipe_pose import wholebody_to_holistic
            pose = wholebody_to_holistic(keypoints, scores, *size, fps)
        write_atomic(out, pose.write)
    else:
        write_atomic(out, lambda f: write_pickle(f, keypoints, scores))
    return {'frames': len(scores), 'without_person': missing}


def write_pickle(f, keypoints, scores):
    import pickle

    import numpy as np
    pickle.dump({'keypoints': np.asarray(keypoints, dtype=np.float32)[:, None],
                 'scores': np.asarray(scores, dtype=np.float32)[:, None]}, f)


def write_atomic(out, write):
    """Calls write(binary file) on a temporary file beside `out`, then renames it to `out`: an
    interrupted run leaves a `.partial-` file, never an incomplete `out`."""
    handle, partial = tempfile.mkstemp(prefix=os.path.basename(out) + PARTIAL,
                                       dir=os.path.dirname(os.path.abspath(out)))
    try:
        with os.fdopen(handle, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(partial, 0o666 & ~mask)  # mkstemp's files are private
        os.replace(partial, out)
    except BaseException:
        os.remove(partial)
        raise


def is_complete(out):
    """Whether `out` is a pose file that reads back whole (a finished clip)."""
    from keypoints import DataError, read_pose_pickle
    from mediapipe_pose import read_pose_file
    if not os.path.isfile(out):
        return False
    try:
        (read_pose_file if out.endswith('.pose') else read_pose_pickle)(out)
    except DataError:
        return False
    return True
