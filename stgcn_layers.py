"""Skeleton graphs and spatial-temporal graph convolution (ST-GCN) chains for the pose encoder.

Parameter and buffer names follow Uni-Sign's pose branch, so its checkpoints load unchanged:
a chain is an `nn.Sequential` of blocks `layer{i}_{j}`, each with `gcn.{conv,A,bn}`,
`tcn.{0,1}` (temporal conv + BN, absent when the temporal kernel is 1) and `residual.{0,1}`
(1x1 conv + BN, only when the width changes).

Activations are (N, C, T, V). The convolutions already run near peak in this contiguous
layout (channels-last storage measured slower on CPU, bench/train_step.py --layers). The graph
product has two equivalent forms: 'einsum', Uni-Sign's, which copies the conv output into a
partition-inner layout first, and 'matmul' (default), which multiplies each partition's slice
by its adjacency without that copy, or applies the graphs before the conv when the block widens
(fewer channels to multiply). Both give the same outputs and gradients up to float rounding.

The temporal convolution (kernel k x 1 along T) dominates the FLOPs. `TemporalConv2d` keeps
nn.Conv2d's parameters and can compute it with Winograd's minimal filtering F(4, k) (Lavin and
Gray, 2016): each tile of 4 output frames costs 4 + k - 1 channel-mixing matrix products
instead of 4k, 2.5x fewer for k = 5. It is the same linear map, with a float32 rounding error
of a few 1e-7 relative (tests/test_stgcn_layers.py). It is off by default: the transforms are
memory-bound and the products run through the BLAS, which on the development CPU is slower than
oneDNN's direct convolution, so the saving shows only at 256 channels and one thread
(bench/train_step.py --layers).

`PartBatchNorm2d` can normalise equal slices of a batch with separate statistics (see
`batch_groups`), so the two hands run through their shared encoder as one batch while every
statistic, running buffer and gradient stays what two separate passes give.
"""
import contextlib
import functools
from fractions import Fraction

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

GRAPH_PRODUCTS = ('matmul', 'einsum')
TEMPORAL_CONVS = ('direct', 'winograd')
WINOGRAD_TILE = 4  # output frames per tile
# interpolation points of the Winograd transforms (infinity is added), small to keep rounding low
WINOGRAD_POINTS = tuple(Fraction(p) for p in (0, 1, -1, 2, -2, 0.5, -0.5, 3, -3, Fraction(1, 3)))
MAX_WINOGRAD_KERNEL = len(WINOGRAD_POINTS) + 2 - WINOGRAD_TILE  # longer kernels run direct

HAND_EDGES = [(0, 1 + 4 * finger) for finger in range(5)] + [
    (4 * finger + i, 4 * finger + i + 1) for finger in range(5) for i in range(1, 4)]
BODY_EDGES = [(0, 1), (0, 2), (0, 3), (0, 4), (3, 5), (5, 7), (4, 6), (6, 8)]
# face_all: 9 contour points in a chain, 8 mouth points in a closed loop, one centre node (17)
FACE_EDGES = ([(i, i + 1) for i in range(8)] + [(i, i + 1) for i in range(9, 16)] + [(16, 9)]
              + [(17, i) for i in range(17)])

LAYOUTS = {  # name: (number of joints, edges, centre joint)
    'body': (9, BODY_EDGES, 0),
    'left': (21, HAND_EDGES, 0),
    'right': (21, HAND_EDGES, 0),
    'face_all': (18, FACE_EDGES, 17),
}


def hop_distance(num_node, edges, max_hop=1):
    """(V, V) matrix of shortest path lengths up to `max_hop`, inf beyond."""
    link = np.eye(num_node)
    for i, j in edges:
        link[i, j] = link[j, i] = 1
    dist = np.full((num_node, num_node), np.inf)
    reach = np.eye(num_node)
    dist[reach > 0] = 0
    for hop in range(1, max_hop + 1):
        reach = reach @ link
        dist[(reach > 0) & np.isinf(dist)] = hop
    return dist


def normalize_columns(adjacency):
    """Divides every column by its sum (columns with sum 0 stay 0)."""
    degree = adjacency.sum(0)
    scale = np.where(degree > 0, 1.0 / np.where(degree > 0, degree, 1), 0.0)
    return adjacency * scale[None, :]


class Graph:
    """Adjacency partitions `A` (K, V, V) of one skeleton layout.

    strategy 'uniform' gives one normalised neighbourhood matrix; 'distance' splits it into one
    matrix per hop distance 0..max_hop (so K = max_hop + 1).
    """

    def __init__(self, layout, strategy='distance', max_hop=1, dilation=1):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown skeleton layout {layout!r}; expected one of {list(LAYOUTS)}")
        self.num_node, neighbour_edges, self.center = LAYOUTS[layout]
        self.edge = [(i, i) for i in range(self.num_node)] + list(neighbour_edges)
        self.max_hop, self.dilation = max_hop, dilation
        self.hop_dis = hop_distance(self.num_node, self.edge, max_hop)
        self.A = self.partition(strategy)

    def partition(self, strategy):
        hops = range(0, self.max_hop + 1, self.dilation)
        reachable = np.isin(self.hop_dis, list(hops)).astype(np.float64)
        normalized = normalize_columns(reachable)
        if strategy == 'uniform':
            return normalized[None]
        if strategy == 'distance':
            return np.stack([np.where(self.hop_dis == hop, normalized, 0.0) for hop in hops])
        raise ValueError(f"unsupported graph partition strategy {strategy!r}")


class PartBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training with `groups` > 1, normalises each of `groups` equal slices
    of the batch with its own statistics and updates the running buffers once per slice, in
    order: the same outputs and buffers as running the slices one after another."""

    groups = 1

    def forward(self, x):
        if self.groups == 1 or not self.training:
            return super().forward(x)
        return torch.cat([super(PartBatchNorm2d, self).forward(part)
                          for part in x.chunk(self.groups)])


@contextlib.contextmanager
def batch_groups(module, groups):
    """Within the block, the PartBatchNorm2d layers of `module` treat a batch as `groups` slices."""
    norms = [m for m in module.modules() if isinstance(m, PartBatchNorm2d)]
    for norm in norms:
        norm.groups = groups
    try:
        yield
    finally:
        for norm in norms:
            norm.groups = 1


def _set_in_layers(module, layer_type, attribute, mode, choices, what):
    if mode not in choices:
        raise ValueError(f"unknown {what} {mode!r}; expected one of {choices}")
    for layer in module.modules():
        if isinstance(layer, layer_type):
            setattr(layer, attribute, mode)


def set_graph_product(module, mode):
    """Selects 'matmul' or 'einsum' in every GraphConv of `module`."""
    _set_in_layers(module, GraphConv, 'graph_product', mode, GRAPH_PRODUCTS, "graph product")


class GraphConv(nn.Module):
    """1x1 conv to K*C_out channels, sum over partitions k of X_k @ A_k, then BN and ReLU."""

    def __init__(self, in_channels, out_channels, A, adaptive=True, graph_product='matmul'):
        super().__init__()
        self.kernel_size = A.size(0)
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels * self.kernel_size, kernel_size=1)
        if adaptive:
            self.A = nn.Parameter(A.clone())
        else:
            self.register_buffer('A', A.clone())
        self.bn = PartBatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        set_graph_product(self, graph_product)

    def forward(self, x):
        # ZeRO-3 gathers a module's parameters only around its own forward: with partitioned
        # parameters (ds_id) the conv has to be called as a module.
        if self.graph_product == 'einsum' or hasattr(self.conv.weight, 'ds_id'):
            y = self.conv_then_einsum(x)
        elif x.shape[1] < self.out_channels:
            y = self.graph_then_conv(x)
        else:
            y = self.conv_then_graph(x)
        return self.relu(self.bn(y))

    def conv_then_einsum(self, x):
        h = self.conv(x)
        n, kc, t, v = h.shape
        h = h.view(n, self.kernel_size, kc // self.kernel_size, t, v)
        return torch.einsum('nkctv,kvw->nctw', h, self.A)

    def conv_then_graph(self, x):
        # Each partition's conv output is contiguous, so X_k @ A_k is one plain matrix product.
        c, weight, bias = self.out_channels, self.conv.weight, self.conv.bias
        y = None
        for k in range(self.kernel_size):
            h = F.conv2d(x, weight[k * c:(k + 1) * c], bias[k * c:(k + 1) * c])
            rows = h.reshape(-1, h.shape[-1])
            y = rows @ self.A[k] if y is None else torch.addmm(y, rows, self.A[k])
        return y.view(h.shape)

    def graph_then_conv(self, x):
        # sum_k W_k (X A_k) + b_k 1^T A_k: the graphs act on the narrower input, and the bias
        # term is the bias pushed through the graphs.
        n, cin, t, v = x.shape
        c, parts = self.out_channels, self.kernel_size
        z = torch.stack([x @ self.A[k] for k in range(parts)], dim=1).view(n, parts * cin, t, v)
        weight = self.conv.weight.view(parts, c, cin).transpose(0, 1).reshape(c, parts * cin, 1, 1)
        bias = self.conv.bias.view(parts, c).t() @ self.A.sum(1)
        return F.conv2d(z, weight) + bias[:, None, :]


def _exact_inverse(rows):
    """Inverse of a square matrix of Fractions (Gauss-Jordan, exact)."""
    size = len(rows)
    aug = [list(row) + [Fraction(int(i == j)) for j in range(size)] for i, row in enumerate(rows)]
    for col in range(size):
        pivot = next(i for i in range(col, size) if aug[i][col] != 0)
        aug[col], aug[pivot] = aug[pivot], aug[col]
        aug[col] = [value / aug[col][col] for value in aug[col]]
        for i in range(size):
            if i != col and aug[i][col] != 0:
                factor = aug[i][col]
                aug[i] = [a - factor * b for a, b in zip(aug[i], aug[col])]
    return [row[size:] for row in aug]


def _vandermonde(points, columns):
    """Rows (1, p, ..., p^(columns-1)) per point, then the row of the point at infinity."""
    return [[p ** c for c in range(columns)] for p in points] + [[0] * (columns - 1) + [1]]


@functools.lru_cache(maxsize=None)
def winograd_matrices(tile, kernel):
    """(AT, G, BT) float64 with y = AT ((G g) * (BT d)) the correlation y_j = sum_k g_k d_(j+k),
    j < tile, of a kernel g with tile + kernel - 1 inputs d (Toom-Cook, transposed)."""
    points = WINOGRAD_POINTS[:tile + kernel - 2]
    if len(points) < tile + kernel - 2:
        raise ValueError(f"no Winograd points for a tile of {tile} and a kernel of {kernel}")
    size = tile + kernel - 1
    BT = list(zip(*_exact_inverse(_vandermonde(points, size))))
    G = _vandermonde(points, kernel)
    AT = list(zip(*_vandermonde(points, tile)))
    return tuple(torch.tensor([[float(v) for v in row] for row in matrix], dtype=torch.float64)
                 for matrix in (AT, G, BT))


def winograd_tiles(x, BT, tile, tiles):
    """Input transform: (N, C, T, V) -> (N, tile + k - 1, C, tiles * V), zero-padded in T."""
    n, size = x.shape[0], BT.shape[0]
    pad = (size - tile) // 2
    padded = F.pad(x, (0, 0, pad, size - tile - pad + tiles * tile - x.shape[2]))
    stacked = torch.stack([padded[:, :, i:i + tiles * tile:tile] for i in range(size)], 1)
    return torch.matmul(BT, stacked.view(n, size, -1)).view(n, size, x.shape[1], -1)


class WinogradTemporalConv(torch.autograd.Function):
    """conv2d(x, weight, bias, padding=(k // 2, 0)) for a (k, 1) kernel by Winograd F(tile, k).
    Saves only x and the transformed kernel; backward recomputes the input transform."""

    @staticmethod
    def forward(ctx, x, weight, bias, tile):
        n, _, frames, joints = x.shape
        AT, G, BT = (m.to(x.device, x.dtype) for m in winograd_matrices(tile, weight.shape[2]))
        tiles = -(-frames // tile)
        kernel = torch.einsum('ak,ock->aoc', G, weight[..., 0])  # (tile + k - 1, C_out, C_in)
        products = torch.matmul(kernel, winograd_tiles(x, BT, tile, tiles))
        out = torch.matmul(AT, products.view(n, AT.shape[1], -1))
        out = out.view(n, tile, -1, tiles, joints).permute(0, 2, 3, 1, 4)
        out = out.reshape(n, -1, tiles * tile, joints)[:, :, :frames] + bias.view(1, -1, 1, 1)
        ctx.save_for_backward(x, kernel)
        ctx.tile = tile
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, kernel = ctx.saved_tensors
        tile, (n, channels, frames, joints) = ctx.tile, x.shape
        matrices = winograd_matrices(tile, kernel.shape[0] - tile + 1)
        AT, G, BT = (m.to(x.device, x.dtype) for m in matrices)
        tiles, size = -(-frames // tile), BT.shape[0]
        grad = F.pad(grad_out, (0, 0, 0, tiles * tile - frames))
        grad = grad.reshape(n, -1, tiles, tile, joints).permute(0, 3, 1, 2, 4).reshape(n, tile, -1)
        grad_products = torch.matmul(AT.t(), grad).view(n, size, -1, tiles * joints)
        grad_kernel = torch.matmul(grad_products,
                                   winograd_tiles(x, BT, tile, tiles).transpose(-1, -2)).sum(0)
        grad_weight = torch.einsum('ak,aoc->ock', G, grad_kernel)[..., None]
        grad_tiles = torch.matmul(kernel.transpose(-1, -2), grad_products)
        grad_tiles = torch.matmul(BT.t(), grad_tiles.view(n, size, -1))
        grad_tiles = grad_tiles.view(n, size, channels, tiles, joints)
        padded = x.new_zeros(n, channels, tiles * tile + size - tile, joints)
        for i in range(size):  # overlapping tiles: add each input position's share back
            padded[:, :, i:i + tiles * tile:tile] += grad_tiles[:, i]
        pad = (size - tile) // 2
        grad_x = padded[:, :, pad:pad + frames]
        return grad_x, grad_weight, grad_out.sum((0, 2, 3)), None


def set_temporal_conv(module, mode):
    """Selects 'direct' (nn.Conv2d's) or 'winograd' in every TemporalConv2d."""
    _set_in_layers(module, TemporalConv2d, 'algorithm', mode, TEMPORAL_CONVS, "temporal conv")


class TemporalConv2d(nn.Conv2d):
    """A (k, 1) convolution along T with 'same' padding; `algorithm` picks how it is computed."""

    algorithm = 'direct'

    def __init__(self, channels, kernel):
        super().__init__(channels, channels, (kernel, 1), padding=((kernel - 1) // 2, 0))

    def uses_winograd(self, x):
        """Winograd when chosen, for float32/64 outside autocast and kernels it has points for."""
        return (self.algorithm == 'winograd' and x.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled(x.device.type)
                and self.kernel_size[0] <= MAX_WINOGRAD_KERNEL)

    def forward(self, x):
        if self.uses_winograd(x):
            return WinogradTemporalConv.apply(x, self.weight, self.bias, WINOGRAD_TILE)
        return super().forward(x)


class STGCNBlock(nn.Module):
    """Graph conv, then temporal conv + BN along T, plus a residual path, then ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, A, adaptive=True, residual=True,
                 graph_product='matmul'):
        super().__init__()
        temporal_kernel, partitions = kernel_size
        if temporal_kernel % 2 != 1:
            raise ValueError(f"temporal kernel must be odd, got {temporal_kernel}")
        if partitions != A.size(0):
            raise ValueError(f"kernel_size asks for {partitions} partitions, A has {A.size(0)}")
        self.gcn = GraphConv(in_channels, out_channels, A, adaptive, graph_product)
        if temporal_kernel > 1:
            self.tcn = nn.Sequential(TemporalConv2d(out_channels, temporal_kernel),
                                     PartBatchNorm2d(out_channels))
        else:
            self.tcn = nn.Identity()
        self.use_residual = residual
        if residual and in_channels != out_channels:
            self.residual = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1),
                                          PartBatchNorm2d(out_channels))
        else:
            self.residual = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.tcn(self.gcn(x))
        if self.use_residual:
            y = y + self.residual(x)
        return self.relu(y)


class STGCNChain(nn.Sequential):
    """Blocks `layer{i}_{j}` for each (width, depth) pair of `block_args`; with `checkpointing`
    each block's activations are recomputed in the backward pass instead of kept."""

    checkpointing = False

    def __init__(self, in_dim, block_args, kernel_size, A, adaptive=True, graph_product='matmul'):
        super().__init__()
        last_dim = in_dim
        for i, (width, depth) in enumerate(block_args):
            for j in range(depth):
                self.add_module(f'layer{i}_{j}', STGCNBlock(
                    last_dim, width, kernel_size, A, adaptive, graph_product=graph_product))
                last_dim = width

    def forward(self, x):
        if not (self.checkpointing and self.training and torch.is_grad_enabled()):
            return super().forward(x)
        for block in self:
            recompute = functools.partial(recomputed_as_first_pass, block, part_groups(block))
            # Recomputed to the end, so every module hook (ZeRO-3's gather and release) completes.
            with set_checkpoint_early_stop(False):
                x = checkpoint(block, x, use_reentrant=False, context_fn=lambda again=recompute: (
                    contextlib.nullcontext(), again()))
        return x


def part_groups(module):
    return [norm.groups for norm in module.modules() if isinstance(norm, PartBatchNorm2d)]


@contextlib.contextmanager
def recomputed_as_first_pass(block, groups):
    """Around a checkpointed block's recomputation: its PartBatchNorm2d layers slice the batch
    as in the first pass (batch_groups has ended by then), and their running buffers stay as
    that pass left them, so the batch is not counted twice."""
    norms = [norm for norm in block.modules() if isinstance(norm, PartBatchNorm2d)]
    saved = [[buffer.clone() for buffer in norm.buffers()] for norm in norms]
    for norm, group in zip(norms, groups):
        norm.groups = group
    try:
        yield
    finally:
        for norm, buffers in zip(norms, saved):
            norm.groups = 1
            for buffer, value in zip(norm.buffers(), buffers):
                buffer.copy_(value)


def set_checkpointing(module, on):
    """Turns activation checkpointing of every STGCNChain in `module` on or off."""
    for chain in module.modules():
        if isinstance(chain, STGCNChain):
            chain.checkpointing = on


def get_stgcn_chain(in_dim, level, kernel_size, A, adaptive=True, channels=(64, 128, 256),
                    temporal_layers=3, graph_product='matmul'):
    """Builds a chain and returns (chain, output width).

    level 'spatial': one block per width in `channels`; level 'temporal': `temporal_layers`
    blocks of width channels[-1]. kernel_size is (temporal kernel, number of partitions);
    graph_product is 'matmul' or 'einsum' (same result, see the module docstring).
    """
    if level == 'spatial':
        block_args = [(width, 1) for width in channels]
    elif level == 'temporal':
        block_args = [(channels[-1], temporal_layers)]
    else:
        raise ValueError(f"unknown ST-GCN chain level {level!r}")
    chain = STGCNChain(in_dim, block_args, kernel_size, A, adaptive, graph_product)
    return chain, block_args[-1][0]
