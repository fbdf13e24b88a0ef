"""Tests for engine.py: sharded evaluation, scoring levels, the non-finite loss guard and the
accumulation windows (a short last window is stepped)."""
import json
import os

import pytest
import torch
from conftest import DEEPSPEED, free_port, run_command

import config
import engine
import utils
from engine import accumulation_window


def test_sharded_eval_sampler_covers_everything_in_equal_shards():
    shards = [list(engine.ShardedEvalSampler(7, rank, 3)) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(set(i for s in shards for i in s)) == list(range(7))


def test_gather_in_order_restores_dataset_order(monkeypatch):
    size, world = 7, 3
    shards = [[f"item{i}" for i in engine.ShardedEvalSampler(size, r, world)] for r in range(world)]
    monkeypatch.setattr(utils, "all_gather_objects", lambda local: shards)
    assert engine.gather_in_order(shards[0], size) == [f"item{i}" for i in range(size)]


def test_scoring_level_comes_from_the_registry():
    assert config.get_dataset("CSL_Daily").scoring_level("SLT") == "char"
    assert config.get_dataset("CSL_Daily").scoring_level("CSLR") == "word"
    assert config.get_dataset("How2Sign").scoring_level("SLT") == "word"


def test_best_metric_direction():
    assert engine.BEST_METRIC["CSLR"] == ("wer", False)
    assert engine.BEST_METRIC["SLT"] == ("bleu4", True)


def test_nonfinite_guard_counts_skips_and_stops_after_a_streak(tmp_path):
    guard = engine.NonFiniteGuard(3, str(tmp_path), epoch=2)
    nan, inf, one = torch.tensor(float("nan")), torch.tensor(float("inf")), torch.tensor(1.0)
    assert guard.check(one, 0) and not guard.check(nan, 1) and not guard.check(inf, 2)
    guard.stop_if_exhausted(3)
    assert guard.check(one, 3) and guard.consecutive == 0  # a finite loss ends the streak
    for step in (4, 5, 6):
        assert not guard.check(nan, step)
    with pytest.raises(engine.NonFiniteLossError, match="3 consecutive non-finite") as error:
        guard.stop_if_exhausted(7)
    assert error.value.batches_done == 7 and guard.skipped == 5
    with open(tmp_path / "log_steps.txt") as f:
        records = [json.loads(line) for line in f]
    assert [(r["step"], r["consecutive"]) for r in records] == [(1, 1), (2, 2), (4, 1), (5, 2),
                                                                (6, 3)]
    never = engine.NonFiniteGuard(0, "", 0)  # --max_nonfinite 0: skip, but never stop
    for step in range(20):
        assert not never.check(nan, step)
    never.stop_if_exhausted(20)


def test_pooled_predictions_equal_batch_by_batch(tiny_mt5_dir):
    from types import SimpleNamespace
    from test_models import build, plain_batch
    from transformers import T5Tokenizer
    model = build(tiny_mt5_dir).eval()
    with torch.no_grad():  # louder pose input, cross-attention and output layer: the text
        model.pose_proj.weight.mul_(100)  # depends on the clip and ends at varied lengths
        for block in model.mt5_model.decoder.block:
            block.layer[1].EncDecAttention.o.weight.mul_(100)
        model.mt5_model.lm_head.weight.mul_(10)
    tokenizer = T5Tokenizer.from_pretrained(tiny_mt5_dir)
    loader = [plain_batch(batch=size, frames=frames, seed=seed)
              for size, frames, seed in ((3, 10, 1), (2, 6, 2), (3, 12, 3), (1, 8, 4))]
    results = {}
    for pool in (0, 4, 64):
        args = SimpleNamespace(decode_pool=pool, num_beams=3, max_new_tokens=8, zero_stage=2,
                               device="cpu", print_freq=100)
        results[pool] = engine.predict(args, model, loader, tokenizer)
    assert results[4] == results[0] and results[64] == results[0]
    names = [name for src, _ in loader for name in src["name_batch"]]
    assert [name for name, _, _ in results[0]] == names
    assert len({hyp for _, hyp, _ in results[0]}) > 1  # varied text, not one repeated output


def test_accumulation_windows_end_with_a_short_one():
    windows = [accumulation_window(position, 10, 4) for position in range(10)]
    assert [length for length, _ in windows] == [4] * 8 + [2] * 2
    assert [position for position, (_, ends) in enumerate(windows) if ends] == [3, 7, 9]
    assert accumulation_window(5, 6, 8) == (6, True)


def trainer_argv(demo_root, out_dir, *extra):
    return ["--dataset", "Demo", "--data_root", demo_root, "--output_dir", str(out_dir),
            "--batch-size", "4", "--num_workers", "0", "--dtype", "fp32", "--epochs", "1",
            "--stgcn_channels", "8,16", "--hidden_dim", "16", "--temporal_layers", "1",
            "--max_length", "32", "--num_beams", "1", "--max_new_tokens", "4",
            "--quick_break", "6", "--lr", "1e-2", "--sched", "constant", *extra]


def run_trainer(demo_root, out_dir, *extra, weights="checkpoint_0.pth"):
    import fine_tuning
    import flags
    argv = trainer_argv(demo_root, out_dir, *extra)
    os.makedirs(out_dir, exist_ok=True)
    fine_tuning.main(flags.parse_args("fine_tuning.py", argv))
    return torch.load(os.path.join(out_dir, weights), weights_only=True)["model"]


def test_an_epoch_shorter_than_one_window_still_steps(demo_root, tmp_path, capsys,
                                                      in_process_trainer):
    """6 micro-batches with --gradient-accumulation-steps 8: one step on the mean gradient of
    the 6, as a run accumulating exactly 6 makes; --lr 0 shows what an unstepped run keeps."""
    short = run_trainer(demo_root, tmp_path / "short", "--gradient-accumulation-steps", "8")
    printed = capsys.readouterr().out
    assert "optimizer steps per epoch: 1 (6 micro-batches, accumulation 8)" in printed
    exact = run_trainer(demo_root, tmp_path / "exact", "--gradient-accumulation-steps", "6")
    frozen = run_trainer(demo_root, tmp_path / "frozen", "--gradient-accumulation-steps", "8",
                         "--lr", "1e-30")
    moved = [k for k in short if short[k].is_floating_point()
             and not torch.equal(short[k], frozen[k])]
    assert len(moved) > 10
    for key in short:
        torch.testing.assert_close(short[key], exact[key], rtol=1e-4, atol=1e-5)
    with open(os.path.join(tmp_path / "short", "log.txt")) as f:
        assert json.loads(f.readline())["train_optimizer_steps"] == 1


def test_a_short_last_window_is_stepped_too(demo_root, tmp_path, capsys, in_process_trainer):
    """10 micro-batches at accumulation 4: windows of 4, 4 and 2, so DeepSpeed steps 3 times."""
    run_trainer(demo_root, tmp_path / "run", "--gradient-accumulation-steps", "4",
                "--quick_break", "10")
    assert "optimizer steps per epoch: 3 (10 micro-batches, accumulation 4)" in capsys.readouterr().out
    with open(os.path.join(tmp_path / "run", "log.txt")) as f:
        assert json.loads(f.readline())["train_optimizer_steps"] == 3
    states = tmp_path / "run" / "training_state"
    tag = (states / "latest").read_text().strip()
    saved = torch.load(states / tag / "mp_rank_00_model_states.pt", weights_only=False)
    assert saved["global_steps"] == 3


def test_the_riemannian_step_follows_a_short_window(demo_root, tmp_path, in_process_trainer):
    """The hyperbolic branch's curvature and ball points (stepped by RiemannianAdam, not DeepSpeed)
    move in an epoch shorter than one window, as in a run accumulating exactly its length."""
    hyperbolic = ("--use_hyperbolic", "--hyp_lr", "1e-2")
    short = run_trainer(demo_root, tmp_path / "short", "--gradient-accumulation-steps", "8",
                        *hyperbolic)
    exact = run_trainer(demo_root, tmp_path / "exact", "--gradient-accumulation-steps", "6",
                        *hyperbolic)
    frozen = run_trainer(demo_root, tmp_path / "frozen", "--gradient-accumulation-steps", "8",
                         "--lr", "1e-30", "--use_hyperbolic", "--hyp_lr", "1e-30")
    geometry = [key for key in short if "manifold" in key or "key_bias" in key]
    assert geometry and any(not torch.equal(short[key], frozen[key]) for key in geometry)
    for key in geometry:
        torch.testing.assert_close(short[key], exact[key], rtol=1e-4, atol=1e-5)


def test_a_run_resumed_before_a_short_window_ends_as_the_whole_run(demo_root, tmp_path, capsys,
                                                                   in_process_trainer):
    """Mid-epoch states are saved at window ends only: resuming from batch 8 of the second epoch
    (10 micro-batches, accumulation 4) steps the last window of 2 as the uninterrupted run did."""
    import shutil
    flags = ("--gradient-accumulation-steps", "4", "--quick_break", "10", "--epochs", "2",
             "--save_every_steps", "2", "--keep_last", "9")
    whole = run_trainer(demo_root, tmp_path / "whole", *flags, weights="checkpoint_1.pth")
    states = tmp_path / "whole" / "training_state"
    assert sorted(tag.name for tag in states.iterdir() if tag.name.startswith("epoch1-")) == [
        "epoch1-step4", "epoch1-step8"]  # not after batches 2, 6 and 10: inside a window
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole", resumed_dir)
    for name in ("epoch1", "latest"):
        target = resumed_dir / "training_state" / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    (resumed_dir / "training_state" / "latest").write_text("epoch1-step8")
    os.remove(resumed_dir / "checkpoint_1.pth")
    capsys.readouterr()
    resumed = run_trainer(demo_root, resumed_dir, *flags, weights="checkpoint_1.pth")
    assert f"resumed from {resumed_dir}/training_state/epoch1-step8" in capsys.readouterr().out
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=1e-5, atol=1e-6)


def test_no_state_is_saved_while_gradients_wait_for_a_step(demo_root, tmp_path, monkeypatch,
                                                           in_process_trainer):
    """Accumulation 2, a state every 2 batches: a NaN loss on batch 3 (the end of the window
    2-3) leaves batch 2's gradients to the next window's step, so no state is saved after
    batch 4; the states after batches 2 and 6 are."""
    import models
    original, calls = models.Uni_Sign.forward, []

    def forward(self, src_input, tgt_input):
        out = original(self, src_input, tgt_input)
        if self.training:
            calls.append(len(calls))
            if calls[-1] == 3:
                out["loss"] = out["loss"] * float("nan")
        return out
    monkeypatch.setattr(models.Uni_Sign, "forward", forward)
    run_trainer(demo_root, tmp_path / "run", "--gradient-accumulation-steps", "2",
                "--save_every_steps", "2", "--keep_last", "9")
    states = sorted(tag.name for tag in (tmp_path / "run" / "training_state").iterdir()
                    if tag.name.startswith("epoch0-"))
    assert states == ["epoch0-step2", "epoch0-step6"]
    with open(os.path.join(tmp_path / "run", "log.txt")) as f:
        record = json.loads(f.readline())
    assert record["train_optimizer_steps"] == 2 and record["train_nonfinite_steps"] == 1


@pytest.mark.parametrize("zero_stage", ["2", "3"])  # stages 0 and 1 pass too: slow, left out
def test_two_ranks_step_an_epoch_shorter_than_one_window(demo_root, tmp_path, zero_stage):
    """2 ranks, 6 micro-batches each with accumulation 8: ZeRO reduces and steps the short
    window (the boundary is set before its last backward) as a run accumulating exactly 6."""
    weights = {}
    for name, accumulation in (("short", "8"), ("exact", "6")):
        out = tmp_path / name
        cmd = [*DEEPSPEED, "--num_gpus", "2", "--master_port", free_port(), "fine_tuning.py",
               *trainer_argv(demo_root, out, "--gradient-accumulation-steps", accumulation,
                             "--zero_stage", zero_stage)]
        proc = run_command(cmd, tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        weights[name] = torch.load(out / "checkpoint_0.pth", weights_only=True)["model"]
        steps = "1 (6 micro-batches, accumulation " + accumulation + ")"
        assert "optimizer steps per epoch: " + steps in proc.stdout
    for key in weights["short"]:
        torch.testing.assert_close(weights["short"][key], weights["exact"][key], rtol=1e-4,
                                   atol=1e-5)


def test_the_schedule_counts_the_short_windows(demo_root, tmp_path, in_process_trainer):
    """Cosine from 1e-2 to 1e-3 over 2 epochs of 10 micro-batches at accumulation 4: 3 steps
    an epoch, so the first epoch ends half way down and the second at the floor."""
    run_trainer(demo_root, tmp_path / "run", "--gradient-accumulation-steps", "4",
                "--quick_break", "10", "--epochs", "2", "--sched", "cosine", "--warmup-epochs",
                "0", "--min-lr", "1e-3", weights="checkpoint_1.pth")
    with open(os.path.join(tmp_path / "run", "log.txt")) as f:
        rates = [json.loads(line)["train_lr"] for line in f]
    assert rates == pytest.approx([5.5e-3, 1e-3], rel=1e-6)
