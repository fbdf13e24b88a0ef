"""Tests for store_parts.py: a store packed in parts reads as the whole store, a clip's part
follows from its name, and a rank opens only its parts."""
import os
import shutil

import numpy as np
import pytest

import pose_store
import store_parts
from datasets import DataError, S2T_Dataset
from conftest import load_file_module, make_split


@pytest.fixture
def parted(tmp_path):
    labels, pose_dir = make_split(tmp_path, [3 + i % 5 for i in range(24)])
    store_parts.pack_parts(pose_dir, str(tmp_path / 'parts'), 4, workers=0, progress=False)
    pose_store.pack(pose_dir, str(tmp_path / 'whole'), workers=0, progress=False)
    return labels, pose_dir, str(tmp_path / 'parts'), str(tmp_path / 'whole')


def test_parts_read_as_the_whole_store(parted):
    labels, pose_dir, parts_dir, whole_dir = parted
    split = S2T_Dataset(labels, pose_dir, 'train', packed_dir=parts_dir)
    whole = S2T_Dataset(labels, pose_dir, 'train', packed_dir=whole_dir)
    assert isinstance(split.store, store_parts.PartedStore)
    for index in range(len(split)):
        a, b = split.read_clip(index), whole.read_clip(index)
        assert np.array_equal(a['keypoints'], b['keypoints'])
    assert split.lengths() == whole.lengths()
    counts = [len(pose_store.PackedPoseStore(os.path.join(parts_dir, folder)))
              for folder in split.store.manifest['dirs']]
    assert sum(counts) == 24 and all(counts)  # the names spread over the parts


def test_each_rank_opens_only_its_parts(parted):
    labels, pose_dir, parts_dir, _ = parted
    shares = []
    for rank in range(2):
        dataset = S2T_Dataset(labels, pose_dir, 'train', packed_dir=parts_dir)
        share = dataset.rank_share(rank, 2)
        for index in share.tolist():
            dataset.read_clip(index)
        assert sorted(dataset.store._stores) == [rank, rank + 2]
        shares.append(set(share.tolist()))
    assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == set(range(24))


def test_a_missing_part_is_named_and_uneven_ranks_refused(parted):
    labels, pose_dir, parts_dir, _ = parted
    shutil.rmtree(os.path.join(parts_dir, 'part-00001-of-00004'))
    dataset = S2T_Dataset(labels, pose_dir, 'train', packed_dir=parts_dir)
    missing = [i for i in range(len(dataset))
               if store_parts.parts_of([dataset.clip_name(i)], 4)[0] == 1][0]
    with pytest.raises(DataError, match='part 1 of the packed store is not on this machine'):
        dataset.read_clip(missing)
    with pytest.raises(DataError, match='cannot be shared evenly by 3 ranks'):
        dataset.rank_share(0, 3)


def test_pack_poses_shards_flag(tmp_path, capsys):
    labels, pose_dir = make_split(tmp_path, [3, 4, 5, 6])
    pack_poses = load_file_module('script/pack_poses.py')
    out = str(tmp_path / 'packed')
    assert pack_poses.main(['--pose_dir', pose_dir, '--out', out, '--shards', '2',
                            '--workers', '1', '--quiet', '--verify']) == 0
    assert 'in 2 parts' in capsys.readouterr().out and store_parts.is_parted_store(out)
    with pytest.raises(SystemExit):
        pack_poses.main(['--out', out, '--verify_only', '--shards', '2'])
    assert '--shards acts on packing' in capsys.readouterr().err
