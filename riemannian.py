"""RiemannianAdam for the hyperbolic branch's curvature and ball-valued parameters, beside DeepSpeed.

Those parameters are not registered in the module tree (hyperbolic.BallParameters), so DeepSpeed
never casts, partitions (every ZeRO stage, 3 included) or steps them: each rank holds the same
float32 copy. Gradients reach them through ordinary autograd and accumulate over the micro-batches
of an optimizer step (each loss is divided by the micro-batches of its accumulation window, an
epoch's last window possibly short: engine.accumulation_window). At the accumulation boundary only:

1. before engine.step(), `prepare`: the gradients are averaged over ranks (one all-reduce), divided
   by the factor engine.backward multiplied the loss by (the fp16 dynamic loss scale under ZeRO; 1
   for bf16 and fp32), and clipped to their own norm (utils.riemannian_clip_norm). This must
   precede engine.step(), which may change the loss scale.
2. after engine.step(), `step`: RiemannianAdam steps unless DeepSpeed skipped its own step (fp16
   overflow) or the gradients are not finite; then the gradients are cleared.

Its state travels with the DeepSpeed training state (client_state 'riemannian'); the parameter
values travel with the module's state dict.
"""
import torch
import torch.distributed as dist
from geoopt.optim import RiemannianAdam

import hyperbolic
import utils


def loss_scale(engine):
    """The factor engine.backward multiplied the loss by: the fp16 loss scale of a ZeRO optimizer
    (DeepSpeed scales the loss itself only for those), else 1."""
    from deepspeed.runtime.base_optimizer import ZeROOptimizer
    if engine.fp16_enabled() and isinstance(engine.optimizer, ZeROOptimizer):
        return float(engine.optimizer.loss_scale)
    return 1.0


class RiemannianOptimizer:
    """geoopt's RiemannianAdam over replicated parameters, stepped at accumulation boundaries."""

    def __init__(self, parameters, lr, stabilize, max_grad_norm):
        self.parameters = list(parameters)
        self.optimizer = RiemannianAdam(self.parameters, lr=lr, stabilize=stabilize)
        self.max_grad_norm = max_grad_norm
        self.grad_norm = None

    def prepare(self, scale=1.0):
        """Averages the accumulated gradients over ranks, unscales and clips them."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        world = utils.get_world_size()
        if world > 1:
            dist.all_reduce(flat)
        flat /= world * scale
        for param, chunk in zip(self.parameters, flat.split([p.numel() for p in self.parameters])):
            param.grad = chunk.view_as(param).to(param.dtype)
        if self.max_grad_norm and self.max_grad_norm > 0:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        else:
            self.grad_norm = torch.linalg.vector_norm(flat)

    def step(self, applied=True):
        """Steps when the DeepSpeed step was applied and the gradients are finite; clears them."""
        if applied and bool(torch.isfinite(self.grad_norm)):
            with hyperbolic.eager_geometry():
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        # torch turns the step count into a float tensor on load; geoopt counts in python ints, and
        # bias corrections from a float32 count would make a resumed run drift from the original.
        for param_state in self.optimizer.state.values():
            if torch.is_tensor(param_state.get("step")):
                param_state["step"] = int(param_state["step"].item())


def build(args, model):
    """The RiemannianOptimizer of the model's hyperbolic branch (on args.device), or None."""
    branches = [m for m in model.modules() if isinstance(m, hyperbolic.HyperbolicAlignment)]
    for branch in branches:
        branch.geometry.to(args.device)
    parameters = hyperbolic.riemannian_parameters(model)
    if not parameters:
        return None
    return RiemannianOptimizer(parameters, args.hyp_lr, args.hyp_stabilize,
                               utils.riemannian_clip_norm(args))


def optimizer_step(engine, loss, hyp_optimizer=None, window=None):
    """engine.backward(loss) and engine.step(), with the Riemannian step at the same boundary.
    `window`: the micro-batches of this accumulation window, which the loss is divided by (an
    epoch's last window may be short: engine.py's accumulation_window); None: DeepSpeed's own
    division by --gradient-accumulation-steps."""
    at_boundary = engine.is_gradient_accumulation_boundary()
    if window is None:
        engine.backward(loss)
    else:
        engine.backward(loss / window, scale_wrt_gas=False)
    if hyp_optimizer is None or not at_boundary:
        engine.step()
        return
    hyp_optimizer.prepare(loss_scale(engine))
    engine.step()
    hyp_optimizer.step(applied=engine.was_step_applied())
