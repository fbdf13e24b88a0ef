"""The part fusion: HyperSign's hypernetwork on constructed features, its flags, checkpoints of
either fusion, and training runs of fine_tuning.main with both heads and every regulariser."""
import math
import os

import pytest
import torch

import config
import flags
import fusion
from conftest import ctc_args, default_args
from models import CTCRecognizer, load_checkpoint_weights
from test_fine_tuning import read_step_records, train_args, train_in_process

SMALL = dict(stgcn_channels=[8, 16], hidden_dim=16, temporal_layers=1)


def streams(batch=2, frames=5, width=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, frames, width, generator=generator) for _ in range(4)]


def test_hypernet_keeps_the_concatenation_width_and_its_shortcut_share():
    torch.manual_seed(0)
    module = fusion.HyperFusion(8, 4, dropout=0.0, shortcut=0.25).eval()
    parts, part_para = streams(), torch.randn(32)
    out = module(parts, part_para)
    concat = torch.cat(parts, -1)
    assert out.shape == concat.shape == (2, 5, 32)
    with torch.no_grad():  # generated scales and shifts all zero: only the shortcut is left
        module.hypernet[-1].weight.zero_()
        module.hypernet[-1].bias.zero_()
    assert torch.allclose(module(parts, part_para), 0.25 * concat + part_para)


def test_hypernet_weights_are_generated_per_frame_from_the_streams():
    torch.manual_seed(0)
    module = fusion.HyperFusion(8, 4, dropout=0.0, shortcut=0.0).eval()
    parts = streams()
    out = module(parts, torch.zeros(32))
    changed = [p.clone() for p in parts]
    changed[3][:, 2] += 1.0  # the face stream of frame 2 only
    again = module(changed, torch.zeros(32))
    differs = (again - out).abs().amax(dim=(0, 2)) > 1e-6
    assert differs.tolist() == [False, False, True, False, False]
    # The body's channels of frame 2 change too: its scale and shift come from every stream.
    assert (again[:, 2, :8] - out[:, 2, :8]).abs().max() > 1e-6
    # Frames are fused apart: the same frame in another batch gives the same features.
    alone = module([p[:1, 2:3] for p in parts], torch.zeros(32))
    assert torch.allclose(alone[0, 0], out[0, 2], atol=1e-6)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_concat_builds_no_module_and_hypernet_its_own_keys():
    torch.manual_seed(0)
    plain = CTCRecognizer(ctc_args(mt5_path=None), 10)
    torch.manual_seed(0)
    concat = CTCRecognizer(ctc_args(mt5_path=None, fusion="concat"), 10)
    assert plain.fusion is None and concat.fusion is None
    assert list(plain.state_dict()) == list(concat.state_dict())
    hyper = CTCRecognizer(ctc_args(mt5_path=None, fusion="hypernet"), 10)
    extra = set(hyper.state_dict()) - set(plain.state_dict())
    assert extra and all(key.startswith("fusion.hypernet.") for key in extra)
    parts = streams(width=16)
    assert torch.equal(concat.fuse_parts(parts), torch.cat(parts, -1) + concat.part_para)
    assert hyper.fuse_parts(parts).shape == (2, 5, 64)


@pytest.mark.parametrize("saved,built", [("hypernet", "concat"), ("concat", "hypernet")])
def test_a_checkpoint_of_the_other_fusion_is_refused_by_name(saved, built):
    source = CTCRecognizer(ctc_args(mt5_path=None, fusion=saved), 10)
    target = CTCRecognizer(ctc_args(mt5_path=None, fusion=built), 10)
    with pytest.raises(config.ConfigError,
                       match=f"trained with --fusion {saved}, but this model is built with "
                             f"--fusion {built}.*pass --fusion {saved}"):
        load_checkpoint_weights(target, source.state_dict(), "run.pth")
    same = CTCRecognizer(ctc_args(mt5_path=None, fusion=saved), 10)
    assert load_checkpoint_weights(same, source.state_dict())["loaded_keys"] > 0


@pytest.mark.parametrize("argv,message", [
    (["--fusion_dropout", "0.2"], "--fusion_dropout sets the hypernetwork fusion: add --fusion"),
    (["--fusion_shortcut", "0.5"], "--fusion_shortcut sets the hypernetwork fusion"),
    (["--task", "G2T", "--fusion", "hypernet"], "--fusion: --task G2T reads no poses"),
    (["--fusion", "hypernet", "--fusion_shortcut", "1"], "expected a finite number"),
])
def test_fusion_flags_that_cannot_act_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        flags.parse_args("fine_tuning.py", argv)
    assert message in capsys.readouterr().err


def test_hypernet_settings_parse():
    args = flags.parse_args("fine_tuning.py", ["--fusion", "hypernet", "--fusion_dropout", "0.3",
                                               "--fusion_shortcut", "0.5"])
    module = fusion.build_fusion(args, 16, 4)
    assert module.shortcut == 0.5 and module.hypernet[2].p == 0.3
    assert fusion.build_fusion(default_args(), 16, 4) is None


# ----------------------------------------------------------------------------- training runs

def checkpoint_keys(out):
    return sorted(torch.load(out / "checkpoint_0.pth", weights_only=True)["model"])


def test_concat_flag_trains_exactly_as_no_flag(demo_root, tmp_path, in_process_trainer):
    plain = train_in_process(demo_root, tmp_path / "plain", "--epochs", "1")
    concat = train_in_process(demo_root, tmp_path / "concat", "--epochs", "1", "--fusion",
                              "concat")
    assert sorted(plain) == sorted(concat) and len(plain) == 4
    assert [concat[k]["loss"] for k in sorted(plain)] == [plain[k]["loss"] for k in sorted(plain)]
    assert checkpoint_keys(tmp_path / "concat") == checkpoint_keys(tmp_path / "plain")


def test_hypernet_with_every_regulariser_saves_translates_exports_and_resumes(
        demo_root, tmp_path, in_process_trainer, capsys):
    import fine_tuning
    import translate
    out = tmp_path / "hyper"
    extra = ["--fusion", "hypernet", "--use_signcl", "--use_sst", "--use_hyperbolic"]
    steps = train_in_process(demo_root, out, "--epochs", "1", *extra)
    assert len(steps) == 4
    for record in steps.values():
        for name in ("loss", "signcl_loss", "sst_loss", "hyp_loss"):
            assert math.isfinite(record[name]), (name, record)
    saved = torch.load(out / "checkpoint_0.pth", weights_only=True)
    assert saved["args"]["fusion"] == "hypernet"
    assert any(key.startswith("fusion.hypernet.") for key in saved["model"])

    # translate.py and the exported folder rebuild the hypernetwork from the saved flags.
    poses = os.path.join(demo_root, "Demo", "pose_format")
    clips = sorted(os.path.join(poses, name) for name in os.listdir(poses))[:5]
    capsys.readouterr()
    translate.main(["--checkpoint", str(out / "checkpoint_0.pth"), *clips, "--batch_size", "2"])
    direct = capsys.readouterr().out
    assert len(direct.splitlines()) == 5
    translate.main(["--checkpoint", str(out / "checkpoint_0.pth"), "--export",
                    str(tmp_path / "exported")])
    capsys.readouterr()
    translate.main(["--model", str(tmp_path / "exported"), *clips, "--batch_size", "2"])
    assert capsys.readouterr().out == direct

    # The run continues from its training state; another fusion is refused on resume and on
    # --finetune.
    resumed = train_in_process(demo_root, out, "--epochs", "2", *extra)
    assert (1, 0) in resumed and "resumed from" in capsys.readouterr().out
    with pytest.raises(config.ConfigError, match="--fusion hypernet -> concat"):
        train_in_process(demo_root, out, "--epochs", "3", *extra[2:])
    with pytest.raises(config.ConfigError, match="trained with --fusion hypernet, but this model"):
        fine_tuning.main(flags.parse_args("fine_tuning.py", train_args(
            demo_root, tmp_path / "other", "--epochs", "1", "--finetune",
            str(out / "checkpoint_0.pth"))))


def test_hypernet_with_the_ctc_head_and_signcl(demo_root, tmp_path, in_process_trainer):
    import fine_tuning
    out = tmp_path / "ctc"
    argv = ["--dataset", "Demo", "--data_root", demo_root, "--output_dir", str(out),
            "--task", "CSLR", "--head", "ctc", "--batch-size", "4", "--lr", "3e-3",
            "--num_workers", "0", "--dtype", "fp32", "--stgcn_channels", "8,16", "--hidden_dim",
            "16", "--temporal_layers", "1", "--ctc_hidden", "32", "--max_length", "48",
            "--epochs", "1", "--quick_break", "3", "--print_freq", "1", "--fusion", "hypernet",
            "--use_signcl"]
    fine_tuning.main(flags.parse_args("fine_tuning.py", argv))
    steps = read_step_records(out)
    assert len(steps) == 3
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["signcl_loss"])
               for r in steps.values())
    saved = torch.load(out / "checkpoint_0.pth", weights_only=True)
    assert any(key.startswith("fusion.hypernet.") for key in saved["model"])
