import argparse
import math
import warnings

import pytest
import torch

import regularizers as reg


# -------------------------------------------------------------------------------- sparsemax

@pytest.mark.parametrize("dim", [0, 1, -1])
def test_sparsemax_sums_to_one(dim):
    probs = reg.sparsemax(torch.randn(5, 7, 3), dim=dim)
    assert probs.min() >= 0
    torch.testing.assert_close(probs.sum(dim), torch.ones_like(probs.sum(dim)))


def test_sparsemax_known_value_and_sparsity():
    out = reg.sparsemax(torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(out, torch.tensor([0.75, 0.25, 0.0]))
    peaked = reg.sparsemax(torch.tensor([[4.0, 0.1, 0.0, -1.0, 0.2]]))
    assert peaked.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]
    assert (reg.sparsemax(3 * torch.randn(64, 32)) == 0).float().mean() > 0.5


def test_sparsemax_softmax_limits():
    x = torch.randn(4, 10, dtype=torch.float64)
    flat = reg.sparsemax(x * 1e-6)  # tiny scale: uniform, as softmax
    torch.testing.assert_close(flat, (x * 1e-6).softmax(-1), atol=1e-5, rtol=0)
    sharp = reg.sparsemax(x * 1e6)  # huge scale: the arg-max one-hot, as softmax
    torch.testing.assert_close(sharp, (x * 1e6).softmax(-1))
    torch.testing.assert_close(reg.sparsemax(torch.zeros(3, 8)), torch.full((3, 8), 1 / 8))


def test_sparsemax_gradcheck():
    x = torch.randn(3, 6, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(reg.sparsemax, (x,))
    y = torch.randn(4, 2, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: reg.sparsemax(t, dim=1), (y,))


# -------------------------------------------------------------------------------------- SST

def sst_batch(batch=4, frames_=9, tokens=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    pose = torch.randn(batch, frames_, 24, generator=g).requires_grad_()
    text = torch.randn(batch, tokens, 20, generator=g).requires_grad_()
    return pose, text, torch.ones(batch, frames_), torch.ones(batch, tokens)


@pytest.mark.parametrize("attention", ["sparsemax", "softmax"])
def test_sst_loss_and_gradients(attention):
    torch.manual_seed(0)
    module = reg.SSTContrast(24, 20, sst_num=16, sst_dim=8, attention=attention)
    pose, text, pose_mask, text_mask = sst_batch()
    loss, stats = module(pose, text, pose_mask, text_mask)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert pose.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
    assert module.tokens.grad.abs().sum() > 0 and module.logit_scale.grad is not None
    assert stats["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert -1 <= stats["pos_sim"].item() <= 1 and 1 <= stats["active_tokens"].item() <= 16


def test_sst_padding_is_ignored():
    torch.manual_seed(0)
    module = reg.SSTContrast(24, 20, sst_num=16, sst_dim=8)
    pose, text, pose_mask, text_mask = sst_batch()
    pose_mask[:, 6:] = 0
    text_mask[1:, 4:] = 0
    loss, _ = module(pose, text, pose_mask, text_mask)
    pose2, text2 = pose.detach().clone(), text.detach().clone()
    pose2[:, 6:] = 50.0
    text2[1:, 4:] = -50.0
    loss2, _ = module(pose2, text2, pose_mask, text_mask)
    assert loss.item() == pytest.approx(loss2.item(), rel=1e-6)


def test_sst_logit_scale_is_capped_at_100():
    module = reg.SSTContrast(24, 20, sst_num=16, sst_dim=8)
    with torch.no_grad():
        module.logit_scale.fill_(math.log(1000.0))
    pose, text, pose_mask, text_mask = sst_batch()
    loss, stats = module(pose, text, pose_mask, text_mask)
    loss.backward()
    assert stats["logit_scale"].item() == pytest.approx(100.0)
    assert module.logit_scale.grad.abs() > 0


# ---------------------------------------------------------------------------- flags, build

def test_flags_parse_with_defaults_and_both_spellings():
    parser = reg.add_regularizer_flags(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert (args.use_signcl, args.signcl_weight, args.signcl_max_distance) == (False, 0.01, 32.0)
    assert (args.signcl_pos_samples, args.signcl_neg_samples) == (2, 4)
    assert (args.sst_num, args.sst_dim, args.sst_weight, args.sst_attention) == (128, 128, 1.0, "sparsemax")
    assert (args.hyp_dim, args.init_c, args.hyp_lr, args.hyp_stabilize) == (256, 0.5, 1e-3, 100)
    assert (args.alpha, args.label_smoothing_hyp) == (None, 0.2)  # None: 0.7 with the branch
    assert (args.hyp_text_emb_src, args.hyp_text_cmp) == ("decoder", "token")
    dashed = parser.parse_args(["--use-hyperbolic", "--hyp-text-cmp", "pooled", "--init-c", "1.0",
                                "--use-signcl", "--signcl-weight", "0.1", "--sst-attention", "softmax"])
    underscored = parser.parse_args(["--use_hyperbolic", "--hyp_text_cmp", "pooled", "--init_c", "1.0",
                                     "--use_signcl", "--signcl_weight", "0.1", "--sst_attention", "softmax"])
    assert vars(dashed) == vars(underscored)
    assert dashed.use_hyperbolic and dashed.hyp_text_cmp == "pooled" and dashed.signcl_weight == 0.1
    with pytest.raises(SystemExit):
        parser.parse_args(["--hyp_text_cmp", "mean"])


def test_trainer_accepts_the_flags_in_both_spellings():
    import utils
    args = utils.parse_args("t", ["--use_sst", "--batch-size", "2", "--use-hyperbolic",
                                  "--hyp-text-emb-src", "token", "--use-signcl",
                                  "--signcl_weight", "0.5"])
    assert args.use_sst and args.batch_size == 2 and args.use_hyperbolic
    assert args.hyp_text_emb_src == "token" and args.signcl_weight == 0.5
    assert not utils.parse_args("t", []).use_signcl


def test_build_regularizers_empty_when_off():
    parser = reg.add_regularizer_flags(argparse.ArgumentParser())
    assert len(reg.build_regularizers(parser.parse_args([]), 32, 48)) == 0
    assert len(reg.build_regularizers(argparse.Namespace(), 32, 48)) == 0


def test_build_regularizers_enabled():
    parser = reg.add_regularizer_flags(argparse.ArgumentParser())
    args = parser.parse_args(["--use_signcl", "--use_sst", "--sst_num", "8", "--use_hyperbolic",
                              "--hyp_dim", "16", "--alpha", "0.7", "--hyp_text_cmp", "attn"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        modules = reg.build_regularizers(args, 32, 48)
    assert list(modules) == ["signcl", "sst", "hyperbolic"]
    assert modules["sst"].tokens.shape == (8, 128)
    assert modules["hyperbolic"].text_cmp == "attn" and modules["hyperbolic"].alpha_base == 0.7
    with pytest.warns(UserWarning, match="no weight"):
        reg.build_regularizers(parser.parse_args(["--use_hyperbolic", "--alpha", "0.9"]), 32, 48)


def test_use_hyperbolic_alone_takes_geo_signs_alpha_and_prints_the_blend(capsys):
    parser = reg.add_regularizer_flags(argparse.ArgumentParser())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        modules = reg.build_regularizers(parser.parse_args(["--use_hyperbolic"]), 32, 48)
    assert modules["hyperbolic"].alpha_base == reg.GEO_SIGN_ALPHA == 0.7
    assert "a = clamp(0.7 + 0.1*progress" in capsys.readouterr().out
    # at the start the hyperbolic term has weight: a = 0.7 + 0.2 * sigmoid(0) = 0.8 < 1
    assert float(modules["hyperbolic"].alpha(0.0)) == pytest.approx(0.8)
