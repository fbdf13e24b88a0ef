"""Geo-Sign's hyperbolic pose-text alignment on a Poincaré ball with learnable curvature.

Each body part (body, left hand, right hand, face) and the text are projected onto the ball
(Linear -> learnable scale -> exp-map at the origin). The four part points are merged by a weighted
Fréchet mean; the text is compared either as one pooled point ('pooled', 'attn') or per part through
hyperbolic attention over its tokens ('token'). The contrastive loss uses negative geodesic distance
with a learnable temperature and margin. All geometry runs in float32 with autocast disabled, so the
branch is safe under bf16/fp16 training (parameters are cast to float32 on use), and without JIT
optimisation, so every call rounds the same way (see `eager_geometry`).

The parameters RiemannianAdam optimises (the curvature and the key bias, a point of the ball) live
in `HyperbolicAlignment.geometry`, which is deliberately not a registered submodule: `parameters()`
and therefore DeepSpeed never see them, so no ZeRO stage casts them to half precision, partitions
them (ZeRO-3 partitions every registered parameter, optimised or not) or steps them. They stay
float32 and whole on every rank; `state_dict()`/`load_state_dict()` still carry them under
`manifold.isp_c` and `key_bias`, and device moves (`.to(device)`) take them along. Learnable
scalars are (1,)-shaped parameters read through `scalar()`: DeepSpeed's start-up broadcast of the
parameters fails on 0-dimensional ones.
"""
import contextlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from geoopt import ManifoldParameter
from geoopt.manifolds import PoincareBall
from geoopt.manifolds.stereographic import math as pmath

PART_NAMES = ("body", "left", "right", "face_all")
TEXT_COMPARISONS = ("pooled", "attn", "token")


def masked_mean(features, mask=None):
    """Mean over dim 1 of (B, T, C) features counting only mask==1 steps; (B, C) passes through."""
    if features.dim() == 2:
        return features
    if mask is None:
        return features.mean(dim=1)
    weights = mask.to(features.dtype).unsqueeze(-1)
    return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def scalar(param):
    """A (1,)-shaped parameter as a float32 0-dim tensor."""
    return param.float().reshape(())


def full_precision(device):
    """Context that turns autocast off for the device type (geometry must stay in float32)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


def eager_geometry():
    """Runs geoopt's TorchScript Poincaré maths unoptimised. The JIT re-optimises a scripted
    function after its first calls, and the optimised derivatives round differently, so a run
    resumed from a checkpoint (cold JIT) would drift from the uninterrupted one (warm JIT)."""
    return torch.jit.optimized_execution(False)


def project_to_ball(tangent, k):
    return pmath.project(pmath.expmap0(tangent, k=k), k=k)


def frechet_mean(points, weights, k, max_iter=50, tol=1e-5):
    """Weighted Karcher mean of points (P, B, D) with weights (P, B), as Geo-Sign computes it.

    Starts at points[0] and repeats mu <- exp_mu(sum_p w_p log_mu(x_p)) until every batch item moves
    less than `tol` (geodesic distance) or `max_iter` steps were taken.
    """
    weights = weights / (weights.sum(dim=0, keepdim=True) + 1e-8)
    mean = points[0]
    for _ in range(max_iter):
        tangent = (weights.unsqueeze(-1) * pmath.logmap(mean.unsqueeze(0), points, k=k)).sum(0)
        updated = pmath.project(pmath.expmap(mean, tangent, k=k), k=k)
        with torch.no_grad():
            converged = bool((pmath.dist(updated, mean, k=k) < tol).all())
        mean = updated
        if converged:
            break
    return mean


class HyperbolicProjection(nn.Module):
    """Linear map to the tangent space at the origin, a learnable log-scale, then exp-map."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.log_scale = nn.Parameter(torch.zeros(1))
        nn.init.trunc_normal_(self.proj.weight, std=0.02, a=-2.0, b=2.0)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, k):
        tangent = F.linear(x.float(), self.proj.weight.float(), self.proj.bias.float())
        return project_to_ball(tangent * scalar(self.log_scale).exp(), k)


class HyperbolicContrast(nn.Module):
    """Cross-entropy over negative geodesic distances / tau, plus a margin added to negatives."""

    def __init__(self, label_smoothing=0.2):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.temp = nn.Parameter(torch.ones(1))
        self.margin = nn.Parameter(torch.full((1,), 0.3))

    def temperature(self):
        return torch.sigmoid(scalar(self.temp)) * 1.99 + 0.01

    def forward(self, pose, text, k):
        """pose, text: (..., B, D); leading dims are independent contrasts. Returns (loss, stats)."""
        dist = pmath.dist(pose.unsqueeze(-2), text.unsqueeze(-3), k=k)  # (..., B, B)
        batch = dist.shape[-1]
        negatives = ~torch.eye(batch, dtype=torch.bool, device=dist.device)
        logits = -dist / self.temperature() + scalar(self.margin) * negatives
        targets = torch.arange(batch, device=dist.device).expand(dist.shape[:-1])
        loss = F.cross_entropy(logits.reshape(-1, batch), targets.reshape(-1),
                               label_smoothing=self.label_smoothing)
        neg_dist = dist.masked_select(negatives).mean() if batch > 1 else dist.new_zeros(())
        return loss, {"pos_dist": dist.diagonal(dim1=-2, dim2=-1).mean().detach(),
                      "neg_dist": neg_dist.detach()}


class BallParameters(nn.Module):
    """The Poincaré ball with its learnable curvature and, for 'token' comparison, the key bias (a
    point of the ball): the parameters RiemannianAdam optimises."""

    def __init__(self, hyp_dim, init_c, with_key_bias):
        super().__init__()
        self.manifold = PoincareBall(c=init_c, learnable=True)
        if with_key_bias:
            self.key_bias = ManifoldParameter(torch.zeros(hyp_dim), manifold=self.manifold)


class HyperbolicAlignment(nn.Module):
    """Aligns four pose parts with text on a learnable Poincaré ball (Geo-Sign).

    forward(parts, text_features, text_mask, frame_mask=None, progress=0.0) -> (loss, stats)
      parts: dict keyed by PART_NAMES (or a 4-sequence) of (B, C) pooled or (B, T, C) per-frame
      features; frame_mask (B, T) selects the frames to pool. text_features (B, L, Dt) with
      text_mask (B, L) (1 on real tokens).
    """

    def __init__(self, part_dim, text_dim, hyp_dim=256, init_c=0.5, text_cmp="token",
                 label_smoothing_hyp=0.2, alpha=1.0, text_emb_src="decoder", frechet_iters=50):
        super().__init__()
        if text_cmp not in TEXT_COMPARISONS:
            raise ValueError(f"text_cmp must be one of {TEXT_COMPARISONS}, got {text_cmp!r}")
        self.text_cmp, self.text_emb_src = text_cmp, text_emb_src
        self.alpha_base, self.frechet_iters = float(alpha), frechet_iters
        object.__setattr__(self, "geometry", BallParameters(hyp_dim, init_c, text_cmp == "token"))
        self.part_proj = nn.ModuleDict({p: HyperbolicProjection(part_dim, hyp_dim) for p in PART_NAMES})
        self.text_proj = HyperbolicProjection(text_dim, hyp_dim)
        if text_cmp == "attn":
            self.text_pool_attn = nn.Linear(text_dim, 1)
        if text_cmp == "token":
            # Möbius affine key map: a Euclidean matrix (identity start) and the ball-valued
            # geometry.key_bias.
            self.key_weight = nn.Parameter(torch.eye(hyp_dim))
        self.contrast = HyperbolicContrast(label_smoothing_hyp)
        self.alpha_logit = nn.Parameter(torch.zeros(1))

    @property
    def manifold(self):
        return self.geometry.manifold

    @property
    def key_bias(self):
        return self.geometry.key_bias

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, param in self.geometry.named_parameters():
            destination[prefix + name] = param if keep_vars else param.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name, param in self.geometry.named_parameters():
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing_keys.append(key)
                continue
            value = state_dict.pop(key)
            if value.shape != param.shape:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                                  f"{tuple(value.shape)}, the model's is {tuple(param.shape)}")
                continue
            with torch.no_grad():
                param.copy_(value)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _apply(self, fn, recurse=True):
        """Device moves take the geometry along; dtype casts leave it in float32."""
        super()._apply(fn, recurse)
        self.geometry.to(self.alpha_logit.device)
        return self

    def curvature_k(self):
        return self.manifold.k.float()

    def forward(self, parts, text_features, text_mask, frame_mask=None, progress=0.0):
        with full_precision(text_features.device), eager_geometry():
            k = self.curvature_k()
            points = self.part_points(parts, frame_mask, k)  # (4, B, D)
            weights = torch.softmax(pmath.dist0(points, k=k), dim=0)
            # In 'token' mode the mean is only reported, so it needs no graph.
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.text_cmp != "token"):
                mean = frechet_mean(points, weights, k, max_iter=self.frechet_iters)
            text_mask = text_mask.bool()
            if self.text_cmp == "token":
                text, attn = self.token_contexts(points, text_features, text_mask, k)
                loss, stats = self.contrast(points, text, k)
            else:
                text, attn = self.pooled_text_point(text_features, text_mask, k)
                loss, stats = self.contrast(mean, text, k)
        embeddings = {name: points[i] for i, name in enumerate(PART_NAMES)}
        if self.text_cmp == "token":
            text = text.transpose(0, 1)  # per-part contexts, batch first: (B, 4, D)
        embeddings.update(mean=mean, text=text, frechet_weights=weights.transpose(0, 1))
        if attn is not None:
            embeddings["attn"] = attn
        stats.update(curvature=self.manifold.c.detach().float(),
                     temperature=self.contrast.temperature().detach(),
                     margin=scalar(self.contrast.margin).detach(),
                     alpha=self.alpha(progress).detach(),
                     embeddings={n: t.detach() for n, t in embeddings.items()})
        return loss, stats

    def part_points(self, parts, frame_mask, k):
        if not isinstance(parts, dict):
            parts = dict(zip(PART_NAMES, parts))
        missing = [p for p in PART_NAMES if p not in parts]
        if missing:
            raise KeyError(f"hyperbolic alignment needs all four parts; missing {missing}")
        pooled = [masked_mean(parts[p].float(), frame_mask) for p in PART_NAMES]
        return torch.stack([self.part_proj[p](x, k) for p, x in zip(PART_NAMES, pooled)])

    def pooled_text_point(self, text_features, text_mask, k):
        """'pooled': mean of real tokens; 'attn': learned softmax pooling over real tokens."""
        text_features = text_features.float()
        if self.text_cmp == "pooled":
            return self.text_proj(masked_mean(text_features, text_mask), k), None
        layer = self.text_pool_attn
        scores = F.linear(text_features, layer.weight.float(), layer.bias.float()).squeeze(-1)
        attn = scores.masked_fill(~_nonempty(text_mask), float("-inf")).softmax(dim=-1)
        pooled = (attn.unsqueeze(-1) * text_features).sum(dim=1)
        return self.text_proj(pooled, k), attn

    def token_contexts(self, points, text_features, text_mask, k):
        """Each part point attends over the text tokens (keys: Möbius affine map of the token
        points, scores: negative distance) and takes their hyperbolic weighted midpoint.
        Returns contexts (4, B, D) and attention (B, 4, L)."""
        tokens = self.text_proj(text_features.float(), k)  # (B, L, D)
        keys = pmath.mobius_matvec(self.key_weight.float(), tokens, k=k)
        keys = pmath.project(pmath.mobius_add(keys, self.key_bias.float(), k=k), k=k)
        queries = points.transpose(0, 1).unsqueeze(2)  # (B, 4, 1, D)
        scores = -pmath.dist(queries, keys.unsqueeze(1), k=k)  # (B, 4, L)
        scores = scores.masked_fill(~_nonempty(text_mask).unsqueeze(1), float("-inf"))
        attn = scores.softmax(dim=-1)
        contexts = pmath.weighted_midpoint(tokens.unsqueeze(1), attn, k=k, reducedim=[2], dim=-1)
        return pmath.project(contexts, k=k).transpose(0, 1), attn

    def alpha(self, progress):
        """Geo-Sign's CE weight: clamp(alpha + 0.1 * progress + 0.2 * sigmoid(logit), 0.1, 1)."""
        progress = torch.as_tensor(progress, dtype=torch.float32, device=self.alpha_logit.device)
        learned = torch.sigmoid(scalar(self.alpha_logit)) * 0.2
        return (self.alpha_base + 0.1 * progress.clamp(0.0, 1.0) + learned).clamp(0.1, 1.0)

    def blend(self, ce_loss, hyp_loss, progress):
        """alpha * CE + (1 - alpha) * hyperbolic loss, progress = optimizer step / total steps."""
        alpha = self.alpha(progress)
        return alpha * ce_loss.float() + (1.0 - alpha) * hyp_loss.float()

    def riemannian_parameters(self):
        """Parameters for geoopt.optim.RiemannianAdam (--hyp_lr): curvature + manifold points."""
        return list(self.geometry.parameters())


def _nonempty(mask):
    """A token mask where rows with no real token allow every position (avoids all -inf rows)."""
    return mask | ~mask.any(dim=-1, keepdim=True)


def riemannian_parameters(model):
    """The parameters of every HyperbolicAlignment in `model` that RiemannianAdam optimises; they are
    not among model.parameters(), which all go to the Euclidean optimizer."""
    return [p for module in model.modules() if isinstance(module, HyperbolicAlignment)
            for p in module.riemannian_parameters()]


def dump_batch(path, embeddings, curvature, **extra):
    """Saves one batch of embeddings (stats['embeddings']) and the curvature c to an .npz file;
    `extra` may hold arrays or lists of strings (e.g. references=...)."""
    arrays = {name: t.detach().float().cpu().numpy() for name, t in embeddings.items()}
    arrays["curvature"] = np.asarray(float(curvature), dtype=np.float32)
    for name, value in extra.items():
        arrays[name] = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
    np.savez(path, **arrays)
    return path
