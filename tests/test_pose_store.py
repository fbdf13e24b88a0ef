"""Tests for pose_store.py: packing, reading back, checksums, resuming, bad files, CLI."""
import gzip
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import pose_store
from datasets import DataError, S2T_Dataset, load_part_kp, read_pose
from pose_store import MANIFEST_NAME, PackedPoseStore, pack

REPO = Path(__file__).resolve().parents[1]
# float16 keeps 11 significant bits: half a unit in the last place below 2 is at most 2**-11
SCORE_TOLERANCE = 2.0 ** -12
COORDINATE_TOLERANCE = 2.0 ** -11


def realistic_pose(num_frames, seed, per_frame_lists=False):
    """A drifting whole-body pose in image coordinates, as Uni-Sign's extraction writes it."""
    rng = np.random.default_rng(seed)
    rest = rng.uniform(0.25, 0.75, (1, 1, 133, 2))
    keypoints = rest + np.cumsum(rng.normal(0, 0.003, (num_frames, 1, 133, 2)), axis=0)
    scores = rng.uniform(0.35, 1.0, (num_frames, 1, 133)).astype(np.float32)
    low = rng.random(scores.shape) < 0.1
    scores[low] = rng.uniform(0.0, 0.3, int(low.sum()))
    if per_frame_lists:
        return {'keypoints': list(keypoints), 'scores': list(scores)}
    return {'keypoints': keypoints.astype(np.float32), 'scores': scores}


def write_poses(pose_dir, lengths, windows=None):
    """Writes clip{i}.pkl files (every third in a sub-folder); returns the clip names."""
    names = []
    for index, length in enumerate(lengths):
        name = f'sub/clip{index:02d}' if index % 3 == 2 else f'clip{index:02d}'
        pose = realistic_pose(length, seed=index, per_frame_lists=index % 2 == 1)
        if windows and index in windows:
            pose['start'], pose['end'] = windows[index]
        path = Path(pose_dir, name + '.pkl')
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(pose))
        names.append(name)
    return names


@pytest.fixture
def pose_dir(tmp_path):
    directory = tmp_path / 'poses'
    write_poses(directory, [5, 40, 17, 1, 33, 8, 21], windows={1: (3, 30), 4: (0, 10)})
    return str(directory)


def store_files_digest(store_dir):
    manifest = json.loads(Path(store_dir, MANIFEST_NAME).read_text())
    return [shard['files'] for shard in manifest['shards']], manifest['index']


def test_pack_then_read_matches_read_pose(pose_dir, tmp_path):
    manifest = pack(pose_dir, str(tmp_path / 'store'), shard_size=3, workers=1, progress=False)
    assert manifest['complete'] and manifest['num_clips'] == 7 and len(manifest['shards']) == 3
    store = PackedPoseStore(str(tmp_path / 'store'))
    assert len(store) == 7 and store.names() == sorted(store.names())
    for name in store.names():
        expected = read_pose(os.path.join(pose_dir, name + '.pkl'))
        clip = store.read(name)
        assert clip['keypoints'].dtype == np.float32 and clip['scores'].dtype == np.float32
        assert clip['keypoints'].shape == expected['keypoints'].shape
        assert clip['scores'].shape == expected['scores'].shape
        np.testing.assert_allclose(clip['keypoints'], expected['keypoints'], rtol=0,
                                   atol=COORDINATE_TOLERANCE)
        np.testing.assert_allclose(clip['scores'], expected['scores'], rtol=0,
                                   atol=SCORE_TOLERANCE)
        assert (clip.get('start'), clip.get('end')) == (expected.get('start'), expected.get('end'))
        assert store.length(name) == len(expected['scores'])
    assert store.span('clip01') == (3, 27) and store.span('clip00') == (0, 5)
    assert 'sub/clip02' in store and 'clip02' not in store and 'clip0' not in store
    with pytest.raises(DataError, match="no clip 'missing'"):
        store.read('missing')


def test_parts_differ_from_pickles_only_by_rounding(pose_dir, tmp_path):
    pack(pose_dir, str(tmp_path / 'store'), workers=1, progress=False)
    store = PackedPoseStore(str(tmp_path / 'store'))
    for name in store.names():
        expected = read_pose(os.path.join(pose_dir, name + '.pkl'))
        reference = load_part_kp(expected['keypoints'], expected['scores'])
        packed = store.read(name)
        parts = load_part_kp(packed['keypoints'], packed['scores'])
        assert max((parts[p] - reference[p]).abs().max().item() for p in parts) <= 1e-3


def test_scores_never_cross_the_confidence_threshold(tmp_path):
    threshold = np.float32(0.3)
    near = np.array([np.nextafter(threshold, np.float32(0), dtype=np.float32),
                     threshold, np.nextafter(threshold, np.float32(1), dtype=np.float32),
                     0.29995, 0.30002, 0.30003, 0.29999], dtype=np.float32)
    pose = realistic_pose(2, seed=0)
    pose['scores'][0, 0, :len(near)] = near
    Path(tmp_path, 'p').mkdir()
    Path(tmp_path, 'p', 'near.pkl').write_bytes(pickle.dumps(pose))
    pack(str(tmp_path / 'p'), str(tmp_path / 's'), workers=1, progress=False)
    packed = PackedPoseStore(str(tmp_path / 's')).read('near')['scores'][0, 0, :len(near)]
    assert ((packed > threshold) == (near > threshold)).all()
    assert np.abs(packed - near).max() <= 2.0 ** -12


def test_index_lists_shards_and_lengths(pose_dir, tmp_path):
    manifest = pack(pose_dir, str(tmp_path / 'store'), shard_size=3, workers=1, progress=False)
    store = PackedPoseStore(str(tmp_path / 'store'))
    lengths = {name: store.length(name) for name in store.names()}
    assert sum(lengths.values()) == manifest['num_frames'] == 5 + 40 + 17 + 1 + 33 + 8 + 21
    assert [shard['clips'] for shard in manifest['shards']] == [3, 3, 1]
    rows = np.load(str(tmp_path / 'store' / 'index_rows.npy'))
    for shard in manifest['shards']:
        own = rows[rows[:, 0] == shard['id']]
        own = own[np.argsort(own[:, 1])]
        assert own[0, 1] == 0 and (own[1:, 1] == own[:-1, 1] + own[:-1, 2]).all()
        assert own[:, 2].sum() == shard['frames']
        keypoints = np.load(str(tmp_path / 'store' / f"shard-{shard['id']:05d}.keypoints.npy"),
                            mmap_mode='r')
        assert keypoints.dtype == np.float16 and keypoints.shape == (shard['frames'], 133, 2)


def test_list_of_files_and_same_bytes_with_processes(pose_dir, tmp_path):
    files = sorted(str(p) for p in Path(pose_dir).rglob('*.pkl'))
    pack(files, str(tmp_path / 'a'), shard_size=2, workers=1, progress=False)
    pack(pose_dir, str(tmp_path / 'b'), shard_size=2, workers=2, progress=False)
    assert store_files_digest(tmp_path / 'a') == store_files_digest(tmp_path / 'b')


def test_verify_detects_a_corrupted_shard(pose_dir, tmp_path):
    store_dir = tmp_path / 'store'
    pack(pose_dir, str(store_dir), shard_size=3, workers=1, progress=False)
    store = PackedPoseStore(str(store_dir))
    assert store.verify() == []
    shard = store_dir / 'shard-00001.keypoints.npy'
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0x40
    shard.write_bytes(bytes(data))
    (store_dir / 'shard-00002.scores.npy').unlink()
    problems = PackedPoseStore(str(store_dir)).verify()
    assert problems == [f'{store_dir}/shard-00001.keypoints.npy: checksum mismatch',
                        f'{store_dir}/shard-00002.scores.npy: missing']


class Interrupted(Exception):
    pass


def interrupt_after(count):
    seen = []

    def on_shard(record):
        seen.append(record['id'])
        if len(seen) == count:
            raise Interrupted
    return on_shard


def test_interrupted_pack_resumes_to_the_same_store(pose_dir, tmp_path):
    pack(pose_dir, str(tmp_path / 'clean'), shard_size=2, workers=1, progress=False)
    partial = tmp_path / 'partial'
    with pytest.raises(Interrupted):
        pack(pose_dir, str(partial), shard_size=2, workers=2, progress=False,
             on_shard=interrupt_after(2))
    with pytest.raises(DataError, match='stopped after 2 of 4 shards'):
        PackedPoseStore(str(partial))
    # a crash while writing shard 2: a stray temporary and a half-written data file
    (partial / 'shard-00002.keypoints.npy.tmp').write_bytes(b'half')
    (partial / 'shard-00002.scores.npy').write_bytes(b'stale')
    resumed = []
    pack(pose_dir, str(partial), shard_size=2, workers=1, progress=False,
         on_shard=lambda record: resumed.append(record['id']))
    assert resumed == [2, 3]
    assert store_files_digest(partial) == store_files_digest(tmp_path / 'clean')
    assert PackedPoseStore(str(partial)).verify() == []
    assert not list(partial.glob('*.tmp'))


def test_killed_pack_resumes(pose_dir, tmp_path):
    store_dir = tmp_path / 'store'
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        import pose_store
        def die(record):
            if record['id'] == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        pose_store.pack({pose_dir!r}, {str(store_dir)!r}, shard_size=2, workers=1,
                        progress=False, on_shard=die)
    """)
    result = subprocess.run([sys.executable, '-c', code], capture_output=True)
    assert result.returncode == -9
    manifest = json.loads((store_dir / MANIFEST_NAME).read_text())
    assert [shard['id'] for shard in manifest['shards']] == [0, 1] and not manifest['complete']
    pack(pose_dir, str(store_dir), shard_size=2, workers=1, progress=False)
    pack(pose_dir, str(tmp_path / 'clean'), shard_size=2, workers=1, progress=False)
    assert store_files_digest(store_dir) == store_files_digest(tmp_path / 'clean')


def test_resume_refuses_another_plan_and_no_resume_repacks(pose_dir, tmp_path):
    store_dir = str(tmp_path / 'store')
    pack(pose_dir, store_dir, shard_size=3, workers=1, progress=False)
    with pytest.raises(DataError, match='resume=False'):
        pack(pose_dir, store_dir, shard_size=2, workers=1, progress=False)
    manifest = pack(pose_dir, store_dir, shard_size=2, workers=1, progress=False, resume=False)
    assert len(manifest['shards']) == 4
    assert sorted(os.listdir(store_dir)) == sorted(
        [MANIFEST_NAME, *pose_store.INDEX_FILES] +
        [f'shard-{k:05d}.{kind}' for k in range(4)
         for kind in ('keypoints.npy', 'scores.npy', 'index.json')])


def test_bad_file_fails_naming_it_or_is_skipped_and_logged(pose_dir, tmp_path):
    bad = Path(pose_dir, 'clip03.pkl')
    bad.write_bytes(b'not a pickle')
    with pytest.raises(DataError, match='clip03.pkl: unreadable pickle'):
        pack(pose_dir, str(tmp_path / 'strict'), workers=2, progress=False)
    manifest = pack(pose_dir, str(tmp_path / 'lenient'), shard_size=3, workers=2,
                    progress=False, skip_bad=True)
    assert manifest['num_clips'] == 6
    assert [entry['file'] for entry in manifest['bad_files']] == [str(bad)]
    assert 'unreadable pickle' in manifest['bad_files'][0]['error']
    store = PackedPoseStore(str(tmp_path / 'lenient'))
    assert 'clip03' not in store and 'clip04' in store and store.bad_files == manifest['bad_files']


def test_store_pickles_without_its_maps(pose_dir, tmp_path):
    pack(pose_dir, str(tmp_path / 'store'), workers=1, progress=False)
    store = PackedPoseStore(str(tmp_path / 'store'))
    before = store.read('clip04')
    copy = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 4096
    np.testing.assert_array_equal(copy.read('clip04')['keypoints'], before['keypoints'])


def write_labels(path, names):
    entries = {name: {'name': name, 'gloss': ['G'], 'text': f'text of {name}',
                      'video_path': f'{name}.mp4'} for name in names}
    with gzip.open(path, 'wb') as f:
        pickle.dump(entries, f)
    return str(path)


def test_dataloader_workers_read_a_packed_dataset(tmp_path):
    pose_dir = tmp_path / 'poses'
    names = write_poses(pose_dir, [12, 30, 7, 25, 18, 9, 40, 3])
    pack(str(pose_dir), str(tmp_path / 'store'), shard_size=3, workers=1, progress=False)
    labels = write_labels(tmp_path / 'labels.dev', names)
    packed = S2T_Dataset(labels, str(tmp_path / 'store'), 'dev', max_length=16)
    pickled = S2T_Dataset(labels, str(pose_dir), 'dev', max_length=16)
    assert packed.store is not None and pickled.store is None
    loader = torch.utils.data.DataLoader(packed, batch_size=3, num_workers=2,
                                         collate_fn=packed.collate_fn)
    seen = []
    for src, _ in loader:
        for row, name in enumerate(src['name_batch']):
            reference = pickled[names.index(name)][1]
            length = int(src['src_length_batch'][row])
            for part in reference:
                assert (src[part][row, :length] - reference[part]).abs().max() <= 1e-3
            seen.append(name)
    assert sorted(seen) == sorted(names)


def test_store_packed_next_to_the_pickles_is_detected(tmp_path):
    pose_dir = tmp_path / 'poses'
    names = write_poses(pose_dir, [6, 9, 4])
    pack(str(pose_dir), str(pose_dir), workers=1, progress=False)
    again = pack(str(pose_dir), str(pose_dir), workers=1, progress=False)
    assert again['num_clips'] == 3
    dataset = S2T_Dataset(write_labels(tmp_path / 'labels.dev', names), str(pose_dir), 'dev')
    assert dataset.store is not None and dataset.lengths() == [6, 9, 4]


def test_cli_packs_verifies_and_reports_corruption(pose_dir, tmp_path):
    script = str(REPO / 'script' / 'pack_poses.py')
    out = str(tmp_path / 'store')
    result = subprocess.run([sys.executable, script, '--pose_dir', pose_dir, '--out', out,
                             '--workers', '2', '--shard_size', '4', '--verify', '--quiet'],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert '7 clips' in result.stdout and '2 shards' in result.stdout
    assert 'verify: OK' in result.stdout
    Path(out, 'shard-00000.scores.npy').write_bytes(b'x')
    result = subprocess.run([sys.executable, script, '--out', out, '--verify_only'],
                            capture_output=True, text=True)
    assert result.returncode == 1 and 'checksum mismatch' in result.stdout


def test_pixel_coordinates_and_degenerate_clips_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    pixels = realistic_pose(20, seed=3)
    pixels['keypoints'] = pixels['keypoints'] * np.float32(1920)
    single = realistic_pose(6, seed=4)
    single['scores'][:] = 0.1
    single['scores'][:, 0, 7] = 0.9  # one confident joint: a zero extent
    outlier = realistic_pose(6, seed=5)
    outlier['scores'][:] = 0.1
    outlier['scores'][:, 0, :2] = 0.9
    outlier['keypoints'][:, 0, :2] = 0.5 + rng.normal(0, 1e-7, (6, 2, 2))
    outlier['keypoints'][0, 0, 100] = 1e4  # far from the confident joints
    Path(tmp_path, 'p').mkdir()
    for name, pose in (('pixels', pixels), ('single', single), ('outlier', outlier)):
        Path(tmp_path, 'p', f'{name}.pkl').write_bytes(pickle.dumps(pose))
    pack(str(tmp_path / 'p'), str(tmp_path / 's'), workers=1, progress=False)
    store = PackedPoseStore(str(tmp_path / 's'))
    for name, pose in (('pixels', pixels), ('single', single), ('outlier', outlier)):
        np.testing.assert_allclose(store.read(name)['keypoints'], pose['keypoints'],
                                   rtol=2.0 ** -10, atol=2.0 ** -10)
