"""Reference ANN executor: evaluates an IR graph on a batch with numpy.

It is the ground truth the passes are checked against, and it also gives
the *ANN meaning* of the spiking ops (a population is ReLU of the sum of its
inputs, clipped at its ``ceiling``; a synchronous neuron the identity, a max gate a max pool, the output
accumulator the identity), so a converted graph can be evaluated as the
normalised ANN it encodes. Everything is computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import networkx as nx
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import ops as O
from .data import fit_to_input
from .errors import DataError
from .ir import consumers, inputs_of, op_of, topological_order

__all__ = ["apply_op", "conv_nd", "evaluate", "iterate_activations", "pool_nd", "sliding_windows"]


def _spatial_params(op, spatial: int):
    strides = tuple(op.strides) or (1,) * spatial
    pads = tuple(op.pads) or (0,) * (2 * spatial)
    dilations = tuple(getattr(op, "dilations", ()) or ()) or (1,) * spatial
    return strides, pads, dilations


def _window_view(xp: np.ndarray, kernel, strides, dilations, outs):
    """Window view (N, C, *outs, *kernel) of an already padded ``xp``."""
    spatial = xp.ndim - 2
    ext = [dilations[i] * (kernel[i] - 1) + 1 for i in range(spatial)]
    win = sliding_window_view(xp, ext, axis=tuple(range(2, 2 + spatial)))
    index = (slice(None), slice(None))
    index += tuple(slice(0, (outs[i] - 1) * strides[i] + 1, strides[i]) for i in range(spatial))
    index += tuple(slice(None, None, dilations[i]) for i in range(spatial))
    return win[index]


def _window_geometry(sizes, kernel, strides, pads, dilations, ceil_mode: bool):
    """Output sizes and the extra end padding a ceil-mode window needs."""
    spatial = len(sizes)
    outs, extra = [], []
    for i in range(spatial):
        ext = dilations[i] * (kernel[i] - 1) + 1
        out = O.pool_output_size(sizes[i], kernel[i], strides[i], pads[i], pads[i + spatial], dilations[i], ceil_mode)
        outs.append(out)
        extra.append(max((out - 1) * strides[i] + ext - (sizes[i] + pads[i] + pads[i + spatial]), 0))
    return outs, extra


def sliding_windows(x: np.ndarray, kernel, strides, pads, dilations, ceil_mode: bool, fill: float):
    """Strided window view (N, C, *out, *kernel) of ``x`` padded with ``fill``."""
    spatial = x.ndim - 2
    outs, extra = _window_geometry(x.shape[2:], kernel, strides, pads, dilations, ceil_mode)
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial] + extra[i]) for i in range(spatial)]
    xp = np.pad(x, widths, constant_values=fill) if any(sum(w) for w in widths) else x
    return _window_view(xp, kernel, strides, dilations, outs), outs, extra


#: bytes of the im2col block a convolution may copy at once (conv_nd works by blocks of samples and output rows)
CONV_BLOCK_BYTES = 32 << 20


def conv_nd(x: np.ndarray, weight: np.ndarray, bias, strides=(), pads=(), dilations=(), group: int = 1) -> np.ndarray:
    """ONNX Conv on a batch ``x`` of shape (N, C, *spatial).

    The windows are a strided view of the padded input; the product copies
    them (im2col) one block of samples x output rows (first spatial axis) at
    a time, each block at most :data:`CONV_BLOCK_BYTES` (one output row of
    one sample at least), so memory beyond input and output is bounded.
    """
    spatial = x.ndim - 2
    strides = tuple(strides) or (1,) * spatial
    pads = tuple(pads) or (0,) * (2 * spatial)
    dilations = tuple(dilations) or (1,) * spatial
    win, outs, _ = sliding_windows(x, weight.shape[2:], strides, pads, dilations, False, 0.0)
    n, channels = x.shape[:2]
    per_group_in = channels // group
    per_group_out = weight.shape[0] // group
    out = np.empty((n, weight.shape[0], *outs), dtype=np.float32)
    win_axes = [1] + list(range(2 + spatial, 2 + 2 * spatial))
    w_axes = list(range(1, 2 + spatial))
    # bytes of the copied windows for one output row (first spatial axis) of one sample and group
    row_bytes = 4 * per_group_in * math.prod(weight.shape[2:]) * math.prod(outs[1:])
    rows_per_block = max(1, min(outs[0] if spatial else 1, CONV_BLOCK_BYTES // max(row_bytes, 1)))
    samples_per_block = max(1, CONV_BLOCK_BYTES // max(row_bytes * (outs[0] if spatial else 1), 1))
    row_starts = range(0, outs[0], rows_per_block) if spatial else [0]
    for g in range(group):
        wg = weight[g * per_group_out : (g + 1) * per_group_out]
        out_channels = slice(g * per_group_out, (g + 1) * per_group_out)
        for s0 in range(0, n, samples_per_block):
            samples = slice(s0, s0 + samples_per_block)
            for r0 in row_starts:
                rows = (slice(r0, r0 + rows_per_block),) if spatial else ()
                xg = win[(samples, slice(g * per_group_in, (g + 1) * per_group_in)) + rows]
                yg = np.tensordot(xg, wg, axes=(win_axes, w_axes))  # (n_block, *outs_block, Og)
                out[(samples, out_channels) + rows] = np.moveaxis(yg, -1, 1)
    if bias is not None:
        out += bias.reshape((1, -1) + (1,) * spatial)
    return out


def pool_nd(x: np.ndarray, op) -> np.ndarray:
    """MaxPool / AveragePool (and the max gate's ANN meaning) with ONNX semantics."""
    spatial = x.ndim - 2
    strides, pads, dilations = _spatial_params(op, spatial)
    ceil_mode = bool(getattr(op, "ceil_mode", False))
    win_axes = tuple(range(x.ndim, x.ndim + spatial))
    if isinstance(op, O.AveragePool):
        win, outs, extra = sliding_windows(x, op.kernel_shape, strides, pads, dilations, ceil_mode, 0.0)
        total = win.sum(axis=win_axes, dtype=np.float32)
        # divisor: window members inside the input, or inside input + explicit
        # pads with count_include_pad; the ceil-mode overhang never counts
        inside = [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)]
        ones = np.ones((1, 1) + x.shape[2:], np.float32)
        indicator = np.pad(ones, inside, constant_values=float(op.count_include_pad))
        indicator = np.pad(indicator, [(0, 0), (0, 0)] + [(0, e) for e in extra])
        count = _window_view(indicator, op.kernel_shape, strides, dilations, outs).sum(axis=win_axes, dtype=np.float32)
        return (total / np.maximum(count, 1.0)).astype(np.float32)
    win, _, _ = sliding_windows(x, op.kernel_shape, strides, pads, dilations, ceil_mode, -np.inf)
    return win.max(axis=win_axes)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def _binary(op, x):
    c = op.constant
    a, b = (c, x) if op.constant_first else (x, c)
    if isinstance(op, O.Sub):
        return a - b
    if isinstance(op, O.Mul):
        return a * b
    return a / b


def _pad(x: np.ndarray, op: O.Pad) -> np.ndarray:
    rank = x.ndim
    begins, ends = op.pads[:rank], op.pads[rank:]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    mode = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}[op.mode]
    kwargs = {"constant_values": op.value} if mode == "constant" else {}
    y = np.pad(x, widths, mode=mode, **kwargs)
    crop = tuple(slice(max(-b, 0), y.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(begins, ends)))
    return y[crop]


def apply_op(op: O.Op, args: list[np.ndarray]) -> np.ndarray:
    """The ANN meaning of one op on its (batched, float32) inputs: the rule ``evaluate`` applies per node."""
    x = args[0] if args else None
    if isinstance(op, O.Conv):
        return conv_nd(x, op.weight, op.bias, op.strides, op.pads, op.dilations, op.group)
    if isinstance(op, O.Gemm):
        y = x @ op.weight.T
        return y + op.bias if op.bias is not None else y
    if isinstance(op, O.MatMul):
        return x @ op.weight
    if isinstance(op, O.BatchNormalization):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        inv = (op.scale / np.sqrt(op.var + np.float32(op.epsilon))).astype(np.float32)
        return (x - op.mean.reshape(shape)) * inv.reshape(shape) + op.bias.reshape(shape)
    if isinstance(op, O.Population):  # includes SynchronousNeuron
        total = args[0]
        for a in args[1:]:
            total = total + a
        if isinstance(op, O.SynchronousNeuron):
            return total
        ceiling = np.asarray(op.ceiling, np.float32)
        if ceiling.ndim:  # per channel (axis 1)
            ceiling = ceiling.reshape((1, -1) + (1,) * (total.ndim - 2))
        return np.minimum(np.maximum(total, 0), ceiling)
    if isinstance(op, O.Relu):
        return np.maximum(x, 0)
    if isinstance(op, (O.LeakyRelu, O.PRelu)):
        slope = np.float32(op.alpha) if isinstance(op, O.LeakyRelu) else op.slope
        return np.where(x >= 0, x, x * slope).astype(np.float32)
    if isinstance(op, O.Clip):
        lo = -np.inf if op.min is None else op.min
        hi = np.inf if op.max is None else op.max
        return np.clip(x, lo, hi)
    if isinstance(op, (O.MaxPool, O.AveragePool, O.MaxGate)):
        return pool_nd(x, op)
    if isinstance(op, O.GlobalAveragePool):
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float32)
    if isinstance(op, O.Add):
        return x + op.constant if op.constant is not None else args[0] + args[1]
    if isinstance(op, O.Sum):
        total = args[0]
        for a in args[1:]:
            total = total + a
        return total
    if isinstance(op, (O.Sub, O.Mul, O.Div)):
        return _binary(op, x)
    if isinstance(op, O.Flatten):
        return x.reshape(x.shape[0], -1)
    if isinstance(op, O.Reshape):
        return x.reshape((x.shape[0],) + tuple(op.shape))
    if isinstance(op, O.Transpose):
        return np.ascontiguousarray(np.transpose(x, op.perm))
    if isinstance(op, O.Concat):
        return np.concatenate(args, axis=op.axis)
    if isinstance(op, O.Pad):
        return _pad(x, op)
    if isinstance(op, (O.Dropout, O.Identity, O.OutputAccumulator)):
        return x
    if isinstance(op, O.LogSoftmax):
        s = x - x.max(axis=op.axis, keepdims=True)
        return s - np.log(np.exp(s).sum(axis=op.axis, keepdims=True))
    if isinstance(op, O.Softmax):
        return _softmax(x, op.axis)
    raise NotImplementedError(f"no reference implementation for {op.op_type}")


def _feeds(graph: nx.DiGraph, x) -> dict[str, np.ndarray]:
    names = graph.graph["inputs"]
    if isinstance(x, dict):
        feeds = dict(x)
    else:
        if len(names) != 1:
            raise DataError(f"graph has inputs {names}; pass a dict input name -> array")
        feeds = {names[0]: x}
    out = {}
    for name in names:
        if name not in feeds:
            raise DataError(f"missing graph input {name!r} (inputs given: {', '.join(map(repr, feeds)) or 'none'})")
        arr = np.asarray(feeds[name], dtype=np.float32)
        # the same check as the CLI: exact fit or a missing unit channel axis
        out[name] = fit_to_input(arr, tuple(graph.nodes[name]["shape"]), source=f"input {name!r}")
    return out


def iterate_activations(graph: nx.DiGraph, x, keep: Iterable[str] = ()):
    """Evaluate ``graph`` on the batch ``x``, yielding ``(name, activation)`` in topological order.

    Activations are freed once their last consumer has run (unless named in
    ``keep`` or a graph output), so peak memory stays near the widest cut of
    the graph.
    """
    values = _feeds(graph, x)
    keep = set(keep) | set(graph.graph["outputs"])
    remaining = {n: len(consumers(graph, n)) for n in graph.nodes}
    for name in topological_order(graph):
        op = op_of(graph, name)
        if not isinstance(op, O.Input):
            srcs = inputs_of(graph, name)
            values[name] = np.asarray(apply_op(op, [values[s] for s in srcs]), dtype=np.float32)
            for s in set(srcs):
                remaining[s] -= 1
                if remaining[s] == 0 and s not in keep:
                    del values[s]
        yield name, values[name]


def evaluate(graph: nx.DiGraph, x, outputs: list[str] | None = None):
    """Run the graph on a batch.

    Parameters
    ----------
    graph : the IR graph.
    x : ndarray of shape (N, *input_shape), or a dict input name -> ndarray.
    outputs : node names whose activations to return; default the graph outputs.

    Returns
    -------
    ndarray if a single output is asked for (the default for a one-output
    graph), else a dict name -> ndarray.
    """
    wanted = list(outputs) if outputs is not None else list(graph.graph["outputs"])
    result = {}
    for name, value in iterate_activations(graph, x, keep=wanted):
        if name in wanted:
            result[name] = value
    if len(wanted) == 1:
        return result[wanted[0]]
    return result


def macs(graph: nx.DiGraph, name: str) -> int:
    """Multiply-accumulates per sample of node ``name`` (0 for ops without any)."""
    op = op_of(graph, name)
    out = graph.nodes[name]["shape"]
    if isinstance(op, O.Conv):
        return int(math.prod(out) * math.prod(op.weight.shape[1:]))
    if isinstance(op, O.Gemm):
        return int(op.weight.size)
    if isinstance(op, O.MatMul):
        return int(math.prod(out) * op.weight.shape[0])
    return 0
