"""Tests for pose_encoder: one encoder for both heads, Uni-Sign's keys, one encoder loader."""
import pytest
import torch
from conftest import default_args

from config import ConfigError
from models import CTCRecognizer, SignTranslator
from pose_encoder import ENCODER_PREFIXES, PoseEncoder, load_encoder_weights

ENCODER = dict(stgcn_channels=[8, 16], hidden_dim=16, temporal_layers=1)


def encoder_keys(model):
    return sorted(k for k in model.state_dict() if k.startswith(ENCODER_PREFIXES))


def test_both_heads_are_the_pose_encoder_with_its_keys(tiny_mt5_dir):
    plain = PoseEncoder(default_args(**ENCODER))
    translator = SignTranslator(default_args(mt5_path=tiny_mt5_dir, dataset="How2Sign", **ENCODER))
    recognizer = CTCRecognizer(default_args(task="CSLR", head="ctc", **ENCODER), num_classes=7)
    assert isinstance(translator, PoseEncoder) and isinstance(recognizer, PoseEncoder)
    assert encoder_keys(plain) == encoder_keys(translator) == encoder_keys(recognizer)
    assert sorted(plain.state_dict()) == encoder_keys(plain)  # nothing but the encoder
    # Uni-Sign's names at the top of the state dict, the left hand sharing the right's modules
    assert "gcn_modules.left.layer0_0.gcn.conv.weight" in encoder_keys(plain)
    assert plain.gcn_modules["left"] is plain.gcn_modules["right"]


def test_frames_to_features():
    encoder = PoseEncoder(default_args(**ENCODER)).eval()
    src = {part: torch.rand(2, 7, joints, 3) for part, joints in
           {"body": 9, "left": 21, "right": 21, "face_all": 18}.items()}
    assert encoder.encode_pose(src).shape == (2, 7, encoder.frame_dim) == (2, 7, 64)


def test_one_loader_moves_the_encoder_between_heads(tiny_mt5_dir, tmp_path):
    torch.manual_seed(0)
    recognizer = CTCRecognizer(default_args(task="CSLR", head="ctc", **ENCODER), num_classes=7)
    torch.save({"model": recognizer.state_dict()}, tmp_path / "ctc.pth")
    torch.manual_seed(1)
    translator = SignTranslator(default_args(mt5_path=tiny_mt5_dir, dataset="How2Sign", **ENCODER))
    before = {k: v.clone() for k, v in translator.state_dict().items()}
    report = load_encoder_weights(translator, str(tmp_path / "ctc.pth"))
    after, source = translator.state_dict(), recognizer.state_dict()
    assert report["loaded_keys"] == len(encoder_keys(translator))
    assert report["skipped"] == {"head": len([k for k in source if k.startswith("head.")])}
    for key, value in after.items():
        expected = source[key] if key.startswith(ENCODER_PREFIXES) else before[key]
        assert torch.equal(value, expected), key


def test_encoder_of_another_shape_is_refused_with_the_flags_to_check(tmp_path):
    torch.save({"model": PoseEncoder(default_args(**ENCODER)).state_dict()}, tmp_path / "e.pth")
    wider = PoseEncoder(default_args(stgcn_channels=[8, 32], hidden_dim=32, temporal_layers=1))
    with pytest.raises(ConfigError, match="check --stgcn_channels"):
        load_encoder_weights(wider, str(tmp_path / "e.pth"))


def bad_checkpoint(tmp_path, kind):
    """A path that is no checkpoint: a folder, an empty file, a foreign file, a cut copy."""
    path = tmp_path / f"{kind}.pth"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":
        path.write_text("epoch,loss\n0,1.5\n")
    else:
        torch.save({"model": {"w": torch.zeros(64, 64)}}, path)
        path.write_bytes(path.read_bytes()[:-200])
    return path


@pytest.mark.parametrize("flag", ["--finetune", "--init_encoder"])
@pytest.mark.parametrize("kind, problem", [
    ("folder", "is a folder, not a checkpoint file"), ("empty", "is empty"),
    ("foreign", "is not a torch weight file"), ("truncated", "is truncated"),
])
def test_a_bad_checkpoint_stops_the_trainer_before_data_is_read(
        demo_root, tmp_path, monkeypatch, in_process_trainer, flag, kind, problem):
    import fine_tuning
    import flags
    monkeypatch.setattr(fine_tuning.utils, "close_distributed", lambda: None)
    monkeypatch.setattr(fine_tuning, "build_datasets", lambda *a: pytest.fail("data was read"))
    path = bad_checkpoint(tmp_path, kind)
    args = flags.parse_args("fine_tuning.py", ["--dataset", "Demo", "--data_root", demo_root,
                                               flag, str(path)])
    with pytest.raises(SystemExit) as stop:
        fine_tuning.run_command_line(fine_tuning.main, args)
    assert str(stop.value.code).startswith(f"error: {flag} {path} {problem}")


def padded_batch(lengths, frames, seed=0):
    """Part tensors of random keypoints (padded frames random too) and a prefix mask."""
    generator = torch.Generator().manual_seed(seed)
    src = {part: torch.rand(len(lengths), frames, joints, 3, generator=generator) for part, joints
           in {"body": 9, "left": 21, "right": 21, "face_all": 18}.items()}
    src["attention_mask"] = (torch.arange(frames)[None] < torch.tensor(lengths)[:, None]).long()
    return src


def test_the_temporal_kernels_reach_six_frames_past_a_clip():
    three_blocks = dict(ENCODER, temporal_layers=3)  # the default: three (5, 1) kernels
    assert PoseEncoder(default_args(**three_blocks)).padding_reach() == 6
    assert PoseEncoder(default_args(**dict(ENCODER, temporal_kernel=3,
                                           temporal_layers=2))).padding_reach() == 2


def test_real_frames_get_the_features_of_the_padded_batch():
    encoder = PoseEncoder(default_args(**ENCODER)).eval()
    for bn in encoder.modules():  # running statistics away from 0 and 1
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    src = padded_batch([30, 9, 21, 2], 30)
    mask = src["attention_mask"].bool()
    with torch.no_grad():
        whole = encoder.encode_parts(src)
        skipped = encoder.encode_real_frames(src)
    for full, trimmed in zip(whole, skipped):
        torch.testing.assert_close(trimmed[mask], full[mask], rtol=1e-5, atol=1e-6)
        assert not torch.equal(trimmed[~mask], full[~mask])  # padding was skipped
        reach = encoder.padding_reach()
        assert torch.all(trimmed[1, 9 + reach:] == 0) and torch.all(trimmed[3, 2 + reach:] == 0)


def test_one_frame_less_of_reach_would_change_the_last_real_frames():
    """The reach is needed: cutting each clip at its last real frame changes its features."""
    encoder = PoseEncoder(default_args(**dict(ENCODER, temporal_layers=3))).eval()
    src = padded_batch([12, 20], 20)
    with torch.no_grad():
        full = encoder.encode_parts(src)[0][0, :12]
        cut = encoder.encode_parts({part: src[part][:1, :12] for part in src
                                    if part != "attention_mask"})[0][0]
    assert not torch.allclose(cut[-3:], full[-3:], atol=1e-5)
    torch.testing.assert_close(cut[:6], full[:6], rtol=1e-5, atol=1e-6)


def test_padding_is_kept_where_frames_are_not_independent():
    encoder = PoseEncoder(default_args(**ENCODER))
    src = padded_batch([30, 9], 30)
    with torch.no_grad():
        training = encoder.train().encode_real_frames(src)  # batch statistics include padding
        assert not torch.all(training[0][1, 20:] == 0)
        src["attention_mask"][1, 2] = 0  # a gap: not a prefix mask
        gap = encoder.eval().encode_real_frames(src)
        torch.testing.assert_close(gap[0], encoder.encode_parts(src)[0])
