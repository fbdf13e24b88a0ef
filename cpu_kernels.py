"""Linear layers of inference on CPU through oneDNN's matrix product instead of MKL's.

For the products of decoding PyTorch's CPU `nn.Linear` calls MKL, which on the development CPU
runs well below the core's peak: the (vocabulary x d_model) output layer, 250,112 x 768 for
mT5, times a few dozen decoder states, and the language model's layers for a few hundred
encoder positions or a few dozen beam rows. oneDNN's matrix product, which PyTorch ships for its
own CPU fusions, takes the weight as it is stored (no packed copy, no extra memory) and runs the
output layer 1.3-1.8x faster, the model's layers about 1.1x. It is the same product summed in
another order: results differ from MKL's by float32 rounding (a few 1e-7 relative).

It applies only in float32 on CPU, when no gradient is wanted, to ordinary tensors (not ZeRO-3
partitions, which only a module's own call gathers), in a PyTorch built with oneDNN; every other
call takes the default path, bit for bit.
- `output_product(layer, hidden)`: one nn.Linear;
- `onednn_linears()`: every `F.linear` (so every nn.Linear) called inside the block.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

KERNELS = ('onednn', 'blas')


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


class OneDNNLinears(TorchFunctionMode):
    """Sends `F.linear` calls that `inference_on_cpu` allows to oneDNN; all else runs as is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            hidden, weight, *rest = args
            bias = rest[0] if rest else kwargs.get('bias')
            if inference_on_cpu(hidden, weight, bias):
                return onednn_linear(hidden, weight, bias)
        return func(*args, **kwargs)


def onednn_linears(device):
    """A context in which every eligible F.linear runs through oneDNN (see OneDNNLinears); off
    the CPU, or without oneDNN, a context that changes nothing (and costs no dispatch)."""
    if torch.device(device).type != 'cpu' or not onednn_available():
        return contextlib.nullcontext()
    return OneDNNLinears()
