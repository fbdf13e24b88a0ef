"""Tests for stgcn_layers: skeleton graphs, ST-GCN blocks and chains (Uni-Sign layout)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stgcn_layers import (Graph, GraphConv, PartBatchNorm2d, STGCNBlock, TemporalConv2d,
                          batch_groups, get_stgcn_chain, hop_distance, set_checkpointing,
                          set_graph_product, set_temporal_conv, winograd_matrices)

JOINTS = {'body': 9, 'left': 21, 'right': 21, 'face_all': 18}
EDGE_COUNTS = {'body': 8, 'left': 20, 'right': 20, 'face_all': 8 + 7 + 1 + 17}


def adjacency(layout):
    return torch.tensor(Graph(layout).A, dtype=torch.float32)


@pytest.mark.parametrize('layout', list(JOINTS))
def test_distance_partitions_shape_and_normalisation(layout):
    A = Graph(layout, strategy='distance', max_hop=1).A
    V = JOINTS[layout]
    assert A.shape == (2, V, V)
    assert np.allclose(A[0], np.diag(np.diag(A[0])))  # hop 0: self links only
    assert np.count_nonzero(A[1]) == 2 * EDGE_COUNTS[layout]
    assert np.array_equal(A > 0, (A > 0).transpose(0, 2, 1))  # undirected skeleton
    assert np.allclose(A.sum(axis=(0, 1)), 1.0)  # each column averages its neighbourhood


def test_known_entries():
    body = Graph('body').A
    assert body[0, 0, 0] == pytest.approx(1 / 5)  # joint 0: itself + 4 neighbours
    assert body[1, 3, 0] == pytest.approx(1 / 5)
    assert body[1, 0, 3] == pytest.approx(1 / 3)  # joint 3: itself, 0 and 5
    assert body[1, 7, 5] == pytest.approx(1 / 3)
    hand = Graph('right').A
    assert hand[0, 0, 0] == pytest.approx(1 / 6)  # wrist: itself + 5 finger roots
    assert hand[1, 4, 3] == pytest.approx(1 / 3) and hand[1, 3, 4] == pytest.approx(1 / 2)
    face = Graph('face_all').A
    assert face[0, 17, 17] == pytest.approx(1 / 18)  # centre links to all 17 others
    assert face[1, 16, 9] == pytest.approx(1 / 4)  # mouth loop is closed (16-9), plus centre
    assert face[1, 17, 0] == pytest.approx(1 / 3)


def test_uniform_is_sum_of_distance_partitions():
    for layout in JOINTS:
        uniform = Graph(layout, strategy='uniform').A
        assert uniform.shape == (1, JOINTS[layout], JOINTS[layout])
        assert np.allclose(uniform[0], Graph(layout).A.sum(0))


def test_hop_distance_on_a_chain():
    dist = hop_distance(4, [(0, 1), (1, 2), (2, 3)], max_hop=2)
    assert dist[0, 0] == 0 and dist[0, 1] == 1 and dist[0, 2] == 2 and np.isinf(dist[0, 3])
    assert Graph('body', max_hop=2).A.shape == (3, 9, 9)


def test_bad_arguments():
    with pytest.raises(ValueError, match='layout'):
        Graph('feet')
    with pytest.raises(ValueError, match='strategy'):
        Graph('body', strategy='spatial-ish')
    with pytest.raises(ValueError, match='level'):
        get_stgcn_chain(8, 'global', (1, 2), adjacency('body'), True)
    with pytest.raises(ValueError, match='odd'):
        STGCNBlock(8, 8, (4, 2), adjacency('body'))


def chain_shapes(chain):
    return {k: tuple(v.shape) for k, v in chain.state_dict().items()}


def test_default_chains_match_unisign_parameter_layout():
    A = adjacency('right')
    spatial, width = get_stgcn_chain(64, 'spatial', (1, 2), A, True)
    temporal, out = get_stgcn_chain(width, 'temporal', (5, 2), A, True)
    assert (width, out) == (256, 256)
    s, t = chain_shapes(spatial), chain_shapes(temporal)
    assert len(s) == 8 + 15 + 15 and len(t) == 3 * 15
    assert s['layer0_0.gcn.conv.weight'] == (128, 64, 1, 1)
    assert s['layer0_0.gcn.A'] == (2, 21, 21)
    assert s['layer1_0.gcn.conv.weight'] == (256, 64, 1, 1)
    assert s['layer1_0.residual.0.weight'] == (128, 64, 1, 1)
    assert s['layer2_0.residual.1.running_var'] == (256,)
    assert s['layer2_0.gcn.bn.num_batches_tracked'] == ()
    assert not any('tcn' in k for k in s) and not any('layer0_0.residual' in k for k in s)
    assert t['layer0_2.tcn.0.weight'] == (256, 256, 5, 1)
    assert t['layer0_1.tcn.1.running_mean'] == (256,)
    assert t['layer0_0.gcn.conv.weight'] == (512, 256, 1, 1)
    assert not any('residual' in k for k in t)


def test_configurable_widths():
    A = adjacency('body')
    spatial, width = get_stgcn_chain(8, 'spatial', (1, 2), A, True, channels=(8, 16, 24))
    temporal, out = get_stgcn_chain(width, 'temporal', (3, 2), A, True, channels=(8, 16, 24),
                                    temporal_layers=2)
    assert (width, out) == (24, 24)
    assert [name for name, _ in temporal.named_children()] == ['layer0_0', 'layer0_1']
    assert temporal.layer0_1.tcn[0].weight.shape == (24, 24, 3, 1)
    y = temporal(spatial(torch.randn(2, 8, 7, 9)))
    assert y.shape == (2, 24, 7, 9)


def test_adjacency_is_parameter_or_buffer():
    A = adjacency('body')
    learnable, _ = get_stgcn_chain(8, 'spatial', (1, 2), A, True, channels=(8,))
    fixed, _ = get_stgcn_chain(8, 'spatial', (1, 2), A, False, channels=(8,))
    assert 'layer0_0.gcn.A' in dict(learnable.named_parameters())
    assert 'layer0_0.gcn.A' in dict(fixed.named_buffers())
    learnable.layer0_0.gcn.A.data.add_(1.0)
    assert torch.equal(A, adjacency('body'))  # the graph given in is never modified


def reference_block(block, x):
    """Uni-Sign's block written out directly in (N, C, T, V) with functional ops."""
    gcn = block.gcn
    h = F.conv2d(x, gcn.conv.weight, gcn.conv.bias)
    n, kc, t, v = h.shape
    k = gcn.A.shape[0]
    h = h.view(n, k, kc // k, t, v)
    y = (h.unsqueeze(-1) * gcn.A.view(1, k, 1, 1, v, v)).sum(dim=(1, 4))
    y = F.relu(F.batch_norm(y, None, None, gcn.bn.weight, gcn.bn.bias, training=True))
    if isinstance(block.tcn, torch.nn.Sequential):
        conv, bn = block.tcn[0], block.tcn[1]
        y = F.conv2d(y, conv.weight, conv.bias, padding=conv.padding)
        y = F.batch_norm(y, None, None, bn.weight, bn.bias, training=True)
    if isinstance(block.residual, torch.nn.Sequential):
        conv, bn = block.residual[0], block.residual[1]
        res = F.batch_norm(F.conv2d(x, conv.weight, conv.bias), None, None, bn.weight, bn.bias,
                           training=True)
    else:
        res = x
    return F.relu(y + res)


@pytest.mark.parametrize('graph_product', ['matmul', 'einsum'])
@pytest.mark.parametrize('cin,cout,kernel', [(6, 6, 1), (6, 10, 1), (10, 10, 5), (6, 10, 3)])
def test_block_matches_reference(cin, cout, kernel, graph_product):
    torch.manual_seed(0)
    block = STGCNBlock(cin, cout, (kernel, 2), adjacency('face_all'), graph_product=graph_product)
    with torch.no_grad():
        block.gcn.A.add_(0.05 * torch.randn_like(block.gcn.A))  # learnt graphs are dense
    x = torch.randn(3, cin, 11, 18)
    expected = reference_block(block, x)
    got = block(x)
    assert got.shape == (3, cout, 11, 18)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_adjacency_and_input():
    block = STGCNBlock(4, 8, (3, 2), adjacency('body'))
    x = torch.randn(2, 4, 6, 9, requires_grad=True)
    block(x).square().mean().backward()
    assert block.gcn.A.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0
    assert block.tcn[0].weight.grad.abs().sum() > 0


def graph_conv_pass(layer, x, grad):
    x = x.clone().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    y.backward(grad)
    return [y, x.grad] + [p.grad.clone() for p in layer.parameters()]


@pytest.mark.parametrize('cin,cout', [(6, 6), (6, 10), (10, 6)])
def test_graph_products_agree_in_outputs_and_gradients(cin, cout):
    """'matmul' (per-partition products, or graphs first when the layer widens) is the same
    function as Uni-Sign's einsum: checked in float64, values and every gradient."""
    torch.manual_seed(0)
    A = adjacency('right').double() + 0.05 * torch.randn(2, 21, 21, dtype=torch.float64)
    layer = GraphConv(cin, cout, A, graph_product='einsum').double()
    with torch.no_grad():
        layer.conv.bias.normal_()  # a non-zero bias exercises the bias pushed through the graphs
    x, grad = torch.randn(3, cin, 7, 21, dtype=torch.float64), torch.randn(3, cout, 7, 21,
                                                                          dtype=torch.float64)
    expected = graph_conv_pass(layer, x, grad)
    set_graph_product(layer, 'matmul')
    for got, want in zip(graph_conv_pass(layer, x, grad), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match='graph product'):
        set_graph_product(layer, 'sparse')


def test_part_batchnorm_groups_equal_separate_passes():
    torch.manual_seed(0)
    grouped, separate = PartBatchNorm2d(5), PartBatchNorm2d(5)
    left, right = torch.randn(2, 5, 4, 3) * 2 + 1, torch.randn(2, 5, 4, 3)
    both = torch.cat([left, right]).requires_grad_()
    with batch_groups(grouped, 2):
        y = grouped(both)
    assert grouped.groups == 1  # restored on exit
    parts = [p.clone().requires_grad_() for p in (left, right)]
    expected = torch.cat([separate(p) for p in parts])
    torch.testing.assert_close(y, expected)
    grad = torch.randn_like(y)
    y.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(both.grad, torch.cat([p.grad for p in parts]))
    torch.testing.assert_close(grouped.weight.grad, separate.weight.grad)
    for name in ('running_mean', 'running_var', 'num_batches_tracked'):
        torch.testing.assert_close(getattr(grouped, name), getattr(separate, name))
    assert grouped.num_batches_tracked.item() == 2
    grouped.eval()
    with batch_groups(grouped, 2):  # evaluation uses the running statistics: groups change nothing
        torch.testing.assert_close(grouped(both), separate.eval()(torch.cat([left, right])))


def test_chain_blocks_use_part_batchnorm():
    chain, _ = get_stgcn_chain(4, 'temporal', (3, 2), adjacency('body'), True, channels=(4, 8))
    norms = [m for m in chain.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(isinstance(m, PartBatchNorm2d) for m in norms)
    assert 'layer0_0.tcn.1.running_var' in chain.state_dict()


@pytest.mark.parametrize('tile,kernel', [(4, 5), (4, 3), (2, 5), (4, 7)])
def test_winograd_matrices_compute_the_correlation(tile, kernel):
    AT, G, BT = winograd_matrices(tile, kernel)
    d = torch.randn(tile + kernel - 1, dtype=torch.float64)
    g = torch.randn(kernel, dtype=torch.float64)
    expected = torch.stack([(g * d[j:j + kernel]).sum() for j in range(tile)])
    torch.testing.assert_close(AT @ ((G @ g) * (BT @ d)), expected, rtol=1e-12, atol=1e-12)


def temporal_pass(conv, x, grad):
    x = x.clone().requires_grad_()
    conv.zero_grad()
    y = conv(x)
    y.backward(grad)
    return [y, x.grad, conv.weight.grad.clone(), conv.bias.grad.clone()]


@pytest.mark.parametrize('kernel,frames', [(5, 13), (5, 4), (3, 9), (5, 1)])
def test_winograd_temporal_conv_equals_the_direct_conv(kernel, frames):
    """Same values and gradients as nn.Conv2d in float64 (the math), close in float32."""
    torch.manual_seed(0)
    conv = TemporalConv2d(6, kernel).double()
    x = torch.randn(2, 6, frames, 5, dtype=torch.float64)
    grad = torch.randn(2, 6, frames, 5, dtype=torch.float64)
    set_temporal_conv(conv, 'direct')
    expected = temporal_pass(conv, x, grad)
    set_temporal_conv(conv, 'winograd')
    for got, want in zip(temporal_pass(conv, x, grad), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)
    conv.float()
    got = temporal_pass(conv, x.float(), grad.float())
    # float32 rounding: the weight gradient sums about a hundred products (up to ~1.4e-5 off,
    # depending on the CPU's kernels); the float64 check above is the exact one
    for got, want in zip(got, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=5e-5)


def test_temporal_conv_choice():
    conv = TemporalConv2d(4, 5)
    x = torch.randn(1, 4, 6, 3)
    assert conv.algorithm == 'direct' and not conv.uses_winograd(x)
    set_temporal_conv(conv, 'winograd')
    assert conv.uses_winograd(x)
    assert not conv.uses_winograd(x.to(torch.bfloat16))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not conv.uses_winograd(x)
    set_temporal_conv(conv, 'direct')
    assert not conv.uses_winograd(x)
    long_kernel = TemporalConv2d(4, 11)
    set_temporal_conv(long_kernel, 'winograd')
    assert not long_kernel.uses_winograd(x)  # no transform that long: direct
    with pytest.raises(ValueError, match='temporal conv'):
        set_temporal_conv(conv, 'fft')
    block = STGCNBlock(4, 4, (5, 2), adjacency('body'))
    assert isinstance(block.tcn[0], TemporalConv2d) and 'tcn.0.weight' in block.state_dict()


@pytest.mark.parametrize('groups', [1, 2])
def test_checkpointed_chain_keeps_outputs_gradients_and_statistics(groups):
    import copy
    torch.manual_seed(0)
    plain, _ = get_stgcn_chain(4, 'temporal', (3, 2), adjacency('body'), True, channels=(4, 8),
                               temporal_layers=2)
    checkpointed = copy.deepcopy(plain)
    set_checkpointing(checkpointed, True)
    calls = []
    checkpointed.layer0_0.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(4, 4, 7, 9) * 2 + 1
    results = []
    for chain in (plain, checkpointed):
        leaf = x.clone().requires_grad_()
        with batch_groups(chain, groups):
            y = chain(leaf)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        results.append((y.detach(), leaf.grad))
    assert len(calls) == 2  # the block ran again in the backward pass, outside batch_groups
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-7, msg=name)
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), name  # running statistics counted once
    checkpointed.eval()
    with torch.no_grad():
        checkpointed(x)
    assert len(calls) == 3  # evaluation runs each block once
