"""How the pose encoder's frame features enter the language model's input embedding space.

`linear` is Uni-Sign's projection (`pose_proj`, one Linear layer: the default, same keys and
computation as before). `mlp` is MMTLB's visual-language mapper: two Linear layers with a ReLU
between them, the hidden width that of the language model, so that a language model pretrained
on gloss embeddings (--task G2T) receives pose features through a learnt non-linear map. Its
weights sit under `pose_proj.0.` and `pose_proj.2.`, so a checkpoint says which mapper it holds.
"""
import torch.nn as nn

MAPPERS = ("linear", "mlp")


def build_mapper(kind, in_features, out_features):
    """The pose-to-embedding mapper of `kind` (one of MAPPERS)."""
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, out_features), nn.ReLU(),
                             nn.Linear(out_features, out_features))
    raise ValueError(f"--mapper {kind!r}: expected one of {', '.join(MAPPERS)}")
