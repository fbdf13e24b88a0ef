import os
import sys

import numpy as np
import pytest

import video_poses
from conftest import write_person_video
from keypoints import DataError, read_pose_pickle


def person(center, size, score, joints=133):
    """A person's (133, 2) keypoints spread over a box of `size` at `center`, all at `score`."""
    rng = np.random.default_rng(int(size))
    return center + (rng.random((joints, 2)) - 0.5) * size, np.full(joints, float(score))


def test_the_signer_is_the_largest_confident_person():
    small, large, faint = person(100, 40, 0.9), person(300, 200, 0.9), person(500, 400, 0.1)
    keypoints = np.stack([small[0], faint[0], large[0]])
    scores = np.stack([small[1], faint[1], large[1]])
    picked, picked_scores = video_poses.select_person(keypoints, scores)
    assert np.array_equal(picked, large[0]) and np.array_equal(picked_scores, large[1])
    # the same person whatever the order rtmlib lists them in
    order = [2, 0, 1]
    again, _ = video_poses.select_person(keypoints[order], scores[order])
    assert np.array_equal(again, large[0])
    # a smaller person more confident than a larger, faint one is kept
    mid = person(300, 150, 0.95)
    half = person(300, 160, 0.35)
    picked, _ = video_poses.select_person(np.stack([half[0], mid[0]]), np.stack([half[1], mid[1]]))
    assert np.array_equal(picked, mid[0])
    empty, empty_scores = video_poses.select_person(np.zeros((0, 133, 2)), np.zeros((0, 133)))
    assert empty.shape == (133, 2) and not empty.any() and not empty_scores.any()


def test_rtmpose_frames_become_one_person_per_frame_in_pixels(tmp_path):
    """rtmpose_arrays on a real video with a model returning rtmlib's arrays, built here: two
    people in most frames, none in the last two."""
    pytest.importorskip('simple_video_utils', reason="pose-format's video reader is absent")
    video = write_person_video(tmp_path / 'clip.mp4', 4, 2, python=sys.executable)
    signer, bystander = person(250, 300, 0.8), person(60, 50, 0.9)
    seen = []

    def model(frame):
        seen.append(frame.shape)
        if len(seen) > 4:
            return np.zeros((0, 133, 2)), np.zeros((0, 133))
        return (np.stack([bystander[0], signer[0] + len(seen)]),
                np.stack([bystander[1], signer[1]]))

    keypoints, scores, width, height, fps = video_poses.rtmpose_arrays(video, model)
    assert (width, height, fps) == (512, 600, 25.0) and seen == [(600, 512, 3)] * 6
    assert keypoints.shape == (6, 133, 2) and scores.shape == (6, 133)
    assert np.allclose(keypoints[:4], signer[0] + np.arange(1, 5)[:, None, None])
    assert not keypoints[4:].any() and video_poses.frames_without_person(scores) == 2
    out = tmp_path / 'clip.pkl'
    with open(out, 'wb') as f:
        video_poses.write_pickle(f, keypoints, scores)
    clip = read_pose_pickle(str(out))
    assert clip['keypoints'].shape == (6, 1, 133, 2) and clip['keypoints'].dtype == np.float32
    assert np.allclose(clip['keypoints'][:, 0], keypoints) and clip['scores'].shape == (6, 1, 133)


def test_unreadable_and_missing_videos_are_named(tmp_path):
    pytest.importorskip('simple_video_utils', reason="pose-format's video reader is absent")
    garbage = tmp_path / 'garbage.mp4'
    garbage.write_bytes(os.urandom(4000))
    with pytest.raises(video_poses.VideoError, match='garbage.mp4: unreadable video'):
        video_poses.rtmpose_arrays(str(garbage), model=lambda frame: None)
    with pytest.raises(video_poses.VideoError, match='absent.mp4: no such video file'):
        video_poses.read_video(str(tmp_path / 'absent.mp4'))


def test_outputs_are_whole_or_absent(tmp_path):
    out = str(tmp_path / 'clip.pkl')

    def fails(f):
        f.write(b'half a pickle')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        video_poses.write_atomic(out, fails)
    assert os.listdir(tmp_path) == []
    keypoints, scores = np.ones((3, 133, 2)), np.ones((3, 133))
    video_poses.write_atomic(out, lambda f: video_poses.write_pickle(f, keypoints, scores))
    assert os.listdir(tmp_path) == ['clip.pkl'] and video_poses.is_complete(out)
    assert os.stat(out).st_mode & 0o044  # readable as any file written here, not private
    with open(out, 'rb') as f:
        data = f.read()
    with open(out, 'wb') as f:
        f.write(data[:len(data) // 2])  # cut short by something else: done again
    assert not video_poses.is_complete(out) and not video_poses.is_complete(out + '.absent')
    with pytest.raises(DataError):
        read_pose_pickle(out)


def test_cache_files_follow_the_video_content(tmp_path, monkeypatch):
    monkeypatch.setenv('SIGN_VIDEO_CACHE', str(tmp_path / 'cache'))
    for name, content in (('a', b'one'), ('b', b'one'), ('c', b'two')):
        (tmp_path / f'{name}.mp4').write_bytes(content)
    videos = [(name, str(tmp_path / f'{name}.mp4')) for name in 'abc']
    cached = video_poses.pose_targets(videos, 'rtmpose')
    a, b, c = (cached[path] for _, path in videos)
    assert a == b != c and a.startswith(str(tmp_path / 'cache' / 'rtmpose'))
    kept = video_poses.pose_targets(videos, 'mediapipe', str(tmp_path / 'kept'))
    assert kept[videos[2][1]] == str(tmp_path / 'kept' / 'c.pkl')


def test_a_missing_video_environment_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv('SIGN_VIDEO_PYTHON', str(tmp_path / 'absent' / 'python'))
    with pytest.raises(video_poses.VideoError, match='bash script/setup_video.sh'):
        video_poses.extract_videos({'a.mp4': str(tmp_path / 'a.pkl')})


def test_video_flags_need_a_video():
    class Flags:
        pose_estimator, video_workers, keep_poses = 'rtmpose', None, 'poses/'
    message, = video_poses.video_refusals(Flags, has_video=False)
    assert message.startswith('--pose_estimator, --keep_poses cannot act: no input is a video')
    assert video_poses.video_refusals(Flags, has_video=True) == []
