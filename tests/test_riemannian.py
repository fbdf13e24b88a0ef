"""Tests for riemannian: RiemannianAdam beside DeepSpeed (boundaries, ranks, loss scale, state)."""
import io
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from deepspeed.runtime.base_optimizer import ZeROOptimizer

import riemannian
from hyperbolic import HyperbolicAlignment


class ScaledZeroOptimizer(ZeROOptimizer):
    """Stands for a ZeRO optimizer under fp16 with a given loss scale."""

    def __init__(self, loss_scale):
        self.loss_scale = loss_scale


class FakeEngine:
    """The DeepSpeed engine calls optimizer_step makes, with fp16 loss scaling and accumulation."""

    def __init__(self, accumulation=1, scale=1.0, applied=True):
        self.accumulation, self.scale, self.applied = accumulation, scale, applied
        self.micro_steps = 0
        self.boundary = None  # set_gradient_accumulation_boundary's override
        self.calls = []
        self.optimizer = ScaledZeroOptimizer(scale)

    def is_gradient_accumulation_boundary(self):
        if self.boundary is not None:
            return self.boundary
        return (self.micro_steps + 1) % self.accumulation == 0

    def fp16_enabled(self):
        return self.scale != 1.0

    def backward(self, loss, scale_wrt_gas=True):
        self.calls.append("backward")
        (loss * self.scale / (self.accumulation if scale_wrt_gas else 1)).backward()

    def step(self):
        self.calls.append("step")
        self.micro_steps += 1

    def was_step_applied(self):
        return self.applied


def one_parameter(max_grad_norm=0.0, lr=0.1):
    param = torch.nn.Parameter(torch.zeros(3))
    return param, riemannian.RiemannianOptimizer([param], lr, None, max_grad_norm)


def test_steps_only_at_accumulation_boundaries_with_unscaled_mean_gradients():
    param, optimizer = one_parameter()
    engine = FakeEngine(accumulation=2, scale=1024.0)
    assert riemannian.loss_scale(engine) == 1024.0
    riemannian.optimizer_step(engine, (param * torch.tensor([1.0, 2.0, 3.0])).sum(), optimizer)
    assert torch.count_nonzero(param) == 0 and param.grad is not None  # accumulating
    riemannian.optimizer_step(engine, (param * torch.tensor([3.0, 2.0, 1.0])).sum(), optimizer)
    assert engine.calls == ["backward", "step", "backward", "step"]
    assert optimizer.grad_norm.item() == pytest.approx(2.0 * 3 ** 0.5)  # mean gradient (2, 2, 2)
    assert param.grad is None and torch.allclose(param.detach(), torch.full((3,), -0.1))


def test_a_short_window_steps_on_its_own_mean_gradient():
    """An epoch's last window of 2 micro-batches under accumulation 4 (engine.py sets the
    boundary): the step follows the mean of the 2 gradients, unscaled."""
    param, optimizer = one_parameter()
    engine = FakeEngine(accumulation=4, scale=1024.0)
    for boundary, weights in ((False, [1.0, 2.0, 3.0]), (True, [3.0, 2.0, 1.0])):
        engine.boundary = boundary
        riemannian.optimizer_step(engine, (param * torch.tensor(weights)).sum(), optimizer,
                                  window=2)
    assert optimizer.grad_norm.item() == pytest.approx(2.0 * 3 ** 0.5)  # mean gradient (2, 2, 2)
    assert param.grad is None and torch.allclose(param.detach(), torch.full((3,), -0.1))


def test_skipped_deepspeed_step_skips_the_riemannian_step():
    param, optimizer = one_parameter()
    riemannian.optimizer_step(FakeEngine(applied=False), param.sum(), optimizer)
    assert torch.count_nonzero(param) == 0 and param.grad is None


def test_clipping_and_loss_scale_of_other_precisions():
    param, optimizer = one_parameter(max_grad_norm=0.5)
    engine = FakeEngine()
    assert riemannian.loss_scale(engine) == 1.0
    riemannian.optimizer_step(engine, (param * 4.0).sum(), optimizer)
    assert optimizer.grad_norm.item() == pytest.approx(4.0 * 3 ** 0.5)  # before clipping
    engine.optimizer = torch.optim.SGD([param], lr=0.1)  # non-ZeRO: the loss is never scaled
    engine.scale = 8.0
    assert riemannian.loss_scale(engine) == 1.0


def test_state_round_trip_gives_identical_steps():
    param, optimizer = one_parameter()
    for _ in range(2):
        riemannian.optimizer_step(FakeEngine(), (param * torch.tensor([1.0, -2.0, 0.5])).sum(), optimizer)
    copy, restored = one_parameter()
    with torch.no_grad():
        copy.copy_(param)
    saved = io.BytesIO()
    torch.save(optimizer.state_dict(), saved)
    saved.seek(0)
    restored.load_state_dict(torch.load(saved, weights_only=True))
    for p, o in ((param, optimizer), (copy, restored)):
        riemannian.optimizer_step(FakeEngine(), (p * torch.tensor([2.0, 1.0, -1.0])).sum(), o)
    assert torch.equal(param, copy)


def test_build_collects_the_geometry_of_the_hyperbolic_branch():
    from types import SimpleNamespace
    args = SimpleNamespace(device=torch.device("cpu"), hyp_lr=1e-3, hyp_stabilize=100,
                           manual_grad_clip=True, clip_grad_norm_hyp=0.1, gradient_clipping=1.0)
    assert riemannian.build(args, torch.nn.Linear(2, 2)) is None
    branch = HyperbolicAlignment(4, 4, hyp_dim=4, text_cmp="token")
    optimizer = riemannian.build(args, torch.nn.ModuleDict({"hyperbolic": branch}))
    assert {id(p) for p in optimizer.parameters} == {id(branch.key_bias), id(branch.manifold.isp_c)}
    assert optimizer.max_grad_norm == 0.1


def average_on_two_ranks(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    param, optimizer = one_parameter()
    param.grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1) * 4.0  # scaled by a loss scale of 4
    optimizer.prepare(scale=4.0)
    results[rank] = param.grad.clone()
    optimizer.step()
    results[rank + 2] = param.detach().clone()
    dist.destroy_process_group()


def test_gradients_are_averaged_over_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(average_on_two_ranks, args=(port, results), nprocs=2, join=True)
    expected = torch.tensor([1.5, 3.0, 4.5])
    assert torch.equal(results[0], expected) and torch.equal(results[1], expected)
    assert torch.equal(results[2], results[3])
