"""mapper.py: the default keeps Uni-Sign's one-layer `pose_proj`; `mlp` is MMTLB's two-layer
visual-language mapper."""
import pytest
import torch
import torch.nn as nn
from conftest import default_args

from mapper import build_mapper
from models import SignTranslator


def test_mappers_shapes_and_layers():
    linear, mlp = build_mapper("linear", 12, 8), build_mapper("mlp", 12, 8)
    assert isinstance(linear, nn.Linear)
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear]
    x = torch.randn(2, 5, 12)
    assert linear(x).shape == mlp(x).shape == (2, 5, 8)
    assert (mlp[1](mlp[0](x)) >= 0).all()
    with pytest.raises(ValueError, match="--mapper 'conv'"):
        build_mapper("conv", 12, 8)


def test_default_translator_keeps_its_projection_keys(tiny_mt5_dir):
    shape = dict(stgcn_channels=[8, 16], hidden_dim=16, temporal_layers=1, dataset="Demo",
                 mt5_path=tiny_mt5_dir)
    default = SignTranslator(default_args(**shape))
    mlp = SignTranslator(default_args(mapper="mlp", **shape))
    keys = {k for k in default.state_dict() if k.startswith("pose_proj")}
    assert keys == {"pose_proj.weight", "pose_proj.bias"}
    assert {k for k in mlp.state_dict() if k.startswith("pose_proj")} == {
        "pose_proj.0.weight", "pose_proj.0.bias", "pose_proj.2.weight", "pose_proj.2.bias"}
    features = torch.randn(2, 3, default.frame_dim)
    assert mlp.project_pose(features).shape == default.project_pose(features).shape


def test_a_checkpoint_of_the_other_mapper_is_refused_naming_it(tiny_mt5_dir):
    from config import ConfigError
    from models import load_checkpoint_weights
    shape = dict(stgcn_channels=[8, 16], hidden_dim=16, temporal_layers=1, dataset="Demo",
                 mt5_path=tiny_mt5_dir)
    linear_args = default_args(**shape)
    mlp = SignTranslator(default_args(mapper="mlp", **shape))
    saved = {"model": mlp.state_dict(), "args": vars(default_args(mapper="mlp", **shape))}
    with pytest.raises(ConfigError, match="--mapper mlp .checkpoint. vs linear"):
        load_checkpoint_weights(SignTranslator(linear_args), saved, source="mlp.pth")
