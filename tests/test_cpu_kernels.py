"""The oneDNN vocabulary projection against nn.Linear, and where it steps aside."""
import pytest
import torch

import cpu_kernels

needs_onednn = pytest.mark.skipif(not cpu_kernels.onednn_available(),
                                  reason="this PyTorch has no oneDNN")


def layer_and_states(bias=False, dtype=torch.float32):
    torch.manual_seed(0)
    return (torch.nn.Linear(48, 1000, bias=bias).to(dtype),
            torch.randn(7, 48, dtype=dtype))


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_product_equals_the_layer_up_to_rounding(bias):
    layer, hidden = layer_and_states(bias)
    with torch.no_grad():
        assert cpu_kernels.uses_onednn(layer, hidden)
        fast = cpu_kernels.output_product(layer, hidden)
        expected = layer(hidden)
    assert fast.shape == expected.shape and fast.dtype == torch.float32
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_three_dimensional_states():
    layer, _ = layer_and_states()
    hidden = torch.randn(2, 5, 48)
    with torch.no_grad():
        torch.testing.assert_close(cpu_kernels.output_product(layer, hidden), layer(hidden),
                                   rtol=1e-5, atol=1e-5)


def test_the_layer_runs_where_onednn_does_not_apply():
    layer, hidden = layer_and_states()
    # a gradient is wanted: the layer's autograd path, bit for bit
    out = cpu_kernels.output_product(layer, hidden)
    assert out.requires_grad and torch.equal(out, layer(hidden))
    with torch.no_grad():
        assert not cpu_kernels.uses_onednn(layer, hidden, kernel='blas')
        assert torch.equal(cpu_kernels.output_product(layer, hidden, 'blas'), layer(hidden))
        layer64, hidden64 = layer_and_states(dtype=torch.float64)
        assert not cpu_kernels.uses_onednn(layer64, hidden64)
        wrapped = torch.nn.Sequential(layer)
        assert not cpu_kernels.uses_onednn(wrapped, hidden)
        assert torch.equal(cpu_kernels.output_product(wrapped, hidden), layer(hidden))


def test_unknown_kernel_is_refused():
    layer, hidden = layer_and_states()
    with pytest.raises(ValueError, match="unknown output-layer kernel 'mkl'"):
        cpu_kernels.output_product(layer, hidden, 'mkl')


@needs_onednn
def test_every_linear_in_the_block_goes_through_onednn():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 1000, bias=False))
    hidden = torch.randn(3, 5, 48)
    calls = []
    original = cpu_kernels.onednn_linear

    def counted(*args):
        calls.append(args[1].shape)
        return original(*args)
    cpu_kernels.onednn_linear = counted
    try:
        with torch.no_grad():
            expected = model(hidden)
            with cpu_kernels.onednn_linears(model):
                fast = model(hidden)
            after = model(hidden)
    finally:
        cpu_kernels.onednn_linear = original
    assert calls == [(64, 48), (1000, 64)]  # inside the block only
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, expected)
    assert all('forward' not in layer.__dict__ for layer in model)


def test_linears_wanting_gradients_or_off_the_cpu_are_left_alone():
    layer, hidden = layer_and_states(bias=True)
    with cpu_kernels.onednn_linears(layer):
        out = layer(hidden)  # autograd: MKL's product, bit for bit
    assert out.requires_grad and torch.equal(out, layer(hidden))
    on_meta = torch.nn.Linear(4, 4, device='meta')
    with cpu_kernels.onednn_linears(on_meta):
        assert 'forward' not in on_meta.__dict__


def test_a_forward_set_on_the_layer_before_is_restored():
    layer, hidden = layer_and_states()
    own = layer.forward = lambda x: x + 1  # e.g. a wrapper another tool installed
    with torch.no_grad(), cpu_kernels.onednn_linears(layer):
        assert layer.forward is not own
    assert layer.forward is own
