"""canonicalise: rewrite an imported ANN into the small op vocabulary the later passes expect.

Rewrites, applied until none matches (each is exact, or argmax-invariant
where stated):

- ``Dropout(x)``, ``Identity(x)``, ``Sum(x)`` -> ``x`` (identities at inference).
- trailing ``Softmax`` / ``LogSoftmax`` over the class axis of a graph
  output ((classes,), or (classes, 1, ..., 1) over axis 1, per sample) ->
  removed (monotone per sample, so the argmax is unchanged);
  recorded in metadata ``bsnn.removed_output_op``. A softmax anywhere else
  is left for to_spiking to refuse.
- ``Add(MatMul(x, W), c)`` -> ``Gemm(x, W^T, c)`` and a lone ``MatMul`` ->
  ``Gemm`` (bias-free), when ``x`` is a (features,) vector per sample and
  ``c`` broadcasts to (out_features,). ``Add(Conv|Gemm, c)`` with ``c``
  constant per output channel -> bias of the Conv/Gemm. Refused (left as
  they are) when the linear op has other consumers.
- ``Reshape(x, (features,))`` -> ``Flatten(x)`` (same values, the op the
  spiking contract names); a Reshape to the shape it already has -> ``x``.
- ``Sum(x, y)`` -> ``Add(x, y)``; a Sum of more inputs -> a chain of Adds.
- ``Clip(x, 0, None)`` -> ``Relu(x)``; ``Clip(x, None, None)`` -> ``x``.
  ``Clip(x, 0, 6)`` (ReLU6) stays: to_spiking makes it a population with a
  ceiling.
- constant input normalisation: a chain of ``Sub`` / ``Mul`` / ``Div`` /
  ``Add`` by constants right after an Input, read (through Flatten/Reshape)
  by one Conv or Gemm, is folded into that linear op:
  ``W' = W . a``, ``b' = b + W * beta`` for the chain ``y = a x + beta``
  (see :mod:`passes._affine`; a padded Conv gets the exact border-aware
  contribution as an ``Add(constant)`` after it). Refused (left in place;
  to_spiking then names it) when ``a`` varies within a channel of a Conv
  input, when a chain node has several consumers, or for ``c / x``.
- ``LeakyRelu(x)`` / ``PRelu(x)`` (slope ``a``, scalar or per channel) ->
  ``Add(Relu(x), Mul(Relu(Mul(x, -1)), -a))``, i.e.
  ``y = ReLU(x) - a ReLU(-x)`` (exact: one of the two is 0): two
  populations ``<name>_positive`` and ``<name>_negative`` reading the same
  sources (so of the same stage; the second's lambda comes from the
  negative activations), summed linearly by the Add, which keeps the
  node's name. Slope 0 everywhere gives ``Relu(x)``.
- ``Relu(MaxPool(x))`` -> ``MaxPool(Relu(x))`` (and the same for
  ``Clip(0, c)``): a non-decreasing function commutes with max, so the two
  are equal (every window holds at least one real element); the spec wants
  every max pool to read spikes. ``Relu(Relu(x))`` -> ``Relu(x)``.
- ``MaxPool(Concat(a, b, ...; axis=1))`` -> ``Concat(MaxPool(a), MaxPool(b), ...)``
  (SqueezeNet, Inception): max pooling acts per channel, so pooling each
  part is the same; each part then reads its own population, as a max gate
  must. The Concat stays when it has other readers. Not applied to a Concat
  along a spatial axis (a window would straddle the parts).
- ``MaxPool(MaxPool(x))`` -> ``MaxPool(x)`` (Inception's pool branch after
  a stage pool): the max of maxes is the max over the union of the composed
  windows, which along each axis is the window of kernel ``k1 + (k2 - 1) s1``,
  stride ``s1 s2``, begin padding ``p1 + p2 s1`` (the end padding and ceil
  mode found to give the same output size), when that pooling's windows are
  exactly those unions (checked window by window); else it is left for
  to_spiking to refuse. Dilated pools are left alone.
"""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O

from ._affine import find_linear_reader, fold_affine_into, per_sample
from ._infra import NodeRefusal, Pass, bypass, is_population_activation, single_consumer

__all__ = ["canonicalise"]


def _drop_identities(graph: nx.DiGraph, name: str, op: O.Op) -> bool:
    if isinstance(op, (O.Dropout, O.Identity)) or (isinstance(op, O.Sum) and len(ir.inputs_of(graph, name)) == 1):
        bypass(graph, name)
        return True
    if isinstance(op, O.Clip) and op.min is None and op.max is None:
        bypass(graph, name)
        return True
    if isinstance(op, O.Reshape) and tuple(op.shape) == ir.shape_of(graph, ir.inputs_of(graph, name)[0]):
        bypass(graph, name)
        return True
    return False


def _drop_output_softmax(graph: nx.DiGraph, name: str, op: O.Op) -> bool:
    if not isinstance(op, O.Softmax) or name not in graph.graph["outputs"] or ir.consumers(graph, name):
        return False
    shape = ir.shape_of(graph, name)
    rank = len(shape) + 1
    axis = op.axis if op.axis >= 0 else op.axis + rank
    # over the class axis: (classes,), or (classes, 1, ..., 1) over axis 1 (SqueezeNet's GAP -> Softmax)
    if axis != 1 or any(d != 1 for d in shape[1:]):
        return False
    bypass(graph, name)
    removed = graph.graph["metadata"].get("bsnn.removed_output_op")
    graph.graph["metadata"]["bsnn.removed_output_op"] = f"{removed},{op.op_type}" if removed else op.op_type
    return True


def _bias_of(graph: nx.DiGraph, linear: str, add: str) -> np.ndarray | None:
    """The Add constant as a (out_channels,) bias, or None when it is not one."""
    constant = ir.op_of(graph, add).constant
    shape = ir.shape_of(graph, linear)
    if constant is None or ir.shape_of(graph, add) != shape:
        return None
    full = per_sample(constant, shape).reshape(shape[0], -1)
    if not np.all(full == full[:, :1]):
        return None
    return full[:, 0]


def _to_gemm(graph: nx.DiGraph, name: str, op: O.Op) -> bool:
    if isinstance(op, O.MatMul):
        if len(ir.shape_of(graph, ir.inputs_of(graph, name)[0])) != 1:
            return False
        graph.nodes[name]["op"] = O.Gemm(weight=np.ascontiguousarray(op.weight.T), bias=None)
        return True
    if isinstance(op, (O.Conv, O.Gemm)):
        add = single_consumer(graph, name)
        if add is None or not isinstance(ir.op_of(graph, add), O.Add):
            return False
        bias = _bias_of(graph, name, add)
        if bias is None:
            return False
        old = op.bias.astype(np.float64) if op.bias is not None else 0.0
        op.bias = (old + bias).astype(np.float32)
        bypass(graph, add)
        return True
    return False


def _reshape_to_flatten(graph: nx.DiGraph, name: str, op: O.Op) -> bool:
    if isinstance(op, O.Reshape) and len(op.shape) == 1:
        graph.nodes[name]["op"] = O.Flatten(axis=1)
        return True
    return False


def _sum_to_add(graph: nx.DiGraph, name: str, op: O.Op) -> bool:
    if not isinstance(op, O.Sum):
        return False
    inputs = ir.inputs_of(graph, name)
    if len(inputs) < 2 or len({ir.shape_of(graph, s) for s in inputs}) != 1:
        return False
    running = inputs[0]
    for src in inputs[1:-1]:
        running = ir.add_node(graph, ir.unique_name(graph, f"{name}_partial"), O.Add(), [running, src])
    graph.nodes[name]["op"] = O.Add()
    ir.set_inputs(graph, name, [running, inputs[-1]])
    return True


def _clip_to_relu(graph: nx.DiGraph, name: str, op: O.Op) -> bool:
    if isinstance(op, O.Clip) and op.min == 0 and op.max is None:
        graph.nodes[name]["op"] = O.Relu()
        return True
    return False


def _split_leaky_relu(graph: nx.DiGraph, name: str, op: O.Op) -> bool:
    if not isinstance(op, (O.LeakyRelu, O.PRelu)):
        return False
    slope = np.asarray(op.alpha if isinstance(op, O.LeakyRelu) else op.slope, np.float32)
    if not np.any(slope != 0):
        graph.nodes[name]["op"] = O.Relu()
        return True
    (x,) = ir.inputs_of(graph, name)
    positive = ir.add_node(graph, ir.unique_name(graph, f"{name}_positive"), O.Relu(), [x])
    negate = ir.add_node(graph, ir.unique_name(graph, f"{name}_negate"), O.Mul(constant=np.float32(-1.0)), [x])
    negative = ir.add_node(graph, ir.unique_name(graph, f"{name}_negative"), O.Relu(), [negate])
    scaled = ir.add_node(graph, ir.unique_name(graph, f"{name}_slope"), O.Mul(constant=-slope), [negative])
    graph.nodes[name]["op"] = O.Add()
    ir.set_inputs(graph, name, [positive, scaled])
    return True


def _relu_before_maxpool(graph: nx.DiGraph, name: str, op: O.Op) -> bool:
    if not is_population_activation(op):
        return False
    (src,) = ir.inputs_of(graph, name)
    src_op = ir.op_of(graph, src)
    if isinstance(src_op, O.Relu) and isinstance(op, O.Relu):
        bypass(graph, name)
        return True
    if not isinstance(src_op, O.MaxPool) or single_consumer(graph, src) != name:
        return False
    (x,) = ir.inputs_of(graph, src)
    ir.set_inputs(graph, name, [x])
    ir.replace_uses(graph, name, src)
    ir.set_inputs(graph, src, [name])
    graph.nodes[name]["shape"] = ir.shape_of(graph, x)
    return True


def _maxpool_through_concat(graph: nx.DiGraph, name: str, op: O.Op) -> bool:
    if not isinstance(op, O.MaxPool):
        return False
    (concat,) = ir.inputs_of(graph, name)
    concat_op = ir.op_of(graph, concat)
    if not isinstance(concat_op, O.Concat):
        return False
    rank = len(ir.shape_of(graph, concat)) + 1
    if (concat_op.axis if concat_op.axis >= 0 else concat_op.axis + rank) != 1:
        return False  # a max window would mix the concatenated parts
    pools = []
    for i, branch in enumerate(ir.inputs_of(graph, concat)):
        pool = ir.unique_name(graph, f"{name}_part{i}")
        pools.append(ir.add_node(graph, pool, dataclasses.replace(op), [branch]))
    graph.nodes[name]["op"] = O.Concat(axis=1)
    ir.set_inputs(graph, name, pools)
    if not ir.consumers(graph, concat) and concat not in graph.graph["outputs"]:
        ir.remove_node(graph, concat)
    return True


def _members(size: int, outputs: int, kernel: int, stride: int, pad: int) -> list[set[int]]:
    """The input positions (in [0, size)) of each of ``outputs`` windows along one axis (dilation 1)."""
    return [set(range(max(o * stride - pad, 0), min(o * stride - pad + kernel, size))) for o in range(outputs)]


def _merged_axis(size: int, first: tuple[int, int, int, int], second: tuple[int, int, int, int], outputs: int):
    """(kernel, stride, pad begin, pad end, ceil mode) of one pooling along an axis whose windows are exactly
    the unions of the windows of ``first`` then ``second`` ((kernel, stride, pad begin, pad end) each), or None."""
    (k1, s1, b1, e1), (k2, s2, b2, _) = first, second
    inner = O.pool_output_size(size, k1, s1, b1, e1, 1, False)
    layer1 = _members(size, inner, k1, s1, b1)
    want = [set().union(*(layer1[j] for j in w)) for w in _members(inner, outputs, k2, s2, b2)]
    kernel, stride, begin = k1 + (k2 - 1) * s1, s1 * s2, b1 + b2 * s1
    if begin >= kernel:
        return None
    for end in range(kernel):
        for ceil in (False, True):
            try:
                n = O.pool_output_size(size, kernel, stride, begin, end, 1, ceil)
            except O.ShapeError:
                continue
            if n == outputs and _members(size, n, kernel, stride, begin) == want:
                return kernel, stride, begin, end, ceil
    return None


def _merge_maxpools(graph: nx.DiGraph, name: str, op: O.Op) -> bool:
    """``MaxPool(MaxPool(x))`` -> one ``MaxPool(x)`` whose windows are the unions of the composed windows, when
    such a pooling exists (checked window by window along each axis); max over a union is the max of maxes."""
    if not isinstance(op, O.MaxPool):
        return False
    (inner,) = ir.inputs_of(graph, name)
    inner_op = ir.op_of(graph, inner)
    if not isinstance(inner_op, O.MaxPool) or inner_op.ceil_mode:
        return False
    (x,) = ir.inputs_of(graph, inner)
    shape, out = ir.shape_of(graph, x), ir.shape_of(graph, name)
    spatial = len(shape) - 1
    axes = []
    for i in range(spatial):
        def window(pool, i=i):
            pads = tuple(pool.pads) or (0,) * (2 * spatial)
            return pool.kernel_shape[i], (tuple(pool.strides) or (1,) * spatial)[i], pads[i], pads[i + spatial]
        if any((tuple(pool.dilations) or (1,) * spatial)[i] != 1 for pool in (op, inner_op)):
            return False
        merged = _merged_axis(shape[1 + i], window(inner_op), window(op), out[1 + i])
        if merged is None:
            return False
        axes.append(merged)
    if len({a[4] for a in axes}) > 1:  # one ceil mode for every axis
        return False
    graph.nodes[name]["op"] = O.MaxPool(kernel_shape=tuple(a[0] for a in axes), strides=tuple(a[1] for a in axes),
                                        pads=tuple(a[2] for a in axes) + tuple(a[3] for a in axes),
                                        dilations=(1,) * spatial, ceil_mode=axes[0][4])
    ir.set_inputs(graph, name, [x])
    if not ir.consumers(graph, inner) and inner not in graph.graph["outputs"]:
        ir.remove_node(graph, inner)
    return True


_AFFINE = (O.Sub, O.Mul, O.Div, O.Add)


def _fold_input_normalisation(graph: nx.DiGraph, name: str, op: O.Op) -> bool:
    if not isinstance(op, O.Input):
        return False
    shape = ir.shape_of(graph, name)
    a, b = np.ones(shape), np.zeros(shape)
    chain = []
    node = single_consumer(graph, name) if len(ir.consumers(graph, name)) == 1 else None
    while node is not None:
        nop = ir.op_of(graph, node)
        if not isinstance(nop, _AFFINE) or nop.constant is None or ir.shape_of(graph, node) != shape:
            break
        c = per_sample(nop.constant, shape)
        if isinstance(nop, O.Sub):
            a, b = (-a, c - b) if nop.constant_first else (a, b - c)
        elif isinstance(nop, O.Add):
            b = b + c
        elif isinstance(nop, O.Mul):
            a, b = a * c, b * c
        elif nop.constant_first:  # c / x is not affine
            break
        else:
            a, b = a / c, b / c
        chain.append(node)
        node = single_consumer(graph, node)
    if not chain:
        return False
    found = find_linear_reader(graph, chain[-1])
    if found is None:
        return False
    linear, _reshapes = found
    target = ir.shape_of(graph, ir.inputs_of(graph, linear)[0])
    try:
        fold_affine_into(graph, linear, a.reshape(target), b.reshape(target), culprit=chain[0])
    except NodeRefusal:  # a varies within a Conv input channel: leave the chain for to_spiking to name
        return False
    for node in chain:
        bypass(graph, node)
    return True


_RULES = (
    _drop_identities,
    _drop_output_softmax,
    _to_gemm,
    _reshape_to_flatten,
    _sum_to_add,
    _clip_to_relu,
    _split_leaky_relu,
    _relu_before_maxpool,
    _maxpool_through_concat,
    _merge_maxpools,
    _fold_input_normalisation,
)


def _canonicalise(graph: nx.DiGraph) -> bool:
    modified = False
    changed = True
    while changed:
        changed = False
        for name in ir.topological_order(graph):
            if name not in graph:
                continue
            op = ir.op_of(graph, name)
            for rule in _RULES:
                if rule(graph, name, op):
                    changed = modified = True
                    break
            if changed:
                break  # the graph changed under the iteration: start over
    ir.infer_shapes(graph)
    return modified


canonicalise = Pass(
    name="canonicalise",
    description="drop Dropout/Identity/output Softmax, MatMul+Add->Gemm, fold input normalisation, ReLU before MaxPool",
    rewrite=_canonicalise,
)
