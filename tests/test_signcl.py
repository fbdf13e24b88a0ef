import itertools

import pytest
import torch

import signcl
from conftest import reference_signcl


def frames(batch, length, dim=32, seed=0):
    """Random features whose L1 distances fall near the default max_distance of 32."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, dim, generator=g, dtype=torch.float64).requires_grad_()


def ramp(batch, length, dim=16, seed=0):
    """Features drifting with time, so that near and far negatives have different losses."""
    g = torch.Generator().manual_seed(seed)
    drift = torch.arange(length, dtype=torch.float64).view(1, -1, 1) * 0.25
    return (drift + 0.5 * torch.randn(batch, length, dim, generator=g, dtype=torch.float64))


def value_and_grad(fn, x):
    value = fn(x)
    grad, = torch.autograd.grad(value, x)
    return value.item(), grad


# ------------------------------------------------------------------- deterministic = reference

@pytest.mark.parametrize("batch,length,margin",
                         [(3, 30, 5), (3, 40, 12), (2, 25, 3.5), (1, 64, 20)])
def test_deterministic_values_and_gradients_equal_the_reference(batch, length, margin):
    x = frames(batch, length, seed=length)
    ours, grad_ours = value_and_grad(lambda t: signcl.SignCL()(t, margin=margin,
                                                               deterministic=True), x)
    ref, grad_ref = value_and_grad(lambda t: reference_signcl(t, margin), x)
    assert ours == pytest.approx(ref, rel=1e-9)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-9, atol=1e-12)


def test_custom_max_distance_matches_the_reference():
    x = frames(2, 24, dim=16, seed=3)
    ours, grad_ours = value_and_grad(
        lambda t: signcl.SignCL(max_distance=10.0)(t, margin=4, deterministic=True), x)
    ref, grad_ref = value_and_grad(lambda t: reference_signcl(t, 4, max_distance=10.0), x)
    assert ours == pytest.approx(ref, rel=1e-9)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-9, atol=1e-12)


def test_sampling_every_negative_equals_the_reference():
    x = frames(2, 18, seed=5)
    ours, grad_ours = value_and_grad(lambda t: signcl.SignCL(neg_samples=1000)(t, margin=4), x)
    ref, grad_ref = value_and_grad(lambda t: reference_signcl(t, 4, neg_samples=1000), x)
    assert ours == pytest.approx(ref, rel=1e-9)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-9, atol=1e-12)


def test_skips_anchors_without_negatives():
    x = frames(2, 20, seed=1)  # margin 8: middle anchors have no frame farther than 8
    value = signcl.SignCL()(x, margin=8, deterministic=True)
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(reference_signcl(x, 8, skip_empty=True).item(), rel=1e-9)
    assert torch.isnan(reference_signcl(x, 8))  # what the unfixed reference returns


def test_short_clip_is_zero_with_zero_gradient():
    x = frames(2, 6, seed=2)
    for deterministic in (False, True):
        value = signcl.SignCL()(x, margin=40, deterministic=deterministic)
        grad, = torch.autograd.grad(value, x)
        assert value.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("deterministic", [False, True])
def test_padding_is_ignored(deterministic):
    lengths = [30, 22, 15]
    x = frames(3, 30, seed=4)
    mask = (torch.arange(30)[None] < torch.tensor(lengths)[:, None]).long()
    noisy = x.detach().clone()
    noisy[mask == 0] = float("nan")
    module = signcl.SignCL(neg_samples=1000)
    a = module(x, margin=5, mask=mask, deterministic=deterministic)
    if not deterministic:  # the sampled path never reads a padding frame, even a NaN one
        assert module(noisy, margin=5, mask=mask).item() == pytest.approx(a.item(), rel=1e-12)
    # Each clip is scored on its own frames; the double batch mean of SignCL gives 1/B^2.
    per_clip = [reference_signcl(x[i:i + 1, :n], 5, skip_empty=True)
                for i, n in enumerate(lengths)]
    assert a.item() == pytest.approx(sum(v.item() for v in per_clip) / 9, rel=1e-9)
    grad, = torch.autograd.grad(a, x)
    assert torch.count_nonzero(grad[mask == 0]) == 0


# ------------------------------------------------------------------------------ sampled mode

def first_ranks(counts, count):
    """A biased sampler: always the lowest ranks (the earliest admissible negatives)."""
    ranks = torch.arange(count).expand(*counts.shape, count)
    return ranks, ranks < counts.unsqueeze(-1)


@pytest.mark.parametrize("pos_samples", [1, 2])
def test_sampled_loss_averages_to_the_deterministic_one(pos_samples, monkeypatch):
    """The draws are uniform: over many draws the sampled loss and gradient average to the
    deterministic ones, while a sampler favouring some negatives misses by far more.
    Every copy of a clip in a batch draws its own pairs, so one call averages 64 draws."""
    torch.manual_seed(0)
    x = ramp(1, 40).requires_grad_()  # negative distances from about 28 to 150: losses vary
    module = signcl.SignCL(max_distance=40.0, pos_samples=pos_samples, neg_samples=3)
    copies = lambda t: t.expand(64, -1, -1)  # noqa: E731
    exact, exact_grad = value_and_grad(
        lambda t: module(copies(t), margin=6, deterministic=True), x)
    draws = [value_and_grad(lambda t: module(copies(t), margin=6), x) for _ in range(24)]
    values = torch.tensor([v for v, _ in draws])
    bound = 4 * values.std().item() / len(draws) ** 0.5
    assert abs(values.mean().item() - exact) < bound
    mean_grad = torch.stack([g for _, g in draws]).mean(dim=0)
    assert (mean_grad - exact_grad).abs().max() < 0.1 * exact_grad.abs().max()
    monkeypatch.setattr(signcl, "sample_ranks", first_ranks)
    assert abs(module(copies(x), margin=6).item() - exact) > 10 * bound


def test_sample_ranks_are_distinct_and_uniform_over_subsets():
    torch.manual_seed(0)
    counts = torch.full((21000,), 7)
    ranks, real = signcl.sample_ranks(counts, 3)
    assert real.all() and ranks.min() >= 0 and ranks.max() <= 6
    assert (ranks.sort(dim=1).values.diff(dim=1) > 0).all()
    subsets = {}
    for row in ranks.sort(dim=1).values.tolist():
        subsets[tuple(row)] = subsets.get(tuple(row), 0) + 1
    assert set(subsets) == set(itertools.combinations(range(7), 3))
    expected = 21000 / 35
    assert max(abs(n - expected) for n in subsets.values()) < 0.2 * expected


def test_sample_ranks_take_every_rank_when_there_are_few():
    ranks, real = signcl.sample_ranks(torch.tensor([0, 2, 4]), 4)
    assert real.tolist() == [[False] * 4, [True, True, False, False], [True] * 4]
    assert sorted(ranks[1, :2].tolist()) == [0, 1] and sorted(ranks[2].tolist()) == [0, 1, 2, 3]


def test_sampled_negatives_are_admissible():
    """Every pick lies in its anchor's clip, in 2..L-3, farther than the clip's margin, and
    distinct; an anchor takes min(neg_samples, admissible) of them."""
    torch.manual_seed(1)
    lengths, margins, frames_ = torch.tensor([40, 31, 12]), torch.tensor([6, 3.5, 2]), 40
    module = signcl.SignCL(neg_samples=5)
    anchors, left, right, right_start = signcl.negative_ranges(lengths, margins, frames_)
    anchors &= left + right > 0
    flat = anchors.reshape(-1).nonzero().squeeze(1)
    start = flat // frames_ * frames_
    picks, real = module.sampled_negatives(flat, start + 2, left.reshape(-1)[flat],
                                           right.reshape(-1)[flat],
                                           start + right_start.reshape(-1)[flat], frames_)
    for anchor, row, keep in zip(flat.tolist(), picks.tolist(), real.tolist()):
        clip, i = divmod(anchor, frames_)
        length, margin = int(lengths[clip]), float(margins[clip])
        allowed = {clip * frames_ + j for j in range(2, length - 2) if abs(i - j) > margin}
        chosen = [p for p, k in zip(row, keep) if k]
        assert set(chosen) <= allowed and len(set(chosen)) == len(chosen) == min(5, len(allowed))


def test_pair_softplus_gradient_is_the_analytic_one():
    x = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([1, 4, 7, 9])
    partners = torch.tensor([[2, 5, 1], [0, 11, 4], [3, 3, 8], [10, 6, 2]])
    weights = torch.rand(4, 3, dtype=torch.float64)
    for sign in (1.0, -1.0):
        assert torch.autograd.gradcheck(
            lambda t: signcl.PairSoftplus.apply(t, rows, partners, weights, sign, 2.0, True), (x,))


def test_chunking_and_grad_mode_do_not_change_the_value(monkeypatch):
    x = frames(3, 50, seed=7)
    torch.manual_seed(3)
    value, grad = value_and_grad(lambda t: signcl.SignCL()(t, margin=6), x)
    monkeypatch.setattr(signcl, "CHUNK_ELEMENTS", 64)  # a few rows per chunk
    torch.manual_seed(3)
    small, small_grad = value_and_grad(lambda t: signcl.SignCL()(t, margin=6), x)
    torch.manual_seed(3)
    with torch.no_grad():
        assert signcl.SignCL()(x, margin=6).item() == pytest.approx(value, rel=1e-12)
    assert small == pytest.approx(value, rel=1e-12)
    torch.testing.assert_close(small_grad, grad, rtol=1e-12, atol=1e-15)


def test_sampled_gradients_reach_inputs():
    x = torch.randn(4, 64, 48).requires_grad_()
    value = signcl.SignCL()(x, margin=10)
    value.backward()
    assert torch.isfinite(value) and value.item() > 0
    assert x.grad[:, 1:-1].abs().sum(-1).gt(0).float().mean() > 0.5


def test_one_positive_and_per_clip_margins():
    x = frames(2, 30, seed=6)
    value = signcl.SignCL(pos_samples=1)(x, margin=torch.tensor([4, 6]))
    assert torch.isfinite(value)
    both = signcl.SignCL()(x, margin=torch.tensor([5, 5]), deterministic=True)
    assert both.item() == pytest.approx(signcl.SignCL()(x, margin=5, deterministic=True).item())


def test_bf16_features():
    x = torch.randn(2, 40, 64, dtype=torch.bfloat16, requires_grad=True)
    value = signcl.SignCL()(x, margin=10)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert x.grad.dtype == torch.bfloat16


def test_margin_rule():
    assert signcl.signcl_margin(256, 20) == 40  # 12 * 2.3 = 27.6 -> capped at 20
    assert signcl.signcl_margin(100, 20) == 22  # 5 * 2.3 = 11.5 -> 11
    assert signcl.signcl_margin(40, 20) == 20  # floor at 10
    assert signcl.signcl_margin(60, 0) == 40  # an empty text counts as one token
    frames_, lengths = torch.tensor([256, 100, 40, 50]), torch.tensor([20, 20, 20, 5])
    expected = [signcl.signcl_margin(int(f), int(n)) for f, n in zip(frames_, lengths)]
    assert signcl.signcl_margin(frames_, lengths).tolist() == expected
