"""Tests for mediapipe_pose.py: .pose files built with pose-format's own API, read through
datasets.read_pose, and a Demo run whose pose files are .pose."""
import gzip
import os
import pickle
import subprocess
import sys

import numpy as np
import numpy.ma as ma
import pytest
import torch
from pose_format import Pose
from pose_format.numpy import NumPyPoseBody
from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions
from pose_format.utils.cocowholebody133_header import cocowholebody_components

import mediapipe_pose
from datasets import PART_JOINTS, DataError, S2T_Dataset, load_part_kp, read_pose
from mediapipe_pose import (FACE, HAND_POINTS, HOLISTIC_TO_WHOLEBODY, LEFT_HAND, POSE,
                            POSE_POINTS, RIGHT_HAND, resample_frames,
                            wholebody_to_holistic, write_pose)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mediapipe_like_pose(num_frames=6, fps=25.0, width=640, height=480, face_points=478, seed=0):
    """A Holistic-shaped Pose from numpy arrays: pose, face, hands and world landmarks."""
    components = [
        PoseHeaderComponent(POSE, list(POSE_POINTS), [(11, 13)], [(255, 0, 0)], 'XYZC'),
        PoseHeaderComponent(FACE, [str(p) for p in face_points] if not isinstance(face_points, int)
                            else [str(i) for i in range(face_points)], [], [(0, 0, 0)], 'XYZC'),
        PoseHeaderComponent(LEFT_HAND, list(HAND_POINTS), [(0, 1)], [(0, 255, 0)], 'XYZC'),
        PoseHeaderComponent(RIGHT_HAND, list(HAND_POINTS), [(0, 1)], [(0, 255, 0)], 'XYZC'),
        PoseHeaderComponent('POSE_WORLD_LANDMARKS', list(POSE_POINTS), [], [(0, 0, 0)], 'XYZC'),
    ]
    header = PoseHeader(0.2, PoseHeaderDimensions(width, height, 0), components)
    rng = np.random.default_rng(seed)
    points = header.total_points()
    data = rng.uniform(0, 1, (num_frames, 1, points, 3)) * np.array([width, height, 1])
    confidence = rng.uniform(0.5, 1.0, (num_frames, 1, points))
    return Pose(header, NumPyPoseBody(fps, data.astype(np.float32), confidence.astype(np.float32)))


def point_index(pose, component, point):
    return pose.header.get_point_index(component, point)


def saved(pose, path):
    write_pose(pose, path)
    return str(path)


def test_mapping_table_covers_every_part_joint_with_the_documented_points():
    part_joints = set(np.concatenate(list(PART_JOINTS.values())).tolist())
    assert part_joints <= set(HOLISTIC_TO_WHOLEBODY)
    assert HOLISTIC_TO_WHOLEBODY[9] == ((POSE, 'LEFT_WRIST'),)
    assert HOLISTIC_TO_WHOLEBODY[4] == ((POSE, 'RIGHT_EAR'),)
    jaw = [HOLISTIC_TO_WHOLEBODY[i][0][1] for i in range(23, 40, 2)]
    assert jaw == ['162', '93', '172', '149', '152', '378', '397', '323', '389']
    assert [HOLISTIC_TO_WHOLEBODY[i][0][1] for i in range(83, 91)] == \
        ['78', '82', '13', '312', '308', '317', '14', '87']
    assert HOLISTIC_TO_WHOLEBODY[53] == ((FACE, '4'), (POSE, 'NOSE'))
    # hands keep COCO-WholeBody's order: wrist, then thumb, index, middle, ring, pinky (base->tip)
    assert [HOLISTIC_TO_WHOLEBODY[91 + k][0] for k in range(21)] == [(LEFT_HAND, p) for p in HAND_POINTS]
    assert HAND_POINTS[4] == 'THUMB_TIP' and HAND_POINTS[20] == 'PINKY_TIP'


def test_holistic_file_maps_points_and_normalises_by_frame_size(tmp_path):
    pose = mediapipe_like_pose(width=640, height=480)
    clip = read_pose(saved(pose, tmp_path / 'a.pose'))
    assert clip['keypoints'].shape == (6, 1, 133, 2) and clip['scores'].shape == (6, 1, 133)
    assert clip['keypoints'].dtype == np.float32
    data = np.asarray(pose.body.data)[:, 0, :, :2] / np.array([640, 480])
    confidence = np.asarray(pose.body.confidence)[:, 0]
    for coco, component, point in [(9, POSE, 'LEFT_WRIST'), (6, POSE, 'RIGHT_SHOULDER'),
                                   (31, FACE, '152'), (53, FACE, '4'), (83, FACE, '78'),
                                   (91, LEFT_HAND, 'WRIST'), (116, RIGHT_HAND, 'THUMB_TIP')]:
        source = point_index(pose, component, point)
        np.testing.assert_allclose(clip['keypoints'][:, 0, coco], data[:, source], rtol=1e-6)
        np.testing.assert_allclose(clip['scores'][:, 0, coco], confidence[:, source], rtol=1e-6)
    unmapped = [i for i in range(133) if i not in HOLISTIC_TO_WHOLEBODY]
    assert not clip['scores'][:, 0, unmapped].any() and not clip['keypoints'][:, 0, unmapped].any()


def test_missing_hand_nan_and_masked_points_score_zero(tmp_path):
    pose = mediapipe_like_pose(num_frames=4)
    left = slice(point_index(pose, LEFT_HAND, 'WRIST'), point_index(pose, LEFT_HAND, 'WRIST') + 21)
    right_tip = point_index(pose, RIGHT_HAND, 'INDEX_FINGER_TIP')
    data = np.asarray(pose.body.data).copy()
    confidence = np.asarray(pose.body.confidence).copy()
    confidence[1, 0, left] = 0           # MediaPipe found no left hand in frame 1
    data[1, 0, left] = 0
    data[2, 0, right_tip, 0] = np.nan    # a broken coordinate with positive confidence
    pose.body = NumPyPoseBody(25.0, data, confidence)
    clip = read_pose(saved(pose, tmp_path / 'm.pose'))
    scores = clip['scores'][:, 0]
    assert not scores[1, 91:112].any() and scores[[0, 2, 3], 91:112].all()
    assert scores[2, 112 + 8] == 0 and np.isfinite(clip['keypoints']).all()
    parts = load_part_kp(clip['keypoints'], clip['scores'])
    assert not parts['left'][1].any() and parts['left'][0, :, 2].gt(0).any()

    masked = ma.masked_array(data, mask=np.zeros_like(data, dtype=bool))
    masked.mask[3, 0, left] = True       # a mask in memory is written as confidence 0
    pose.body = NumPyPoseBody(25.0, masked, np.where(masked.mask[..., 0], 0, confidence))
    assert not read_pose(saved(pose, tmp_path / 'k.pose'))['scores'][3, 0, 91:112].any()


def test_reduced_face_takes_the_nose_tip_from_the_pose(tmp_path):
    contour = [int(p) for p in ('162 93 172 149 152 378 397 323 389 78 82 13 312 308 317 14 87 '
                                '61 291 10').split()]
    pose = mediapipe_like_pose(face_points=contour)
    clip = read_pose(saved(pose, tmp_path / 'r.pose'))
    np.testing.assert_array_equal(clip['keypoints'][:, 0, 53], clip['keypoints'][:, 0, 0])
    np.testing.assert_allclose(clip['keypoints'][:, 0, 31] * [640, 480],
                               np.asarray(pose.body.data)[:, 0, point_index(pose, FACE, '152'), :2],
                               rtol=1e-5)


def test_pose_errors_name_the_file_and_the_problem(tmp_path):
    pose = mediapipe_like_pose()
    lacking = pose.get_components([POSE, FACE, LEFT_HAND, RIGHT_HAND],
                                  {POSE: [p for p in POSE_POINTS if p != 'LEFT_EAR']})
    with pytest.raises(DataError, match=r"lacking\.pose.*LEFT_EAR"):
        read_pose(saved(lacking, tmp_path / 'lacking.pose'))
    other = pose.get_components([POSE])
    with pytest.raises(DataError, match=r"other\.pose: unsupported \.pose layout"):
        read_pose(saved(other, tmp_path / 'other.pose'))
    (tmp_path / 'broken.pose').write_bytes(b'\x00\x01 not a pose')
    with pytest.raises(DataError, match=r"broken\.pose: unreadable \.pose file"):
        read_pose(str(tmp_path / 'broken.pose'))
    with pytest.raises(DataError, match=r"absent\.pose: pose file not found"):
        read_pose(str(tmp_path / 'absent.pose'))
    flat = mediapipe_like_pose(width=0, height=0)
    with pytest.raises(DataError, match=r"flat\.pose: .*0x0 frame"):
        read_pose(saved(flat, tmp_path / 'flat.pose'))
    still = mediapipe_like_pose(fps=0)
    with pytest.raises(DataError, match=r"still\.pose: .*frame rate 0"):
        read_pose(saved(still, tmp_path / 'still.pose'), fps=25)


def test_fps_resampling_linear_and_nearest(tmp_path):
    keypoints = np.arange(10, dtype=np.float64)[:, None, None] * np.ones((10, 2, 2))
    scores = np.ones((10, 2))
    scores[5, 1] = 0  # joint 1 missing in frame 5: no blending across it
    up, up_scores = resample_frames(keypoints, scores, 10, 20)
    assert len(up) == 20
    np.testing.assert_allclose(up[:19, 0, 0], np.arange(19) / 2)
    assert up[9, 1, 0] == 5 and up_scores[9, 1] == 0  # position 4.5: nearest is frame 5 (missing)
    assert up[8, 1, 0] == 4 and up_scores[8, 1] == 1  # position 4.0 exactly
    down, _ = resample_frames(keypoints, scores, 10, 5, method='nearest')
    np.testing.assert_array_equal(down[:, 0, 0], [0, 2, 4, 6, 8])
    same, _ = resample_frames(keypoints, scores, 10, 10)
    assert same is keypoints

    pose = mediapipe_like_pose(num_frames=10, fps=50.0)
    path = saved(pose, tmp_path / 'fast.pose')
    assert len(read_pose(path)['keypoints']) == 10
    resampled = read_pose(path, fps=25)
    assert resampled['keypoints'].shape == (5, 1, 133, 2)
    np.testing.assert_allclose(resampled['keypoints'][1], read_pose(path)['keypoints'][2])


def test_coco_wholebody_pose_file_is_taken_as_is(tmp_path):
    components = cocowholebody_components()
    header = PoseHeader(0.2, PoseHeaderDimensions(200, 100, 0), components)
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 1, (3, 1, 133, 2)) * [200, 100]
    confidence = rng.uniform(0.4, 1, (3, 1, 133))
    path = saved(Pose(header, NumPyPoseBody(30.0, data.astype(np.float32),
                                            confidence.astype(np.float32))), tmp_path / 'c.pose')
    clip = read_pose(path)
    np.testing.assert_allclose(clip['keypoints'], data / [200, 100], rtol=1e-6)
    np.testing.assert_allclose(clip['scores'], confidence, rtol=1e-6)


def test_wholebody_round_trip_and_command_line_conversion(tmp_path):
    rng = np.random.default_rng(2)
    keypoints = rng.uniform(0, 500, (5, 133, 2))
    scores = rng.uniform(0.2, 1, (5, 133))
    path = saved(wholebody_to_holistic(keypoints, scores, 500, 500, 25.0), tmp_path / 'w.pose')
    clip = read_pose(path)
    mapped = sorted(HOLISTIC_TO_WHOLEBODY)
    np.testing.assert_allclose(clip['keypoints'][:, 0, mapped], keypoints[:, mapped] / 500, rtol=1e-5)
    np.testing.assert_allclose(clip['scores'][:, 0, mapped], scores[:, mapped], rtol=1e-6)

    mediapipe_pose.main(['--input', str(tmp_path), '--out', str(tmp_path / 'pkl'), '--fps', '50'])
    converted = read_pose(str(tmp_path / 'pkl' / 'w.pkl'))
    assert converted['keypoints'].shape == (10, 1, 133, 2)


def convert_demo_to_pose(demo_root, out_root):
    """A copy of the Demo set whose labels point at .pose files made from its pickles."""
    demo, copy = os.path.join(demo_root, 'Demo'), os.path.join(out_root, 'Demo')
    os.makedirs(copy)
    os.symlink(os.path.join(demo, 'mt5'), os.path.join(copy, 'mt5'))
    mediapipe_pose.main(['--to', 'pose', '--input', os.path.join(demo, 'pose_format'),
                         '--out', os.path.join(copy, 'pose_format')])
    for split in ('train', 'dev', 'test'):
        with gzip.open(os.path.join(demo, f'labels.{split}'), 'rb') as f:
            labels = pickle.load(f)
        for entry in labels.values():
            entry['video_path'] = entry['video_path'][:-len('.mp4')] + '.pose'
        with gzip.open(os.path.join(copy, f'labels.{split}'), 'wb') as f:
            pickle.dump(labels, f)
    return out_root


def test_demo_set_as_pose_files_matches_pickles_and_trains(demo_root, tmp_path):
    pose_root = convert_demo_to_pose(demo_root, str(tmp_path / 'data'))
    from_pkl = S2T_Dataset(os.path.join(demo_root, 'Demo', 'labels.dev'),
                           os.path.join(demo_root, 'Demo', 'pose_format'), 'dev', 'Demo')
    from_pose = S2T_Dataset(os.path.join(pose_root, 'Demo', 'labels.dev'),
                            os.path.join(pose_root, 'Demo', 'pose_format'), 'dev', 'Demo')
    assert from_pose.pose_path(0).endswith('.pose')
    for index in range(len(from_pkl)):
        _, expected, text, _ = from_pkl[index]
        _, parts, text_pose, _ = from_pose[index]
        assert text == text_pose
        for part in expected:
            torch.testing.assert_close(parts[part], expected[part], atol=1e-5, rtol=1e-5)

    # --pose_fps resamples the .pose inputs the trainer reads (pickles carry no frame rate)
    from pose_format import Pose
    with open(from_pose.pose_path(0), 'rb') as f:
        fps = float(Pose.read(f.read()).body.fps)
    halved = S2T_Dataset(os.path.join(pose_root, 'Demo', 'labels.dev'),
                         os.path.join(pose_root, 'Demo', 'pose_format'), 'dev', 'Demo',
                         pose_fps=fps / 2)
    frames = from_pose.read_clip(0)['keypoints'].shape[0]
    assert halved.read_clip(0)['keypoints'].shape[0] == round(frames / 2)

    out = tmp_path / 'run'
    cmd = [sys.executable, 'fine_tuning.py', '--dataset', 'Demo', '--data_root', pose_root,
           '--pose_fps', str(fps / 2),
           '--output_dir', str(out), '--batch-size', '4', '--gradient-accumulation-steps', '1',
           '--epochs', '1', '--quick_break', '2', '--num_workers', '0', '--dtype', 'fp32',
           '--stgcn_channels', '8,16', '--hidden_dim', '16', '--temporal_layers', '1',
           '--max_length', '32', '--num_beams', '1', '--max_new_tokens', '8']
    env = {**os.environ, 'DS_ACCELERATOR': 'cpu', 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / 'test_tmp_pres.txt').read_text().count('sample: ') == 8
