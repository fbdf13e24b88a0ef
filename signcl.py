"""SignCL frame contrast (Ye et al., NeurIPS 2024) on (B, T, D) frame features, and its margin rule.

Every anchor frame i is pulled towards its neighbours and pushed from frames more than `margin`
away: softplus(|x_i - x_i±1|_1 - D) + softplus(D - |x_i - x_j|_1). The sampled mode (training)
draws `neg_samples` negatives per anchor uniformly without replacement and computes only those
distances: the draw works on counts (the admissible frames of an anchor are two index ranges), and
one autograd function gathers the pairs and returns their L1 gradients without building any
T x T matrix. The deterministic mode takes both neighbours and every admissible negative.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

CHUNK_ELEMENTS = 2 ** 18  # gathered floats per chunk of PairSoftplus: about 1 MB, cache-sized


def signcl_margin(num_frames, text_length):
    """SignCL's margin rule: min(20, max(10, int(num_frames // text_length * 2.3))) * 2.

    Works on ints or on per-clip tensors (then returns a LongTensor of margins)."""
    if torch.is_tensor(num_frames) or torch.is_tensor(text_length):
        frames = torch.as_tensor(num_frames)
        length = torch.as_tensor(text_length, device=frames.device).clamp_min(1)
        ratio = torch.div(frames, length, rounding_mode="floor").double() * 2.3
        return ratio.long().clamp(10, 20) * 2
    return min(20, max(10, int(num_frames // max(text_length, 1) * 2.3))) * 2


def valid_lengths(mask, batch, frames, device):
    if mask is None:
        return torch.full((batch,), frames, dtype=torch.long, device=device)
    return mask.to(device=device).long().sum(dim=1)


def negative_ranges(lengths, margin, frames):
    """Per (clip, frame): the admissible negatives of anchor i are the frames j in 2..L-3 with
    |i - j| > margin, i.e. the ranges [2, left_end] and [right_start, L-3].

    Returns the anchor mask (B, T) (1 <= i <= L-3) and the counts of both ranges and right_start,
    each (B, T) long."""
    steps = torch.arange(frames, device=lengths.device).view(1, -1)
    margin = torch.as_tensor(margin, dtype=torch.float64, device=lengths.device).reshape(-1, 1)
    last = (lengths - 3).view(-1, 1)
    left_end = torch.ceil(steps - margin).long() - 1  # largest j with j < i - margin
    right_start = torch.floor(steps + margin).long() + 1  # smallest j with j > i + margin
    left = (left_end - 1).clamp_min(0)
    right = (last - right_start + 1).clamp_min(0)
    anchors = (steps >= 1) & (steps <= last)
    return anchors, left * anchors, right * anchors, right_start.expand_as(right)


def sample_ranks(counts, count):
    """Floyd's algorithm over rows: for each entry n of `counts` (...,) picks min(count, n)
    distinct ranks uniformly from 0..n-1. Returns ranks (..., count) and a bool mask of the real
    picks."""
    picks = []
    for step in range(count):
        top = counts - count + step  # Floyd draws from 0..top, taking top itself on a repeat
        rank = (torch.rand(counts.shape, device=counts.device) * (top + 1)).long()
        rank = torch.minimum(rank, top)
        if picks:
            taken = (torch.stack(picks, dim=-1) == rank.unsqueeze(-1)).any(dim=-1)
            rank = torch.where(taken, top, rank)
        picks.append(torch.where(counts <= count, torch.full_like(rank, step), rank))
    ranks = torch.stack(picks, dim=-1)
    return ranks, ranks < counts.unsqueeze(-1)


class PairSoftplus(torch.autograd.Function):
    """sum of weights[m, k] * softplus(sign * (|x[rows[m]] - x[partners[m, k]]|_1 - pivot)) over
    the pairs, for a (N, D) matrix x: the loss of SignCL's positive (sign 1) or sampled negative
    (sign -1) pairs.

    The gradient is formed with the value, chunk by chunk of rows, so each gathered block is
    used while it is in cache: d loss / d x_b = g * sign(x_b - x_a) = -d loss / d x_a with
    g = weight * sign * sigmoid(sign * (distance - pivot)). No (N, N) matrix is built."""

    @staticmethod
    def forward(ctx, x, rows, partners, weights, sign, pivot, with_grad):
        count, width = partners.shape[1], x.shape[1]
        chunk = max(1, CHUNK_ELEMENTS // (count * width))
        # Buffers reused by every chunk: a fresh megabyte-sized tensor per op costs more than the
        # op itself (the allocator maps and faults it in each time).
        diff, work = x.new_empty(chunk * count, width), x.new_empty(chunk * count, width)
        anchor = x.new_empty(chunk, width)
        total = x.new_zeros(())
        grad = torch.zeros_like(x) if with_grad else None
        for start in range(0, rows.shape[0], chunk):
            row, partner = rows[start:start + chunk], partners[start:start + chunk].reshape(-1)
            n = row.shape[0]
            d, a = diff[:n * count], anchor[:n]
            torch.index_select(x, 0, partner, out=d)
            torch.index_select(x, 0, row, out=a)
            d.view(n, count, width).sub_(a.unsqueeze(1))  # x_b - x_a
            distance = torch.abs(d, out=work[:n * count]).sum(dim=-1).view(n, count)
            z = (distance - pivot) * sign
            weight = weights[start:start + chunk]
            total += (F.softplus(z) * weight).sum()
            if with_grad:
                d.sign_().mul_((torch.sigmoid(z) * (sign * weight)).view(-1, 1))
                grad.index_add_(0, partner, d)
                grad.index_add_(0, row, torch.sum(d.view(n, count, width), dim=1, out=a), alpha=-1)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        grad, = ctx.saved_tensors
        return grad * grad_output, None, None, None, None, None, None


class SignCL(nn.Module):
    """SignCL frame contrast on (B, T, D) frame features with L1 distances.

    Per anchor: mean softplus(d_pos - max_distance) over its positives (the two neighbouring
    frames, or `pos_samples` of them) + mean softplus(max_distance - d_neg) over its negatives
    (`neg_samples` drawn at random, or all of them with deterministic=True). Anchor terms are
    summed and divided by B * (L - 4) per clip, then averaged over clips: for equal lengths this is
    SignCL's sum / (B * (T - 4)) of per-anchor batch means. Anchors without any admissible
    negative are skipped and frames with mask == 0 take no part (masks are 1 on a prefix of real
    frames). SignCL.py draws an anchor's negatives once for the whole batch; here each clip draws
    its own (the same uniform draw per anchor, as clips may differ in length).
    """

    def __init__(self, max_distance=32.0, pos_samples=2, neg_samples=4):
        super().__init__()
        self.max_distance = max_distance
        self.pos_samples = pos_samples
        self.neg_samples = neg_samples

    def forward(self, frames_feature, margin=20, mask=None, deterministic=False):
        x = frames_feature.to(torch.promote_types(frames_feature.dtype, torch.float32))
        batch, frames, dim = x.shape
        lengths = valid_lengths(mask, batch, frames, x.device)
        anchors, left, right, right_start = negative_ranges(lengths, margin, frames)
        anchors = anchors & (left + right > 0)
        # sum / (B (L - 4)) per clip, then the mean over clips
        scale = 1.0 / (batch * batch * (lengths - 4).clamp_min(1)).to(x.dtype)
        with_grad = torch.is_grad_enabled() and x.requires_grad
        rows = x.reshape(-1, dim)
        adjacent, weights = self.positive_pairs(anchors, scale, deterministic)
        loss = PairSoftplus.apply(rows, adjacent, (adjacent + 1).unsqueeze(1), weights, 1.0,
                                  self.max_distance, with_grad)
        flat = anchors.reshape(-1).nonzero().squeeze(1)  # clip * frames + frame of each anchor
        clip = torch.div(flat, frames, rounding_mode="floor")
        if deterministic:
            negative = self.all_negatives(x, lengths, margin).reshape(-1)[flat]
            return loss + (negative * scale[clip]).sum()
        start = clip * frames  # row of frame 0 of each anchor's clip
        picks, real = self.sampled_negatives(flat, start + 2, left.reshape(-1)[flat],
                                             right.reshape(-1)[flat],
                                             start + right_start.reshape(-1)[flat], frames)
        real = real.to(x.dtype)
        weights = real * (scale[clip] / real.sum(dim=1)).unsqueeze(1)
        return loss + PairSoftplus.apply(rows, flat, picks, weights, -1.0, self.max_distance,
                                         with_grad)

    def positive_pairs(self, anchors, scale, deterministic):
        """Rows t of the pairs (t, t + 1) that serve as positives and their (P, 1) weights.

        Anchor i takes the pairs (i - 1, i) and (i, i + 1) at half weight each, or one of them
        at full weight (SignCL's random.sample of one neighbour); each distance is computed once."""
        anchors = anchors.to(scale.dtype)
        if deterministic or self.pos_samples >= 2:
            take_next = take_previous = anchors / 2
        else:
            coin = (torch.rand(anchors.shape, device=anchors.device) < 0.5).to(anchors.dtype)
            take_next, take_previous = anchors * coin, anchors * (1 - coin)
        weight = (take_next[:, :-1] + take_previous[:, 1:]) * scale.unsqueeze(1)  # (B, T - 1)
        clip, frame = weight.nonzero().unbind(dim=1)
        return clip * anchors.shape[1] + frame, weight[clip, frame].unsqueeze(1)

    def sampled_negatives(self, flat, left_start, left, right, right_start, frames):
        """(M, neg_samples) rows of negatives drawn for each anchor among its admissible ones, the
        rows left_start.. (left of them) and right_start.. (right of them), and the real picks
        (an anchor with fewer admissible negatives than neg_samples takes them all; there are at
        most frames - 4)."""
        ranks, real = sample_ranks(left + right, min(self.neg_samples, frames - 4))
        left = left.unsqueeze(1)
        picks = torch.where(ranks < left, left_start.unsqueeze(1) + ranks,
                            right_start.unsqueeze(1) + ranks - left)
        return torch.where(real, picks, flat.unsqueeze(1)), real

    def all_negatives(self, x, lengths, margin):
        """(B, T): mean negative loss of each frame over every admissible negative."""
        frames = x.shape[1]
        steps = torch.arange(frames, device=x.device)
        i, j = steps.view(1, -1, 1), steps.view(1, 1, -1)
        margin = torch.as_tensor(margin, dtype=torch.float64, device=x.device).reshape(-1, 1, 1)
        last = (lengths - 3).view(-1, 1, 1)
        weight = ((j >= 2) & (j <= last) & ((i - j).abs() > margin)).to(x.dtype)
        losses = F.softplus(self.max_distance - torch.cdist(x, x, p=1)) * weight
        return losses.sum(dim=-1) / weight.sum(dim=-1).clamp_min(1.0)
