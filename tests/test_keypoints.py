"""Tests for keypoints: checked reading of pose pickles and the restricted unpickler."""
import gzip
import os
import pickle

import numpy as np
import pytest
from conftest import make_pose, write_pickle

from keypoints import DataError
from labels import load_labels
from poses import read_pose


# ----------------------------------------------------------------------------- pose files

def test_read_pose_array_and_frame_list_formats(tmp_path):
    pose = make_pose(8)
    pose['keypoints'] = pose['keypoints'].astype(np.float64)
    clip = read_pose(write_pickle(tmp_path / 'a.pkl', dict(pose, start=2, end=7)))
    assert clip['keypoints'].dtype == np.float32 and clip['keypoints'].shape == (8, 1, 133, 2)
    assert clip['scores'].dtype == np.float32 and clip['scores'].shape == (8, 1, 133)
    assert (clip['start'], clip['end']) == (2, 7)
    # per-frame lists as written by pose extraction; extra people are dropped
    frames = [np.concatenate([k, k + 1]) for k in pose['keypoints']]
    listed = read_pose(write_pickle(tmp_path / 'b.pkl', {'keypoints': frames,
                                                         'scores': list(pose['scores'])}))
    np.testing.assert_array_equal(listed['keypoints'], clip['keypoints'])
    assert 'start' not in listed


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_read_pose_accepts_every_pickle_protocol_and_numpy_1_files(tmp_path, protocol):
    pose = make_pose(3)
    raw = pickle.dumps(pose, protocol=protocol)
    if protocol == 2:  # how numpy 1.x names its reconstruct function
        raw = raw.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
    path = tmp_path / 'p.pkl'
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_pose(str(path))['keypoints'], pose['keypoints'])


def corrupt_cases():
    good = make_pose(4)
    good_bytes = pickle.dumps(good)
    nan = make_pose(4)
    nan['keypoints'][2, 0, 7, 1] = np.nan
    inf = make_pose(4)
    inf['keypoints'][1, 0, 3, 0] = np.inf
    return {
        'missing': (None, 'not found'),
        'truncated': (good_bytes[:len(good_bytes) // 2], 'unreadable pickle'),
        'garbage': (b'not a pickle at all', 'unreadable pickle'),
        'not a dict': (pickle.dumps([1, 2]), 'expected a dict'),
        'missing keys': (pickle.dumps({'keypoints': good['keypoints']}), "lacks 'scores'"),
        '17 keypoints': (pickle.dumps({'keypoints': np.zeros((4, 1, 17, 2), np.float32),
                                       'scores': np.zeros((4, 1, 17), np.float32)}),
                         'keypoints has shape (4, 1, 17, 2)'),
        'no person axis': (pickle.dumps({'keypoints': good['keypoints'][:, 0],
                                         'scores': good['scores'][:, 0]}), 'person axis'),
        'zero length': (pickle.dumps({'keypoints': np.zeros((0, 1, 133, 2), np.float32),
                                      'scores': np.zeros((0, 1, 133), np.float32)}),
                        'zero-length clip'),
        'start >= end': (pickle.dumps(dict(good, start=3, end=3)), 'start=3 end=3'),
        'end past clip': (pickle.dumps(dict(good, start=0, end=9)), 'start=0 end=9'),
        'frame mismatch': (pickle.dumps({'keypoints': good['keypoints'],
                                         'scores': good['scores'][:3]}), '4 frames of keypoints'),
        'nan': (pickle.dumps(nan), 'NaN or Inf (first at frame 2)'),
        'inf': (pickle.dumps(inf), 'NaN or Inf (first at frame 1)'),
        'empty person': (pickle.dumps({'keypoints': [np.zeros((0, 133, 2))],
                                       'scores': [np.zeros((0, 133))]}), 'keypoints frame 0'),
    }


@pytest.mark.parametrize('case', list(corrupt_cases()))
def test_read_pose_errors_name_file_and_problem(tmp_path, case):
    content, problem = corrupt_cases()[case]
    path = tmp_path / f'{case.replace(" ", "_")}.pkl'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_pose(str(path))
    assert str(path) in str(error.value)
    assert problem in str(error.value)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_malicious_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / 'pwned'
    pose_path = tmp_path / 'evil.pkl'
    pose_path.write_bytes(pickle.dumps({'keypoints': _Exploit(marker), 'scores': None}))
    with pytest.raises(DataError) as error:
        read_pose(str(pose_path))
    assert str(pose_path) in str(error.value) and 'refused' in str(error.value)
    label_path = tmp_path / 'labels.evil'
    label_path.write_bytes(gzip.compress(pickle.dumps({'x': _Exploit(marker)})))
    with pytest.raises(DataError, match='refused'):
        load_labels(str(label_path))
    assert not marker.exists()


