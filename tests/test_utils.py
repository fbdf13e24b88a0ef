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
    assert (args.zero_stage, args.task, args.dataset) == ("auto", "SLT", "CSL_Daily")


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


def test_offload_optimizer_is_cpu_adam_with_the_same_steps():
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5))
    twin = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5))
    twin.load_state_dict(model.state_dict())
    flags = ["--weight-decay", "0.1", "--opt-betas", "0.8", "0.95", "--opt-eps", "1e-6",
             "--lr", "0.01"]
    for opt in ("adamw", "adam"):
        plain = utils.create_optimizer(utils.parse_args("t", [*flags, "--opt", opt]), model)
        cpu = utils.create_optimizer(utils.parse_args("t", [*flags, "--opt", opt, "--offload"]),
                                     twin)
        assert isinstance(cpu, DeepSpeedCPUAdam) and not isinstance(plain, DeepSpeedCPUAdam)
        assert [g["weight_decay"] for g in cpu.param_groups] == [0.1, 0.0]
        for _ in range(3):
            for net, optimizer in ((model, plain), (twin, cpu)):
                optimizer.zero_grad()
                net(torch.linspace(-1, 1, 12).view(2, 6)).pow(2).sum().backward()
                optimizer.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


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


def test_adam_kernels_give_the_same_steps():
    """--adam_kernel fused (the default), foreach and loop: one update, float rounding aside;
    float64 too, where the tests compare the math."""
    assert utils.parse_args("t", []).adam_kernel == "fused"
    for dtype in (torch.float32, torch.float64):
        params = {}
        for kernel in ("loop", "foreach", "fused"):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5)).to(dtype)
            args = utils.parse_args("t", ["--adam_kernel", kernel, "--weight-decay", "0.1"])
            optimizer = utils.create_optimizer(args, model)
            assert optimizer.defaults["fused"] is (kernel == "fused" or None)
            for _ in range(3):
                optimizer.zero_grad()
                model(torch.linspace(-1, 1, 12, dtype=dtype).view(2, 6)).pow(2).sum().backward()
                optimizer.step()
            params[kernel] = [p.detach().clone() for p in model.parameters()]
        for kernel in ("foreach", "fused"):
            for a, b in zip(params["loop"], params[kernel]):
                assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), kernel
