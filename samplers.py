"""Resumable distributed batch sampling, optionally grouping clips of similar length.

Every rank derives the same global list of batches from (seed, epoch) and takes its own share,
so a run restarted in the middle of an epoch can skip exactly the batches it already trained on.
Batches are formed per optimizer step: step k hands rank r the r-th of `num_replicas`
consecutive batches, and with length bucketing those batches hold clips of similar length, so
neither padding nor a slow rank wastes the step.
"""
import math

import numpy as np
import torch


def padding_fraction(batches, lengths):
    """Share of padded frames when each batch is padded to its longest clip."""
    lengths = np.asarray(lengths)
    real = padded = 0
    for batch in batches:
        batch_lengths = lengths[np.asarray(batch, dtype=np.int64)]
        if len(batch_lengths):
            real += int(batch_lengths.sum())
            padded += len(batch_lengths) * int(batch_lengths.max())
    return 1 - real / padded if padded else 0.0


def _default_distribution(num_replicas, rank):
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if initialised else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    return num_replicas, rank


class ResumableDistributedSampler(torch.utils.data.Sampler):
    """Yields this rank's batches of dataset indices (use as a DataLoader's batch_sampler).

    Every rank gets len(self) full batches. Without drop_last the epoch's order is extended
    by its own first indices to fill the last step; with drop_last the tail is dropped. With
    bucket_by_length, the shuffled order is cut into chunks of
    bucket_size_multiplier * num_replicas * batch_size indices, each chunk is sorted by
    `lengths` and cut into steps, and the steps are shuffled.

    With `share` (this rank's dataset indices, e.g. the clips of its parts of a parted store),
    the rank draws its batches from its share alone: the same draws as above over the share,
    num_batches (default: what the share fills; the trainer passes the smallest over ranks)
    batches per epoch. Bucketed batches of equal position then hold clips of similar length on
    every rank, as the steps are shuffled alike.

    Resuming: the trainer reports the micro-batches it finished with set_position(n) (counted
    from the start of the epoch); state_dict() then records {'epoch', 'batches_done', 'seed'}
    and, after load_state_dict() on a fresh sampler, iteration starts at the next unseen batch.
    """

    def __init__(self, dataset_len, num_replicas=None, rank=None, shuffle=True, seed=0,
                 drop_last=False, batch_size=1, lengths=None, bucket_by_length=False,
                 bucket_size_multiplier=50, share=None, num_batches=None):
        num_replicas, rank = _default_distribution(num_replicas, rank)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        if batch_size < 1 or bucket_size_multiplier < 1:
            raise ValueError("batch_size and bucket_size_multiplier must be positive")
        if bucket_by_length and (lengths is None or len(lengths) != dataset_len):
            raise ValueError("bucket_by_length needs one length per sample")
        self.dataset_len, self.num_replicas, self.rank = dataset_len, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.batch_size, self.bucket_size_multiplier = batch_size, bucket_size_multiplier
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.bucket_by_length = bucket_by_length
        self.share = None if share is None else np.asarray(share, dtype=np.int64)
        per_step = batch_size * (num_replicas if share is None else 1)
        steps = (dataset_len if share is None else len(self.share)) / per_step
        fills = math.floor(steps) if drop_last else math.ceil(steps)
        if num_batches is not None and num_batches > fills:
            raise ValueError(f"this rank's share fills {fills} batches, not {num_batches}")
        self.num_batches = fills if num_batches is None else num_batches
        self.epoch, self.batches_done = 0, 0

    def __len__(self):
        return self.num_batches

    def set_epoch(self, epoch):
        """Selects the epoch; a new epoch starts from its first batch, the current one stays put."""
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def set_position(self, batches_done):
        """Records how many of this rank's batches of the current epoch have been trained on."""
        if not 0 <= batches_done <= self.num_batches:
            raise ValueError(f"batches_done {batches_done} is outside [0, {self.num_batches}]")
        self.batches_done = int(batches_done)

    def state_dict(self):
        return {'epoch': self.epoch, 'batches_done': self.batches_done, 'seed': self.seed}

    def load_state_dict(self, state):
        if state['seed'] != self.seed:
            raise ValueError(f"the saved order used seed {state['seed']}, this sampler {self.seed}")
        self.epoch = state['epoch']
        self.set_position(state['batches_done'])

    def __iter__(self):
        # The epoch's batches are drawn now, so a later set_position() cannot shift batches the
        # DataLoader prefetches; they are kept as one array and turned into lists one by one.
        batches = self.batch_array()[self.batches_done:]
        return (batch.tolist() for batch in batches)

    def rank_batches(self, epoch=None):
        """All of this rank's batches of an epoch (default: the current one), in order."""
        return self.batch_array(epoch).tolist()

    def batch_array(self, epoch=None):
        """This rank's batches of an epoch as an int64 array (batches, batch_size)."""
        group, position = (self.num_replicas, self.rank) if self.share is None else (1, 0)
        order = self._order(epoch, group)
        return order.reshape(self.num_batches, group, self.batch_size)[:, position]

    def steps(self, epoch=None):
        """The epoch's global batches, one array of num_replicas * batch_size indices per step
        (without a share)."""
        if self.share is not None:
            raise ValueError("a sampler over a share knows only its own rank's batches")
        per_step = self.batch_size * self.num_replicas
        return list(self._order(epoch, self.num_replicas).reshape(self.num_batches, per_step))

    def _draw(self, rng, count):
        """The epoch's `count` indices before length bucketing: a permutation of the dataset
        (or the share), repeated from its start if short."""
        if self.share is None:
            order = rng.permutation(self.dataset_len) if self.shuffle \
                else np.arange(self.dataset_len)
        else:
            order = self.share[rng.permutation(len(self.share))] if self.shuffle else self.share
        return np.resize(order, count)

    def _order(self, epoch, group):
        """The epoch's indices in batch order, num_batches steps of group * batch_size."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        per_step = self.batch_size * group
        order = self._draw(rng, self.num_batches * per_step)
        if not self.bucket_by_length:
            return order
        chunk = per_step * self.bucket_size_multiplier
        order = np.concatenate([np.zeros(0, dtype=np.int64)] + [
            part[np.argsort(self.lengths[part], kind='stable')]
            for part in (order[begin:begin + chunk] for begin in range(0, len(order), chunk))])
        if self.shuffle:
            order = order.reshape(self.num_batches, per_step)[
                rng.permutation(self.num_batches)].reshape(-1)
        return order
