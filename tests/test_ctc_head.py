"""Gloss vocabulary, temporal convolution lengths and the CTC head's losses."""
import pytest
import torch

from ctc_head import (BiLSTMLayer, CTCHead, GlossVocab, NormLinear, TemporalConv,
                      ctc_min_length, find_too_short, parse_conv_type, sequence_distillation)

TRAIN_GLOSSES = ["HEUTE REGEN NORD", "MORGEN SONNE", ["REGEN", "REGEN", "WIND"], "SONNE NORD"]


def small_head(**kwargs):
    torch.manual_seed(0)
    return CTCHead(input_dim=6, num_classes=5, hidden_size=16, **kwargs)


def padded_batch(lengths, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(lengths), max(lengths), dim, generator=generator)
    for i, n in enumerate(lengths):
        features[i, n:] = features[i, n - 1]  # padding repeats the last frame
    return features, torch.tensor(lengths)


# ---- vocabulary ----

def test_vocab_blank_first_then_alphabetical():
    vocab = GlossVocab.build(TRAIN_GLOSSES)
    assert vocab.itos == ['<blank>', 'HEUTE', 'MORGEN', 'NORD', 'REGEN', 'SONNE', 'WIND']
    assert vocab.num_classes == len(vocab) == 7


def test_vocab_encode_decode_and_unknown_counts():
    vocab = GlossVocab.build(TRAIN_GLOSSES)
    ids, unknown = vocab.encode("HEUTE SCHNEE NORD <blank>")
    assert ids == [1, 3] and unknown == 2
    assert vocab.encode(["WIND", "WIND"]) == ([6, 6], 0)
    assert vocab.unknown_total == 2
    assert vocab.decode([0, 1, 0, 3, 99]) == ['HEUTE', 'NORD']
    assert vocab.decode(torch.tensor([4, 5])) == ['REGEN', 'SONNE']


def test_vocab_state_dict_survives_weights_only_load(tmp_path):
    vocab = GlossVocab.build(TRAIN_GLOSSES)
    path = tmp_path / "ckpt.pt"
    torch.save({'gloss_vocab': vocab.state_dict()}, path)
    restored = GlossVocab.from_state_dict(torch.load(path, weights_only=True)['gloss_vocab'])
    assert restored.itos == vocab.itos
    assert restored.encode("MORGEN REGEN") == vocab.encode("MORGEN REGEN")


# ---- temporal convolution ----

def test_parse_conv_type():
    assert parse_conv_type('K5P2K5P2') == [('K', 5), ('P', 2), ('K', 5), ('P', 2)]
    with pytest.raises(ValueError):
        parse_conv_type('K5X2')


def test_output_lengths_formula():
    conv = TemporalConv(4, 8)
    lengths = torch.arange(0, 60)
    expected = (((lengths - 4).clamp(min=0) // 2 - 4).clamp(min=0) // 2)
    assert torch.equal(conv.output_lengths(lengths), expected)
    assert conv.min_input_length() == 16
    assert conv.output_lengths([15, 16]).tolist() == [0, 1]


@pytest.mark.parametrize("conv_type", ['K5P2K5P2', 'K5P2', 'K3'])
def test_output_lengths_match_actual_sizes(conv_type):
    conv = TemporalConv(3, 8, conv_type, num_classes=4).eval()
    smallest = conv.min_input_length()
    for length in range(smallest, smallest + 40):
        out = conv(torch.randn(1, length, 3), torch.tensor([length]))
        assert out['visual_feat'].shape[:2] == (out['feat_len'].item(), 1)
        assert out['conv_logits'].shape == (out['feat_len'].item(), 1, 4)


def test_padded_batch_keeps_each_sample_output():
    conv = TemporalConv(6, 8).eval()
    lengths = [16, 23, 40, 17, 31]
    features, lens = padded_batch(lengths)
    batch_out = conv(features, lens)
    assert batch_out['visual_feat'].shape[0] == conv.output_lengths(40).item()
    for i, n in enumerate(lengths):
        alone = conv(features[i:i + 1, :n], torch.tensor([n]))
        valid = alone['feat_len'].item()
        assert batch_out['feat_len'][i].item() == valid
        torch.testing.assert_close(batch_out['visual_feat'][:valid, i], alone['visual_feat'][:, 0])


# ---- building blocks ----

def test_norm_linear_columns_have_unit_norm():
    layer = NormLinear(8, 3)
    with torch.no_grad():
        layer.weight.mul_(7.0)
    out = layer(torch.eye(8))  # rows of the normalised weight
    torch.testing.assert_close(out.norm(dim=0), torch.ones(3))


def test_bilstm_ignores_padding():
    lstm = BiLSTMLayer(4, hidden_size=6).eval()
    features = torch.randn(7, 2, 4)
    lengths = torch.tensor([7, 3])
    out = lstm(features, lengths)
    assert out.shape == (7, 2, 6)
    alone = lstm(features[:3, 1:2], torch.tensor([3]))
    torch.testing.assert_close(out[:3, 1], alone[:, 0])
    assert torch.all(out[3:, 1] == 0)


# ---- head ----

@pytest.mark.parametrize("share_classifier,weight_norm", [(True, True), (False, False)])
def test_head_forward_backward(share_classifier, weight_norm):
    head = small_head(share_classifier=share_classifier, weight_norm=weight_norm)
    features, lengths = padded_batch([40, 33, 24])
    features.requires_grad_(True)
    out = head(features, lengths)
    steps = head.conv1d.output_lengths(40).item()
    assert out['conv_logits'].shape == out['seq_logits'].shape == (steps, 3, 5)
    assert out['feat_len'].tolist() == head.conv1d.output_lengths(lengths).tolist()
    targets = torch.tensor([[1, 2, 3], [4, 4, 0], [2, 0, 0]])
    total, parts = head.loss(out, targets, torch.tensor([3, 2, 1]))
    assert set(parts) == {'SeqCTC', 'ConvCTC', 'Dist'}
    assert torch.isfinite(total)
    total.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_shared_classifier_has_single_weight():
    shared = small_head(share_classifier=True)
    separate = small_head(share_classifier=False)
    assert shared.conv1d.fc is None and separate.conv1d.fc is not None
    assert len(list(separate.parameters())) == len(list(shared.parameters())) + 1


def test_concatenated_targets_give_same_loss():
    head = small_head().eval()
    out = head(*padded_batch([30, 20]))
    padded, _ = head.loss(out, torch.tensor([[1, 2, 3], [4, 0, 0]]), torch.tensor([3, 1]))
    flat, _ = head.loss(out, torch.tensor([1, 2, 3, 4]), torch.tensor([3, 1]))
    torch.testing.assert_close(padded, flat)


def test_too_short_targets_are_zeroed_not_nan():
    head = small_head()
    features, lengths = padded_batch([20, 40])  # pooled lengths 1 and 6
    features.requires_grad_(True)
    out = head(features, lengths)
    targets = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    total, parts = head.loss(out, targets, torch.tensor([4, 4]))
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    total.backward()
    assert torch.isfinite(features.grad).all()


def test_inputs_shorter_than_receptive_field_still_run():
    head = small_head()
    out = head(*padded_batch([5, 9]))
    assert out['seq_logits'].shape == (1, 2, 5)
    assert out['feat_len'].tolist() == [1, 1]


def test_distillation_zero_for_equal_logits_and_excludes_blank():
    logits = torch.randn(6, 2, 5)
    feat_len = torch.tensor([6, 4])
    assert sequence_distillation(logits, logits.clone(), feat_len).item() == pytest.approx(0, abs=1e-6)
    blank_only_change = logits.clone()
    blank_only_change[..., 0] += 3.0
    assert sequence_distillation(blank_only_change, logits, feat_len).item() == pytest.approx(0, abs=1e-6)
    assert sequence_distillation(blank_only_change, logits, feat_len,
                                 exclude_blank=False).item() > 1e-4


def test_distillation_ignores_padded_frames_and_scales_by_t_squared():
    student, teacher = torch.randn(5, 2, 4), torch.randn(5, 2, 4)
    feat_len = torch.tensor([5, 2])
    changed = student.clone()
    changed[2:, 1] = 100.0  # padding of the second sample
    base = sequence_distillation(student, teacher, feat_len, temperature=1)
    assert sequence_distillation(changed, teacher, feat_len, temperature=1) == pytest.approx(base.item())
    s = (student[..., 1:] / 4).log_softmax(-1)
    t = (teacher[..., 1:] / 4).log_softmax(-1)
    mask = torch.tensor([[1.0, 1.0]] * 2 + [[1.0, 0.0]] * 3)
    expected = ((t.exp() * (t - s)).sum(-1) * mask).sum() / mask.sum() * 16
    torch.testing.assert_close(sequence_distillation(student, teacher, feat_len, temperature=4),
                               expected)


def test_head_distillation_term_zero_when_branches_agree():
    head = small_head(loss_weights={'Dist': 25.0})
    out = head(*padded_batch([30, 20]))
    out['conv_logits'] = out['seq_logits'].detach().clone()
    total, parts = head.loss(out, torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1]))
    assert total.item() == pytest.approx(0, abs=1e-5) and set(parts) == {'Dist'}


def test_distillation_does_not_train_the_teacher():
    head = small_head(share_classifier=False, loss_weights={'Dist': 1.0})
    out = head(*padded_batch([30, 20]))
    total, _ = head.loss(out, torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1]))
    total.backward()
    assert head.classifier.weight.grad is None
    assert head.temporal_model.rnn.weight_ih_l0.grad is None
    assert head.conv1d.fc.weight.grad.abs().sum() > 0


def test_unknown_loss_weight_rejected():
    with pytest.raises(ValueError):
        small_head(loss_weights={'SeqCTC': 1.0, 'Typo': 2.0})


# ---- bad samples ----

def test_ctc_min_length_counts_repeats():
    assert ctc_min_length([1, 2, 3]) == 3
    assert ctc_min_length([4, 4, 4]) == 5
    assert ctc_min_length(torch.tensor([2, 2, 3])) == 4


def test_find_too_short():
    names = ['a', 'b', 'c', 'd']
    feat_len = torch.tensor([3, 5, 1, 4])
    target_lengths = torch.tensor([4, 5, 0, 3])
    assert find_too_short(feat_len, target_lengths, names) == ['a']
    targets = [[1, 2, 3, 4], [1, 1, 2, 2, 3], [], [7, 7, 7]]
    assert find_too_short(feat_len, target_lengths, names, targets=targets) == ['a', 'b', 'd']
