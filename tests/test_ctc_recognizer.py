"""Tests for models.CTCRecognizer: VAC's edge padding, joint hand normalisation, the forward pass
and its losses, and the pose encoder it shares with the translator (moved either way with
--init_encoder / pose_encoder.load_encoder_weights)."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import ctc_args, write_gloss_set

import config
import fine_tuning
import tasks
import utils
from ctc_head import GlossVocab
from datasets import GlossTargets, S2T_Dataset
from models import CTCRecognizer, SignTranslator, pad_clip_edges, padded_lengths
from pose_encoder import ENCODER_PREFIXES, load_encoder_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENCODER_FLAGS = ["--stgcn_channels", "8,16", "--hidden_dim", "16", "--temporal_layers", "1"]
CTC_FLAGS = ["--task", "CSLR", "--head", "ctc", "--ctc_hidden", "32"]


# ---- hand normalisation ----

def hands_unlike_batch(batch=6, frames=20):
    """Parts where the left hand rests and the right hand moves, as in most signing."""
    gen = torch.Generator().manual_seed(0)
    src = {part: torch.rand(batch, frames, joints, 3, generator=gen)
           for part, joints in (("body", 9), ("left", 21), ("right", 21), ("face_all", 18))}
    src["left"] = 0.05 * src["left"] - 0.5
    src["right"] = 3.0 * src["right"] + 1.0
    src["attention_mask"] = torch.ones(batch, frames, dtype=torch.long)
    return src


def train_eval_gap(hands_batch):
    """Largest gap between the training-mode and evaluation-mode pose features of one batch,
    once the BatchNorm running statistics are that batch's own (cumulative average)."""
    torch.manual_seed(0)
    model = CTCRecognizer(ctc_args(hands_batch=hands_batch), num_classes=5)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    src = hands_unlike_batch()
    with torch.no_grad():
        model.train()
        trained = torch.cat(model.encode_parts(src), -1)
        model.eval()
        evaluated = torch.cat(model.encode_parts(src), -1)
    return ((trained - evaluated).abs().max() / trained.abs().max()).item()


def test_joint_hand_normalisation_makes_evaluation_see_training_statistics():
    assert CTCRecognizer(ctc_args(), num_classes=5).hands_batch == "joint"  # 'auto' -> joint
    joint, apart = train_eval_gap("auto"), train_eval_gap("off")
    assert joint < 0.02  # the recognizer's default: one statistic for both hands
    assert apart > 10 * joint  # Uni-Sign's per-hand batch statistics vs mixed running ones


# ---- edge padding ----

def test_edge_padding_gives_a_quarter_of_the_frames():
    lengths = torch.tensor([9, 16, 1])
    body = torch.arange(16.0)[None, :, None, None].expand(3, 16, 9, 3).clone()
    for row, n in enumerate(lengths):
        body[row, n:] = body[row, n - 1]
    src = {part: body[:, :, :1].expand(-1, -1, v, -1) if part != "body" else body
           for part, v in (("body", 9), ("left", 21), ("right", 21), ("face_all", 18))}
    src["src_length_batch"] = lengths
    parts, new_lengths = pad_clip_edges(src)
    assert new_lengths.tolist() == [24, 28, 16] == padded_lengths(lengths).tolist()
    first = parts["body"][0, :, 0, 0].tolist()
    assert first[:7] == [0.0] * 7 and first[7:15] == list(range(1, 9)) and first[15:] == [8.0] * 13
    # without src_length_batch the lengths come from the attention mask
    del src["src_length_batch"]
    src["attention_mask"] = (torch.arange(16)[None, :] < lengths[:, None]).long()
    again, again_lengths = pad_clip_edges(src)
    assert torch.equal(again_lengths, new_lengths) and torch.equal(again["body"], parts["body"])
    model = CTCRecognizer(ctc_args(), num_classes=5)
    assert model.output_lengths(lengths).tolist() == [3, 4, 1]


# ---- forward ----

def gloss_batch(tmp_path, samples):
    """(vocabulary, collated batch) of `samples` read as a PhoenixDemo training split."""
    stm, poses = write_gloss_set(tmp_path, samples)
    dataset = S2T_Dataset(stm, poses, "train", dataset_name="PhoenixDemo", task="CSLR")
    vocab = GlossVocab.build(e["gloss"] for e in dataset.entries)
    dataset.targets = GlossTargets(vocab)
    return vocab, dataset.collate_fn([dataset[i] for i in range(len(dataset))])


def test_forward_gives_loss_parts_and_logits(tmp_path):
    vocab, (src, tgt) = gloss_batch(tmp_path, [("a", ["X", "Y"], 30), ("b", ["Z"], 21)])
    model = CTCRecognizer(ctc_args(), vocab.num_classes)
    out = model(src, tgt)
    assert out["feat_len"].tolist() == [8, 6]
    assert out["seq_logits"].shape == (8, 2, 4) and out["conv_logits"].shape == (8, 2, 4)
    assert set(out["stats"]) == {"seqctc_loss", "convctc_loss", "dist_loss"}
    out["loss"].backward()
    assert model.proj_linear["face_all"].weight.grad.abs().sum() > 0
    # without targets: the logits only
    model.eval()
    with torch.no_grad():
        plain = model(src)
    assert "loss" not in plain and plain["feat_len"].tolist() == [8, 6]


def test_signcl_adds_its_loss_on_the_frame_features(tmp_path):
    vocab, (src, tgt) = gloss_batch(tmp_path, [("a", ["X", "Y"], 30), ("b", ["Z"], 21),
                                               ("c", ["Y", "Z", "X"], 26)])
    torch.manual_seed(0)
    plain = CTCRecognizer(ctc_args(), vocab.num_classes)
    torch.manual_seed(0)
    model = CTCRecognizer(ctc_args(use_signcl=True), vocab.num_classes)
    assert list(model.regularizers) == ["signcl"]
    torch.manual_seed(1)
    out = model(src, tgt)
    torch.manual_seed(1)
    base = plain(src, tgt)
    assert torch.isfinite(out["stats"]["signcl_loss"])
    assert out["loss"].item() == pytest.approx(
        base["loss"].item() + model.signcl_weight * out["stats"]["signcl_loss"].item(), rel=1e-5)
    out["loss"].backward()
    assert model.proj_linear["body"].weight.grad.abs().sum() > 0


# ---- the pose encoder shared with the translator ----

def test_recognizer_shares_the_translator_encoder_keys(tiny_mt5_dir):
    args = ctc_args(mt5_path=tiny_mt5_dir, dataset="Demo")
    translator = SignTranslator(args)
    recognizer = CTCRecognizer(args, num_classes=7)
    ours = {k: v for k, v in recognizer.state_dict().items() if not k.startswith("head.")}
    theirs = translator.state_dict()
    assert set(ours) == {k for k in theirs if k.startswith(ENCODER_PREFIXES)}
    assert all(v.shape == theirs[k].shape for k, v in ours.items())

    # the encoder of a translation checkpoint loads into a recognizer; its head stays fresh
    fresh = CTCRecognizer(args, num_classes=7)
    head_before = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("head.")}
    report = load_encoder_weights(fresh, theirs)
    assert report["skipped"]["mt5_model"] > 0 and report["skipped"]["pose_proj"] == 2
    assert "head" not in report["skipped"] and report["loaded_keys"] == len(ours)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in head_before.items())
    assert torch.equal(fresh.part_para, translator.part_para)
    with pytest.raises(config.ConfigError, match="gcn_modules.body"):
        load_encoder_weights(fresh, {k: v for k, v in theirs.items()
                                     if not k.startswith("gcn_modules.body")})


def build_with_task(args, vocab=None):
    """fine_tuning.build_model with the run's task object (the CTC head's vocabulary given)."""
    task = tasks.build_task(args, config.get_dataset(args.dataset))
    if vocab is not None:
        task.vocab = vocab
    return fine_tuning.build_model(args, task)


def perturbed(state):
    """The state dict with 1 added everywhere: unlike any fresh initialisation, BatchNorm
    statistics included."""
    with torch.no_grad():
        for value in state.values():
            value.add_(1)
    return state


def test_recognizer_starts_from_a_translator_encoder(tiny_mt5_dir, tmp_path, capsys):
    argv = ["--dataset", "Demo", "--mt5_path", tiny_mt5_dir, *ENCODER_FLAGS]
    translator = SignTranslator(utils.parse_args("t", argv))
    path = tmp_path / "slt.pth"
    torch.save({"model": perturbed(translator.state_dict())}, path)

    vocab = GlossVocab.build([["A", "B", "C"]])
    ctc_argv = ["--dataset", "Demo", *ENCODER_FLAGS, *CTC_FLAGS]
    torch.manual_seed(0)
    recognizer = build_with_task(utils.parse_args("t", ctc_argv + ["--init_encoder", str(path)]),
                                 vocab)
    torch.manual_seed(0)
    fresh = build_with_task(utils.parse_args("t", ctc_argv), vocab)
    assert isinstance(recognizer, CTCRecognizer)
    ours, theirs, fresh = recognizer.state_dict(), translator.state_dict(), fresh.state_dict()
    for key, value in ours.items():
        expected = theirs[key] if key.startswith(ENCODER_PREFIXES) else fresh[key]
        assert torch.equal(value, expected), key
    encoder_keys = sum(key.startswith(ENCODER_PREFIXES) for key in ours)
    printed = capsys.readouterr().out
    assert f"pose encoder from {path}: {{'source': '{path}', 'loaded_keys': {encoder_keys}, " \
           f"'skipped': {{" in printed
    assert "'pose_proj': 2" in printed and "'head'" not in printed


def test_translator_starts_from_a_recognizer_encoder(tiny_mt5_dir, tmp_path, capsys):
    argv = ["--dataset", "Demo", "--mt5_path", tiny_mt5_dir, *ENCODER_FLAGS]
    recognizer = CTCRecognizer(utils.parse_args("t", argv[:2] + ENCODER_FLAGS + CTC_FLAGS), 7)
    path = tmp_path / "ctc.pth"
    torch.save({"model": perturbed(recognizer.state_dict())}, path)

    torch.manual_seed(0)
    translator = build_with_task(utils.parse_args("t", argv + ["--init_encoder", str(path)]))
    torch.manual_seed(0)
    fresh = build_with_task(utils.parse_args("t", argv))
    ours, theirs, fresh = recognizer.state_dict(), translator.state_dict(), fresh.state_dict()
    for key, value in theirs.items():
        expected = ours[key] if key.startswith(ENCODER_PREFIXES) else fresh[key]
        assert torch.equal(value, expected), key
    encoder_keys = sum(key.startswith(ENCODER_PREFIXES) for key in theirs)
    assert f"pose encoder from {path}: {{'source': '{path}', 'loaded_keys': {encoder_keys}, " \
           f"'skipped': {{'head': " in capsys.readouterr().out

    wider = CTCRecognizer(utils.parse_args("t", argv[:2] + CTC_FLAGS + [
        "--stgcn_channels", "8,32", "--hidden_dim", "32", "--temporal_layers", "1"]), 7)
    torch.save({"model": wider.state_dict()}, tmp_path / "wider.pth")
    with pytest.raises(config.ConfigError, match="wider.pth has no pose encoder of this shape"):
        build_with_task(utils.parse_args(
            "t", argv + ["--init_encoder", str(tmp_path / "wider.pth")]))


@pytest.mark.parametrize("head_flags", [[], CTC_FLAGS], ids=["generate", "ctc"])
def test_init_encoder_conflicts_and_missing_files_stop_the_run(demo_root, tmp_path, head_flags):
    def run_failing(*extra):
        return subprocess.run([sys.executable, "fine_tuning.py", "--dataset", "Demo",
                               "--data_root", demo_root, "--output_dir", str(tmp_path / "out"),
                               *ENCODER_FLAGS, *head_flags, *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "DS_ACCELERATOR": "cpu"})
    proc = run_failing("--init_encoder", str(tmp_path / "absent.pth"))
    assert proc.returncode == 1 and "absent.pth does not exist" in proc.stderr, proc.stderr
    (tmp_path / "x.pth").write_bytes(b"")
    empty = str(tmp_path / "x.pth")
    proc = run_failing("--init_encoder", empty, "--finetune", empty)
    assert proc.returncode == 1 and "--init_encoder and --finetune both set" in proc.stderr, \
        proc.stderr


def test_gradient_checkpointing_keeps_the_ctc_loss_gradients_and_statistics():
    models = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = CTCRecognizer(ctc_args(gradient_checkpointing=checkpointing), num_classes=5)
        src = hands_unlike_batch(batch=2, frames=32)
        targets = {"gloss_ids": torch.tensor([1, 2, 3, 4]), "gloss_lengths": torch.tensor([2, 2])}
        model.train()(src, targets)["loss"].backward()
        models.append(model)
    plain, recomputed = models
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)
    for (name, a), b in zip(plain.named_buffers(), recomputed.buffers()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert any(getattr(chain, "checkpointing", False) for chain in recomputed.modules())
