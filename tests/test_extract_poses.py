import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import ROOT, video_env_python, write_person_video
from keypoints import read_pose_pickle
from mediapipe_pose import read_pose_file


def extract(*argv):
    """script/extract_poses.py run by the video environment's python."""
    env = dict(os.environ, GLOG_minloglevel='2', TF_CPP_MIN_LOG_LEVEL='2')
    return subprocess.run([video_env_python(), os.path.join(ROOT, 'script', 'extract_poses.py'),
                           *map(str, argv)], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)


@pytest.fixture(scope='module')
def videos(person_video, tmp_path_factory):
    """A folder of two videos of a person (one in a subfolder) and one of garbage bytes."""
    folder = tmp_path_factory.mktemp('videos')
    shutil.copy(person_video, folder / 'person.mp4')
    (folder / 'more').mkdir()
    write_person_video(folder / 'more' / 'short.mp4', 6, 0)
    (folder / 'garbage.mp4').write_bytes(np.random.default_rng(0).bytes(6000))
    return folder


def test_a_folder_gives_pickles_and_lists_what_could_not_be_done(videos, tmp_path):
    out = tmp_path / 'poses'
    proc = extract(videos, '--out', out, '--workers', '2')
    assert proc.returncode == 1, proc.stderr[-2000:]  # a video gave no file
    assert sorted(os.listdir(out)) == ['extract_summary.json', 'more', 'person.pkl']
    clip = read_pose_pickle(str(out / 'person.pkl'))
    keypoints, scores = clip['keypoints'], clip['scores']
    assert keypoints.shape == (15, 1, 133, 2) and scores.shape == (15, 1, 133)
    # MediaPipe finds the body and the face in the 12 frames of the photograph, in pixels of
    # the 512x600 frame: nose above the shoulders, the signer's left shoulder on the right
    person = scores[:12, 0]
    assert (person[:, [0, 5, 6]] > 0.5).all() and (person[:, 83:91] > 0).all()
    nose, left, right = keypoints[:12, 0, 0], keypoints[:12, 0, 5], keypoints[:12, 0, 6]
    assert (nose[:, 1] < left[:, 1]).all() and (left[:, 0] > right[:, 0]).all()
    assert 100 < nose[0, 0] < 412 and 100 < nose[0, 1] < 500
    # the three black frames stay, without a person, counted
    assert not scores[12:].any()
    assert read_pose_pickle(str(out / 'more' / 'short.pkl'))['keypoints'].shape[0] == 6
    with open(out / 'extract_summary.json', encoding='utf-8') as f:
        entries = {os.path.basename(e['video']): e for e in json.load(f)['clips']}
    assert entries['person.mp4']['without_person'] == 3 and entries['person.mp4']['frames'] == 15
    assert entries['short.mp4']['without_person'] == 0
    assert entries['garbage.mp4']['status'] == 'failed'
    assert 'garbage.mp4: unreadable video' in entries['garbage.mp4']['error']
    assert 'extracted 2 of 3 clips' in proc.stdout and '1 failed' in proc.stdout
    assert f"{videos / 'person.mp4'}: 3 of 15 frames" in proc.stdout
    assert 'garbage.mp4: unreadable video' in proc.stdout.split('videos that gave no file: 1')[1]


def test_a_stopped_run_resumes_where_it_stopped(videos, tmp_path):
    out = tmp_path / 'poses'
    inputs = [videos / 'person.mp4', videos / 'more' / 'short.mp4']
    assert extract(*inputs, '--out', out).returncode == 0
    first = {name: (out / name).read_bytes() for name in ('person.pkl', 'short.pkl')}
    # as a run stopped while writing short.pkl leaves it: a partial file beside no output
    os.remove(out / 'short.pkl')
    (out / 'short.pkl.partial-x1y2').write_bytes(first['short.pkl'][:100])
    stamp = os.stat(out / 'person.pkl').st_mtime_ns
    proc = extract(*inputs, '--out', out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'extracted 1 of 2 clips' in proc.stdout and '1 done before' in proc.stdout
    assert os.stat(out / 'person.pkl').st_mtime_ns == stamp
    assert sorted(os.listdir(out)) == ['extract_summary.json', 'person.pkl', 'short.pkl']
    assert np.array_equal(read_pose_pickle(str(out / 'short.pkl'))['keypoints'],
                          read_pose_pickle(str(out / 'person.pkl'))['keypoints'][:6])
    # an output cut short is not taken as finished
    (out / 'person.pkl').write_bytes(first['person.pkl'][:500])
    proc = extract(*inputs, '--out', out)
    assert 'extracted 1 of 2 clips' in proc.stdout
    assert (out / 'person.pkl').read_bytes() == first['person.pkl']


def test_pose_format_output_reads_as_the_pickle(videos, tmp_path):
    proc = extract(videos / 'more' / 'short.mp4', '--out', tmp_path, '--format', 'pose')
    assert proc.returncode == 0, proc.stderr[-2000:]
    pickle_out = tmp_path / 'pkl'
    extract(videos / 'more' / 'short.mp4', '--out', pickle_out)
    from_pose = read_pose_file(str(tmp_path / 'short.pose'))
    from_pickle = read_pose_pickle(str(pickle_out / 'short.pkl'))
    assert np.allclose(from_pose['keypoints'] * [512, 600], from_pickle['keypoints'], atol=1e-3)
    assert np.array_equal(from_pose['scores'], from_pickle['scores'])


def test_bad_command_lines_stop_with_the_reason(videos, tmp_path):
    proc = extract(tmp_path / 'absent.mp4', '--out', tmp_path)
    assert proc.returncode == 1 and 'absent.mp4: no such video, folder' in proc.stderr
    (tmp_path / 'notes.txt').write_text('x')
    proc = extract(tmp_path / 'notes.txt', '--out', tmp_path)
    assert 'notes.txt: not a video' in proc.stderr
    proc = extract(videos / 'person.mp4', videos / 'person.mp4', '--out', tmp_path)
    assert 'would both be written to' in proc.stderr
    proc = extract(videos / 'person.mp4')
    assert proc.returncode == 2 and '--out DIR' in proc.stderr
