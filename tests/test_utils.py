import os
import subprocess
import sys

import pytest
import torch

import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_both_spellings_of_uni_sign_flags():
    dashed = utils.parse_args("t", ["--batch-size", "3", "--gradient-accumulation-steps", "2",
                                    "--warmup-epochs", "0.5", "--min-lr", "1e-6"])
    underscored = utils.parse_args("t", ["--batch_size", "3", "--gradient_accumulation_steps", "2",
                                         "--warmup_epochs", "0.5", "--min_lr", "1e-6"])
    assert vars(dashed) == vars(underscored)
    assert dashed.batch_size == 3 and dashed.gradient_accumulation_steps == 2


def test_uni_sign_defaults():
    args = utils.parse_args("t", [])
    assert (args.batch_size, args.gradient_accumulation_steps, args.epochs) == (16, 8, 20)
    assert (args.lr, args.opt, args.label_smoothing, args.max_length) == (1e-3, "adamw", 0.2, 256)
    assert args.stgcn_channels == [64, 128, 256] and args.hidden_dim == 256
    assert (args.zero_stage, args.task, args.dataset) == (2, "SLT", "CSL_Daily")


def test_inconsistent_widths_are_refused(capsys):
    import pytest
    with pytest.raises(SystemExit):
        utils.parse_args("t", ["--stgcn_channels", "32,64", "--hidden_dim", "256"])
    assert "hidden_dim" in capsys.readouterr().err


def test_rgb_support_is_refused_with_a_reason(capsys):
    import pytest
    with pytest.raises(SystemExit):
        utils.parse_args("t", ["--rgb_support"])
    assert "RGB" in capsys.readouterr().err


def test_deepspeed_config_follows_flags():
    args = utils.parse_args("t", ["--zero_stage", "3", "--dtype", "bf16", "--batch-size", "4",
                                  "--gradient-accumulation-steps", "2", "--offload"])
    cfg = utils.deepspeed_config(args)
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["bf16"]["enabled"]
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    fp32 = utils.deepspeed_config(utils.parse_args("t", ["--dtype", "fp32"]))
    assert "bf16" not in fp32 and "fp16" not in fp32


def test_weight_decay_skips_biases_and_vectors():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = utils.param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_cosine_schedule_warms_up_then_decays():
    args = utils.parse_args("t", ["--epochs", "2", "--warmup-epochs", "1",
                                  "--gradient-accumulation-steps", "1"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = utils.create_scheduler(args, opt, steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and abs(lrs[10] - 1.0) < 1e-9 and lrs[19] < 0.05


FREE_AND_MEASURE = """
import sys, numpy as np, utils
applied = utils.keep_freed_memory(sys.argv[1])
def resident_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20
block = np.ones(64 * 2 ** 20, dtype=np.uint8)
before = resident_mb()
del block
print(applied, before - resident_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_keeps_large_blocks_resident():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", FREE_AND_MEASURE, mode], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0] == "True", float(out[1])
    applied, released_mb = run("on")
    assert applied and released_mb < 8
    applied, released_mb = run("off")
    assert not applied and released_mb > 56
