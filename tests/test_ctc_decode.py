"""CTC decoders checked against brute-force enumeration of every alignment."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctc_decode import (beam_decode, collapse, greedy_decode, prefix_beam_search,
                        prefix_beam_search_nbest)


def random_log_probs(seed, steps, classes, sharpness=2.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(steps, classes)) * sharpness
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def sequence_log_probs(log_probs, blank=0):
    """Exact log P(labels) for every label sequence, by summing over all alignments."""
    steps, classes = log_probs.shape
    totals = {}
    for path in itertools.product(range(classes), repeat=steps):
        labels = tuple(collapse(path, blank))
        path_prob = math.exp(sum(log_probs[t, c] for t, c in enumerate(path)))
        totals[labels] = totals.get(labels, 0.0) + path_prob
    return {labels: math.log(p) for labels, p in totals.items()}


def best_path(log_probs, blank=0):
    steps, classes = log_probs.shape
    path = max(itertools.product(range(classes), repeat=steps),
               key=lambda p: sum(log_probs[t, c] for t, c in enumerate(p)))
    return collapse(path, blank)


CASES = [(seed, steps, classes) for seed in range(6) for steps in (1, 3, 5) for classes in (3, 4)]


def test_collapse_merges_repeats_then_drops_blanks():
    assert collapse([0, 1, 1, 0, 1, 2, 2, 0]) == [1, 1, 2]
    assert collapse([0, 0]) == []


@pytest.mark.parametrize("seed,steps,classes", CASES)
def test_exhaustive_beam_finds_most_probable_sequence(seed, steps, classes):
    log_probs = random_log_probs(seed, steps, classes)
    exact = sequence_log_probs(log_probs)
    best = max(exact, key=exact.get)
    nbest = prefix_beam_search_nbest(log_probs, beam_size=1000)
    assert nbest[0][0] == list(best)
    assert nbest[0][1] == pytest.approx(exact[best], abs=1e-9)
    assert prefix_beam_search(log_probs, beam_size=1000) == list(best)
    for labels, score in nbest:
        assert score == pytest.approx(exact[tuple(labels)], abs=1e-9)


@pytest.mark.parametrize("seed,steps,classes", CASES)
def test_greedy_is_best_path(seed, steps, classes):
    log_probs = random_log_probs(seed, steps, classes)
    assert greedy_decode(log_probs) == best_path(log_probs)


@pytest.mark.parametrize("beam_size", [16, 1000])
def test_beam_never_worse_than_greedy(beam_size):
    """Guaranteed for an exhaustive beam; very narrow beams (<= 8 here) can lose to greedy."""
    for seed in range(60):
        log_probs = random_log_probs(seed, 5, 3, sharpness=1.0)
        exact = sequence_log_probs(log_probs)
        beam = tuple(prefix_beam_search(log_probs, beam_size))
        greedy = tuple(greedy_decode(log_probs))
        assert exact[beam] >= exact[greedy] - 1e-12


def test_beam_score_matches_torch_ctc_loss():
    def ctc_log_prob(log_probs, labels):
        targets = torch.tensor([labels], dtype=torch.long)
        return -F.ctc_loss(torch.tensor(log_probs)[:, None], targets, torch.tensor([len(log_probs)]),
                           torch.tensor([len(labels)]), reduction='sum').item()

    exact_case = random_log_probs(7, 6, 4)
    for labels, score in prefix_beam_search_nbest(exact_case, beam_size=10_000)[:5]:
        assert score == pytest.approx(ctc_log_prob(exact_case, labels), abs=1e-9)
    pruned_case = random_log_probs(7, 12, 6)
    for labels, score in prefix_beam_search_nbest(pruned_case, beam_size=4):
        assert score <= ctc_log_prob(pruned_case, labels) + 1e-9  # pruning only drops mass


def test_logits_and_log_probs_decode_alike():
    log_probs = random_log_probs(3, 5, 4)
    shifted = log_probs + 5.0
    assert prefix_beam_search(shifted, 4) == prefix_beam_search(log_probs, 4)
    assert greedy_decode(shifted) == greedy_decode(log_probs)


def test_batch_wrappers_respect_lengths_and_layout():
    batch = np.stack([random_log_probs(s, 6, 4) for s in range(3)])
    lengths = [6, 4, 0]
    expected_greedy = [greedy_decode(batch[i, :n]) for i, n in enumerate(lengths)]
    expected_beam = [prefix_beam_search(batch[i, :n], 5) for i, n in enumerate(lengths)]
    assert expected_greedy[2] == [] and expected_beam[2] == []
    tensor = torch.tensor(batch, dtype=torch.float32)
    assert greedy_decode(tensor, torch.tensor(lengths)) == expected_greedy
    assert beam_decode(tensor, torch.tensor(lengths), beam_size=5) == expected_beam
    time_major = tensor.transpose(0, 1)
    assert greedy_decode(time_major, lengths, batch_first=False) == expected_greedy
    assert beam_decode(time_major, lengths, beam_size=5, batch_first=False) == expected_beam


def test_nonzero_blank_index():
    log_probs = random_log_probs(11, 4, 3)
    exact = {}
    for path in itertools.product(range(3), repeat=4):
        labels = tuple(collapse(path, blank=2))
        exact[labels] = exact.get(labels, 0.0) + math.exp(
            sum(log_probs[t, c] for t, c in enumerate(path)))
    best = max(exact, key=exact.get)
    assert prefix_beam_search(log_probs, 1000, blank=2) == list(best)
