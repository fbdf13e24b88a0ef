"""Linear layers of inference on CPU through oneDNN's matrix product instead of MKL's.

For the products of decoding PyTorch's CPU `nn.Linear` calls MKL, which on the development CPU
runs well below the core's peak: the (vocabulary x d_model) output layer, 250,112 x 768 for
mT5, times a few dozen decoder states, and the language model's layers for a few hundred
encoder positions or a few dozen beam rows. oneDNN's matrix product, which PyTorch ships for its
own CPU fusions, takes the weight as it is stored (no packed copy, no extra memory) and runs the
output layer 1.3-1.5x faster, the model's layers 1.04-1.22x (bench/linear_kernels.py). It is
the same product summed in another order: results differ from MKL's by float32 rounding (a few
1e-7 relative).

It applies only in float32 on CPU, when no gradient is wanted, to ordinary tensors (not ZeRO-3
partitions, which only a module's own call gathers), in a PyTorch built with oneDNN; every other
call takes the default path, bit for bit.
- `output_product(layer, hidden)`: one nn.Linear;
- `onednn_linears(model)`: every nn.Linear of a model, inside the block.
"""
import contextlib
import functools

import torch
import torch.nn.functional as F

KERNELS = ('onednn', 'blas')


@functools.cache
def onednn_available():
    """Whether this PyTorch has oneDNN's linear operator (x86 and most ARM builds)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')


def inference_on_cpu(*tensors):
    """float32 CPU tensors, none wanting a gradient or partitioned by ZeRO-3, with oneDNN
    available and enabled."""
    tensors = [t for t in tensors if t is not None]
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return (not wants_grad and torch.backends.mkldnn.enabled
            and all(t.device.type == 'cpu' and t.dtype == torch.float32 for t in tensors)
            and not any(hasattr(t, 'ds_id') for t in tensors) and onednn_available())


def onednn_linear(hidden, weight, bias=None):
    return torch.ops.mkldnn._linear_pointwise(hidden, weight, bias, 'none', [], '')


def uses_onednn(layer, hidden, kernel='onednn'):
    """Whether `output_product(layer, hidden, kernel)` takes oneDNN's product (only an
    nn.Linear does; other output modules are called as they are)."""
    if not isinstance(layer, torch.nn.Linear):
        return False
    return kernel == 'onednn' and inference_on_cpu(hidden, layer.weight, layer.bias)


def output_product(layer, hidden, kernel='onednn'):
    """`layer(hidden)` for an nn.Linear, through oneDNN where `uses_onednn` says so."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown output-layer kernel {kernel!r}; expected one of {KERNELS}")
    if not uses_onednn(layer, hidden, kernel):
        return layer(hidden)
    return onednn_linear(hidden, layer.weight, layer.bias)


def onednn_forward(layer):
    """An nn.Linear forward that takes oneDNN's product where `inference_on_cpu` allows."""
    def forward(hidden):
        if inference_on_cpu(hidden, layer.weight, layer.bias):
            return onednn_linear(hidden, layer.weight, layer.bias)
        return torch.nn.Linear.forward(layer, hidden)
    return forward


@contextlib.contextmanager
def onednn_linears(model):
    """Inside the block every nn.Linear of `model` (weights on CPU, not ZeRO-3 partitions) runs
    through oneDNN wherever `inference_on_cpu` allows the call; after it, as before. The layers'
    own forward is swapped, so other operations pay no dispatch."""
    layers = []
    if onednn_available():
        layers = [m for m in model.modules() if type(m) is torch.nn.Linear
                  and m.weight.device.type == 'cpu' and not hasattr(m.weight, 'ds_id')]
    saved = [layer.__dict__.get('forward') for layer in layers]
    for layer in layers:
        layer.forward = onednn_forward(layer)
    try:
        yield
    finally:
        for layer, forward in zip(layers, saved):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
