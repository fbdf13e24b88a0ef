"""Auxiliary losses on top of the translation loss, their flags and their construction.

- SignCL (Ye et al., NeurIPS 2024), defined in signcl.py: frame-level contrast that pulls
  neighbouring frames together and pushes temporally distant frames apart.
- SSTContrast (HyperSign): pose and text each attend (sparsemax or softmax) over a learnable
  dictionary of shared semantic tokens; the token mixtures are contrasted with a symmetric InfoNCE.
- HyperbolicAlignment (Geo-Sign), defined in hyperbolic.py.

build_regularizers(args, part_dim, d_model) returns only the enabled ones (an empty ModuleDict when
all are off, so the off state costs nothing).
"""
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import cli
from cli import add_flag
from hyperbolic import HyperbolicAlignment, dump_batch, masked_mean, scalar  # noqa: F401
from signcl import SignCL, signcl_margin  # noqa: F401

# --------------------------------------------------------------------------------------- SST


def sparsemax(x, dim=-1):
    """Sparsemax (Martins & Astudillo, 2016): Euclidean projection of x onto the simplex along dim.

    Sort-based; differentiable through autograd (the support size is piecewise constant)."""
    z = x.transpose(dim, -1)
    z = z - z.max(dim=-1, keepdim=True).values
    ranked = z.sort(dim=-1, descending=True).values
    ranks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    cumulative = ranked.cumsum(dim=-1)
    support = (1 + ranks * ranked > cumulative).sum(dim=-1, keepdim=True)  # support is a prefix
    threshold = (cumulative.gather(-1, support - 1) - 1) / support.to(z.dtype)
    return (z - threshold).clamp_min(0).transpose(dim, -1)


def query_mlp(in_dim, out_dim):
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(),
                         nn.LayerNorm(out_dim), nn.Linear(out_dim, out_dim))


class SSTContrast(nn.Module):
    """HyperSign's shared-semantic-token contrast between pose and text sequences.

    Each token is mapped by a small MLP to a query; the queries' dot products with the dictionary
    (scaled by 1/sqrt(sst_dim) and 1/temperature) are averaged over the real tokens and normalised
    by sparsemax/softmax into mixture weights; the L2-normalised mixtures of the two modalities are
    contrasted by a symmetric InfoNCE with scale exp(logit_scale) (init 1/0.07, value capped at 100).
    forward(pose (B, T, Dp), text (B, L, Dt), pose_mask, text_mask) -> (loss, stats).
    """

    def __init__(self, pose_dim, text_dim, sst_num=128, sst_dim=128, attention="sparsemax",
                 temperature=0.07):
        super().__init__()
        if attention not in ("sparsemax", "softmax"):
            raise ValueError(f"attention must be 'sparsemax' or 'softmax', got {attention!r}")
        self.attention, self.temperature = attention, temperature
        self.tokens = nn.Parameter(torch.randn(sst_num, sst_dim))
        self.pose_query = query_mlp(pose_dim, sst_dim)
        self.text_query = query_mlp(text_dim, sst_dim)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))

    def scale(self):
        """exp(logit_scale) with its value capped at 100; the gradient passes as if uncapped."""
        scale = scalar(self.logit_scale).exp()
        return scale - (scale - scale.clamp(max=100.0)).detach()

    def mixture(self, mlp, features, mask):
        """Mixture weights over the dictionary (B, N) and the L2-normalised mixture (B, sst_dim)."""
        queries = mlp(features.to(mlp[1].weight.dtype)).float()
        tokens = self.tokens.float()
        scores = masked_mean(queries, mask) @ tokens.t()  # mean over tokens of the token scores
        scores = scores / (math.sqrt(tokens.shape[1]) * self.temperature)
        weights = sparsemax(scores) if self.attention == "sparsemax" else scores.softmax(dim=-1)
        mix = weights @ tokens
        return weights, mix / (mix.norm(dim=-1, keepdim=True) + 1e-10)

    def forward(self, pose_features, text_features, pose_mask=None, text_mask=None):
        pose_weights, pose_mix = self.mixture(self.pose_query, pose_features, pose_mask)
        text_weights, text_mix = self.mixture(self.text_query, text_features, text_mask)
        scale = self.scale()
        similarity = pose_mix @ text_mix.t()
        logits = scale * similarity
        targets = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
        nonzero = torch.cat([pose_weights, text_weights]).gt(0).float().sum(dim=-1).mean()
        return loss, {"logit_scale": scale.detach(), "pos_sim": similarity.diagonal().mean().detach(),
                      "active_tokens": nonzero.detach()}


# ----------------------------------------------------------------------------- flags, build

GEO_SIGN_ALPHA = 0.7  # --alpha when --use_hyperbolic is set without it (Geo-Sign's recipe)
DEFAULTS = dict(
    # SignCL
    use_signcl=False, signcl_weight=0.01, signcl_max_distance=32.0, signcl_pos_samples=2,
    signcl_neg_samples=4,
    # SST (HyperSign configs: sd_num = sd_dim = 128, sparsemax, SST_weight 1.0, temperature 0.07)
    use_sst=False, sst_num=128, sst_dim=128, sst_weight=1.0, sst_attention="sparsemax",
    sst_temperature=0.07,
    # Geo-Sign (utils.get_args_parser)
    use_hyperbolic=False, hyp_dim=256, init_c=0.5, hyp_lr=1e-3, hyp_stabilize=100, alpha=None,
    alpha_reg=0.01, label_smoothing_hyp=0.2, hyp_text_emb_src="decoder", hyp_text_cmp="token",
    manual_grad_clip=False, clip_grad_norm_euclid=1.0, clip_grad_norm_hyp=0.1,
    save_one_batch=False, save_batch_name="testing", max_eval_samples=1000,
)


VALUE_TYPES = dict(  # the range each numeric setting is checked against as it is parsed
    signcl_weight=cli.non_negative, signcl_max_distance=cli.positive,
    signcl_pos_samples=cli.int_range(1, 2), signcl_neg_samples=cli.count,
    sst_num=cli.count, sst_dim=cli.count, sst_weight=cli.non_negative,
    sst_temperature=cli.positive, hyp_dim=cli.int_range(2), init_c=cli.positive,
    hyp_lr=cli.positive, hyp_stabilize=cli.count, alpha=cli.finite, alpha_reg=cli.finite,
    label_smoothing_hyp=cli.fraction, clip_grad_norm_euclid=cli.positive,
    clip_grad_norm_hyp=cli.positive, max_eval_samples=cli.count,
)


def _flag(group, name, help, **kwargs):
    """Registers --name under both spellings with the default from DEFAULTS."""
    default = DEFAULTS[name]
    if isinstance(default, bool):
        kwargs["action"] = "store_true"
    elif name in VALUE_TYPES:
        kwargs.setdefault("type", VALUE_TYPES[name])
    add_flag(group, "--" + name, default=default, help=help, **kwargs)


def add_regularizer_flags(parser):
    """Adds the SignCL, SST and Geo-Sign flags (Geo-Sign's names and defaults) to `parser`."""
    g = parser.add_argument_group("SignCL frame contrast")
    _flag(g, "use_signcl", "add the SignCL loss on the pose features fed to mT5")
    _flag(g, "signcl_weight", "weight of the SignCL loss")
    _flag(g, "signcl_max_distance", "L1 distance pivot of the softplus terms")
    _flag(g, "signcl_pos_samples", "positives per anchor (of its 2 neighbours)")
    _flag(g, "signcl_neg_samples", "random negatives per anchor")
    g = parser.add_argument_group("SST contrast (HyperSign)")
    _flag(g, "use_sst", "add the shared-semantic-token pose/text contrast")
    _flag(g, "sst_num", "dictionary size")
    _flag(g, "sst_dim", "dictionary token width")
    _flag(g, "sst_weight", "weight of the SST loss")
    _flag(g, "sst_attention", "dictionary attention", choices=["sparsemax", "softmax"])
    _flag(g, "sst_temperature", "temperature of the dictionary attention")
    g = parser.add_argument_group("hyperbolic alignment (Geo-Sign)")
    _flag(g, "use_hyperbolic", "enable the hyperbolic pose/text branch")
    _flag(g, "hyp_dim", "dimension of the Poincaré ball")
    _flag(g, "init_c", "initial curvature c (0.001 is nearly Euclidean)")
    _flag(g, "hyp_lr", "learning rate of RiemannianAdam (manifold points and curvature)")
    _flag(g, "hyp_stabilize", "RiemannianAdam stabilisation period")
    _flag(g, "alpha", "base CE weight: loss = a*CE + (1-a)*hyp, a = clamp(alpha + 0.1*progress "
                      f"+ 0.2*sigmoid(learned), 0.1, 1) (default {GEO_SIGN_ALPHA}, Geo-Sign's "
                      "recipe); alpha >= 0.9 leaves hyp weightless")
    _flag(g, "alpha_reg", "refused: Geo-Sign accepts it and never reads it")
    _flag(g, "label_smoothing_hyp", "label smoothing of the hyperbolic contrastive loss")
    _flag(g, "hyp_text_emb_src", "text features: token embeddings or last decoder states",
          choices=["token", "decoder"])
    _flag(g, "hyp_text_cmp", "text comparison: pooled | attn | token", choices=["pooled", "attn", "token"])
    _flag(g, "manual_grad_clip", "clip Euclidean and hyperbolic gradients separately")
    _flag(g, "clip_grad_norm_euclid", "max norm of Euclidean gradients with --manual_grad_clip")
    _flag(g, "clip_grad_norm_hyp", "max norm of hyperbolic gradients with --manual_grad_clip")
    _flag(g, "save_one_batch", "at each evaluation, save the first batch's hyperbolic embeddings "
                               "to <output_dir>/<save_batch_name>_<split>.npz")
    _flag(g, "save_batch_name", "file stem of the saved batch")
    _flag(g, "max_eval_samples", "refused: Geo-Sign accepts it and never reads it")
    return parser


def options(args):
    """Every regulariser option, from `args` where set, else from DEFAULTS."""
    return {name: getattr(args, name, default) for name, default in DEFAULTS.items()}


def build_regularizers(args, part_dim, d_model):
    """The enabled regularisers keyed 'signcl', 'sst', 'hyperbolic' (empty when none is on).

    part_dim: width of each pooled body-part feature; d_model: width of pose/text features."""
    opt = options(args)
    modules = nn.ModuleDict()
    if opt["use_signcl"]:
        modules["signcl"] = SignCL(opt["signcl_max_distance"], opt["signcl_pos_samples"],
                                   opt["signcl_neg_samples"])
    if opt["use_sst"]:
        modules["sst"] = SSTContrast(d_model, d_model, opt["sst_num"], opt["sst_dim"],
                                     opt["sst_attention"], opt["sst_temperature"])
    if opt["use_hyperbolic"]:
        alpha = GEO_SIGN_ALPHA if opt["alpha"] is None else opt["alpha"]
        if alpha >= 0.9:
            warnings.warn(f"--alpha {alpha}: the blended CE weight is clamped to 1 from the "
                          "start, so the hyperbolic loss gets no weight (Geo-Sign trains with 0.7)")
        print(f"hyperbolic blend: loss = a*CE + (1-a)*hyp, a = clamp({alpha:g} + 0.1*progress + "
              f"0.2*sigmoid(learned), 0.1, 1), {min(alpha + 0.1, 1.0):g} at the start")
        modules["hyperbolic"] = HyperbolicAlignment(
            part_dim, d_model, hyp_dim=opt["hyp_dim"], init_c=opt["init_c"],
            text_cmp=opt["hyp_text_cmp"], label_smoothing_hyp=opt["label_smoothing_hyp"],
            alpha=alpha, text_emb_src=opt["hyp_text_emb_src"])
    return modules
