"""The vocabulary projection of inference on CPU, through oneDNN's matrix product.

Decoding multiplies a few dozen decoder states by the (vocabulary x d_model) output layer at
every step: 250,112 x 768 for mT5. For such a wide, short product the BLAS that `nn.Linear`
calls on CPU (MKL) runs far below the core's peak, while oneDNN's matrix product, which PyTorch
ships for its own CPU fusions, runs about 1.3-1.8x faster with the weight as it is stored (no
packed copy, no extra memory; bench/eval_speed.py). It is the same product summed in another
order: the logits differ from MKL's by float32 rounding (a few 1e-7 relative).

`output_product` uses it where it applies: float32 on CPU, no gradient wanted, weights that are
ordinary tensors (not ZeRO-3 partitions, which only the module's own call gathers), and a PyTorch
built with oneDNN. Everything else, and every call with `kernel='blas'`, goes through the layer.
"""
import torch

KERNELS = ('onednn', 'blas')


def onednn_available():
    """Whether this PyTorch has oneDNN's linear operator (x86 and most ARM builds)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')


def uses_onednn(layer, hidden, kernel='onednn'):
    """Whether `output_product(layer, hidden, kernel)` takes oneDNN's product (only an
    nn.Linear does; other output modules are called as they are)."""
    if not isinstance(layer, torch.nn.Linear):
        return False
    weight, bias = layer.weight, layer.bias
    tensors = [hidden, weight] + ([bias] if bias is not None else [])
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return (kernel == 'onednn' and not wants_grad and torch.backends.mkldnn.enabled
            and all(t.device.type == 'cpu' and t.dtype == torch.float32 for t in tensors)
            and not any(hasattr(t, 'ds_id') for t in tensors) and onednn_available())


def output_product(layer, hidden, kernel='onednn'):
    """`layer(hidden)` for an nn.Linear, through oneDNN where `uses_onednn` says so."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown output-layer kernel {kernel!r}; expected one of {KERNELS}")
    if not uses_onednn(layer, hidden, kernel):
        return layer(hidden)
    return torch.ops.mkldnn._linear_pointwise(hidden, layer.weight, layer.bias, 'none', [], '')
