"""Lowering: a spiking graph becomes flat typed arrays the kernels can run.

Before: an IR graph obeying the spiking graph contract (docs/design.md):
spiking sources (``Input``, ``Population``, ``SynchronousNeuron``,
``MaxGate``), one ``OutputAccumulator``, and only linear projections
between them.
After: a :class:`LoweredGraph` of int32 tables and float32 arrays.

- Every spiking node (population, synchronous neuron, max gate) and the
  output gets a row of ``node_table``; its neurons are stored
  *channels-last* (a (C, H, W) tensor as (H, W, C)) so a spike adds a
  contiguous vector to the next layer's membrane potentials.
- Every path ``source -> linear ops -> target`` becomes one *projection*
  (a row of ``proj_table``). By linearity the target's input current is the
  sum over paths of the path's linear map applied to the source's spikes.
  A projection is a *core* (a convolution scatter with rows
  ``W[c_in, ky, kx, :]``, a dense scatter with rows ``W.T[i, :]``, or a
  general sparse matrix in CSR form) optionally preceded by a sparse
  *prefix* (the ops before the convolution or Gemm, e.g. average pooling,
  global average pooling, flatten, composed into one CSR matrix), so a
  spike is chained through the prefix into the core.
- Biases: the total bias of a target is its linear subgraph evaluated at
  zero input. Targets fed by the analog input get a dense current
  ``W' x + b'`` computed once per sample (:meth:`LoweredGraph.input_drive`).

A path through an op that is not a linear projection of the contract (a
``Relu``, a ``MaxPool``, a ``Sub``...) is refused with one
:class:`~bsnn_graph.errors.BsnnError` naming the node and op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.errors import BsnnError
from bsnn_graph.executor import apply_op, evaluate, macs, pool_nd, sliding_windows

from .schedule import (
    BISTABLE_MODES,
    MODE_CODES,
    constant_current_fraction,
    initial_potential,
    light_cone,
    periods_of,
)

__all__ = [
    "LINEAR_OPS",
    "MODE_CODES",
    "LoweredGraph",
    "LoweringError",
    "internal_order",
    "lower",
]


class LoweringError(BsnnError):
    """The spiking graph breaks the contract the runtime needs (names the node and op)."""



#: ops allowed between spiking nodes (the spiking graph contract)
LINEAR_OPS = O.LINEAR_PROJECTIONS
SOURCE_OPS = O.SPIKING_SOURCES  # SynchronousNeuron is a Population

# node kinds
KIND_POPULATION = 0
KIND_GATE = 1
KIND_OUTPUT = 2

# columns of node_table
N_KIND = 0
N_SIZE = 1
N_STATE = 2  # offset of V in the state vector, -1 for gates
N_SPIKE = 3  # offset in the spike buffers (lists, flags, counts, fan-out), -1 for the output
N_STAGE = 4
N_DRIVE = 5  # offset in the per-sample input drive, -1: constant bias at N_STATE
N_GATE = 6  # row of gate_table, -1 unless a gate
N_PROJ_START = 7  # projections whose source is this node: rows [start, end) of proj_table
N_PROJ_END = 8
N_EMITTED = 9  # offset of the emitted-value-so-far array (phase / if-rate max gates), -1 if none
N_SOURCE = 10  # a gate's source node, -1 otherwise
N_CEILING = 11  # 1: V is bounded by ceiling[N_STATE:] after each integrate period (Clip / ReLU6), else -1
NODE_FIELDS = 12

# cores of a projection
CORE_CSR = 0
CORE_CONV = 1
CORE_DENSE = 2

# columns of proj_table
P_SOURCE = 0
P_TARGET = 1
P_CORE = 2
P_PREFIX_ROW = 3  # first row of the prefix CSR in csr_indptr, -1 if none
P_CSR_ROW = 4  # first row of the core CSR in csr_indptr (CORE_CSR)
P_CIN = 5  # conv: input channels; dense: input features
P_H = 6
P_W = 7
P_COUT = 8  # conv: output channels per group (the scatter row length); dense: output features
P_OH = 9
P_OW = 10
P_KH = 11
P_KW = 12
P_SH = 13
P_SW = 14
P_PT = 15
P_PL = 16
P_DH = 17
P_DW = 18
P_WOFF = 19  # offset of the scatter rows in weights
P_CIN_G = 20  # conv: input channels per group (P_CIN if ungrouped)
P_CT = 21  # conv: channels of the target (the channel stride of its layout; P_COUT if the conv feeds it alone)
P_COFF = 22  # conv: the target channel its output channel 0 lands on (after a Concat), else 0
PROJ_FIELDS = 23

# columns of gate_table
G_C = 0
G_H = 1
G_W = 2
G_OH = 3
G_OW = 4
G_KH = 5
G_KW = 6
G_SH = 7
G_SW = 8
G_PT = 9
G_PL = 10
G_DH = 11
G_DW = 12
G_CAND = 13  # offset of the candidate flags (out * kh * kw)
GATE_FIELDS = 14


def internal_order(shape: tuple[int, ...]) -> np.ndarray:
    """``order[i]`` = natural (C-order) flat index of the neuron stored at internal position ``i``.

    Tensors of rank >= 2 are stored channels-last: (C, H, W) as (H, W, C).
    """
    n = int(math.prod(shape)) if shape else 1
    natural = np.arange(n, dtype=np.int64).reshape(shape if shape else ())
    if len(shape) >= 2:
        natural = np.moveaxis(natural, 0, -1)
    return np.ascontiguousarray(natural).reshape(-1)


def _inverse(order: np.ndarray) -> np.ndarray:
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size, dtype=order.dtype)
    return inv


# --------------------------------------------------------------------------- sparse linear maps


@dataclass
class _Sparse:
    """A linear map as coordinates: ``y[cols] += vals * x[rows]``."""

    rows: np.ndarray  # int64, input (natural or internal) index
    cols: np.ndarray  # int64, output index
    vals: np.ndarray  # float64
    n_in: int
    n_out: int

    @staticmethod
    def identity(n: int, scale: np.ndarray | float = 1.0) -> _Sparse:
        idx = np.arange(n, dtype=np.int64)
        return _Sparse(idx, idx.copy(), np.broadcast_to(np.asarray(scale, np.float64), (n,)).copy(), n, n)

    def indptr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR form: (indptr int64 (n_in + 1), cols, vals) sorted by row then column."""
        order = np.lexsort((self.cols, self.rows))
        rows, cols, vals = self.rows[order], self.cols[order], self.vals[order]
        indptr = np.zeros(self.n_in + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=self.n_in), out=indptr[1:])
        return indptr, cols, vals


def _compose(a: _Sparse, b: _Sparse) -> _Sparse:
    """The map ``x -> b(a(x))``, duplicate entries summed."""
    indptr, bcols, bvals = b.indptr()
    starts = indptr[a.cols]
    counts = indptr[a.cols + 1] - starts
    total = int(counts.sum())
    rep = np.repeat(np.arange(a.rows.size), counts)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    pick = starts[rep] + within
    out = _Sparse(a.rows[rep], bcols[pick], a.vals[rep] * bvals[pick], a.n_in, b.n_out)
    return _coalesce(out)


def _coalesce(s: _Sparse) -> _Sparse:
    if s.rows.size == 0:
        return s
    key = s.rows * s.n_out + s.cols
    unique, inverse = np.unique(key, return_inverse=True)
    vals = np.bincount(inverse, weights=s.vals, minlength=unique.size)
    return _Sparse(unique // s.n_out, unique % s.n_out, vals, s.n_in, s.n_out)


def _refuse(node: str, op: O.Op, why: str) -> LoweringError:
    return LoweringError(f"node {node!r} ({op.op_type}): {why}")


def _window_indices(op, in_shape: tuple[int, ...], kernel) -> np.ndarray:
    """Index of the input neuron at every window position, -1 outside the input: (C, *out, *kernel)."""
    spatial = len(in_shape) - 1
    strides = tuple(op.strides) or (1,) * spatial
    pads = tuple(op.pads) or (0,) * (2 * spatial)
    dilations = tuple(getattr(op, "dilations", ()) or ()) or (1,) * spatial
    index = np.arange(math.prod(in_shape), dtype=np.float64).reshape((1,) + tuple(in_shape))
    win, _, _ = sliding_windows(index, kernel, strides, pads, dilations, bool(getattr(op, "ceil_mode", False)), -1.0)
    return win[0].astype(np.int64)


def _op_map(graph: nx.DiGraph, node: str, position: int) -> _Sparse:
    """The linear part of ``node`` as a map from its input ``position`` to its output (natural layout).

    One function per op kind (:data:`_OP_MAPS`); an op without one is refused.
    """
    op = ir.op_of(graph, node)
    in_shape = tuple(ir.shape_of(graph, ir.inputs_of(graph, node)[position]))
    out_shape = tuple(ir.shape_of(graph, node))
    for kinds, op_map in _OP_MAPS:
        if isinstance(op, kinds):
            return op_map(_OpSite(graph, node, op, position, in_shape, out_shape))
    raise _refuse(node, op, "is not a linear projection")


@dataclass
class _OpSite:
    """One input of one linear node, what a map of :data:`_OP_MAPS` reads."""

    graph: nx.DiGraph
    node: str
    op: O.Op
    position: int  # the input
    in_shape: tuple[int, ...]  # per sample
    out_shape: tuple[int, ...]

    @property
    def n_in(self) -> int:
        return int(math.prod(self.in_shape))

    @property
    def n_out(self) -> int:
        return int(math.prod(self.out_shape))

    def placed(self, index) -> _Sparse:
        """Input neuron i to the output neuron at ``arange(n_out).reshape(out_shape)[index]`` (C order), weight 1."""
        place = np.arange(self.n_out, dtype=np.int64).reshape(self.out_shape)
        n_in = self.n_in
        return _Sparse(np.arange(n_in, dtype=np.int64), place[index].reshape(-1), np.ones(n_in), n_in, self.n_out)


def _identity_map(site: _OpSite) -> _Sparse:
    """Flatten, Reshape, Identity, Dropout: the flat (C-order) index is kept."""
    return _Sparse.identity(site.n_in)


def _transpose_map(site: _OpSite) -> _Sparse:
    """A permutation (channel shuffle): ``y.flat[i] = x.flat[P[i]]``."""
    perm = site.op.flat_permutation(site.in_shape).astype(np.int64)
    return _Sparse(perm, np.arange(site.n_out, dtype=np.int64), np.ones(site.n_out), site.n_in, site.n_out)


def _sum_map(site: _OpSite) -> _Sparse:
    """Add, Sum: each input passes as it is (other inputs are other paths, a constant is bias); no broadcasting."""
    if site.in_shape != site.out_shape:
        raise _refuse(site.node, site.op, f"broadcasting input {site.position} of shape {site.in_shape} to "
                      f"{site.out_shape} is not supported")  # fmt: skip
    return _Sparse.identity(site.n_in)


def _mul_map(site: _OpSite) -> _Sparse:
    """Mul by a constant: one factor per neuron."""
    if site.in_shape != site.out_shape:
        raise _refuse(site.node, site.op, f"constant changes the shape {site.in_shape} to {site.out_shape}")
    scale = np.broadcast_to(site.op.constant.astype(np.float64), (1,) + site.out_shape).reshape(-1)
    return _Sparse.identity(site.n_in, scale)


def _pad_map(site: _OpSite) -> _Sparse:
    """Pad with constant 0: each input neuron to its place inside the padded output."""
    op, in_shape = site.op, site.in_shape
    if op.mode != "constant" or op.value != 0 or any(p < 0 for p in op.pads):
        raise _refuse(site.node, op, "only constant-0 padding with non-negative pads is a linear projection")
    rank = len(in_shape) + 1
    return site.placed(tuple(slice(op.pads[i + 1], op.pads[i + 1] + in_shape[i]) for i in range(rank - 1)))


def _concat_map(site: _OpSite) -> _Sparse:
    """Concat: input ``position`` to its slice of the output along the axis."""
    op, out_shape = site.op, site.out_shape
    axis = (op.axis if op.axis >= 0 else op.axis + len(out_shape) + 1) - 1
    srcs = ir.inputs_of(site.graph, site.node)
    begin = sum(ir.shape_of(site.graph, s)[axis] for s in srcs[: site.position])
    index = [slice(None)] * len(out_shape)
    index[axis] = slice(begin, begin + site.in_shape[axis])
    return site.placed(tuple(index))


def _global_average_map(site: _OpSite) -> _Sparse:
    """GlobalAveragePool: every neuron of a channel to the channel's output, weight 1 / positions."""
    n_in = site.n_in
    per_channel = n_in // site.in_shape[0]
    rows = np.arange(n_in, dtype=np.int64)
    return _Sparse(rows, rows // per_channel, np.full(n_in, 1.0 / per_channel), n_in, site.n_out)


def _average_pool_map(site: _OpSite) -> _Sparse:
    """AveragePool (padding, ceil mode and ``count_include_pad`` as the executor's ``pool_nd`` has them)."""
    op, in_shape, out_shape = site.op, site.in_shape, site.out_shape
    if len(in_shape) < 2:
        raise _refuse(site.node, op, f"input of shape {in_shape} has no spatial axes")
    win = _window_indices(op, in_shape, op.kernel_shape)  # (C, *out, *kernel)
    spatial = len(in_shape) - 1
    kernel_axes = tuple(range(1 + spatial, 1 + 2 * spatial))
    inside = (win >= 0).sum(axis=kernel_axes)
    ratio = pool_nd(np.ones((1,) + in_shape, np.float32), op)[0].astype(np.float64)  # inside / divisor
    weight = np.where(inside > 0, ratio / np.maximum(inside, 1), 0.0)
    cols = np.broadcast_to(np.arange(site.n_out).reshape(out_shape).reshape(out_shape + (1,) * spatial), win.shape)
    vals = np.broadcast_to(weight.reshape(out_shape + (1,) * spatial), win.shape)
    mask = win >= 0
    return _coalesce(_Sparse(win[mask], cols[mask].astype(np.int64), vals[mask], site.n_in, site.n_out))


def _conv_map(site: _OpSite) -> _Sparse:
    """Conv (any rank, grouped, strided, dilated, padded) as coordinates, one group at a time."""
    op, in_shape, out_shape = site.op, site.in_shape, site.out_shape
    if len(in_shape) < 2:
        raise _refuse(site.node, op, f"input of shape {in_shape} has no spatial axes")
    win = _window_indices(op, in_shape, op.kernel_shape)  # (Cin, *out_spatial, *kernel)
    spatial = len(in_shape) - 1
    cin_g = op.weight.shape[1]
    cout_g = op.weight.shape[0] // op.group
    out_spatial = out_shape[1:]
    positions = int(math.prod(out_spatial))
    rows, cols, vals = [], [], []
    for g in range(op.group):
        idx = win[g * cin_g : (g + 1) * cin_g]  # (cin_g, *out, *kernel)
        idx = np.moveaxis(idx, 0, spatial)  # (*out, cin_g, *kernel)
        w = op.weight[g * cout_g : (g + 1) * cout_g].astype(np.float64)  # (cout_g, cin_g, *kernel)
        shape = (cout_g,) + idx.shape
        r = np.broadcast_to(idx[None], shape)
        v = np.broadcast_to(w.reshape((cout_g,) + (1,) * spatial + w.shape[1:]), shape)
        co = np.arange(g * cout_g, (g + 1) * cout_g).reshape((cout_g,) + (1,) * (idx.ndim))
        pos = np.arange(positions).reshape(out_spatial + (1,) * (spatial + 1))
        c = np.broadcast_to(co * positions + pos[None], shape)
        mask = r >= 0
        rows.append(r[mask])
        cols.append(c[mask])
        vals.append(v[mask])
    return _coalesce(_Sparse(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), site.n_in, site.n_out))


def _gemm_map(site: _OpSite) -> _Sparse:
    """Gemm ``y = W x`` (W: (out, in)): every input to every output."""
    n_in, n_out = site.n_in, site.n_out
    rows = np.repeat(np.arange(n_in, dtype=np.int64), n_out)
    cols = np.tile(np.arange(n_out, dtype=np.int64), n_in)
    return _Sparse(rows, cols, site.op.weight.astype(np.float64).T.reshape(-1), n_in, n_out)


def _matmul_map(site: _OpSite) -> _Sparse:
    """MatMul ``y = x W`` of a 1-d input (W: (in, out))."""
    if len(site.in_shape) != 1:
        raise _refuse(site.node, site.op, f"MatMul of a {len(site.in_shape)}-d input is not supported")
    n_in, n_out = site.n_in, site.n_out
    rows = np.repeat(np.arange(n_in, dtype=np.int64), n_out)
    cols = np.tile(np.arange(n_out, dtype=np.int64), n_in)
    return _Sparse(rows, cols, site.op.weight.astype(np.float64).reshape(-1), n_in, n_out)


#: the linear map of each op kind between spiking nodes, tried in order (:func:`_op_map`)
_OP_MAPS = (
    ((O.Flatten, O.Reshape, O.Identity, O.Dropout), _identity_map),
    (O.Transpose, _transpose_map),
    ((O.Add, O.Sum), _sum_map),
    (O.Mul, _mul_map),
    (O.Pad, _pad_map),
    (O.Concat, _concat_map),
    (O.GlobalAveragePool, _global_average_map),
    (O.AveragePool, _average_pool_map),
    (O.Conv, _conv_map),
    (O.Gemm, _gemm_map),
    (O.MatMul, _matmul_map),
)


# --------------------------------------------------------------------------- paths


def _paths(graph: nx.DiGraph, target: str) -> list[tuple[str, list[tuple[str, int]]]]:
    """Every path from a spiking source to ``target``: (source, [(linear node, input position), ...]).

    The list runs from the source side to the target; the target itself is
    not in it.
    """
    found: list[tuple[str, list[tuple[str, int]]]] = []

    def visit(node: str, chain: list[tuple[str, int]]) -> None:
        op = ir.op_of(graph, node)
        if isinstance(op, SOURCE_OPS):
            found.append((node, chain))
            return
        if isinstance(op, O.OutputAccumulator):
            raise _refuse(node, op, "the output accumulator cannot feed other nodes")
        if not isinstance(op, LINEAR_OPS):
            raise _refuse(node, op, f"sits between spiking nodes (feeding {target!r}) but is not a linear projection")
        if isinstance(op, O.Add) and op.constant is not None:
            pass  # the constant is bias
        for position, src in enumerate(ir.inputs_of(graph, node)):
            visit(src, [(node, position)] + chain)

    target_shape = tuple(ir.shape_of(graph, target))
    for src in ir.inputs_of(graph, target):
        if tuple(ir.shape_of(graph, src)) != target_shape:
            op = ir.op_of(graph, target)
            raise _refuse(target, op, f"input {src!r} of shape {ir.shape_of(graph, src)} differs from {target_shape}")
        visit(src, [])
    return found


def _map_of_chain(graph: nx.DiGraph, chain: list[tuple[str, int]], n_in: int) -> _Sparse:
    result = _Sparse.identity(n_in)
    for node, position in chain:
        result = _compose(result, _op_map(graph, node, position))
    return result


def _to_internal(s: _Sparse, in_shape, out_shape) -> _Sparse:
    """Re-index a natural-layout map to the internal (channels-last) layout of both ends."""
    inv_in = _inverse(internal_order(tuple(in_shape)))
    inv_out = _inverse(internal_order(tuple(out_shape)))
    return _Sparse(inv_in[s.rows], inv_out[s.cols], s.vals, s.n_in, s.n_out)


def _conv_core(graph, chain, h, target_shape):
    """If ``chain[h]`` is a 2-d Conv (grouped or depthwise included) whose output reaches the target through
    :func:`_conv_tail`, its scatter description (absorbing a Pad right before it), else None.

    The scatter rows are ``W[ci, ky, kw - 1 - kx, :]`` over the ``cout / group``
    output channels of input channel ci's group, scaled by the tail's
    per-channel factors.
    """
    node, _ = chain[h]
    op = ir.op_of(graph, node)
    if not isinstance(op, O.Conv) or op.weight.ndim != 4:
        return None
    pooled = _pool_after(graph, chain, h, op)
    end = h + (pooled is not None)
    tail = _conv_tail(graph, chain, end, target_shape)
    if tail is None:
        return None
    coff, ct, scale = tail
    pads = list(op.pads) or [0, 0, 0, 0]
    start = h
    if h > 0:
        pnode, _ = chain[h - 1]
        pop = ir.op_of(graph, pnode)
        if isinstance(pop, O.Pad) and pop.mode == "constant" and pop.value == 0 and len(pop.pads) == 8:
            p = pop.pads
            if p[0] == p[1] == p[4] == p[5] == 0 and min(p) >= 0:
                pads = [pads[0] + p[2], pads[1] + p[3], pads[2] + p[6], pads[3] + p[7]]
                start = h - 1
    in_shape = tuple(ir.shape_of(graph, ir.inputs_of(graph, chain[start][0])[chain[start][1]]))
    out_shape = tuple(ir.shape_of(graph, chain[end][0]))
    strides = tuple(op.strides) or (1, 1)
    dilations = tuple(op.dilations) or (1, 1)
    weight = op.weight.astype(np.float64)
    if pooled is not None:  # conv then average pool = one conv with the box-filtered kernel, the pool's stride
        weight, strides = pooled
    cout, cin_g, kh, kw = weight.shape
    groups = int(op.group)
    cout_g = cout // groups
    # (group, cin_g, kh, kw, cout_g) -> (cin, kh, kw, cout_g); kx reversed, so that at stride and dilation 1 the
    # kernel row of one input position and the output positions it reaches are both contiguous (see kernels)
    w = weight * scale.reshape(-1, 1, 1, 1)
    w = w.reshape(groups, cout_g, cin_g, kh, kw).transpose(0, 2, 3, 4, 1).reshape(groups * cin_g, kh, kw, cout_g)
    rows = np.ascontiguousarray(w[:, :, ::-1, :], dtype=np.float32).reshape(-1)
    params = {
        "cin": in_shape[0], "h": in_shape[1], "w": in_shape[2], "cout": cout_g, "oh": out_shape[1],
        "ow": out_shape[2], "kh": kh, "kw": kw, "sh": strides[0], "sw": strides[1], "pt": pads[0], "pl": pads[1],
        "dh": dilations[0], "dw": dilations[1], "cin_g": cin_g, "ct": ct, "coff": coff,
    }
    return start, in_shape, params, rows


def _pool_after(graph, chain, h, op):
    """(composed float64 weight, strides) when ``chain[h]``, a stride-1 undilated conv, is read by an
    AveragePool without padding or ceil mode (a DenseNet transition): the two are one conv whose kernel is the
    conv kernel summed over the pool window, divided by its area, at the pool's stride; else None."""
    if h + 1 >= len(chain) or (tuple(op.strides) or (1, 1)) != (1, 1) or (tuple(op.dilations) or (1, 1)) != (1, 1):
        return None
    pool = ir.op_of(graph, chain[h + 1][0])
    if not isinstance(pool, O.AveragePool) or len(pool.kernel_shape) != 2 or pool.ceil_mode:
        return None
    if any(pool.pads or ()) or (tuple(pool.dilations or ()) or (1, 1)) != (1, 1):
        return None
    (ph, pw), strides = pool.kernel_shape, tuple(pool.strides) or (1, 1)
    cout, cin_g, kh, kw = op.weight.shape
    weight = np.zeros((cout, cin_g, kh + ph - 1, kw + pw - 1))
    for a in range(ph):
        for b in range(pw):
            weight[:, :, a : a + kh, b : b + kw] += op.weight.astype(np.float64) / (ph * pw)
    return weight, strides


def _channel_factor(constant: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """A Mul constant over a tensor of ``shape`` as one float64 factor per channel, None if it varies within one."""
    full = np.broadcast_to(np.asarray(constant, np.float64), (1,) + tuple(shape))[0].reshape(shape[0], -1)
    return full[:, 0].copy() if np.all(full == full[:, :1]) else None


def _conv_tail(graph, chain, h, target_shape):
    """How the output of the conv ``chain[h]`` reaches the target: (channel offset, target channels, per output
    channel factor), or None when it does not keep its spatial positions.

    Allowed after the conv: Concat along the channels (an offset), Mul by a
    scalar or per-channel constant (a factor), Add / Sum / Identity / Dropout
    that keep the shape (their other inputs are other paths or bias).
    """
    node = chain[h][0]
    shape = tuple(ir.shape_of(graph, node))
    cout = shape[0]
    coff, scale = 0, np.ones(cout)
    for name, position in chain[h + 1 :]:
        op = ir.op_of(graph, name)
        out = tuple(ir.shape_of(graph, name))
        if isinstance(op, O.Concat):
            axis = op.axis if op.axis >= 0 else op.axis + len(out) + 1
            if axis != 1 or out[1:] != shape[1:]:
                return None
            coff += sum(ir.shape_of(graph, src)[0] for src in ir.inputs_of(graph, name)[:position])
        elif isinstance(op, O.Mul):
            factor = _channel_factor(op.constant, out) if out == shape else None
            if factor is None:
                return None
            scale = scale * factor[coff : coff + cout]
        elif not (isinstance(op, _SHAPE_KEEPING) and out == shape):
            return None
        shape = out
    if shape != tuple(target_shape):
        return None
    return coff, shape[0], scale


def _dense_core(graph, chain, h):
    node, position = chain[h]
    op = ir.op_of(graph, node)
    in_shape = tuple(ir.shape_of(graph, ir.inputs_of(graph, node)[position]))
    if isinstance(op, O.Gemm):
        rows = np.ascontiguousarray(op.weight.T, dtype=np.float32)
    elif isinstance(op, O.MatMul) and len(in_shape) == 1:
        rows = np.ascontiguousarray(op.weight, dtype=np.float32)
    else:
        return None
    return h, in_shape, {"cin": rows.shape[0], "cout": rows.shape[1]}, rows.reshape(-1)


_SHAPE_KEEPING = (O.Add, O.Sum, O.Identity, O.Dropout)


# --------------------------------------------------------------------------- the lowered graph


@dataclass
class LoweredGraph:
    """A spiking graph as flat typed arrays (the kernels' input) plus its naming metadata.

    Array fields are what the kernels take; the rest is used on the Python
    side to validate inputs, compute the analog input current and turn the
    kernels' outputs back into named, natural-layout arrays.
    """

    graph: nx.DiGraph  # the spiking graph it came from
    mode: str  # one of ops.MODES
    phases: int  # K
    names: list[str]  # spiking nodes and the output, in topological order
    node_table: np.ndarray  # int32 (S, NODE_FIELDS)
    node_threshold: np.ndarray  # float32 (S,) threshold (gates: their source's)
    node_v0: np.ndarray  # float32 (S,) initial membrane potential (schedule.initial_potential; gates, output: 0)
    initial_potential: str  # the graph's setting: "half" or "zero" (BSNN_SPEC.md, "Initial potential")
    ceiling: np.ndarray  # float32 (state_size,) V bound of N_CEILING populations (inf elsewhere), or (1,) if none
    proj_table: np.ndarray  # int32 (J, PROJ_FIELDS), sorted by source
    weights: np.ndarray  # float32 scatter rows of conv and dense cores
    csr_indptr: np.ndarray  # int64, CSR row pointers (absolute into csr_cols / csr_vals)
    csr_cols: np.ndarray  # int32 internal target (or intermediate) index
    csr_vals: np.ndarray  # float32
    gate_table: np.ndarray  # int32 (G, GATE_FIELDS)
    fanout: np.ndarray  # int32 (spike_size,) synapses reached by one spike of each neuron
    bias: np.ndarray  # float32 (state_size,) per-step constant current (b'/K, or b' in if-rate)
    state_size: int
    spike_size: int
    candidate_size: int
    emitted_size: int
    drive_size: int
    output: int  # index of the output node in names
    output_order: np.ndarray  # int32: internal position of the output's natural index i
    input_name: str
    input_shape: tuple[int, ...]
    input_targets: list[tuple[int, str]] = field(default_factory=list)  # (node index, name) fed by the input
    drive_subgraphs: dict[str, nx.DiGraph] = field(default_factory=dict)  # name -> its linear subgraph
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    orders: dict[str, np.ndarray] = field(default_factory=dict)  # name -> internal_order(shape)
    ann_macs: int = 0  # multiply-accumulates per sample of the ANN the graph encodes
    input_macs: int = 0  # multiply-accumulates per sample of the dense analog input layer(s)

    @property
    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    @property
    def spiking(self) -> list[str]:
        """Names of the spiking nodes (populations, synchronous neurons, max gates) in order."""
        return [n for i, n in enumerate(self.names) if self.node_table[i, N_KIND] != KIND_OUTPUT]

    @property
    def classes(self) -> int:
        return int(self.node_table[self.output, N_SIZE])

    def targets(self) -> list[list[int]]:
        """For each node, the nodes its spikes reach directly: its projections' targets and the max gates reading it."""
        cached = self.__dict__.get("_targets")
        if cached is not None:
            return cached
        out: list[list[int]] = [[] for _ in self.names]
        for row in self.proj_table:
            out[int(row[P_SOURCE])].append(int(row[P_TARGET]))
        for i in range(len(self.names)):
            if self.node_table[i, N_KIND] == KIND_GATE:
                out[int(self.node_table[i, N_SOURCE])].append(i)
        self.__dict__["_targets"] = [sorted(set(t)) for t in out]
        return self.__dict__["_targets"]

    def last_fire(self, timesteps: int, full_dynamics: bool = False) -> np.ndarray:
        """The light cone of a run of ``timesteps`` steps: the last period each node fires in, int32 (S,).

        See :func:`runtime.schedule.light_cone`; ``full_dynamics``: every period.
        """
        return light_cone(
            self.mode,
            periods_of(timesteps, self.phases),
            self.node_table[:, N_STAGE],
            self.node_table[:, N_KIND] == KIND_POPULATION,
            self.targets(),
            self.output,
            full_dynamics,
        )

    def bytes_per_sample(self, timesteps: int, per_neuron_counts: bool = False) -> dict[str, int]:
        """Memory of a run, in bytes: what grows with the samples, with the batch, and with the threads.

        - ``result``: kept per sample in the returned result (predictions and
          logits of every step and period, SOPs, and spike counts per
          population, or per neuron with ``per_neuron_counts``);
        - ``batch``: per sample of a batch while it runs (analog input drive,
          counters, outputs);
        - ``thread``: the state of one running sample (membrane potentials,
          spike lists), per thread.
        A run of N samples in batches of B on H threads needs about
        ``N result + B batch + H thread`` besides the lowered graph.
        """
        nodes = len(self.names)
        periods = periods_of(timesteps, self.phases)
        counts = 4 * self.spike_size if per_neuron_counts else 4 * nodes
        result = 4 * timesteps + 4 * periods * self.classes + 8 + 8 * nodes + counts
        batch = result + 4 * max(self.drive_size, 1) + 16 * nodes + 8
        thread = 4 * max(self.state_size, 1) + 13 * max(self.spike_size, 1) + self.candidate_size + 4 * self.emitted_size
        return {"result": int(result), "batch": int(batch), "thread": int(thread)}

    def input_drive(self, x: np.ndarray) -> np.ndarray:
        """Per-step current of the input-fed targets: float32 (N, drive_size), internal layout.

        ``(W' x + b') / K`` in the bistable and phase modes, ``W' x + b'`` in ``if-rate``.
        Batch-free: the float32 sums of a batched matrix product depend on the
        batch's shape (BLAS blocks them differently), and a sample's spikes must
        not depend on the batch it runs in, so convolutions and dense layers are
        summed in a fixed order per sample (:func:`_batch_free_evaluate`).
        """
        n = x.shape[0]
        drive = np.zeros((n, max(self.drive_size, 1)), np.float32)
        step = constant_current_fraction(self.mode, self.phases)
        for node, name in self.input_targets:
            sub = self.drive_subgraphs[name]
            offset = int(self.node_table[node, N_DRIVE])
            size = int(self.node_table[node, N_SIZE])
            total = _evaluate_target_input(self.graph, sub, name, {self.input_name: x}, n, batch_free=True)
            if total.ndim >= 3:  # internal layout = channels last (internal_order), a strided copy not a gather
                total = np.moveaxis(total, 1, -1)
            drive[:, offset : offset + size] = total.reshape(n, -1) * step
        return drive


def _per_neuron(name: str, op: O.Op, value: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A per-population () or per-channel (C,) parameter as one value per neuron, internal layout."""
    channels = shape[0] if shape else 1
    if value.ndim == 0:
        full = np.full(shape, value, np.float32)
    elif value.shape == (channels,):
        full = np.broadcast_to(value.reshape((channels,) + (1,) * (len(shape) - 1)), shape)
    else:
        raise _refuse(name, op, f"{what} of shape {value.shape} fits neither the population nor its {channels} channels")
    return np.ascontiguousarray(full, np.float32).reshape(-1)[internal_order(shape)]


def _graph_mode(graph: nx.DiGraph, spiking: list[str]) -> tuple[str, int]:
    modes = {ir.op_of(graph, n).mode for n in spiking}
    phases = {int(ir.op_of(graph, n).phases) for n in spiking}
    if len(modes) != 1:
        raise LoweringError(f"spiking nodes disagree on the mode: {sorted(modes)}")
    if len(phases) != 1:
        raise LoweringError(f"spiking nodes disagree on the phases K: {sorted(phases)}")
    mode, k = modes.pop(), phases.pop()
    if mode not in MODE_CODES:
        raise LoweringError(f"unknown mode {mode!r}; expected one of {list(MODE_CODES)}")
    if not 1 <= k <= 16:
        raise LoweringError(f"phases K = {k} is outside 1..16")
    return mode, k


def _linear_subgraph(graph: nx.DiGraph, target: str, paths) -> nx.DiGraph:
    """The linear ops feeding ``target`` as a graph whose inputs are the target's sources."""
    nodes = {node for _, chain in paths for node, _ in chain}
    sub = ir.new_graph(f"linear:{target}")
    for src, _ in paths:
        if src not in sub:
            ir.add_node(sub, src, O.Input(shape=tuple(ir.shape_of(graph, src))))
    for name in ir.topological_order(graph):
        if name in nodes:
            ir.add_node(sub, name, ir.op_of(graph, name), ir.inputs_of(graph, name))
    return sub


def _batch_free_evaluate(sub: nx.DiGraph, feeds: dict, outputs: list[str]) -> dict[str, np.ndarray]:
    """:func:`bsnn_graph.evaluate` of a linear subgraph whose result for a sample does not depend on the batch.

    Convolutions and dense layers (the ops that sum over their input) run in
    :mod:`runtime.kernels` with a fixed order of terms per output element;
    pooling reductions run one sample at a time; element-wise and shape ops
    are exact per element and run on the whole batch.
    """
    from . import kernels  # kernels import this module's column constants

    values = dict(feeds)
    for name in ir.topological_order(sub):
        if name in values:
            continue
        op = ir.op_of(sub, name)
        args = [values[s] for s in ir.inputs_of(sub, name)]
        x = args[0] if args else None
        if isinstance(op, O.Conv) and op.weight.ndim == 4:
            strides = tuple(op.strides) or (1, 1)
            pads = tuple(op.pads) or (0, 0, 0, 0)
            dilations = tuple(op.dilations) or (1, 1)
            cout = op.weight.shape[0]
            shape = tuple(ir.shape_of(sub, name))
            out = np.empty((x.shape[0], shape[1], shape[2], cout), np.float32)
            bias = op.bias if op.bias is not None else np.zeros(cout, np.float32)
            kernels.input_conv2d(x, op.weight.transpose(1, 2, 3, 0), bias, strides, pads, dilations, int(op.group),
                                 out)
            values[name] = np.moveaxis(out, -1, 1)
        elif isinstance(op, (O.Gemm, O.MatMul)) and x.ndim == 2:
            weight = op.weight.T if isinstance(op, O.Gemm) else op.weight
            bias = op.bias if isinstance(op, O.Gemm) and op.bias is not None else np.zeros(weight.shape[1], np.float32)
            out = np.empty((x.shape[0], weight.shape[1]), np.float32)
            kernels.input_dense(x, weight, bias, out)
            values[name] = out
        elif isinstance(op, (O.Conv, O.Gemm, O.MatMul, O.AveragePool, O.GlobalAveragePool)):
            values[name] = np.concatenate([np.asarray(apply_op(op, [a[i : i + 1] for a in args]), np.float32)
                                           for i in range(x.shape[0])])  # fmt: skip
        else:
            values[name] = np.asarray(apply_op(op, args), np.float32)
    return {name: values[name] for name in outputs}


def _evaluate_target_input(graph: nx.DiGraph, sub: nx.DiGraph, target: str, feeds: dict, n: int,
                           batch_free: bool = False) -> np.ndarray:
    """The target's total input (sum of its inputs) with the given source values, the other sources at 0.

    ``batch_free``: a sample's result does not depend on the other samples of
    the batch (:func:`_batch_free_evaluate`).
    """
    full = {}
    for name in sub.graph["inputs"]:
        full[name] = feeds[name] if name in feeds else np.zeros((n,) + tuple(ir.shape_of(sub, name)), np.float32)
    srcs = ir.inputs_of(graph, target)
    outs = list(dict.fromkeys(srcs))
    values = _batch_free_evaluate(sub, full, outs) if batch_free else evaluate(sub, full, outputs=outs)
    if not isinstance(values, dict):
        values = {outs[0]: values}
    total = np.zeros((n,) + tuple(ir.shape_of(graph, target)), np.float32)
    for s in srcs:
        total += values[s]
    return total


@dataclass
class _Nodes:
    """The nodes a lowered graph has a row for, and what every stage of :func:`lower` asks about them."""

    names: list[str]  # spiking nodes, then the output, in topological order
    spiking: list[str]  # populations, synchronous neurons and max gates
    output_name: str
    input_name: str
    mode: str
    phases: int
    shapes: dict[str, tuple[int, ...]]  # per-sample shape of every named node
    orders: dict[str, np.ndarray]  # name -> internal_order(shape)
    index: dict[str, int]  # name -> row
    largest_stage: int  # L, the largest population stage (0 without populations)

    def stage_of(self, graph: nx.DiGraph, name: str) -> int:
        """A node's stage (the analog input: 0)."""
        return 0 if name == self.input_name else int(ir.op_of(graph, name).stage)

    def size_of(self, name: str) -> int:
        return int(math.prod(self.shapes[name]))


@dataclass
class _Layout:
    """Stage 2 of :func:`lower`: the node table and the per-node arrays (no projection columns yet)."""

    node_table: np.ndarray  # int32 (S, NODE_FIELDS)
    threshold: np.ndarray  # float32 (S,)
    v0: np.ndarray  # float32 (S,)
    initial_potential: str
    ceiling: np.ndarray  # float32 (state_size,), or (1,) when no population has a ceiling
    gate_rows: list[list[int]]
    state_size: int = 0
    spike_size: int = 0
    candidate_size: int = 0
    emitted_size: int = 0


def _collect_nodes(graph: nx.DiGraph) -> _Nodes:
    """Stage 1 of :func:`lower`: the one analog input, the one output, the spiking nodes, the mode and K."""
    order = ir.topological_order(graph)
    inputs = [n for n in order if isinstance(ir.op_of(graph, n), O.Input)]
    if len(inputs) != 1:
        raise LoweringError(f"the runtime needs exactly one graph input, the graph has {inputs}")
    outputs = [n for n in order if isinstance(ir.op_of(graph, n), O.OutputAccumulator)]
    if len(outputs) != 1:
        raise LoweringError(f"a spiking graph has exactly one OutputAccumulator, this one has {len(outputs)}")
    spiking = [n for n in order if isinstance(ir.op_of(graph, n), (O.Population, O.MaxGate))]
    names = spiking + outputs
    mode, phases = _graph_mode(graph, names)
    shapes = {n: tuple(ir.shape_of(graph, n)) for n in names}
    return _Nodes(
        names=names,
        spiking=spiking,
        output_name=outputs[0],
        input_name=inputs[0],
        mode=mode,
        phases=phases,
        shapes=shapes,
        orders={n: internal_order(shapes[n]) for n in names},
        index={n: i for i, n in enumerate(names)},
        largest_stage=max([int(ir.op_of(graph, n).stage) for n in spiking] + [0]),
    )


def _lay_out_nodes(graph: nx.DiGraph, nodes: _Nodes) -> _Layout:
    """Stage 2 of :func:`lower`: a node-table row per node (kind, size, stage, state and spike offsets, gate
    geometry, threshold, initial potential, ceiling), in the order of ``nodes.names``."""
    count = len(nodes.names)
    layout = _Layout(
        node_table=np.full((count, NODE_FIELDS), -1, np.int32),
        threshold=np.ones(count, np.float32),
        v0=np.zeros(count, np.float32),
        initial_potential="zero",
        ceiling=np.zeros(0, np.float32),
        gate_rows=[],
    )
    settings: set[str] = set()
    ceilings: dict[int, np.ndarray] = {}
    emitted_needed = set()
    for i, name in enumerate(nodes.names):
        op = ir.op_of(graph, name)
        size = nodes.size_of(name)
        layout.node_table[i, N_SIZE] = size
        layout.node_table[i, N_STAGE] = int(op.stage)
        if isinstance(op, O.MaxGate):
            src = _lay_out_gate(graph, nodes, layout, i, name, op)
            if nodes.mode in ("phase", "if-rate"):
                emitted_needed.add(src)
        else:
            _lay_out_population(graph, nodes, layout, i, name, op, settings, ceilings)
        if not isinstance(op, O.OutputAccumulator):
            layout.node_table[i, N_SPIKE] = layout.spike_size
            layout.spike_size += size
    for src in emitted_needed:
        layout.node_table[nodes.index[src], N_EMITTED] = layout.emitted_size
        layout.emitted_size += int(layout.node_table[nodes.index[src], N_SIZE])
    if len(settings) > 1:
        raise LoweringError(f"populations disagree on the initial potential: {sorted(settings)}")
    layout.initial_potential = settings.pop() if settings else "zero"
    layout.ceiling = np.full(layout.state_size if ceilings else 1, np.inf, np.float32)
    for i, bound in ceilings.items():
        layout.node_table[i, N_CEILING] = 1
        offset = int(layout.node_table[i, N_STATE])
        layout.ceiling[offset : offset + bound.size] = bound
    return layout


def _lay_out_gate(graph: nx.DiGraph, nodes: _Nodes, layout: _Layout, i: int, name: str, op: O.MaxGate) -> str:
    """The node-table and gate-table rows of max gate ``name`` (row i); returns its source population."""
    src = ir.inputs_of(graph, name)[0]
    src_op = ir.op_of(graph, src)
    if not isinstance(src_op, O.Population):
        raise _refuse(name, op, f"reads {src!r} ({src_op.op_type}); a max gate reads a population directly")
    if len(nodes.shapes[src]) != 3 or len(op.kernel_shape) != 2:
        raise _refuse(name, op, f"only 2-d max gates on (C, H, W) inputs are supported, got {nodes.shapes[src]}")
    table = layout.node_table
    table[i, N_KIND] = KIND_GATE
    table[i, N_SOURCE] = nodes.index[src]
    layout.threshold[i] = np.float32(src_op.threshold)
    strides = tuple(op.strides) or (1, 1)
    pads = tuple(op.pads) or (0, 0, 0, 0)
    dil = tuple(op.dilations) or (1, 1)
    c, h, w = nodes.shapes[src]
    _, oh, ow = nodes.shapes[name]
    kh, kw = op.kernel_shape
    layout.gate_rows.append([c, h, w, oh, ow, kh, kw, strides[0], strides[1], pads[0], pads[1], dil[0], dil[1],
                             layout.candidate_size])  # fmt: skip
    layout.candidate_size += int(table[i, N_SIZE]) * kh * kw
    table[i, N_GATE] = len(layout.gate_rows) - 1
    if op.stage != src_op.stage and nodes.mode in BISTABLE_MODES:
        raise _refuse(name, op, f"stage {op.stage} differs from its source {src!r} (stage {src_op.stage})")
    return src


def _lay_out_population(graph: nx.DiGraph, nodes: _Nodes, layout: _Layout, i: int, name: str, op: O.Op,
                        settings: set[str], ceilings: dict[int, np.ndarray]) -> None:
    """The node-table row of a population, synchronous neuron or the output (row i): its V in the state vector,
    and for a population its threshold, initial potential (added to ``settings``) and ceiling (into ``ceilings``)."""
    table = layout.node_table
    table[i, N_KIND] = KIND_OUTPUT if isinstance(op, O.OutputAccumulator) else KIND_POPULATION
    table[i, N_STATE] = layout.state_size
    layout.state_size += int(table[i, N_SIZE])
    if not isinstance(op, O.Population):
        return
    layout.threshold[i] = np.float32(op.threshold)
    if not layout.threshold[i] > 0:
        raise _refuse(name, op, f"threshold {op.threshold} is not positive")
    settings.add(op.initial_potential)
    try:
        layout.v0[i] = initial_potential(nodes.mode, nodes.phases, float(op.threshold), op.initial_potential)
    except ValueError as exc:
        raise _refuse(name, op, str(exc)) from None
    bound = np.asarray(getattr(op, "ceiling", np.inf), np.float32)
    if np.any(np.isfinite(bound)):
        ceilings[i] = _per_neuron(name, op, bound, nodes.shapes[name], "ceiling")


def _target_paths(graph: nx.DiGraph, nodes: _Nodes, name: str) -> list[tuple[str, list[tuple[str, int]]]]:
    """Stage 3a of :func:`lower`: the paths into target ``name`` (:func:`_paths`), checked against the contract
    (a synchronous neuron reads one source directly; ``bsnn`` sources are one stage earlier; the output's stage)."""
    op = ir.op_of(graph, name)
    paths = _paths(graph, name)
    if isinstance(op, O.SynchronousNeuron):
        src_op = ir.op_of(graph, paths[0][0])
        if len(paths) != 1 or paths[0][1] or not isinstance(src_op, (O.Population, O.MaxGate)):
            raise _refuse(name, op, "a synchronous neuron reads one spiking source directly")
    if nodes.mode == "bsnn":
        wrong = [s for s in sorted({src for src, _ in paths}) if nodes.stage_of(graph, s) != op.stage - 1]
        if wrong:
            s = wrong[0]
            raise _refuse(
                name, op, f"stage {op.stage} but source {s!r} has stage {nodes.stage_of(graph, s)} "
                f"(expected {op.stage - 1}); mode bsnn needs the synchronisation pass (or use bsnn-nosn)",
            )
    largest = nodes.largest_stage
    if isinstance(op, O.OutputAccumulator) and nodes.mode in BISTABLE_MODES and op.stage != largest + 1:
        raise _refuse(name, op, f"stage {op.stage} but the largest population stage is {largest}")
    return paths


class _Currents:
    """Stage 3b of :func:`lower`: each target's constant current, a dense drive of the input-fed targets
    (computed per sample, :meth:`LoweredGraph.input_drive`) or a bias (its linear subgraph at zero input)."""

    def __init__(self, nodes: _Nodes, state_size: int):
        self.nodes = nodes
        self.bias = np.zeros(state_size, np.float32)
        self.step = 1.0 if nodes.mode == "if-rate" else 1.0 / nodes.phases  # the current of one step
        self.drive_size = 0
        self.input_targets: list[tuple[int, str]] = []
        self.drive_subgraphs: dict[str, nx.DiGraph] = {}

    def add(self, graph: nx.DiGraph, node_table: np.ndarray, i: int, name: str, paths) -> None:
        """The constant current of target ``name`` (row i) fed by ``paths``."""
        if self.nodes.input_name in {src for src, _ in paths}:
            node_table[i, N_DRIVE] = self.drive_size
            self.drive_size += int(node_table[i, N_SIZE])
            self.input_targets.append((i, name))
            self.drive_subgraphs[name] = _linear_subgraph(graph, name, paths)
            return
        b = _evaluate_target_input(graph, _linear_subgraph(graph, name, paths), name, {}, 1)
        b = b.reshape(-1)[self.nodes.orders[name]]
        offset = int(node_table[i, N_STATE])
        self.bias[offset : offset + b.size] = b * np.float32(self.step)


class _Projections:
    """Stage 3c of :func:`lower`: one projection per path ``source -> linear ops -> target``, collected in path
    order (rows of proj_table, scatter rows, CSR parts, fan-out per source), then packed (:meth:`pack`)."""

    def __init__(self, graph: nx.DiGraph, nodes: _Nodes):
        self.graph = graph
        self.nodes = nodes
        self.rows: list[tuple[int, list[int]]] = []  # (source row, proj_table row)
        self.weights: list[np.ndarray] = []
        self.weight_size = 0
        self.csr_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.csr_rows = 0
        self.csr_entries = 0
        self.fanout_parts: dict[int, np.ndarray] = {}
        self.input_macs = 0

    def add_csr(self, s: _Sparse) -> int:
        """Append the CSR form of ``s`` (and a closing row pointer); returns its first row."""
        indptr, cols, vals = s.indptr()
        row = self.csr_rows
        self.csr_parts.append((indptr[:-1] + self.csr_entries, cols.astype(np.int32), vals.astype(np.float32)))
        self.csr_rows += s.n_in
        self.csr_entries += cols.size
        self.csr_parts.append((np.array([self.csr_entries], np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)))
        self.csr_rows += 1
        return row

    def add_path(self, src: str, chain: list[tuple[str, int]], target: int) -> None:
        """The projection of one path from ``src`` into node row ``target`` (from the analog input: its MACs)."""
        if src == self.nodes.input_name:
            self.input_macs += sum(macs(self.graph, node) for node, _ in chain)
            return
        row = [-1] * PROJ_FIELDS
        row[P_SOURCE], row[P_TARGET] = self.nodes.index[src], target
        core = self._core(chain, self.nodes.shapes[self.nodes.names[target]])
        if core is None:
            fan = self._csr_projection(row, src, chain, self.nodes.names[target])
        else:
            fan = self._core_projection(row, src, chain, core)
        self.rows.append((self.nodes.index[src], row))
        self.fanout_parts[self.nodes.index[src]] = self.fanout_parts.get(self.nodes.index[src], 0) + fan

    def _core(self, chain: list[tuple[str, int]], target_shape: tuple[int, ...]):
        """The conv or dense core of a path: its last Conv / Gemm / MatMul as :func:`_conv_core` or
        :func:`_dense_core` describe it (a dense core only if what follows keeps the target's shape), else None."""
        graph = self.graph
        heavy = None
        for h in range(len(chain) - 1, -1, -1):
            if isinstance(ir.op_of(graph, chain[h][0]), (O.Conv, O.Gemm, O.MatMul)):
                heavy = h
                break
        if heavy is None:
            return None
        keeps = all(
            isinstance(ir.op_of(graph, n), _SHAPE_KEEPING)
            and self.nodes.shapes.get(n, ir.shape_of(graph, n)) == target_shape
            for n, _ in chain[heavy + 1 :]
        )
        heavy_shape = tuple(ir.shape_of(graph, chain[heavy][0]))
        core = _conv_core(graph, chain, heavy, target_shape)
        if core is None and keeps and heavy_shape == target_shape:
            core = _dense_core(graph, chain, heavy)
        return core

    def _csr_projection(self, row: list[int], src: str, chain, target_name: str) -> np.ndarray:
        """A path with no conv or dense core: its whole linear map as one CSR matrix; returns its fan-out."""
        src_shape = self.nodes.shapes[src]
        n_src = int(math.prod(src_shape))
        s = _to_internal(_map_of_chain(self.graph, chain, n_src), src_shape, self.nodes.shapes[target_name])
        row[P_CORE] = CORE_CSR
        row[P_CSR_ROW] = self.add_csr(s)
        return np.bincount(s.rows, minlength=n_src).astype(np.int64)

    def _core_projection(self, row: list[int], src: str, chain, core) -> np.ndarray:
        """A path through a conv or dense core, the ops before it as a CSR prefix (or, a permutation before a
        dense core, folded into the order of its rows); returns its fan-out."""
        start, mid_shape, params, rows = core
        is_conv = "kh" in params
        row[P_CORE] = CORE_CONV if is_conv else CORE_DENSE
        if is_conv:
            for key, col in _CONV_COLUMNS:
                row[col] = int(params[key])
            mid_fan = _conv_fanout(params)
        else:
            row[P_CIN], row[P_COUT] = int(params["cin"]), int(params["cout"])
            mid_fan = np.full(params["cin"], params["cout"], np.int64)
        prefix = chain[:start]
        src_shape = self.nodes.shapes[src]
        n_src = int(math.prod(src_shape))
        fan = mid_fan
        if prefix or src_shape != mid_shape:
            s = _to_internal(_map_of_chain(self.graph, prefix, n_src), src_shape, mid_shape)
            permutation = (
                s.rows.size == n_src == s.n_out and np.all(s.vals == 1.0)
                and np.array_equal(np.sort(s.rows), np.arange(n_src))
            )
            if permutation and not is_conv:
                # a flatten/reshape before a Gemm: reorder the scatter rows instead of chaining
                mid_of = np.empty(n_src, np.int64)
                mid_of[s.rows] = s.cols
                rows = rows.reshape(-1, params["cout"])[mid_of].reshape(-1)
                row[P_CIN] = n_src
                fan = mid_fan[mid_of]
            else:
                row[P_PREFIX_ROW] = self.add_csr(s)
                fan = np.bincount(s.rows, weights=mid_fan[s.cols], minlength=n_src).astype(np.int64)
        row[P_WOFF] = self.weight_size
        self.weights.append(np.ascontiguousarray(rows, np.float32))
        self.weight_size += rows.size
        return fan

    def pack(self, layout: _Layout) -> dict[str, np.ndarray]:
        """Stage 4 of :func:`lower`: proj_table sorted by source (each node's rows written into the node table),
        the fan-out per neuron, the scatter rows and the CSR arrays; the LoweredGraph fields they fill."""
        node_table = layout.node_table
        self.rows.sort(key=lambda p: p[0])  # stable: keeps path order per source
        proj_table = np.array([r for _, r in self.rows], np.int32).reshape(-1, PROJ_FIELDS)
        for i in range(node_table.shape[0]):
            rows = np.nonzero(proj_table[:, P_SOURCE] == i)[0]
            node_table[i, N_PROJ_START] = rows[0] if rows.size else 0
            node_table[i, N_PROJ_END] = rows[-1] + 1 if rows.size else 0
        fanout = np.zeros(layout.spike_size, np.int64)
        for i, fan in self.fanout_parts.items():
            offset = int(node_table[i, N_SPIKE])
            fanout[offset : offset + int(node_table[i, N_SIZE])] = fan
        if fanout.size and fanout.max() > np.iinfo(np.int32).max:
            raise LoweringError("a neuron reaches more than 2^31 synapses")
        if self.csr_parts:
            indptr = np.concatenate([p[0] for p in self.csr_parts]).astype(np.int64)
            cols = np.concatenate([p[1] for p in self.csr_parts]).astype(np.int32)
            vals = np.concatenate([p[2] for p in self.csr_parts]).astype(np.float32)
        else:
            indptr, cols, vals = np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
        weights = np.concatenate(self.weights).astype(np.float32) if self.weights else np.zeros(0, np.float32)
        return {"proj_table": proj_table, "fanout": fanout.astype(np.int32), "weights": weights,
                "csr_indptr": indptr, "csr_cols": cols, "csr_vals": vals}  # fmt: skip


#: the conv core's parameters (:func:`_conv_core`) and their proj_table columns
_CONV_COLUMNS = (
    ("cin", P_CIN), ("h", P_H), ("w", P_W), ("cout", P_COUT), ("oh", P_OH), ("ow", P_OW), ("kh", P_KH),
    ("kw", P_KW), ("sh", P_SH), ("sw", P_SW), ("pt", P_PT), ("pl", P_PL), ("dh", P_DH), ("dw", P_DW),
    ("cin_g", P_CIN_G), ("ct", P_CT), ("coff", P_COFF),
)  # fmt: skip


def lower(graph: nx.DiGraph) -> LoweredGraph:
    """Lower a spiking graph to the flat arrays the kernels run.

    In four stages: collect the nodes (:func:`_collect_nodes`), lay out their
    rows of the node table (:func:`_lay_out_nodes`), then for every target in
    order its paths (:func:`_target_paths`), constant current
    (:class:`_Currents`) and one projection per path (:class:`_Projections`),
    and pack the projection tables (:meth:`_Projections.pack`).

    Parameters
    ----------
    graph : a spiking IR graph (the output of the conversion passes, or one
        built by hand) that obeys the spiking graph contract.

    Returns
    -------
    LoweredGraph

    Raises
    ------
    LoweringError
        if the graph breaks the contract: no single analog input, not exactly
        one output accumulator, an op between spiking nodes that is not a
        linear projection, mixed modes, or (mode ``bsnn``) sources of a
        population that are not all one stage earlier.
    """
    nodes = _collect_nodes(graph)
    layout = _lay_out_nodes(graph, nodes)
    currents = _Currents(nodes, layout.state_size)
    projections = _Projections(graph, nodes)
    for i, name in enumerate(nodes.names):
        if isinstance(ir.op_of(graph, name), O.MaxGate):
            continue
        paths = _target_paths(graph, nodes, name)
        currents.add(graph, layout.node_table, i, name, paths)
        for src, chain in paths:
            projections.add_path(src, chain, i)
    packed = projections.pack(layout)
    return LoweredGraph(
        graph=graph,
        mode=nodes.mode,
        phases=nodes.phases,
        names=nodes.names,
        node_table=layout.node_table,
        node_threshold=layout.threshold,
        node_v0=layout.v0,
        initial_potential=layout.initial_potential,
        ceiling=layout.ceiling,
        gate_table=np.array(layout.gate_rows, np.int32).reshape(-1, GATE_FIELDS),
        bias=currents.bias,
        state_size=layout.state_size,
        spike_size=layout.spike_size,
        candidate_size=layout.candidate_size,
        emitted_size=layout.emitted_size,
        drive_size=currents.drive_size,
        output=nodes.index[nodes.output_name],
        output_order=_inverse(nodes.orders[nodes.output_name]).astype(np.int32),
        input_name=nodes.input_name,
        input_shape=tuple(ir.shape_of(graph, nodes.input_name)),
        input_targets=currents.input_targets,
        drive_subgraphs=currents.drive_subgraphs,
        shapes=nodes.shapes,
        orders=nodes.orders,
        ann_macs=int(sum(macs(graph, n) for n in graph.nodes)),
        input_macs=int(projections.input_macs),
        **packed,
    )


def _conv_fanout(p: dict) -> np.ndarray:
    """Synapses reached by one spike of each input neuron (internal layout) of a conv scatter."""
    counts_y = np.zeros(p["h"], np.int64)
    for iy in range(p["h"]):
        for ky in range(p["kh"]):
            num = iy + p["pt"] - ky * p["dh"]
            if num >= 0 and num % p["sh"] == 0 and num // p["sh"] < p["oh"]:
                counts_y[iy] += 1
    counts_x = np.zeros(p["w"], np.int64)
    for ix in range(p["w"]):
        for kx in range(p["kw"]):
            num = ix + p["pl"] - kx * p["dw"]
            if num >= 0 and num % p["sw"] == 0 and num // p["sw"] < p["ow"]:
                counts_x[ix] += 1
    per_position = (counts_y[:, None] * counts_x[None, :]).reshape(-1) * p["cout"]  # (H*W,)
    return np.repeat(per_position, p["cin"])  # internal order: (y, x, c)
