import os
import subprocess
import sys

import geoopt
import numpy as np
import pytest
import torch
from geoopt.manifolds.stereographic import math as pmath

import hyperbolic as hyp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ball_points(*shape, scale=0.3, seed=0, c=1.0):
    g = torch.Generator().manual_seed(seed)
    k = torch.tensor(-c)
    return pmath.project(pmath.expmap0(scale * torch.randn(*shape, generator=g), k=k), k=k)


def inputs(batch=4, frames=7, tokens=5, part_dim=12, text_dim=10, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    parts = {p: torch.randn(batch, frames, part_dim, generator=g).to(dtype).requires_grad_()
             for p in hyp.PART_NAMES}
    text = torch.randn(batch, tokens, text_dim, generator=g).to(dtype).requires_grad_()
    return parts, torch.ones(batch, frames), text, torch.ones(batch, tokens)


def make(text_cmp, **kwargs):
    torch.manual_seed(0)
    module = hyp.HyperbolicAlignment(12, 10, hyp_dim=8, init_c=1.0, text_cmp=text_cmp, **kwargs)
    with torch.no_grad():  # move points away from the origin so distances are not all tiny
        for proj in list(module.part_proj.values()) + [module.text_proj]:
            proj.log_scale.fill_(3.0)
    return module


def test_distance_to_itself_is_zero():
    x = ball_points(6, 8)
    k = torch.tensor(-0.7)
    torch.testing.assert_close(pmath.dist(x, x, k=k), torch.zeros(6), atol=1e-5, rtol=0)


def test_frechet_mean_of_identical_points_is_that_point():
    x = ball_points(3, 8)
    points = x.unsqueeze(0).expand(4, -1, -1)
    mean = hyp.frechet_mean(points, torch.rand(4, 3), torch.tensor(-1.0))
    torch.testing.assert_close(mean, x, atol=1e-5, rtol=0)


def test_frechet_mean_of_opposite_points_is_the_origin_and_weights_pull():
    x = ball_points(2, 8)
    k = torch.tensor(-1.0)
    mean = hyp.frechet_mean(torch.stack([x, -x]), torch.ones(2, 2), k)
    torch.testing.assert_close(mean, torch.zeros(2, 8), atol=1e-5, rtol=0)
    heavy = hyp.frechet_mean(torch.stack([x, -x]), torch.tensor([[3.0, 3.0], [1.0, 1.0]]), k)
    assert (pmath.dist(heavy, x, k=k) < pmath.dist(heavy, -x, k=k)).all()


@pytest.mark.parametrize("text_cmp", hyp.TEXT_COMPARISONS)
def test_gradients_reach_inputs_and_stats(text_cmp):
    module = make(text_cmp)
    parts, frame_mask, text, text_mask = inputs()
    loss, stats = module(parts, text, text_mask, frame_mask, progress=0.5)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    for p in hyp.PART_NAMES:
        assert parts[p].grad.abs().sum() > 0
    assert text.grad.abs().sum() > 0
    assert module.manifold.isp_c.grad is not None and module.contrast.temp.grad is not None
    for key in ("curvature", "temperature", "margin", "alpha", "pos_dist", "neg_dist"):
        assert torch.isfinite(stats[key]), key
    assert stats["curvature"].item() == pytest.approx(1.0, rel=1e-5)
    assert stats["temperature"].item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item() * 1.99 + 0.01)
    emb = stats["embeddings"]
    assert emb["mean"].shape == (4, 8) and emb["frechet_weights"].shape == (4, 4)
    assert emb["text"].shape == ((4, 4, 8) if text_cmp == "token" else (4, 8))


@pytest.mark.parametrize("text_cmp", hyp.TEXT_COMPARISONS)
def test_padding_changes_nothing(text_cmp):
    module = make(text_cmp)
    parts, frame_mask, text, text_mask = inputs()
    frame_mask[:, 5:] = 0
    text_mask[2:, 3:] = 0
    loss, _ = module(parts, text, text_mask, frame_mask)
    noisy_parts = {p: x.detach().clone() for p, x in parts.items()}
    for x in noisy_parts.values():
        x[:, 5:] = 100.0
    noisy_text = text.detach().clone()
    noisy_text[2:, 3:] = -100.0
    noisy_loss, _ = module(noisy_parts, noisy_text, text_mask, frame_mask)
    assert loss.item() == pytest.approx(noisy_loss.item(), rel=1e-5)


def test_pooled_part_features_are_accepted():
    module = make("pooled")
    parts, _, text, text_mask = inputs()
    pooled = [parts[p].mean(1) for p in hyp.PART_NAMES]
    loss_seq, _ = module(pooled, text, text_mask)
    loss_frames, _ = module(parts, text, text_mask)
    assert loss_seq.item() == pytest.approx(loss_frames.item(), rel=1e-5)


def test_token_context_of_a_single_token_is_that_token():
    module = make("token")
    parts, frame_mask, text, text_mask = inputs()
    text_mask[:, 1:] = 0
    _, stats = module(parts, text, text_mask, frame_mask)
    k = module.curvature_k()
    with torch.no_grad():
        first = module.text_proj(text[:, 0], k)
    contexts = stats["embeddings"]["text"]  # (B, 4, D)
    torch.testing.assert_close(contexts, first.unsqueeze(1).expand_as(contexts), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("text_cmp", hyp.TEXT_COMPARISONS)
def test_low_precision_inputs_give_finite_fp32_geometry(text_cmp):
    module = make(text_cmp)
    parts, frame_mask, text, text_mask = inputs(dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = module(parts, text, text_mask, frame_mask)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in stats["embeddings"].values())
    assert torch.isfinite(text.grad.float()).all()
    half = make(text_cmp).to(torch.float16)  # parameters themselves in half precision
    parts, frame_mask, text, text_mask = inputs(dtype=torch.float16)
    loss, stats = half(parts, text, text_mask, frame_mask)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert stats["embeddings"]["mean"].dtype == torch.float32


def test_alpha_schedule():
    module = hyp.HyperbolicAlignment(12, 10, hyp_dim=8, alpha=0.7)
    values = [module.alpha(p).item() for p in (0.0, 0.5, 1.0)]
    assert values == pytest.approx([0.8, 0.85, 0.9])  # 0.7 + 0.1 * p + 0.2 * sigmoid(0)
    assert module.alpha(3.0).item() == pytest.approx(0.9)  # progress is clamped to [0, 1]
    assert hyp.HyperbolicAlignment(12, 10, hyp_dim=8, alpha=1.0).alpha(0.0).item() == 1.0
    with torch.no_grad():
        module.alpha_logit.fill_(20.0)
    assert module.alpha(1.0).item() == pytest.approx(1.0)
    ce, geo = torch.tensor(2.0), torch.tensor(1.0, requires_grad=True)
    module.alpha_logit.data.zero_()
    blended = module.blend(ce, geo, 0.5)
    assert blended.item() == pytest.approx(0.85 * 2.0 + 0.15 * 1.0)
    blended.backward()
    assert module.alpha_logit.grad.abs() > 0 and geo.grad.item() == pytest.approx(0.15)


def test_riemannian_parameters_are_outside_the_module_tree_and_step():
    module = make("token")
    riemannian = module.riemannian_parameters()
    ids = {id(p) for p in riemannian}
    assert ids == {id(module.key_bias), id(module.manifold.isp_c)}
    assert not ids & {id(p) for p in module.parameters()}  # DeepSpeed never sees them
    wrapper = torch.nn.ModuleDict({"hyp": module, "pooled": make("pooled")})
    assert len(hyp.riemannian_parameters(wrapper)) == 3  # the pooled branch has only a curvature
    optim = geoopt.optim.RiemannianAdam(riemannian, lr=0.1, stabilize=100)
    parts, frame_mask, text, text_mask = inputs()
    for _ in range(3):
        optim.zero_grad()
        module(parts, text, text_mask, frame_mask)[0].backward()
        optim.step()
    assert module.manifold.check_point_on_manifold(module.key_bias.detach())
    assert torch.isfinite(module.manifold.c)


def test_state_dict_carries_the_geometry():
    module = make("token")
    with torch.no_grad():
        module.manifold.isp_c.fill_(0.25)
        module.key_bias.fill_(0.01)
    state = module.state_dict()
    assert {"manifold.isp_c", "key_bias"} <= set(state)
    fresh = make("token")
    fresh.load_state_dict(state)
    assert fresh.manifold.isp_c.item() == pytest.approx(0.25)
    assert torch.equal(fresh.key_bias.detach(), module.key_bias.detach())
    partial = {k: v for k, v in state.items() if k != "key_bias"}
    with pytest.raises(RuntimeError, match="key_bias"):
        fresh.load_state_dict(partial)
    assert fresh.load_state_dict(partial, strict=False).unexpected_keys == []
    keep_vars = module.state_dict(keep_vars=True)
    assert keep_vars["key_bias"] is module.key_bias


def test_casts_leave_the_geometry_in_float32():
    module = make("token").to(torch.bfloat16)
    assert module.key_weight.dtype == torch.bfloat16
    assert module.manifold.isp_c.dtype == torch.float32 and module.key_bias.dtype == torch.float32
    parts, frame_mask, text, text_mask = inputs(dtype=torch.bfloat16)
    loss, _ = module(parts, text, text_mask, frame_mask)
    assert torch.isfinite(loss)


def test_dump_batch_and_poincare_plot(tmp_path):
    module = make("token")
    parts, frame_mask, text, text_mask = inputs()
    _, stats = module(parts, text, text_mask, frame_mask)
    path = hyp.dump_batch(str(tmp_path / "batch.npz"), stats["embeddings"], stats["curvature"],
                          references=["a b", "c", "d e f", "g"])
    saved = np.load(path)
    assert saved["body"].shape == (4, 8) and saved["text"].shape == (4, 4, 8)
    assert float(saved["curvature"]) == pytest.approx(1.0, rel=1e-5)
    assert list(saved["references"]) == ["a b", "c", "d e f", "g"]
    out = tmp_path / "disk.png"
    for projection in ("pca", "first2"):
        subprocess.run([sys.executable, os.path.join(ROOT, "script", "plot_poincare.py"),
                        "--input", path, "--out", str(out), "--projection", projection],
                       check=True, capture_output=True)
        assert out.stat().st_size > 1000
