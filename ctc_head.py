"""Gloss recognition head trained with CTC, following VAC / SMKD (Min et al., Hao et al., ICCV 2021).

Frame features (B, T, D) go through a temporal convolution (K5-P2-K5-P2: four-fold downsampling),
a two-layer bidirectional LSTM and a classifier. Two CTC losses supervise the sequence logits
(after the LSTM) and the convolution logits (before it); a distillation term pulls the convolution
logits towards the detached sequence logits. `GlossVocab` maps gloss strings to class ids with
id 0 reserved for the CTC blank.
"""
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

BLANK = '<blank>'
DEFAULT_CONV_TYPE = 'K5P2K5P2'  # VAC's temporal convolutions
DEFAULT_LOSS_WEIGHTS = {'SeqCTC': 1.0, 'ConvCTC': 1.0, 'Dist': 25.0}


class GlossVocab:
    """Gloss <-> id table: id 0 is the CTC blank, glosses follow in alphabetical order.

    Alphabetical order (as VAC's gloss dictionary) makes the ids independent of how the training
    list is ordered or sampled. Unknown glosses are dropped by `encode` and counted, both per call
    and cumulatively in `unknown_total`.
    """

    def __init__(self, glosses):
        self.itos = [BLANK] + sorted(set(glosses) - {BLANK})
        self.stoi = {gloss: idx for idx, gloss in enumerate(self.itos)}
        self.unknown_total = 0

    @classmethod
    def build(cls, gloss_sequences, min_count=1):
        """Vocabulary from training sequences (each a list of glosses or a space-joined string)."""
        counts = Counter(g for seq in gloss_sequences for g in _split(seq))
        return cls([g for g, n in counts.items() if n >= min_count])

    def __len__(self):
        return len(self.itos)

    @property
    def num_classes(self):
        return len(self.itos)

    def encode(self, glosses):
        """Return (ids, unknown_count); glosses missing from the vocabulary are skipped."""
        ids, unknown = [], 0
        for gloss in _split(glosses):
            idx = self.stoi.get(gloss)
            if idx is None or idx == 0:
                unknown += 1
            else:
                ids.append(idx)
        self.unknown_total += unknown
        return ids, unknown

    def decode(self, ids):
        """Gloss strings for `ids`, leaving out blanks and ids outside the table."""
        return [self.itos[int(i)] for i in ids if 0 < int(i) < len(self.itos)]

    def state_dict(self):
        return {'itos': list(self.itos)}

    @classmethod
    def from_state_dict(cls, state):
        vocab = cls([])
        vocab.itos = list(state['itos'])
        vocab.stoi = {gloss: idx for idx, gloss in enumerate(vocab.itos)}
        return vocab


def _split(glosses):
    return glosses.split() if isinstance(glosses, str) else list(glosses)


def parse_loss_weights(text):
    """'SeqCTC=1,ConvCTC=1,Dist=25' -> {'SeqCTC': 1.0, 'ConvCTC': 1.0, 'Dist': 25.0}."""
    try:
        return {name: float(value) for name, value in
                (item.split("=") for item in text.replace(" ", "").split(",") if item)}
    except ValueError:
        raise ValueError(f"--loss_weights {text!r}: expected NAME=WEIGHT,... with names "
                         f"among {', '.join(DEFAULT_LOSS_WEIGHTS)}") from None


class NormLinear(nn.Module):
    """Bias-free linear classifier whose weight columns (one per class) have unit L2 norm."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        nn.init.xavier_uniform_(self.weight, gain=nn.init.calculate_gain('relu'))

    def forward(self, x):
        return x @ F.normalize(self.weight, dim=0)


def make_classifier(in_dim, num_classes, weight_norm):
    return NormLinear(in_dim, num_classes) if weight_norm else nn.Linear(in_dim, num_classes)


class TemporalConv(nn.Module):
    """Valid 1-D convolutions with BN + ReLU and max pooling, described by a string like 'K5P2K5P2'.

    Input (B, T, D); output features (T', B, hidden) and, when `num_classes` is given, logits
    (T', B, num_classes) from its own classifier.
    """

    def __init__(self, input_size, hidden_size, conv_type=DEFAULT_CONV_TYPE, num_classes=None,
                 weight_norm=True):
        super().__init__()
        self.kernels = parse_conv_type(conv_type)
        layers, width = [], input_size
        for kind, size in self.kernels:
            if kind == 'P':
                layers.append(nn.MaxPool1d(kernel_size=size, ceil_mode=False))
            else:
                layers += [nn.Conv1d(width, hidden_size, kernel_size=size),
                           nn.BatchNorm1d(hidden_size), nn.ReLU(inplace=True)]
                width = hidden_size
        self.temporal_conv = nn.Sequential(*layers)
        self.fc = make_classifier(hidden_size, num_classes, weight_norm) if num_classes else None

    def min_input_length(self):
        """Fewest input frames that give one output frame."""
        return min_input_length(self.kernels)

    def output_lengths(self, lengths):
        """Exact output length per input length (valid conv: L - K + 1; pool: floor(L / P))."""
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        for kind, size in self.kernels:
            lengths = torch.div(lengths, size, rounding_mode='floor') if kind == 'P' \
                else lengths - (size - 1)
            lengths = lengths.clamp(min=0)
        return lengths

    def forward(self, frame_features, lengths):
        features = self.temporal_conv(frame_features.transpose(1, 2)).permute(2, 0, 1)
        logits = self.fc(features) if self.fc is not None else None
        return {'visual_feat': features, 'conv_logits': logits,
                'feat_len': self.output_lengths(torch.as_tensor(lengths).cpu())}


def min_input_length(conv_type):
    """Fewest input frames that give one output frame, for 'K5P2K5P2' or its parsed list."""
    kernels = parse_conv_type(conv_type) if isinstance(conv_type, str) else conv_type
    length = 1
    for kind, size in reversed(kernels):
        length = length * size if kind == 'P' else length + size - 1
    return length


def parse_conv_type(conv_type):
    """'K5P2K5P2' -> [('K', 5), ('P', 2), ('K', 5), ('P', 2)]."""
    tokens, i = [], 0
    while i < len(conv_type):
        kind, j = conv_type[i], i + 1
        while j < len(conv_type) and conv_type[j].isdigit():
            j += 1
        if kind not in 'KP' or j == i + 1:
            raise ValueError(f"bad conv_type {conv_type!r}: expected tokens like K5 or P2")
        tokens.append((kind, int(conv_type[i + 1:j])))
        i = j
    return tokens


class BiLSTMLayer(nn.Module):
    """Bidirectional LSTM over packed (T, B, D) sequences; `hidden_size` counts both directions."""

    def __init__(self, input_size, hidden_size=1024, num_layers=2, dropout=0.3):
        super().__init__()
        self.rnn = nn.LSTM(input_size=input_size, hidden_size=hidden_size // 2,
                           num_layers=num_layers, dropout=dropout, bidirectional=True)

    def forward(self, features, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(features, lengths.cpu(), enforce_sorted=False)
        outputs, _ = self.rnn(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, total_length=features.shape[0])
        return outputs


class CTCHead(nn.Module):
    """Temporal conv + BiLSTM gloss classifier with VAC's CTC and distillation losses."""

    def __init__(self, input_dim, num_classes, hidden_size=1024, share_classifier=True,
                 weight_norm=True, loss_weights=None, temperature=8, conv_type=DEFAULT_CONV_TYPE):
        super().__init__()
        self.loss_weights = dict(DEFAULT_LOSS_WEIGHTS if loss_weights is None else loss_weights)
        unknown = set(self.loss_weights) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}")
        self.temperature = temperature
        self.share_classifier = share_classifier
        self.conv1d = TemporalConv(input_dim, hidden_size, conv_type,
                                   num_classes=None if share_classifier else num_classes,
                                   weight_norm=weight_norm)
        self.temporal_model = BiLSTMLayer(hidden_size, hidden_size)
        self.classifier = make_classifier(hidden_size, num_classes, weight_norm)

    def forward(self, frame_features, lengths):
        """frame_features (B, T, D), lengths (B,) -> conv_logits / seq_logits (T', B, C), feat_len (B,).

        Batches shorter than the convolution's receptive field are padded by repeating the last
        frame; every `feat_len` is at least 1 so the LSTM can pack it (such samples are caught by
        `find_too_short`).
        """
        frame_features = _pad_to_length(frame_features, self.conv1d.min_input_length())
        conv = self.conv1d(frame_features, lengths)
        feat_len = conv['feat_len'].clamp(min=1)
        features = conv['visual_feat']
        conv_logits = conv['conv_logits'] if not self.share_classifier \
            else self.classifier(features)
        seq_logits = self.classifier(self.temporal_model(features, feat_len))
        return {'conv_logits': conv_logits, 'seq_logits': seq_logits, 'feat_len': feat_len}

    def loss(self, out, targets, target_lengths):
        """Weighted sum of 'SeqCTC', 'ConvCTC' and 'Dist' -> (total, {name: detached value}).

        `targets` is either padded (B, S) or the concatenation of all target ids (blank-free).
        """
        parts = {}
        for name, weight in self.loss_weights.items():
            if name == 'Dist':
                value = sequence_distillation(out['conv_logits'], out['seq_logits'].detach(),
                                              out['feat_len'], self.temperature)
            else:
                logits = out['seq_logits' if name == 'SeqCTC' else 'conv_logits']
                value = ctc_loss(logits, targets, out['feat_len'], target_lengths)
            parts[name] = weight * value
        total = sum(parts.values())
        return total, {name: value.detach() for name, value in parts.items()}


def _pad_to_length(frame_features, min_length):
    missing = min_length - frame_features.shape[1]
    if missing <= 0:
        return frame_features
    last = frame_features[:, -1:].expand(-1, missing, -1)
    return torch.cat([frame_features, last], dim=1)


def ctc_loss(logits, targets, feat_len, target_lengths, blank=0):
    """CTC on (T, B, C) logits, summed over each sequence and averaged over the batch (as VAC).

    Computed in float32 since CTC has no half-precision kernels; infinite losses (targets that
    cannot fit in the input) are zeroed so one bad sample does not poison the batch.
    """
    log_probs = logits.float().log_softmax(-1)
    return F.ctc_loss(log_probs, targets.long(), feat_len.long(), target_lengths.long(),
                      blank=blank, reduction='none', zero_infinity=True).mean()


def sequence_distillation(student_logits, teacher_logits, feat_len, temperature=8,
                          exclude_blank=True):
    """VAC's SeqKD: KL(teacher || student) over non-blank classes at temperature T, times T^2.

    Averaged over valid frames (VAC averages over all T' * B positions, padding included).
    """
    start = 1 if exclude_blank else 0
    student = (student_logits[..., start:].float() / temperature).log_softmax(-1)
    teacher = (teacher_logits[..., start:].float() / temperature).log_softmax(-1)
    per_frame = (teacher.exp() * (teacher - student)).sum(-1)
    steps = torch.arange(per_frame.shape[0], device=per_frame.device)[:, None]
    valid = (steps < feat_len.to(per_frame.device)[None, :]).to(per_frame.dtype)
    return (per_frame * valid).sum() / valid.sum().clamp(min=1) * temperature ** 2


def ctc_min_length(target_ids):
    """Fewest frames CTC needs for `target_ids`: one per label plus a blank between repeats."""
    target_ids = [int(i) for i in target_ids]
    repeats = sum(1 for a, b in zip(target_ids, target_ids[1:]) if a == b)
    return len(target_ids) + repeats


def find_too_short(feat_len, target_lengths, names, targets=None):
    """Names of samples whose pooled length is below their gloss count.

    When the per-sample id lists `targets` are given, the bound also counts the blank CTC needs
    between repeated glosses.
    """
    feat_len = [int(n) for n in feat_len]
    needed = [int(n) for n in target_lengths] if targets is None \
        else [ctc_min_length(ids) for ids in targets]
    return [name for name, have, need in zip(names, feat_len, needed) if have < need]
