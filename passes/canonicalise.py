"""canonicalise: rewrite an imported ANN into the small op vocabulary the later passes expect.

Rewrites, each a :class:`passes.rules.Rule` (its name in brackets), applied
in sweeps to a fixed point by :func:`passes.rules.apply_rules` (which, with
``explain``, says why each rule did or did not match each candidate node);
each is exact, or argmax-invariant where stated:

- [drop_identity] ``Dropout(x)``, ``Identity(x)``, ``Sum(x)``, ``Clip(x,
  None, None)`` and a Reshape to the shape it already has -> ``x``
  (identities at inference).
- [drop_output_softmax] trailing ``Softmax`` / ``LogSoftmax`` over the class
  axis of a graph output ((classes,), or (classes, 1, ..., 1) over axis 1,
  per sample) -> removed (monotone per sample, so the argmax is unchanged);
  recorded in metadata ``bsnn.removed_output_op``. A softmax anywhere else
  is left for to_spiking to refuse.
- [matmul_to_gemm] a ``MatMul`` -> ``Gemm`` (bias-free) when ``x`` is a
  (features,) vector per sample; [bias_into_linear] ``Add(Conv|Gemm, c)``
  with ``c`` constant per output channel -> bias of the Conv/Gemm (so
  ``Add(MatMul(x, W), c)`` -> ``Gemm(x, W^T, c)``). Refused (left as they
  are) when the linear op has other consumers.
- [reshape_to_flatten] ``Reshape(x, (features,))`` -> ``Flatten(x)`` (same
  values, the op the spiking contract names).
- [sum_to_add] ``Sum(x, y)`` -> ``Add(x, y)``; a Sum of more inputs -> a
  chain of Adds.
- [clip_to_relu] ``Clip(x, 0, None)`` -> ``Relu(x)``. ``Clip(x, 0, 6)``
  (ReLU6) stays: to_spiking makes it a population with a ceiling.
- [split_leaky_relu] ``LeakyRelu(x)`` / ``PRelu(x)`` (slope ``a``, scalar or
  per channel) -> ``Add(Relu(x), Mul(Relu(Mul(x, -1)), -a))``, i.e.
  ``y = ReLU(x) - a ReLU(-x)`` (exact: one of the two is 0): two
  populations ``<name>_positive`` and ``<name>_negative`` reading the same
  sources (so of the same stage; the second's lambda comes from the
  negative activations), summed linearly by the Add, which keeps the
  node's name. Slope 0 everywhere gives ``Relu(x)``.
- [drop_double_relu] ``Relu(Relu(x))`` -> ``Relu(x)``.
- [relu_before_maxpool] ``Relu(MaxPool(x))`` -> ``MaxPool(Relu(x))`` (and the
  same for ``Clip(0, c)``): a non-decreasing function commutes with max, so
  the two are equal (every window holds at least one real element); the
  spec wants every max pool to read spikes.
- [maxpool_through_concat] ``MaxPool(Concat(a, b, ...; axis=1))`` ->
  ``Concat(MaxPool(a), MaxPool(b), ...)`` (SqueezeNet, Inception): max
  pooling acts per channel, so pooling each part is the same; each part
  then reads its own population, as a max gate must. The Concat stays when
  it has other readers. Not applied to a Concat along a spatial axis (a
  window would straddle the parts).
- [merge_maxpools] ``MaxPool(MaxPool(x))`` -> ``MaxPool(x)`` (Inception's
  pool branch after a stage pool): the max of maxes is the max over the
  union of the composed windows, which along each axis is the window of
  kernel ``k1 + (k2 - 1) s1``, stride ``s1 s2``, begin padding ``p1 + p2 s1``
  (the end padding and ceil mode found to give the same output size), when
  that pooling's windows are exactly those unions (checked window by
  window); else it is left for to_spiking to refuse. Dilated pools are left
  alone.
- [fold_input_normalisation] constant input normalisation: a chain of
  ``Sub`` / ``Mul`` / ``Div`` / ``Add`` by constants right after an Input,
  read (through Flatten/Reshape) by one Conv or Gemm, is folded into that
  linear op: ``W' = W . a``, ``b' = b + W * beta`` for the chain ``y = a x +
  beta`` (see :mod:`passes._affine`; a padded Conv gets the exact
  border-aware contribution as an ``Add(constant)`` after it). Refused
  (left in place; to_spiking then names it) when ``a`` varies within a
  channel of a Conv input, when a chain node has several consumers, or for
  ``c / x``.

The pass refuses nothing itself: what it leaves, to_spiking names.
"""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O

from ._affine import find_linear_reader, fold_affine_into, fold_problem, per_sample
from ._infra import Pass, bypass, is_population_activation, single_consumer
from .rules import Explain, Match, NoMatch, Rule, apply_rules

__all__ = ["RULES", "canonicalise"]


def _readers(graph: nx.DiGraph, name: str) -> str:
    """A reason naming why ``name`` has no single consumer."""
    users = ir.consumers(graph, name)
    if name in graph.graph["outputs"]:
        return f"{name!r} is a graph output"
    return f"{name!r} has {len(users)} readers" if len(users) != 1 else f"{name!r} is read twice by {users[0]!r}"


# --------------------------------------------------------------------------- identities


def _check_identity(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    op = ir.op_of(graph, name)
    if isinstance(op, O.Sum) and len(ir.inputs_of(graph, name)) != 1:
        return NoMatch(f"a Sum of {len(ir.inputs_of(graph, name))} inputs")
    if isinstance(op, O.Clip) and not (op.min is None and op.max is None):
        return NoMatch(f"Clip(min={op.min}, max={op.max}) bounds its input")
    if isinstance(op, O.Reshape):
        before = ir.shape_of(graph, ir.inputs_of(graph, name)[0])
        if tuple(op.shape) != before:
            return NoMatch(f"reshapes {before} to {tuple(op.shape)}")
    return Match()


def _check_output_softmax(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    op = ir.op_of(graph, name)
    if name not in graph.graph["outputs"] or ir.consumers(graph, name):
        return NoMatch("not a trailing graph output (only an output Softmax is removed)")
    shape = ir.shape_of(graph, name)
    axis = op.axis if op.axis >= 0 else op.axis + len(shape) + 1
    # over the class axis: (classes,), or (classes, 1, ..., 1) over axis 1 (SqueezeNet's GAP -> Softmax)
    if axis != 1 or any(d != 1 for d in shape[1:]):
        return NoMatch(f"over axis {op.axis} of {shape} per sample, not the class axis")
    return Match()


def _drop_output_softmax(graph: nx.DiGraph, name: str, match: Match) -> None:
    op_type = ir.op_of(graph, name).op_type
    bypass(graph, name)
    removed = graph.graph["metadata"].get("bsnn.removed_output_op")
    graph.graph["metadata"]["bsnn.removed_output_op"] = f"{removed},{op_type}" if removed else op_type


# --------------------------------------------------------------------------- linear ops


def _check_matmul(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    shape = ir.shape_of(graph, ir.inputs_of(graph, name)[0])
    if len(shape) != 1:
        return NoMatch(f"MatMul on a {shape} input per sample (a Gemm needs a vector)")
    return Match()


def _matmul_to_gemm(graph: nx.DiGraph, name: str, match: Match) -> None:
    op = ir.op_of(graph, name)
    graph.nodes[name]["op"] = O.Gemm(weight=np.ascontiguousarray(op.weight.T), bias=None)


def _check_bias(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    """An ``Add`` of a constant per output channel that alone reads the Conv/Gemm ``name``."""
    add = single_consumer(graph, name)
    if add is None:
        return NoMatch(_readers(graph, name))
    if not isinstance(ir.op_of(graph, add), O.Add):
        return NoMatch(f"read by {add!r} ({ir.op_of(graph, add).op_type}), not an Add")
    constant = ir.op_of(graph, add).constant
    shape = ir.shape_of(graph, name)
    if constant is None or ir.shape_of(graph, add) != shape:
        return NoMatch(f"the Add {add!r} does not add a constant of its shape")
    full = per_sample(constant, shape).reshape(shape[0], -1)
    if not np.all(full == full[:, :1]):
        return NoMatch(f"the constant of {add!r} is not one number per output channel")
    return Match(add=add, bias=full[:, 0])


def _bias_into_linear(graph: nx.DiGraph, name: str, match: Match) -> None:
    op = ir.op_of(graph, name)
    old = op.bias.astype(np.float64) if op.bias is not None else 0.0
    op.bias = (old + match["bias"]).astype(np.float32)
    bypass(graph, match["add"])


def _check_reshape(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    shape = tuple(ir.op_of(graph, name).shape)
    return Match() if len(shape) == 1 else NoMatch(f"reshapes to {shape}, not to a vector")


def _reshape_to_flatten(graph: nx.DiGraph, name: str, match: Match) -> None:
    graph.nodes[name]["op"] = O.Flatten(axis=1)


def _check_sum(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    inputs = ir.inputs_of(graph, name)
    if len(inputs) < 2:
        return NoMatch("a Sum of one input")
    if len({ir.shape_of(graph, s) for s in inputs}) != 1:
        return NoMatch("its inputs have different shapes")
    return Match()


def _sum_to_add(graph: nx.DiGraph, name: str, match: Match) -> None:
    inputs = ir.inputs_of(graph, name)
    running = inputs[0]
    for src in inputs[1:-1]:
        running = ir.add_node(graph, ir.unique_name(graph, f"{name}_partial"), O.Add(), [running, src])
    graph.nodes[name]["op"] = O.Add()
    ir.set_inputs(graph, name, [running, inputs[-1]])


# --------------------------------------------------------------------------- activations


def _check_clip(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    op = ir.op_of(graph, name)
    if op.min == 0 and op.max is None:
        return Match()
    return NoMatch(f"Clip(min={op.min}, max={op.max}) is not Clip(0, None)")


def _to_relu(graph: nx.DiGraph, name: str, match: Match) -> None:
    graph.nodes[name]["op"] = O.Relu()


def _check_leaky_relu(graph: nx.DiGraph, name: str) -> Match:
    op = ir.op_of(graph, name)
    return Match(slope=np.asarray(op.alpha if isinstance(op, O.LeakyRelu) else op.slope, np.float32))


def _split_leaky_relu(graph: nx.DiGraph, name: str, match: Match) -> None:
    slope = match["slope"]
    if not np.any(slope != 0):
        graph.nodes[name]["op"] = O.Relu()
        return
    (x,) = ir.inputs_of(graph, name)
    positive = ir.add_node(graph, ir.unique_name(graph, f"{name}_positive"), O.Relu(), [x])
    negate = ir.add_node(graph, ir.unique_name(graph, f"{name}_negate"), O.Mul(constant=np.float32(-1.0)), [x])
    negative = ir.add_node(graph, ir.unique_name(graph, f"{name}_negative"), O.Relu(), [negate])
    scaled = ir.add_node(graph, ir.unique_name(graph, f"{name}_slope"), O.Mul(constant=-slope), [negative])
    graph.nodes[name]["op"] = O.Add()
    ir.set_inputs(graph, name, [positive, scaled])


def _check_double_relu(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    (src,) = ir.inputs_of(graph, name)
    if not isinstance(ir.op_of(graph, name), O.Relu) or not isinstance(ir.op_of(graph, src), O.Relu):
        return NoMatch(f"not a Relu of a Relu (reads {src!r}, {ir.op_of(graph, src).op_type})")
    return Match()


def _check_relu_after_maxpool(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    op = ir.op_of(graph, name)
    if not is_population_activation(op):
        return NoMatch(f"Clip(min={op.min}, max={op.max}) is not a ReLU or Clip(0, c)")
    (src,) = ir.inputs_of(graph, name)
    if not isinstance(ir.op_of(graph, src), O.MaxPool):
        return NoMatch(f"reads {src!r} ({ir.op_of(graph, src).op_type}), not a MaxPool")
    if single_consumer(graph, src) != name:
        return NoMatch(f"the MaxPool {src!r} has other readers: {_readers(graph, src)}")
    return Match(pool=src)


def _relu_before_maxpool(graph: nx.DiGraph, name: str, match: Match) -> None:
    pool = match["pool"]
    (x,) = ir.inputs_of(graph, pool)
    ir.set_inputs(graph, name, [x])
    ir.replace_uses(graph, name, pool)
    ir.set_inputs(graph, pool, [name])
    graph.nodes[name]["shape"] = ir.shape_of(graph, x)


# --------------------------------------------------------------------------- max pooling


def _check_pool_of_concat(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    (concat,) = ir.inputs_of(graph, name)
    concat_op = ir.op_of(graph, concat)
    if not isinstance(concat_op, O.Concat):
        return NoMatch(f"reads {concat!r} ({concat_op.op_type}), not a Concat")
    rank = len(ir.shape_of(graph, concat)) + 1
    if (concat_op.axis if concat_op.axis >= 0 else concat_op.axis + rank) != 1:
        return NoMatch(f"the Concat {concat!r} joins along axis {concat_op.axis}: a window would mix the parts")
    return Match(concat=concat)


def _maxpool_through_concat(graph: nx.DiGraph, name: str, match: Match) -> None:
    op, concat = ir.op_of(graph, name), match["concat"]
    pools = []
    for i, branch in enumerate(ir.inputs_of(graph, concat)):
        pool = ir.unique_name(graph, f"{name}_part{i}")
        pools.append(ir.add_node(graph, pool, dataclasses.replace(op), [branch]))
    graph.nodes[name]["op"] = O.Concat(axis=1)
    ir.set_inputs(graph, name, pools)
    if not ir.consumers(graph, concat) and concat not in graph.graph["outputs"]:
        ir.remove_node(graph, concat)


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


def _axis_window(pool: O.MaxPool, i: int, spatial: int) -> tuple[int, int, int, int]:
    """(kernel, stride, pad begin, pad end) of ``pool`` along spatial axis ``i``."""
    pads = tuple(pool.pads) or (0,) * (2 * spatial)
    return pool.kernel_shape[i], (tuple(pool.strides) or (1,) * spatial)[i], pads[i], pads[i + spatial]


def _check_pool_of_pool(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    """One pooling whose windows are the unions of the composed windows, along every axis."""
    op = ir.op_of(graph, name)
    (inner,) = ir.inputs_of(graph, name)
    inner_op = ir.op_of(graph, inner)
    if not isinstance(inner_op, O.MaxPool):
        return NoMatch(f"reads {inner!r} ({inner_op.op_type}), not a MaxPool")
    if inner_op.ceil_mode:
        return NoMatch(f"the inner MaxPool {inner!r} is in ceil mode")
    (x,) = ir.inputs_of(graph, inner)
    shape, out = ir.shape_of(graph, x), ir.shape_of(graph, name)
    spatial = len(shape) - 1
    axes = []
    for i in range(spatial):
        if any((tuple(pool.dilations) or (1,) * spatial)[i] != 1 for pool in (op, inner_op)):
            return NoMatch("a dilated MaxPool")
        merged = _merged_axis(shape[1 + i], _axis_window(inner_op, i, spatial), _axis_window(op, i, spatial),
                              out[1 + i])
        if merged is None:
            return NoMatch(f"along spatial axis {i} the unions of the windows are not the windows of one MaxPool")
        axes.append(merged)
    if len({a[4] for a in axes}) > 1:  # one ceil mode for every axis
        return NoMatch("the merged pooling would need a different ceil mode per axis")
    return Match(inner=inner, x=x, axes=axes)


def _merge_maxpools(graph: nx.DiGraph, name: str, match: Match) -> None:
    axes, inner = match["axes"], match["inner"]
    graph.nodes[name]["op"] = O.MaxPool(kernel_shape=tuple(a[0] for a in axes), strides=tuple(a[1] for a in axes),
                                        pads=tuple(a[2] for a in axes) + tuple(a[3] for a in axes),
                                        dilations=(1,) * len(axes), ceil_mode=axes[0][4])
    ir.set_inputs(graph, name, [match["x"]])
    if not ir.consumers(graph, inner) and inner not in graph.graph["outputs"]:
        ir.remove_node(graph, inner)


# --------------------------------------------------------------------------- input normalisation

_AFFINE = (O.Sub, O.Mul, O.Div, O.Add)


def _affine_chain(graph: nx.DiGraph, name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The chain of single-reader affine ops by constants after the Input ``name`` and its map ``y = a x + b``."""
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
    return chain, a, b


def _check_input_normalisation(graph: nx.DiGraph, name: str) -> Match | NoMatch:
    chain, a, b = _affine_chain(graph, name)
    if not chain:
        return NoMatch("not read by one Sub/Mul/Div/Add by a constant")
    found = find_linear_reader(graph, chain[-1])
    if found is None:
        return NoMatch(f"the chain {', '.join(chain)} is not read by one Conv or Gemm (through Flatten/Reshape)")
    linear, _reshapes = found
    target = ir.shape_of(graph, ir.inputs_of(graph, linear)[0])
    problem = fold_problem(graph, linear, a.reshape(target))
    if problem is not None:  # leave the chain for to_spiking to name
        return NoMatch(f"{chain[0]!r}: {problem}")
    return Match(chain=chain, linear=linear, a=a.reshape(target), b=b.reshape(target))


def _fold_input_normalisation(graph: nx.DiGraph, name: str, match: Match) -> None:
    chain = match["chain"]
    fold_affine_into(graph, match["linear"], match["a"], match["b"], culprit=chain[0])
    for node in chain:
        bypass(graph, node)


#: canonicalise's rules, in the order they are tried at a node
RULES: list[Rule] = [
    Rule("drop_identity", (O.Dropout, O.Identity, O.Sum, O.Clip, O.Reshape), _check_identity,
         lambda graph, name, match: bypass(graph, name)),
    Rule("drop_output_softmax", (O.Softmax,), _check_output_softmax, _drop_output_softmax),
    Rule("matmul_to_gemm", (O.MatMul,), _check_matmul, _matmul_to_gemm),
    Rule("bias_into_linear", (O.Conv, O.Gemm), _check_bias, _bias_into_linear),
    Rule("reshape_to_flatten", (O.Reshape,), _check_reshape, _reshape_to_flatten),
    Rule("sum_to_add", (O.Sum,), _check_sum, _sum_to_add),
    Rule("clip_to_relu", (O.Clip,), _check_clip, _to_relu),
    Rule("split_leaky_relu", (O.LeakyRelu, O.PRelu), _check_leaky_relu, _split_leaky_relu),
    Rule("drop_double_relu", (O.Relu,), _check_double_relu, lambda graph, name, match: bypass(graph, name)),
    Rule("relu_before_maxpool", (O.Relu, O.Clip), _check_relu_after_maxpool, _relu_before_maxpool),
    Rule("maxpool_through_concat", (O.MaxPool,), _check_pool_of_concat, _maxpool_through_concat),
    Rule("merge_maxpools", (O.MaxPool,), _check_pool_of_pool, _merge_maxpools),
    Rule("fold_input_normalisation", (O.Input,), _check_input_normalisation, _fold_input_normalisation),
]


def _canonicalise(graph: nx.DiGraph, explain: Explain | None = None) -> bool:
    modified = apply_rules(graph, RULES, "canonicalise", explain)
    ir.infer_shapes(graph)
    return modified


canonicalise = Pass(
    name="canonicalise",
    description="drop Dropout/Identity/output Softmax, MatMul+Add->Gemm, fold input normalisation, ReLU before MaxPool",
    rewrite=_canonicalise,
)
