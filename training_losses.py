"""The training objective with regularisers, and the statistics the trainer logs.

    loss = a * CE + (1 - a) * L_hyp + signcl_weight * L_SignCL + sst_weight * L_SST

CE is mT5's label-smoothed cross-entropy; a is Geo-Sign's CE weight, scheduled on the fraction of
optimizer steps done (hyperbolic.HyperbolicAlignment.alpha), and a = 1 without --use_hyperbolic.
Terms of disabled regularisers are absent. SignCL reads the pose embeddings fed to mT5; SST the mT5
encoder outputs at the pose positions and the last decoder states (as HyperSign does); the
hyperbolic branch the four part features and, per --hyp_text_emb_src, the target token embeddings
or the last decoder states.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from hyperbolic import PART_NAMES
from signcl import signcl_margin


@dataclass
class RegularizerInputs:
    """What the regularisers read from one forward pass (B clips, T frames, L target tokens)."""
    frame_mask: torch.Tensor  # (B, T), 1 on real frames
    text_mask: torch.Tensor  # (B, L), True on real target tokens
    pose_embeds: torch.Tensor  # (B, T, D) pose embeddings fed to mT5, before the prompt
    part_features: Sequence[torch.Tensor]  # four (B, T, C): body, left, right, face
    pose_states: torch.Tensor  # (B, T, D) mT5 encoder outputs at the pose positions
    decoder_states: Optional[torch.Tensor] = None  # (B, L, D) last decoder hidden states
    token_embeds: Optional[torch.Tensor] = None  # (B, L, D) mT5 embeddings of the targets
    text_lengths: Optional[torch.Tensor] = None  # (B,) target lengths, when text_mask is None


def regularized_loss(regularizers, weights, ce_loss, inputs, progress):
    """The blended loss of the enabled regularisers.

    Returns {'loss', '<name>_loss' (detached) for each regulariser, 'stats': {name: detached
    scalar}} and, with the hyperbolic branch, 'hyp_embeddings' (detached, for figures)."""
    out, stats = {}, {}
    total = ce_loss
    if "hyperbolic" in regularizers:
        module = regularizers["hyperbolic"]
        hyp_loss, out["hyp_embeddings"] = hyperbolic_term(module, inputs, progress, stats)
        total = module.blend(ce_loss, hyp_loss, progress)
        out["hyp_loss"] = hyp_loss.detach()
    if "signcl" in regularizers:
        signcl_loss = signcl_term(regularizers["signcl"], inputs, stats)
        total = total + weights["signcl"] * signcl_loss
        out["signcl_loss"] = signcl_loss.detach()
    if "sst" in regularizers:
        sst_loss, sst_stats = regularizers["sst"](inputs.pose_states, inputs.decoder_states,
                                                  inputs.frame_mask, inputs.text_mask)
        stats.update({f"sst_{name}": value for name, value in sst_stats.items()})
        total = total + weights["sst"] * sst_loss
        out["sst_loss"] = sst_loss.detach()
    out.update(loss=total, stats=stats)
    return out


def signcl_term(module, inputs, stats):
    """SignCL with SignCL's margin rule per clip, from its valid frames and target tokens."""
    text_lengths = inputs.text_lengths if inputs.text_mask is None else inputs.text_mask.sum(dim=1)
    margin = signcl_margin(inputs.frame_mask.sum(dim=1), text_lengths)
    stats["signcl_margin"] = margin.float().mean()
    return module(inputs.pose_embeds, margin=margin, mask=inputs.frame_mask)


def hyperbolic_term(module, inputs, progress, stats):
    """The hyperbolic contrastive loss; adds its statistics (prefixed 'hyp_', with the mean
    Fréchet weight of each part) to `stats` and returns (loss, embeddings)."""
    text = inputs.token_embeds if module.text_emb_src == "token" else inputs.decoder_states
    loss, hyp_stats = module(inputs.part_features, text, inputs.text_mask, inputs.frame_mask,
                             progress)
    embeddings = hyp_stats.pop("embeddings")
    stats.update({f"hyp_{name}": value for name, value in hyp_stats.items()})
    part_weights = embeddings["frechet_weights"].mean(dim=0)
    stats.update({f"hyp_weight_{part}": w for part, w in zip(PART_NAMES, part_weights)})
    return loss, embeddings
