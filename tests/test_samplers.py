"""Tests for samplers.py: deterministic distributed batches, length bucketing, resuming."""
import collections

import numpy as np
import pytest
import torch

from samplers import ResumableDistributedSampler, padding_fraction


def make_ranks(dataset_len, world, **kwargs):
    return [ResumableDistributedSampler(dataset_len, num_replicas=world, rank=rank, **kwargs)
            for rank in range(world)]


def skewed_lengths(count, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(4.5, 0.8, count), 10, 400).astype(int)


def flat(batches):
    return [index for batch in batches for index in batch]


def test_order_depends_only_on_seed_and_epoch():
    first = ResumableDistributedSampler(100, 2, 0, seed=3, batch_size=4)
    again = ResumableDistributedSampler(100, 2, 0, seed=3, batch_size=4)
    other_seed = ResumableDistributedSampler(100, 2, 0, seed=4, batch_size=4)
    assert list(first) == list(again) and list(first) != list(other_seed)
    epoch0 = list(first)
    first.set_epoch(1)
    again.set_epoch(1)
    assert list(first) == list(again) != epoch0
    first.set_epoch(0)
    assert list(first) == epoch0


@pytest.mark.parametrize('bucket', [False, True])
def test_ranks_share_one_order_and_cover_the_data_disjointly(bucket):
    lengths = skewed_lengths(96)
    ranks = make_ranks(96, 4, batch_size=3, seed=1, lengths=lengths, bucket_by_length=bucket,
                       bucket_size_multiplier=2)
    steps = [[step.tolist() for step in sampler.steps()] for sampler in ranks]
    assert all(s == steps[0] for s in steps)
    per_rank = [flat(sampler) for sampler in ranks]
    assert all(len(batch) == 3 for sampler in ranks for batch in sampler)
    assert sorted(sum(per_rank, [])) == list(range(96))


@pytest.mark.parametrize('dataset_len,world,batch,drop_last', [
    (10, 3, 2, False), (10, 3, 2, True), (7, 4, 3, False), (7, 4, 3, True), (0, 2, 2, False),
    (23, 2, 5, False), (23, 1, 5, True), (1, 8, 4, False)])
@pytest.mark.parametrize('bucket', [False, True])
def test_every_rank_gets_the_same_number_of_full_batches(dataset_len, world, batch, drop_last,
                                                         bucket):
    lengths = skewed_lengths(dataset_len)
    ranks = make_ranks(dataset_len, world, batch_size=batch, drop_last=drop_last,
                       lengths=lengths, bucket_by_length=bucket, bucket_size_multiplier=2)
    counts = {len(list(sampler)) for sampler in ranks} | {len(sampler) for sampler in ranks}
    assert len(counts) == 1
    seen = collections.Counter(flat(flat(ranks)))
    if drop_last:
        assert counts == {dataset_len // (world * batch)} and max(seen.values(), default=1) == 1
    else:
        assert counts == {-(-dataset_len // (world * batch))}
        assert set(seen) == set(range(dataset_len))
    assert all(len(b) == batch for sampler in ranks for b in sampler)


def test_bucketing_cuts_padding_on_skewed_lengths():
    lengths = skewed_lengths(4000, seed=2)
    plain, bucketed = (ResumableDistributedSampler(4000, 2, 0, batch_size=16, lengths=lengths,
                                                   bucket_by_length=bucket, seed=5)
                       for bucket in (False, True))
    plain_padding = padding_fraction(plain, lengths)
    bucketed_padding = padding_fraction(bucketed, lengths)
    assert plain_padding > 0.3 and bucketed_padding < plain_padding / 4
    # ranks of one step get batches of similar length
    other = ResumableDistributedSampler(4000, 2, 1, batch_size=16, lengths=lengths,
                                        bucket_by_length=True, seed=5)
    step_gaps = [abs(lengths[a].max() - lengths[b].max()) / lengths[a + b].max()
                 for a, b in zip(bucketed, other)]
    assert np.median(step_gaps) < 0.1


def test_padding_fraction():
    assert padding_fraction([[0, 1], [2]], [2, 4, 3]) == pytest.approx(1 - 9 / 11)
    assert padding_fraction([], [1]) == 0.0


@pytest.mark.parametrize('bucket', [False, True])
def test_resumed_sampler_yields_exactly_the_remaining_batches(bucket):
    lengths = skewed_lengths(120)
    options = dict(batch_size=5, seed=11, lengths=lengths, bucket_by_length=bucket,
                   bucket_size_multiplier=3)
    consumed_by_rank, states = [], []
    for sampler in make_ranks(120, 3, **options):
        sampler.set_epoch(2)
        iterator = iter(sampler)
        consumed = [next(iterator) for _ in range(3)]
        sampler.set_position(3)
        states.append(sampler.state_dict())
        consumed_by_rank.append(consumed)
    assert states[0] == {'epoch': 2, 'batches_done': 3, 'seed': 11}
    seen = []
    for rank, (state, consumed) in enumerate(zip(states, consumed_by_rank)):
        fresh = ResumableDistributedSampler(120, 3, rank, **options)
        fresh.load_state_dict(state)
        fresh.set_epoch(2)  # the training loop sets the epoch again; the position must survive
        remaining = list(fresh)
        assert len(remaining) == len(fresh) - 3
        assert consumed + remaining == fresh.rank_batches(2)
        seen += flat(consumed + remaining)
    assert sorted(seen) == list(range(120))
    fresh.set_epoch(3)
    assert fresh.batches_done == 0 and len(list(fresh)) == len(fresh)


def test_position_counts_trained_batches_not_prefetched_ones():
    dataset = torch.utils.data.TensorDataset(torch.arange(64))
    sampler = ResumableDistributedSampler(64, 1, 0, batch_size=4, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=2,
                                         prefetch_factor=4)
    assert len(loader) == 16
    trained = []
    for step, (batch,) in enumerate(loader):
        trained.append(batch.tolist())
        sampler.set_position(step + 1)
        if step == 5:
            break
    resumed = ResumableDistributedSampler(64, 1, 0, batch_size=4, seed=0)
    resumed.load_state_dict(sampler.state_dict())
    rest = [batch.tolist() for (batch,) in torch.utils.data.DataLoader(
        dataset, batch_sampler=resumed, num_workers=2)]
    assert trained + rest == sampler.rank_batches()
    assert sorted(flat(trained + rest)) == list(range(64))


def test_invalid_arguments_and_states_are_refused():
    with pytest.raises(ValueError, match='rank 2'):
        ResumableDistributedSampler(10, 2, 2)
    with pytest.raises(ValueError, match='one length per sample'):
        ResumableDistributedSampler(10, 1, 0, bucket_by_length=True, lengths=[1, 2])
    sampler = ResumableDistributedSampler(10, 1, 0, batch_size=2, seed=1)
    with pytest.raises(ValueError, match='seed 2'):
        sampler.load_state_dict({'epoch': 0, 'batches_done': 1, 'seed': 2})
    with pytest.raises(ValueError, match='outside'):
        sampler.set_position(6)


def test_unshuffled_order_is_sequential():
    sampler = ResumableDistributedSampler(8, 2, 1, shuffle=False, batch_size=2)
    assert list(sampler) == [[2, 3], [6, 7]]


def test_share_batches_come_from_the_share_and_resume():
    shares = [np.arange(0, 40, 2), np.arange(1, 37, 2)]  # 20 and 18 clips
    lengths = np.arange(40) % 7 + 1
    samplers = [ResumableDistributedSampler(40, 2, rank, seed=3, drop_last=True, batch_size=4,
                                            share=share, num_batches=4, lengths=lengths,
                                            bucket_by_length=True, bucket_size_multiplier=2)
                for rank, share in enumerate(shares)]
    for sampler, share in zip(samplers, shares):
        batches = sampler.rank_batches(1)
        assert len(batches) == len(sampler) == 4 and all(len(b) == 4 for b in batches)
        flat = sum(batches, [])
        assert set(flat) <= set(share.tolist()) and len(set(flat)) == 16
        assert sampler.rank_batches(1) == batches and sampler.rank_batches(2) != batches
        sampler.set_epoch(1)
        sampler.set_position(3)
        resumed = ResumableDistributedSampler(40, 2, 0, seed=3, drop_last=True, batch_size=4,
                                              share=share, num_batches=4, lengths=lengths,
                                              bucket_by_length=True, bucket_size_multiplier=2)
        resumed.load_state_dict(sampler.state_dict())
        assert list(resumed) == batches[3:]
    with pytest.raises(ValueError, match='fills 4 batches, not 5'):
        ResumableDistributedSampler(40, 2, 1, batch_size=4, drop_last=True, share=shares[1],
                                    num_batches=5)
    with pytest.raises(ValueError, match='knows only its own'):
        samplers[0].steps()
