"""Skeleton graphs and spatial-temporal graph convolution (ST-GCN) chains for the pose encoder.

Parameter and buffer names follow Uni-Sign's pose branch, so its checkpoints load unchanged:
a chain is an `nn.Sequential` of blocks `layer{i}_{j}`, each with `gcn.{conv,A,bn}`,
`tcn.{0,1}` (temporal conv + BN, absent when the temporal kernel is 1) and `residual.{0,1}`
(1x1 conv + BN, only when the width changes).

Activations are (N, C, T, V). On CPU the step is bound by the convolutions, which oneDNN
already runs near peak in this contiguous layout (channels-last storage, a graph-first
reordering and batched-matmul graph products all measured no faster), so the graph product
stays one einsum over the conv output.
"""
import numpy as np
import torch
import torch.nn as nn

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


class GraphConv(nn.Module):
    """1x1 conv to K*C_out channels, sum over partitions k of X_k @ A_k, then BN and ReLU."""

    def __init__(self, in_channels, out_channels, A, adaptive=True):
        super().__init__()
        self.kernel_size = A.size(0)
        self.conv = nn.Conv2d(in_channels, out_channels * self.kernel_size, kernel_size=1)
        if adaptive:
            self.A = nn.Parameter(A.clone())
        else:
            self.register_buffer('A', A.clone())
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.conv(x)
        n, kc, t, v = h.shape
        h = h.view(n, self.kernel_size, kc // self.kernel_size, t, v)
        y = torch.einsum('nkctv,kvw->nctw', h, self.A)
        return self.relu(self.bn(y))


class STGCNBlock(nn.Module):
    """Graph conv, then temporal conv + BN along T, plus a residual path, then ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, A, adaptive=True, residual=True):
        super().__init__()
        temporal_kernel, partitions = kernel_size
        if temporal_kernel % 2 != 1:
            raise ValueError(f"temporal kernel must be odd, got {temporal_kernel}")
        if partitions != A.size(0):
            raise ValueError(f"kernel_size asks for {partitions} partitions, A has {A.size(0)}")
        self.gcn = GraphConv(in_channels, out_channels, A, adaptive)
        if temporal_kernel > 1:
            self.tcn = nn.Sequential(
                nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1),
                          padding=((temporal_kernel - 1) // 2, 0)),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.tcn = nn.Identity()
        self.use_residual = residual
        if residual and in_channels != out_channels:
            self.residual = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1),
                                          nn.BatchNorm2d(out_channels))
        else:
            self.residual = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.tcn(self.gcn(x))
        if self.use_residual:
            y = y + self.residual(x)
        return self.relu(y)


class STGCNChain(nn.Sequential):
    """Blocks `layer{i}_{j}` for each (width, depth) pair of `block_args`."""

    def __init__(self, in_dim, block_args, kernel_size, A, adaptive=True):
        super().__init__()
        last_dim = in_dim
        for i, (width, depth) in enumerate(block_args):
            for j in range(depth):
                self.add_module(f'layer{i}_{j}',
                                STGCNBlock(last_dim, width, kernel_size, A, adaptive))
                last_dim = width


def get_stgcn_chain(in_dim, level, kernel_size, A, adaptive=True, channels=(64, 128, 256),
                    temporal_layers=3):
    """Builds a chain and returns (chain, output width).

    level 'spatial': one block per width in `channels`; level 'temporal': `temporal_layers`
    blocks of width channels[-1]. kernel_size is (temporal kernel, number of partitions).
    """
    if level == 'spatial':
        block_args = [(width, 1) for width in channels]
    elif level == 'temporal':
        block_args = [(channels[-1], temporal_layers)]
    else:
        raise ValueError(f"unknown ST-GCN chain level {level!r}")
    return STGCNChain(in_dim, block_args, kernel_size, A, adaptive), block_args[-1][0]
