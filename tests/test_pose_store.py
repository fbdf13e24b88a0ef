"""Tests for pose_store.py: packing, precision, reading back, checksums, resuming, bad files,
old formats, CLI."""
import gzip
import importlib.util
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

import demo.news
import pose_store
from datasets import DataError, S2T_Dataset, load_part_kp, read_pose
from pose_store import MANIFEST_NAME, PackedPoseStore, pack

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = np.float32(0.3)


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


def assert_within_grid(store, name, expected):
    """Coordinates within half a step of the clip's grid, scores within one (threshold moves)."""
    offsets, steps = store.grid(name)
    clip = store.read(name)
    assert clip['keypoints'].dtype == np.float32 and clip['scores'].dtype == np.float32
    assert clip['keypoints'].shape == expected['keypoints'].shape
    assert clip['scores'].shape == expected['scores'].shape
    coordinate_error = np.abs(clip['keypoints'].astype(np.float64) - expected['keypoints'])
    assert (coordinate_error <= steps[:2] / 2 * (1 + 1e-9)).all()
    assert np.abs(clip['scores'].astype(np.float64) - expected['scores']).max() <= steps[2]
    assert ((clip['scores'] > THRESHOLD) == (expected['scores'] > THRESHOLD)).all()
    return clip


def part_difference(reference_pose, pose):
    """Largest part-tensor difference, after checking both give the same confidence masks."""
    reference = load_part_kp(reference_pose['keypoints'], reference_pose['scores'])
    parts = load_part_kp(pose['keypoints'], pose['scores'])
    for part in parts:
        assert torch.equal(parts[part][..., 2] == 0, reference[part][..., 2] == 0)
    return max((parts[p] - reference[p]).abs().max().item() for p in parts)


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
        clip = assert_within_grid(store, name, expected)
        # the grid resolves 1/65535 of the clip's extent on each axis (and of its score range)
        ranges = [np.ptp(expected['keypoints'][..., axis]) for axis in range(2)]
        ranges.append(np.ptp(expected['scores']))
        assert (store.grid(name)[1] <= np.array(ranges) / 65535 * 1.01).all()
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
        pose = read_pose(os.path.join(pose_dir, name + '.pkl'))
        assert part_difference(pose, store.read(name)) <= 1e-4


def test_parts_of_demo_news_clips_differ_from_pickles_below_the_bound(tmp_path):
    """The parts the model sees, from Demo-rendered CSL-News-shaped clips (whose undetected
    joints sit at 0, 0): measured at most 1.0e-4 over 200 clips, against a bound of 1e-3."""
    paths = demo.news.make_news(str(tmp_path), n=60, seed=1)
    pack(paths['pose_dir'], str(tmp_path / 'store'), workers=1, progress=False)
    store = PackedPoseStore(str(tmp_path / 'store'))
    worst = max(part_difference(read_pose(os.path.join(paths['pose_dir'], name + '.pkl')),
                                store.read(name)) for name in store.names())
    assert 0 < worst <= 2.5e-4


def extreme_clip(rng, kind, num_frames):
    """Coordinates over extreme ranges, and a small signer in a corner of a frame whose
    unconfident joints lie anywhere in it (the widest extent for the smallest body box)."""
    if kind == 'signer_in_a_corner':
        pose = realistic_pose(num_frames, seed=int(rng.integers(1000)))
        keypoints, scores = pose['keypoints'] * np.float32(0.15) + np.float32(0.05), pose['scores']
        scattered = rng.random(scores.shape) < 0.05
        keypoints[scattered] = rng.uniform(0, 1, (int(scattered.sum()), 2))
        scores[scattered] = rng.uniform(0, 0.3, int(scattered.sum()))
    else:
        scale, spread, offset = {'unit': (1, 1, 0), 'tiny': (1e-3, 1e-3, 0), 'huge': (1e4, 1e4, 0),
                                 'far_offset': (1, 1e-5, 1e3), 'pixels': (1e3, 1920, 0),
                                 'negative': (3, 0.2, -7)}[kind]
        keypoints = (offset + rng.uniform(-scale, scale, (1, 1, 133, 2))
                     + rng.uniform(0, spread, (num_frames, 1, 133, 2))).astype(np.float32)
        scores = rng.uniform(0, 1, (num_frames, 1, 133)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.05] = THRESHOLD
    return {'keypoints': keypoints, 'scores': scores}


def test_parts_of_clips_with_extreme_ranges_differ_below_the_bound(tmp_path):
    """Measured over 60 clips of each kind: at most 4.2e-5 for the extreme ranges and 5.8e-4
    for the signer in a corner (body box 1/12 to 1/20 of the extent), against a bound of 1e-3."""
    rng = np.random.default_rng(0)
    kinds = ['unit', 'tiny', 'huge', 'far_offset', 'pixels', 'negative', 'signer_in_a_corner']
    Path(tmp_path, 'p').mkdir()
    poses = {}
    for index in range(3 * len(kinds)):
        name = f'{kinds[index % len(kinds)]}{index}'
        poses[name] = extreme_clip(rng, kinds[index % len(kinds)], int(rng.integers(1, 60)))
        Path(tmp_path, 'p', name + '.pkl').write_bytes(pickle.dumps(poses[name]))
    pack(str(tmp_path / 'p'), str(tmp_path / 's'), workers=1, progress=False)
    store = PackedPoseStore(str(tmp_path / 's'))
    for name, pose in poses.items():
        assert_within_grid(store, name, pose)
        bound = 1e-3 if name.startswith('signer_in_a_corner') else 1e-4
        assert part_difference(pose, store.read(name)) <= bound


def test_decoding_is_exact_on_the_grid(pose_dir, tmp_path):
    """Every stored level decodes to exactly offset + level * step, so equal values stay equal."""
    pack(pose_dir, str(tmp_path / 'store'), shard_size=100, workers=1, progress=False)
    store = PackedPoseStore(str(tmp_path / 'store'))
    levels = np.load(str(tmp_path / 'store' / 'shard-00000.keypoints.npy'))
    score_levels = np.load(str(tmp_path / 'store' / 'shard-00000.scores.npy'))
    rows = np.load(str(tmp_path / 'store' / 'index_rows.npy'))
    for name, (_, offset, length, _, _) in zip(store.names(), rows):
        offsets, steps = store.grid(name)
        clip = store.read(name)
        exact = offsets[:2] + levels[offset:offset + length] * steps[:2].astype(np.float64)
        assert np.array_equal(clip['keypoints'][:, 0], exact)
        exact = offsets[2] + score_levels[offset:offset + length] * np.float64(steps[2])
        assert np.array_equal(clip['scores'][:, 0], exact)


@pytest.mark.parametrize('score_range', [1, 10])  # RTMPose's scores may exceed 1
def test_scores_never_cross_the_confidence_threshold(tmp_path, score_range):
    near = np.array([np.nextafter(THRESHOLD, np.float32(0), dtype=np.float32),
                     THRESHOLD, np.nextafter(THRESHOLD, np.float32(1), dtype=np.float32),
                     0.29995, 0.30002, 0.30003, 0.29999, 0, score_range], dtype=np.float32)
    near = np.concatenate([near, np.float32(0.3) + np.arange(-200, 200, dtype=np.float32) * 1e-6])
    pose = realistic_pose(4, seed=0)
    pose['scores'] *= np.float32(score_range)
    pose['scores'][:, 0, :len(near) // 4 + 1] = np.resize(near, (4, len(near) // 4 + 1))
    Path(tmp_path, 'p').mkdir()
    Path(tmp_path, 'p', 'near.pkl').write_bytes(pickle.dumps(pose))
    pack(str(tmp_path / 'p'), str(tmp_path / 's'), workers=1, progress=False)
    store = PackedPoseStore(str(tmp_path / 's'))
    packed = assert_within_grid(store, 'near', pose)['scores']
    assert packed[pose['scores'] == THRESHOLD].max() <= THRESHOLD
    assert np.abs(packed - pose['scores']).max() <= score_range / 65535 * 1.01


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
        assert keypoints.dtype == np.uint16 and keypoints.shape == (shard['frames'], 133, 2)


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
    infinite = realistic_pose(4, seed=9)
    infinite['keypoints'][2, 0, 40, 1] = np.inf
    Path(pose_dir, 'infinite.pkl').write_bytes(pickle.dumps(infinite))
    manifest = pack(pose_dir, str(tmp_path / 'lenient'), shard_size=3, workers=2,
                    progress=False, skip_bad=True)
    assert manifest['num_clips'] == 6
    assert [entry['file'] for entry in manifest['bad_files']] == \
        [str(bad), str(Path(pose_dir, 'infinite.pkl'))]
    assert 'unreadable pickle' in manifest['bad_files'][0]['error']
    assert 'keypoints contain NaN or Inf (first at frame 2)' in manifest['bad_files'][1]['error']
    store = PackedPoseStore(str(tmp_path / 'lenient'))
    assert 'clip03' not in store and 'infinite' not in store and 'clip04' in store
    assert store.bad_files == manifest['bad_files']


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


def test_progress_in_a_log_is_plain_lines(pose_dir, tmp_path, capsys):
    pack(pose_dir, str(tmp_path / 'store'), workers=1, shard_size=4)
    out, err = capsys.readouterr()
    assert 'packing: 7 of 7 clips (' in out and '\r' not in out + err


def test_pixel_coordinates_and_degenerate_clips_round_trip(tmp_path):
    pixels = realistic_pose(20, seed=3)
    pixels['keypoints'] = pixels['keypoints'] * np.float32(1920)
    single = realistic_pose(6, seed=4)
    single['scores'][:] = 0.1
    single['scores'][:, 0, 7] = 0.9  # one confident joint: a zero extent
    outlier = realistic_pose(6, seed=5)
    outlier['keypoints'][0, 0, 100] = 1e4  # far from the others: a coarse grid for this clip
    still = {'keypoints': np.zeros((3, 1, 133, 2), np.float32),
             'scores': np.full((3, 1, 133), 0.3, np.float32)}
    poses = {'pixels': pixels, 'single': single, 'outlier': outlier, 'still': still}
    Path(tmp_path, 'p').mkdir()
    for name, pose in poses.items():
        Path(tmp_path, 'p', f'{name}.pkl').write_bytes(pickle.dumps(pose))
    pack(str(tmp_path / 'p'), str(tmp_path / 's'), workers=1, progress=False)
    store = PackedPoseStore(str(tmp_path / 's'))
    for name, pose in poses.items():
        assert_within_grid(store, name, pose)
    assert store.grid('outlier')[1][0] <= 1e4 / 65535 * 1.01
    assert np.array_equal(store.read('still')['keypoints'], still['keypoints'])
    assert np.array_equal(store.read('still')['scores'], still['scores'])


def test_values_beyond_the_grid_range_fail_naming_the_file(tmp_path):
    pose = realistic_pose(3, seed=0)
    pose['keypoints'][1, 0, 5, 0] = 3e38
    Path(tmp_path, 'p').mkdir()
    Path(tmp_path, 'p', 'huge.pkl').write_bytes(pickle.dumps(pose))
    with pytest.raises(DataError,
                       match=r'huge.pkl: keypoints reach 3e\+38, beyond the coordinate bound'):
        pack(str(tmp_path / 'p'), str(tmp_path / 's'), workers=1, progress=False)


def make_version_1_store(pose_dir, store_dir):
    """A store whose manifest says format version 1 (float16 coordinates)."""
    pack(pose_dir, store_dir, shard_size=4, workers=1, progress=False)
    manifest = json.loads(Path(store_dir, MANIFEST_NAME).read_text())
    Path(store_dir, MANIFEST_NAME).write_text(json.dumps(dict(manifest, version=1)))


def pack_poses_script():
    spec = importlib.util.spec_from_file_location('pack_poses', REPO / 'script' / 'pack_poses.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_old_format_store_is_refused_and_repacked_with_no_resume(pose_dir, tmp_path, capsys):
    store_dir = str(tmp_path / 'store')
    make_version_1_store(pose_dir, store_dir)
    with pytest.raises(DataError, match='format version 1.*repack with script/pack_poses.py'):
        PackedPoseStore(store_dir)
    arguments = ['--pose_dir', pose_dir, '--out', store_dir, '--workers', '1', '--shard_size', '4',
                 '--quiet']
    assert pack_poses_script().main(arguments) == 2
    assert 'version 1' in capsys.readouterr().err
    assert pack_poses_script().main(['--out', store_dir, '--verify_only']) == 2
    assert 'repack with script/pack_poses.py --no_resume' in capsys.readouterr().err
    assert pack_poses_script().main(arguments + ['--no_resume', '--verify']) == 0
    assert 'verify: OK' in capsys.readouterr().out
    assert len(PackedPoseStore(store_dir)) == 7
