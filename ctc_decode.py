"""CTC decoding in NumPy: greedy best-path and prefix beam search, returning label id lists.

Inputs may be torch tensors or arrays of logits or log-probabilities (they are re-normalised
with a log-softmax over the class axis, which leaves log-probabilities unchanged). Single
sequences are (T, C); batches are (B, T, C), or (T, B, C) with `batch_first=False`, with
optional per-sample lengths.
"""
import numpy as np

NEG_INF = -np.inf


def _as_log_probs(scores):
    if hasattr(scores, 'detach'):
        scores = scores.detach().float().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    peak = scores.max(axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    log_norm = np.log(np.exp(scores - peak).sum(axis=-1, keepdims=True)) + peak
    return scores - log_norm


def _split_batch(log_probs, lengths, batch_first):
    """Yield one (T_i, C) array per sample."""
    scores = _as_log_probs(log_probs)
    if not batch_first:
        scores = scores.transpose(1, 0, 2)
    if lengths is None:
        lengths = [scores.shape[1]] * scores.shape[0]
    return [scores[i, :int(n)] for i, n in enumerate(lengths)]


def collapse(path, blank=0):
    """Merge consecutive repeats, then drop blanks."""
    labels, previous = [], None
    for label in path:
        label = int(label)
        if label != previous and label != blank:
            labels.append(label)
        previous = label
    return labels


def greedy_decode(log_probs, lengths=None, blank=0, batch_first=True):
    """Best-path decoding: per-frame argmax, collapsed. (T, C) -> ids; batch -> list of ids."""
    if len(log_probs.shape) == 2:
        return collapse(_as_log_probs(log_probs).argmax(-1), blank)
    return [collapse(sample.argmax(-1), blank)
            for sample in _split_batch(log_probs, lengths, batch_first)]


def _step(prefixes, p_blank, p_label, frame, blank):
    """Advance every prefix by one frame; returns the candidate (prefix, p_blank, p_label) rows.

    Extensions that reproduce a prefix already in the beam are merged into it; the remaining
    extensions come back as a (K, C) score matrix for pruning.
    """
    total = np.logaddexp(p_blank, p_label)
    last = np.array([p[-1] if p else -1 for p in prefixes])
    rows = np.flatnonzero(last >= 0)
    new_blank = total + frame[blank]
    new_label = np.full(len(prefixes), NEG_INF)
    new_label[rows] = p_label[rows] + frame[last[rows]]
    extend = total[:, None] + frame[None, :]
    # after a repeated label only paths that went through a blank start a new symbol
    extend[rows, last[rows]] = p_blank[rows] + frame[last[rows]]
    extend[:, blank] = NEG_INF
    index = {prefix: k for k, prefix in enumerate(prefixes)}
    for k, prefix in enumerate(prefixes):
        parent = index.get(prefix[:-1]) if prefix else None
        if parent is not None:
            new_label[k] = np.logaddexp(new_label[k], extend[parent, prefix[-1]])
            extend[parent, prefix[-1]] = NEG_INF
    return new_blank, new_label, extend


def _prune(prefixes, new_blank, new_label, extend, beam_size):
    """Keep the `beam_size` best of the carried-over prefixes and the new extensions."""
    candidates = [(prefix, b, n) for prefix, b, n in zip(prefixes, new_blank, new_label)]
    flat = extend.ravel()
    count = min(beam_size, flat.size)
    for idx in np.argpartition(-flat, count - 1)[:count]:
        if np.isfinite(flat[idx]):
            row, label = divmod(int(idx), extend.shape[1])
            candidates.append((prefixes[row] + (label,), NEG_INF, flat[idx]))
    candidates = [c for c in candidates if np.isfinite(np.logaddexp(c[1], c[2]))] or candidates[:1]
    candidates.sort(key=lambda c: -np.logaddexp(c[1], c[2]))
    kept = candidates[:beam_size]
    return ([c[0] for c in kept], np.array([c[1] for c in kept]), np.array([c[2] for c in kept]))


def prefix_beam_search_nbest(log_probs, beam_size=10, blank=0):
    """CTC prefix beam search on one (T, C) sequence -> [(ids, log probability)], best first.

    Each prefix tracks the log probability of its alignments ending in a blank and in a label;
    with a beam as large as the number of reachable prefixes the scores are exact.
    """
    scores = _as_log_probs(log_probs)
    prefixes, p_blank, p_label = [()], np.array([0.0]), np.array([NEG_INF])
    for frame in scores:
        new_blank, new_label, extend = _step(prefixes, p_blank, p_label, frame, blank)
        prefixes, p_blank, p_label = _prune(prefixes, new_blank, new_label, extend, beam_size)
    totals = np.logaddexp(p_blank, p_label)
    return [(list(prefix), float(total)) for prefix, total in zip(prefixes, totals)]


def prefix_beam_search(log_probs, beam_size=10, blank=0):
    """Most probable label sequence found by prefix beam search on one (T, C) sequence."""
    return prefix_beam_search_nbest(log_probs, beam_size, blank)[0][0]


def beam_decode(log_probs, lengths=None, beam_size=10, blank=0, batch_first=True):
    """Prefix beam search on each sample of a batch -> list of id lists."""
    return [prefix_beam_search(sample, beam_size, blank)
            for sample in _split_batch(log_probs, lengths, batch_first)]
