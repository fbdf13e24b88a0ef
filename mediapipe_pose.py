"""Reads `.pose` files (pose-format) into the COCO-WholeBody-133 layout of the pose pickles.

MediaPipe Holistic files (components POSE_LANDMARKS 33, FACE_LANDMARKS 468/478 or a named subset,
LEFT_HAND_LANDMARKS / RIGHT_HAND_LANDMARKS 21) are mapped point by point onto the COCO-WholeBody
joints the part encoders read; files holding pose-format's own COCO-WholeBody-133 components
(BODY 23, FACE 68, LEFT_HAND 21, RIGHT_HAND 21) are taken as they are. Points are looked up by
component and point name, so reduced headers (a face with only some mesh points) work when the
points below are present. Left and right are the signer's own, in both conventions.

| COCO-WholeBody index | joint | MediaPipe Holistic source |
| --- | --- | --- |
| 0 | nose (body part) | POSE_LANDMARKS NOSE (else FACE_LANDMARKS 4) |
| 1, 2 | left, right eye | POSE_LANDMARKS LEFT_EYE, RIGHT_EYE |
| 3, 4 | left, right ear (body part) | POSE_LANDMARKS LEFT_EAR, RIGHT_EAR |
| 5-10 | L/R shoulder, elbow, wrist (body part) | POSE_LANDMARKS LEFT_/RIGHT_ SHOULDER, ELBOW, WRIST |
| 11-16 | L/R hip, knee, ankle | POSE_LANDMARKS LEFT_/RIGHT_ HIP, KNEE, ANKLE |
| 17, 19 / 20, 22 | L / R big toe, heel | POSE_LANDMARKS LEFT_/RIGHT_ FOOT_INDEX, HEEL |
| 18, 21 | small toes | none (score 0) |
| 23, 25, ..., 39 | jaw, iBUG 0, 2, ..., 16 (face part) | FACE_LANDMARKS 162 93 172 149 152 378 397 323 389 |
| 53 | nose tip, iBUG 30 (face part anchor) | FACE_LANDMARKS 4 (else POSE_LANDMARKS NOSE) |
| 83-90 | inner lip, iBUG 60-67 (face part) | FACE_LANDMARKS 78 82 13 312 308 317 14 87 |
| 91-111 | left hand (left part) | LEFT_HAND_LANDMARKS WRIST, THUMB_CMC, ..., PINKY_TIP (same order) |
| 112-132 | right hand, 21 joints (right part) | RIGHT_HAND_LANDMARKS, same order |
| other face points | | none (score 0) |

The face mesh indices follow the common 68-point correspondence of MediaPipe's face mesh (the
one face-alignment style tools use); all but the nose tip are face-contour points, so files
reduced to the contours keep them, and the nose tip then comes from the pose NOSE landmark.

Coordinates are divided by the header's width and height, as Uni-Sign's pose extraction divides
RTMPose pixels by the frame size; z is dropped. A point's score is its confidence (MediaPipe
visibility for the body, 1 for detected face and hand points); points that are masked, have zero
or negative confidence or non-finite coordinates score 0, so a hand MediaPipe did not find is a
missing hand (its coordinates are kept as stored when finite, else 0). With `fps`, clips are
resampled to that frame rate (linear between frames where both neighbours are detected, nearest
frame otherwise).

    python mediapipe_pose.py --input clips/ --out pose_format/ --fps 25    # .pose -> .pkl
    python mediapipe_pose.py --to pose --input pose_format/ --out clips/  # .pkl -> .pose
"""
import argparse
import glob
import os
import pickle
import sys

import numpy as np

import cli
from keypoints import NUM_KEYPOINTS, DataError, read_pose_pickle

POSE, FACE, LEFT_HAND, RIGHT_HAND = ('POSE_LANDMARKS', 'FACE_LANDMARKS', 'LEFT_HAND_LANDMARKS',
                                     'RIGHT_HAND_LANDMARKS')
POSE_POINTS = (
    'NOSE', 'LEFT_EYE_INNER', 'LEFT_EYE', 'LEFT_EYE_OUTER', 'RIGHT_EYE_INNER', 'RIGHT_EYE',
    'RIGHT_EYE_OUTER', 'LEFT_EAR', 'RIGHT_EAR', 'MOUTH_LEFT', 'MOUTH_RIGHT', 'LEFT_SHOULDER',
    'RIGHT_SHOULDER', 'LEFT_ELBOW', 'RIGHT_ELBOW', 'LEFT_WRIST', 'RIGHT_WRIST', 'LEFT_PINKY',
    'RIGHT_PINKY', 'LEFT_INDEX', 'RIGHT_INDEX', 'LEFT_THUMB', 'RIGHT_THUMB', 'LEFT_HIP',
    'RIGHT_HIP', 'LEFT_KNEE', 'RIGHT_KNEE', 'LEFT_ANKLE', 'RIGHT_ANKLE', 'LEFT_HEEL', 'RIGHT_HEEL',
    'LEFT_FOOT_INDEX', 'RIGHT_FOOT_INDEX')
HAND_POINTS = ('WRIST',) + tuple(f'{finger}_{joint}' for finger, joints in (
    ('THUMB', ('CMC', 'MCP', 'IP', 'TIP')), ('INDEX_FINGER', ('MCP', 'PIP', 'DIP', 'TIP')),
    ('MIDDLE_FINGER', ('MCP', 'PIP', 'DIP', 'TIP')), ('RING_FINGER', ('MCP', 'PIP', 'DIP', 'TIP')),
    ('PINKY', ('MCP', 'PIP', 'DIP', 'TIP'))) for joint in joints)
HAND_LIMBS = [(0, 1 + 4 * finger) for finger in range(5)] + [
    (4 * finger + i, 4 * finger + i + 1) for finger in range(5) for i in range(1, 4)]
JAW_MESH_POINTS = (162, 93, 172, 149, 152, 378, 397, 323, 389)  # iBUG 0, 2, ..., 16
INNER_LIP_MESH_POINTS = (78, 82, 13, 312, 308, 317, 14, 87)     # iBUG 60..67
NOSE_TIP_MESH_POINT = 4                                         # iBUG 30


def _holistic_table():
    """{COCO-WholeBody index: ((component, point name), alternative, ...)}; first present wins."""
    body = ['NOSE', 'LEFT_EYE', 'RIGHT_EYE', 'LEFT_EAR', 'RIGHT_EAR']
    for joint in ('SHOULDER', 'ELBOW', 'WRIST', 'HIP', 'KNEE', 'ANKLE'):
        body += [f'LEFT_{joint}', f'RIGHT_{joint}']
    table = {index: ((POSE, name),) for index, name in enumerate(body)}
    table[0] += ((FACE, str(NOSE_TIP_MESH_POINT)),)
    for index, name in ((17, 'LEFT_FOOT_INDEX'), (19, 'LEFT_HEEL'), (20, 'RIGHT_FOOT_INDEX'),
                        (22, 'RIGHT_HEEL')):
        table[index] = ((POSE, name),)
    for k, point in enumerate(JAW_MESH_POINTS):
        table[23 + 2 * k] = ((FACE, str(point)),)
    table[53] = ((FACE, str(NOSE_TIP_MESH_POINT)), (POSE, 'NOSE'))
    for k, point in enumerate(INNER_LIP_MESH_POINTS):
        table[83 + k] = ((FACE, str(point)),)
    for k, name in enumerate(HAND_POINTS):
        table[91 + k] = ((LEFT_HAND, name),)
        table[112 + k] = ((RIGHT_HAND, name),)
    return dict(sorted(table.items()))


HOLISTIC_TO_WHOLEBODY = _holistic_table()
# Joints the four part encoders read (keypoints.PART_JOINTS, plus the anchors): they must exist.
REQUIRED_JOINTS = frozenset([0, *range(3, 11), *range(23, 40, 2), 53, *range(83, 133)])
WHOLEBODY_COMPONENTS = (('BODY', 23), ('FACE', 68), ('LEFT_HAND', 21), ('RIGHT_HAND', 21))


# ----------------------------------------------------------------------------- reading

def point_offsets(header):
    """{(component, point name): index in the file's flat point axis}."""
    offsets, start = {}, 0
    for component in header.components:
        for k, point in enumerate(component.points):
            offsets.setdefault((component.name, point), start + k)
        start += len(component.points)
    return offsets


def wholebody_sources(header, path='<pose header>'):
    """Index into the file's points for each of the 133 joints (-1: not available)."""
    names = [component.name for component in header.components]
    sizes = {component.name: len(component.points) for component in header.components}
    if all(sizes.get(name) == size for name, size in WHOLEBODY_COMPONENTS):
        offsets, start = {}, 0
        for component in header.components:
            offsets[component.name] = start
            start += len(component.points)
        return np.concatenate([offsets[name] + np.arange(size)
                               for name, size in WHOLEBODY_COMPONENTS])
    if not {POSE, LEFT_HAND, RIGHT_HAND, FACE} <= set(names):
        raise DataError(f"{path}: unsupported .pose layout with components {names}; expected "
                        f"MediaPipe Holistic ({POSE}, {FACE}, {LEFT_HAND}, {RIGHT_HAND}) or "
                        "COCO-WholeBody (BODY, FACE, LEFT_HAND, RIGHT_HAND)")
    offsets = point_offsets(header)
    sources = np.full(NUM_KEYPOINTS, -1, dtype=np.int64)
    missing = []
    for index, alternatives in HOLISTIC_TO_WHOLEBODY.items():
        found = [offsets[source] for source in alternatives if source in offsets]
        if found:
            sources[index] = found[0]
        elif index in REQUIRED_JOINTS:
            missing.append(' or '.join(f"{component} {point}" for component, point in alternatives))
    if missing:
        raise DataError(f"{path}: the .pose header lacks points the part encoders need: "
                        + '; '.join(missing))
    return sources


def _load_pose(path):
    from pose_format import Pose
    if not os.path.isfile(path):
        raise DataError(f"{path}: pose file not found")
    try:
        with open(path, 'rb') as f:
            return Pose.read(f.read())
    except Exception as error:  # pose-format reports corrupt bytes with many exception types
        raise DataError(f"{path}: unreadable .pose file ({type(error).__name__}: {error})") from None


def _first_person_arrays(pose, path):
    """(coordinates (T, P, 2), confidence (T, P)) of the first person, masked points at 0 score."""
    data, confidence = pose.body.data, np.asarray(pose.body.confidence, dtype=np.float64)
    if data.ndim != 4 or data.shape[-1] < 2:
        raise DataError(f"{path}: .pose body has shape {data.shape}, expected (frames, people, "
                        "points, dims >= 2)")
    if data.shape[0] == 0:
        raise DataError(f"{path}: zero-length clip")
    if data.shape[1] == 0:
        raise DataError(f"{path}: the .pose file holds no person")
    coords = np.asarray(np.ma.getdata(data)[:, 0, :, :2], dtype=np.float64)
    masked = np.ma.getmaskarray(data)[:, 0, :, :2].any(-1)
    finite = np.isfinite(coords).all(-1)
    score = confidence[:, 0]
    valid = finite & ~masked & np.isfinite(score) & (score > 0)
    return np.where(finite[..., None], coords, 0.0), np.where(valid, score, 0.0)


def _frame_size(pose, path):
    width, height = pose.header.dimensions.width, pose.header.dimensions.height
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: the .pose header gives a {width}x{height} frame; coordinates "
                        "cannot be normalised by the frame size")
    return width, height


def read_pose_file(path, fps=None, max_frames=None):
    """A `.pose` clip as poses.read_pose() returns pickles: 'keypoints' (T, 1, 133, 2) in
    frame-size units and 'scores' (T, 1, 133), float32; resampled to `fps` when given. With
    `max_frames`, a clip of more frames, as stored or once resampled, is refused before the
    frames are built (a tiny frame rate in the header would expand a short file without end)."""
    path = os.fspath(path)
    pose = _load_pose(path)
    if max_frames is not None:
        _check_frame_counts(pose, path, fps, max_frames)
    sources = wholebody_sources(pose.header, path)
    coords, score = _first_person_arrays(pose, path)
    width, height = _frame_size(pose, path)
    available = sources >= 0
    keypoints = np.zeros((len(coords), NUM_KEYPOINTS, 2))
    scores = np.zeros((len(coords), NUM_KEYPOINTS))
    keypoints[:, available] = coords[:, sources[available]] / np.array([width, height])
    scores[:, available] = score[:, sources[available]]
    if fps is not None:
        source_fps = float(pose.body.fps)
        if not source_fps > 0:
            raise DataError(f"{path}: the .pose file gives frame rate {source_fps}; cannot "
                            f"resample to {fps} fps")
        keypoints, scores = resample_frames(keypoints, scores, source_fps, fps)
    return {'keypoints': keypoints[:, None].astype(np.float32),
            'scores': scores[:, None].astype(np.float32)}


def _check_frame_counts(pose, path, fps, max_frames):
    stored = len(pose.body.data)
    counts = [stored]
    source_fps = float(pose.body.fps)
    if fps is not None and source_fps > 0 and source_fps != fps:
        counts.append(resampled_frame_count(stored, source_fps, fps))
    if max(counts) > max_frames:
        resampled = f" ({counts[-1]} once resampled to {fps} fps)" if len(counts) > 1 else ""
        raise DataError(f"{path}: keypoints hold {stored} frames{resampled}, more than "
                        f"--max_frames_per_clip {max_frames} (raise it for clips this long)")


def resampled_frame_count(num_frames, source_fps, target_fps):
    return max(1, int(round(num_frames * target_fps / source_fps)))


def resample_frames(keypoints, scores, source_fps, target_fps, method='linear'):
    """Resamples (T, J, 2) keypoints and (T, J) scores from source_fps to target_fps.

    Output frame k sits at source position k * source_fps / target_fps (round(T * target /
    source) frames, at least one). 'linear' blends the two neighbouring frames of each joint when
    both score above 0 and takes the nearer frame otherwise; 'nearest' always takes the nearer.
    """
    if target_fps <= 0:
        raise ValueError(f"target frame rate must be positive, got {target_fps}")
    if method not in ('linear', 'nearest'):
        raise ValueError(f"resampling method must be 'linear' or 'nearest', got {method!r}")
    num_frames = len(keypoints)
    if source_fps == target_fps:
        return keypoints, scores
    count = resampled_frame_count(num_frames, source_fps, target_fps)
    position = np.minimum(np.arange(count) * (source_fps / target_fps), num_frames - 1)
    nearest = np.minimum(np.floor(position + 0.5).astype(np.int64), num_frames - 1)
    if method == 'nearest':
        return keypoints[nearest], scores[nearest]
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, num_frames - 1)
    weight = (position - low)[:, None]
    both = (scores[low] > 0) & (scores[high] > 0)
    blended_scores = (1 - weight) * scores[low] + weight * scores[high]
    blended = (1 - weight[..., None]) * keypoints[low] + weight[..., None] * keypoints[high]
    return (np.where(both[..., None], blended, keypoints[nearest]),
            np.where(both, blended_scores, scores[nearest]))


# ----------------------------------------------------------------------------- writing

def holistic_header(width, height, face_points=478):
    """A MediaPipe Holistic pose-format header (XYZC); face_points: a count or point names."""
    from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions
    if isinstance(face_points, int):
        face_points = [str(i) for i in range(face_points)]
    hand = dict(points=list(HAND_POINTS), limbs=HAND_LIMBS, colors=[(0, 255, 0)],
                point_format='XYZC')
    components = [
        PoseHeaderComponent(POSE, list(POSE_POINTS), [], [(255, 0, 0)], 'XYZC'),
        PoseHeaderComponent(FACE, [str(p) for p in face_points], [], [(128, 0, 0)], 'XYZC'),
        PoseHeaderComponent(LEFT_HAND, **hand),
        PoseHeaderComponent(RIGHT_HAND, **hand),
    ]
    return PoseHeader(0.2, PoseHeaderDimensions(width, height, 0), components)


def wholebody_to_holistic(keypoints, scores, width, height, fps, face_points=478):
    """A MediaPipe Holistic `Pose` holding COCO-WholeBody joints (T, 133, 2) in pixels (the
    inverse of the table above); Holistic points with no COCO joint get confidence 0."""
    from pose_format import Pose
    from pose_format.numpy import NumPyPoseBody
    header = holistic_header(width, height, face_points)
    offsets = point_offsets(header)
    keypoints, scores = np.asarray(keypoints), np.asarray(scores)
    data = np.zeros((len(keypoints), 1, header.total_points(), 3), dtype=np.float32)
    confidence = np.zeros((len(keypoints), 1, header.total_points()), dtype=np.float32)
    for index, alternatives in HOLISTIC_TO_WHOLEBODY.items():
        if alternatives[0] in offsets:
            data[:, 0, offsets[alternatives[0]], :2] = keypoints[:, index]
            confidence[:, 0, offsets[alternatives[0]]] = scores[:, index]
    return Pose(header, NumPyPoseBody(fps, data, confidence))


def write_pose(pose, path):
    with open(path, 'wb') as f:
        pose.write(f)


# ----------------------------------------------------------------------------- command line

def _convert(path, out_path, args):
    if args.to == 'pkl':
        with open(out_path, 'wb') as f:
            pickle.dump(read_pose_file(path, args.fps), f)
        return
    clip = read_pose_pickle(path)
    keypoints, scores = clip['keypoints'][:, 0], clip['scores'][:, 0]
    if args.pickle_units == 'frame':  # Uni-Sign's pickles: pixels divided by the frame size
        keypoints = keypoints * np.array([args.width, args.height])
    write_pose(wholebody_to_holistic(keypoints, scores, args.width, args.height,
                                     args.source_fps), out_path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_flag(parser, '--input', nargs='+', required=True, help='files or folders')
    cli.add_flag(parser, '--out', required=True, help='output folder')
    cli.add_flag(parser, '--to', choices=['pkl', 'pose'], default='pkl')
    cli.add_flag(parser, '--fps', type=cli.positive, default=None, help='--to pkl: resample to this rate')
    cli.add_flag(parser, '--width', type=cli.count, default=1000, help='--to pose: frame width')
    cli.add_flag(parser, '--height', type=cli.count, default=1000, help='--to pose: frame height')
    cli.add_flag(parser, '--pickle_units', choices=['pixels', 'frame'], default='pixels',
                         help='--to pose: pickle coordinates in pixels or in frame-size units')
    cli.add_flag(parser, '--source_fps', type=cli.positive, default=25.0, help='--to pose: frame rate')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    suffix = '.pose' if args.to == 'pkl' else '.pkl'
    files = []
    for item in args.input:
        is_folder = os.path.isdir(item)
        files += sorted(glob.glob(os.path.join(item, '*' + suffix))) if is_folder else [item]
    os.makedirs(args.out, exist_ok=True)
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        _convert(path, os.path.join(args.out, f"{stem}.{args.to}"), args)
    print(f"wrote {len(files)} .{args.to} files to {args.out}")


if __name__ == '__main__':
    try:
        main()
    except DataError as error:
        sys.exit(f"mediapipe_pose.py: error: {error}")
