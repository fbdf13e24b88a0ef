"""How the four part streams (body, left hand, right hand, face) become one frame feature.

`--fusion concat` (the default) is Uni-Sign's: the four (B, T, C) part features side by side,
shifted by `part_para`. No module is built for it, so its state-dict keys and its loss are
exactly those of a model without the flag.

`--fusion hypernet` is HyperSign's dynamic fusion, adapted from its two streams (RGB and
keypoints) to the four pose part streams. As in HyperSign's DShG block, one hypernetwork
(Linear, ReLU, Dropout, Linear) reads the concatenated streams of each frame and generates a
scale (gamma) and a shift (beta) for every channel of every stream; each stream's product with
the mean stream (HyperSign multiplies its two streams) is layer-normalised, then scaled and
shifted by what the hypernetwork generated for that frame. HyperSign's partial shortcut (its
fixed-proportion mixes of a single stream into the fused feature) keeps a fixed share of the
plain concatenation: out = s * concat + (1 - s) * fused + part_para, s = --fusion_shortcut. The
output has the concatenation's width (4 * C), so mT5's projection and the CTC head read it
unchanged. Its weights live under `fusion.*`; a checkpoint of one fusion refuses to load into a
model of the other (check_checkpoint_fusion).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import add_flag, float_range
from config import ConfigError

FUSIONS = ('concat', 'hypernet')
FUSION_PREFIX = 'fusion.'
DEFAULT_DROPOUT, DEFAULT_SHORTCUT = 0.1, 0.25
below_one = float_range(0, 1, high_open=True)


def add_fusion_flags(p):
    """--fusion and the hypernetwork's settings."""
    g = p.add_argument_group("part fusion (HyperSign)")
    add_flag(g, "--fusion", default="concat", choices=list(FUSIONS),
             help="how the four part features become one frame feature: concat (Uni-Sign) or "
                  "hypernet (HyperSign's dynamic fusion: a hypernetwork generates per-frame "
                  "scales and shifts of the streams from the streams)")
    add_flag(g, "--fusion_dropout", type=below_one, default=DEFAULT_DROPOUT,
             help="dropout inside the fusion hypernetwork (--fusion hypernet)")
    add_flag(g, "--fusion_shortcut", type=below_one, default=DEFAULT_SHORTCUT,
             help="share of the plain concatenation kept beside the fused feature (HyperSign's "
                  "partial shortcut; --fusion hypernet)")


def fusion_refusals(args, explicit):
    """Messages for the fusion flags that cannot act with these settings."""
    if args.task == 'G2T':
        return [f"--{d}: --task G2T reads no poses, so there are no part streams to fuse"
                for d in ('fusion', 'fusion_dropout', 'fusion_shortcut') if d in explicit]
    if args.fusion != 'hypernet':
        return [f"--{d} sets the hypernetwork fusion: add --fusion hypernet"
                for d in ('fusion_dropout', 'fusion_shortcut') if d in explicit]
    return []


class HyperFusion(nn.Module):
    """Part features [(B, T, C)] * P -> (B, T, P * C): HyperSign's hypernetwork fusion."""

    def __init__(self, part_dim, num_parts, dropout=DEFAULT_DROPOUT, shortcut=DEFAULT_SHORTCUT):
        super().__init__()
        width = part_dim * num_parts
        self.part_dim, self.num_parts, self.shortcut = part_dim, num_parts, shortcut
        self.hypernet = nn.Sequential(nn.Linear(width, part_dim), nn.ReLU(), nn.Dropout(dropout),
                                      nn.Linear(part_dim, 2 * width))

    def forward(self, parts, part_para):
        streams = torch.stack(parts, dim=2)  # (B, T, P, C)
        concat = streams.flatten(2)
        gamma, beta = self.hypernet(concat).unflatten(-1, (2, self.num_parts, self.part_dim)
                                                      ).unbind(2)
        mixed = F.layer_norm(streams * streams.mean(2, keepdim=True), (self.part_dim,))
        fused = (gamma * mixed + beta).flatten(2)
        return self.shortcut * concat + (1 - self.shortcut) * fused + part_para


def build_fusion(args, part_dim, num_parts):
    """The fusion module of --fusion (None for concat: the encoder concatenates itself)."""
    kind = getattr(args, 'fusion', 'concat')
    if kind not in FUSIONS:
        raise ValueError(f"--fusion {kind!r}: expected one of {FUSIONS}")
    if kind == 'concat':
        return None
    return HyperFusion(part_dim, num_parts, getattr(args, 'fusion_dropout', DEFAULT_DROPOUT),
                       getattr(args, 'fusion_shortcut', DEFAULT_SHORTCUT))


def fuse(fusion, parts, part_para):
    """(B, T, P * C) frame features of the part features: concatenation, or `fusion`'s."""
    if fusion is None:
        return torch.cat(parts, dim=-1) + part_para
    return fusion(parts, part_para)


def check_checkpoint_fusion(model, state, source):
    """ConfigError naming both fusions when the checkpoint's weights were trained with the other
    --fusion than the model's (its `fusion.*` keys say which)."""
    saved = 'hypernet' if any(key.startswith(FUSION_PREFIX) for key in state) else 'concat'
    built = 'concat' if getattr(model, 'fusion', None) is None else 'hypernet'
    if saved != built:
        raise ConfigError(
            f"checkpoint {source} was trained with --fusion {saved}, but this model is built "
            f"with --fusion {built}: its part features are fused another way, so its weights "
            f"cannot be used here; pass --fusion {saved} (a checkpoint's own flags are used by "
            "translate.py and exported models)")
