"""Tests for scan_cache.py: unchanged clips are not read again, a changed clip is, a corrupt or
foreign cache is reported and rebuilt, and shares of several ranks make one cache."""
import os

import numpy as np
import pytest

import pose_store
import sample_checks
import scan_cache
from datasets import S2T_Dataset
from conftest import label, make_pose, make_split, write_labels, write_pickle


@pytest.fixture
def counted_reads(monkeypatch):
    """Counts the clips sample_checks.check_clip reads (the pre-scan reads nothing else)."""
    reads = []
    check_clip = sample_checks.check_clip

    def counting(dataset, index):
        reads.append(dataset.clip_name(index))
        return check_clip(dataset, index)

    monkeypatch.setattr(sample_checks, 'check_clip', counting)
    return reads


def scan(dataset, path):
    return scan_cache.scan_split(dataset, np.arange(len(dataset)), str(path))


def test_unchanged_clips_come_from_the_cache(tmp_path, counted_reads):
    labels, pose_dir = make_split(tmp_path, [3, 4, 5, 6])
    (tmp_path / 'poses' / 'clip2.pkl').write_bytes(b'broken')
    path = tmp_path / 'out' / 'train.npz'
    first = scan(S2T_Dataset(labels, pose_dir, 'train'), path)
    assert first[2] == 4 and len(counted_reads) == 4 and os.path.isfile(path)
    counted_reads.clear()
    again = scan(S2T_Dataset(labels, pose_dir, 'train'), path)
    assert counted_reads == [] and again[2] == 0
    assert again[0].tolist() == first[0].tolist() == [3, 4, -1, 6]
    assert again[1] == first[1] and 'clip2.pkl: unreadable pickle' in again[1][2]


def test_a_changed_clip_is_read_again_alone(tmp_path, counted_reads):
    labels, pose_dir = make_split(tmp_path, [3, 4, 5, 6])
    path = tmp_path / 'train.npz'
    scan(S2T_Dataset(labels, pose_dir, 'train'), path)
    counted_reads.clear()
    write_pickle(tmp_path / 'poses' / 'clip1.pkl', make_pose(9, seed=5))
    frames, problems, read = scan(S2T_Dataset(labels, pose_dir, 'train'), path)
    assert counted_reads == ['clip1'] and read == 1 and frames.tolist() == [3, 9, 5, 6]
    os.remove(tmp_path / 'poses' / 'clip3.pkl')
    counted_reads.clear()
    frames, problems, _ = scan(S2T_Dataset(labels, pose_dir, 'train'), path)
    assert counted_reads == ['clip3'] and 'not found' in problems[3]
    counted_reads.clear()
    scan(S2T_Dataset(labels, pose_dir, 'train'), path)
    assert counted_reads == ['clip3']  # a missing file is always looked at again


def test_a_new_label_entry_is_read_alone(tmp_path, counted_reads):
    labels, pose_dir = make_split(tmp_path, [3, 4])
    path = tmp_path / 'train.npz'
    scan(S2T_Dataset(labels, pose_dir, 'train'), path)
    write_pickle(tmp_path / 'poses' / 'extra.pkl', make_pose(7, seed=9))
    more = write_labels(tmp_path / 'more', [label('clip0', 'a'), label('clip1', 'b'),
                                            label('extra', 'c')])
    counted_reads.clear()
    frames, _, _ = scan(S2T_Dataset(more, pose_dir, 'train'), path)
    assert counted_reads == ['extra'] and frames.tolist() == [3, 4, 7]


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'garbage'])
def test_a_corrupt_cache_is_reported_and_rebuilt(tmp_path, counted_reads, capsys, damage):
    labels, pose_dir = make_split(tmp_path, [3, 4, 5])
    path = tmp_path / 'train.npz'
    first = scan(S2T_Dataset(labels, pose_dir, 'train'), path)
    data = path.read_bytes()
    if damage == 'truncate':
        path.write_bytes(data[:len(data) // 2])
    elif damage == 'flip':  # a frame count changed inside the stored arrays
        stored = dict(np.load(path, allow_pickle=False))
        stored['frames'] = stored['frames'] + 1
        np.savez(path, **stored)
    else:
        path.write_bytes(b'not a cache')
    counted_reads.clear()
    again = scan(S2T_Dataset(labels, pose_dir, 'train'), path)
    assert f"pre-scan cache {path} is corrupt" in capsys.readouterr().out
    assert len(counted_reads) == 3 and again[0].tolist() == first[0].tolist()
    counted_reads.clear()
    scan(S2T_Dataset(labels, pose_dir, 'train'), path)  # rebuilt: trusted again
    assert counted_reads == []


def test_corrupt_cache_message_names_the_file(tmp_path, capsys):
    labels, pose_dir = make_split(tmp_path, [3, 4])
    path = tmp_path / 'train.npz'
    path.write_bytes(b'PK\x03\x04 damaged')
    scan(S2T_Dataset(labels, pose_dir, 'train'), path)
    out = capsys.readouterr().out
    assert f"warning: pre-scan cache {path} is corrupt" in out and 'rebuilding it' in out


def test_other_settings_set_the_cache_aside(tmp_path, counted_reads, capsys):
    labels, pose_dir = make_split(tmp_path, [3, 4])
    path = tmp_path / 'train.npz'
    scan(S2T_Dataset(labels, pose_dir, 'train'), path)
    counted_reads.clear()
    frames, problems, _ = scan(S2T_Dataset(labels, pose_dir, 'train', max_frames=3), path)
    assert len(counted_reads) == 2 and 'other settings' in capsys.readouterr().out
    assert '--max_frames_per_clip' in problems[1]


def test_shares_of_two_ranks_make_one_cache(tmp_path, counted_reads):
    labels, pose_dir = make_split(tmp_path, [3, 4, 5, 6, 7])
    path = str(tmp_path / 'train.npz')
    datasets = [S2T_Dataset(labels, pose_dir, 'train') for _ in range(2)]
    locals_ = []

    def gather_from(rank):
        def gather(local):
            locals_.append(local)
            return locals_ if rank == 1 else None
        return gather

    # rank 0 scans its share first; rank 1 then sees both shares and writes the cache
    keys = datasets[0].clip_names()
    frames, problems, signatures, read = scan_cache.cached_scan(
        datasets[0], np.arange(0, 5, 2), keys, scan_cache.ScanCache())
    locals_.append((np.arange(0, 5, 2), frames, problems, np.arange(0, 5, 2)[read], signatures))
    result = scan_cache.scan_split(datasets[1], np.arange(1, 5, 2), path,
                                   gather=lambda local: locals_ + [local])
    assert result[0].tolist() == [3, 4, 5, 6, 7] and result[2] == 5
    counted_reads.clear()
    again = scan_cache.scan_split(S2T_Dataset(labels, pose_dir, 'train'), np.arange(5), path)
    assert counted_reads == [] and again[0].tolist() == [3, 4, 5, 6, 7]


def test_packed_store_clips_are_invalidated_per_shard(tmp_path, counted_reads):
    labels, pose_dir = make_split(tmp_path, [3, 4, 5, 6])
    store_dir = str(tmp_path / 'packed')
    pose_store.pack(pose_dir, store_dir, shard_size=2, workers=0, progress=False)
    path = tmp_path / 'train.npz'
    scan(S2T_Dataset(labels, pose_dir, 'train', packed_dir=store_dir), path)
    counted_reads.clear()
    scan(S2T_Dataset(labels, pose_dir, 'train', packed_dir=store_dir), path)
    assert counted_reads == []
    shard = os.path.join(store_dir, 'shard-00001.scores.npy')
    os.utime(shard, ns=(os.stat(shard).st_atime_ns, os.stat(shard).st_mtime_ns + 10 ** 9))
    scan(S2T_Dataset(labels, pose_dir, 'train', packed_dir=store_dir), path)
    assert sorted(counted_reads) == ['clip2', 'clip3']  # the clips of the touched shard
