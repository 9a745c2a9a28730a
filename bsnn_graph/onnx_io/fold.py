"""Constant folding: numpy values of ONNX nodes whose inputs are all constant.

Exporters compute weights and ``Reshape`` targets with small subgraphs
(``Constant``, ``ConstantOfShape``, ``Transpose`` of a weight, ``Shape ->
Gather -> Unsqueeze -> Concat`` chains). The loader evaluates them here, one
rule per ONNX op type (:data:`FOLD_RULES`, filled by :func:`fold_rule`), in
the order of the graph.

A shape vector may hold :data:`~bsnn_graph.onnx_io.values.BATCH` (``Shape``
of a data tensor whose batch axis is symbolic): gathering, slicing,
concatenating and integer casts carry it along; arithmetic on it raises
``TypeError`` (the loader reports "computing a shape from the batch size").
An op with no rule, or a use a rule cannot fold, raises
:class:`~bsnn_graph.onnx_io.values.Unsupported`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from onnx import helper, numpy_helper

from .registry import registrar
from .values import Unsupported, absolute_axes, optional_input

__all__ = ["FOLDABLE", "FOLD_RULES", "ConstantNode", "fold", "fold_rule"]

FOLD_RULES: dict = {}
"""ONNX op type -> ``rule(node: ConstantNode) -> numpy value``."""

fold_rule = registrar(FOLD_RULES, "fold rule")


@dataclasses.dataclass(frozen=True)
class ConstantNode:
    """An ONNX node whose inputs are all constant, as a fold rule sees it."""

    op_type: str
    attrs: dict  # attribute name -> Python value
    values: list  # input values: numpy arrays (None for an absent optional input)
    opset: int  # default-domain opset of the model

    @property
    def x(self):
        """The first input (None for a node without inputs)."""
        return self.values[0] if self.values else None


def fold(op_type: str, attrs: dict, values: list, opset: int):
    """numpy value of a node whose inputs are all constant (None for an absent optional input).

    Raises
    ------
    Unsupported
        No rule folds ``op_type``, or not this use of it.
    TypeError, ValueError, IndexError, KeyError
        The inputs do not fit the op (e.g. arithmetic on the symbolic batch size).
    """
    rule = FOLD_RULES.get(op_type)
    if rule is None:
        raise Unsupported(f"{op_type} on constants")
    return rule(ConstantNode(op_type, attrs, values, opset))


# --------------------------------------------------------------------------- sources of constants


@fold_rule("Constant")
def fold_constant(node: ConstantNode):
    """The ``value`` tensor, or the ``value_float(s)`` / ``value_int(s)`` list."""
    attrs = node.attrs
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32)):
        if key in attrs:
            return np.array(attrs[key], dtype)
    for key in ("value_int", "value_ints"):
        if key in attrs:
            return np.array(attrs[key], np.int64)
    raise Unsupported("Constant of sparse or string value")


@fold_rule("ConstantOfShape")
def fold_constant_of_shape(node: ConstantNode):
    """A tensor of the input shape filled with ``value`` (float32 0 by default)."""
    attrs = node.attrs
    fill = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    return np.full(tuple(int(d) for d in node.x), fill.reshape(-1)[0], dtype=fill.dtype)


@fold_rule("Range")
def fold_range(node: ConstantNode):
    """``arange(start, limit, delta)`` in the dtype of ``start``."""
    start, limit, delta = (np.asarray(v).item() for v in node.values)
    return np.arange(start, limit, delta, dtype=np.asarray(node.values[0]).dtype)


# --------------------------------------------------------------------------- shapes


@fold_rule("Shape")
def fold_shape(node: ConstantNode):
    """The shape of a constant, sliced by ``start`` / ``end``."""
    start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
    return np.array(node.x.shape, np.int64)[start:end]


@fold_rule("Size")
def fold_size(node: ConstantNode):
    """The number of elements of a constant."""
    return np.array(node.x.size, np.int64)


@fold_rule("Gather")
def fold_gather(node: ConstantNode):
    """``take`` along ``axis``."""
    return np.take(node.x, np.asarray(node.values[1]).astype(np.int64), axis=node.attrs.get("axis", 0))


@fold_rule("Unsqueeze")
def fold_unsqueeze(node: ConstantNode):
    """New axes of size 1 (``axes`` an attribute before opset 13, an input from then on)."""
    x = node.x
    axes = node.attrs["axes"] if node.opset < 13 else node.values[1]
    rank = x.ndim + len(axes)
    out = x
    for a in sorted(absolute_axes(axes, rank)):
        out = np.expand_dims(out, a)
    return out


@fold_rule("Squeeze")
def fold_squeeze(node: ConstantNode):
    """Drop axes of size 1 (the given ``axes``, or all of them)."""
    x = node.x
    axes = node.attrs.get("axes") if node.opset < 13 else optional_input(node.values, 1)
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(absolute_axes(axes, x.ndim)))


@fold_rule("Concat")
def fold_concat(node: ConstantNode):
    """Concatenation along ``axis`` (scalars count as 1-element vectors)."""
    return np.concatenate([np.atleast_1d(v) for v in node.values], axis=node.attrs["axis"])


@fold_rule("Cast")
def fold_cast(node: ConstantNode):
    """``astype(to)``; a shape holding the symbolic batch size casts only to an integer type."""
    x = node.x
    dtype = helper.tensor_dtype_to_np_dtype(node.attrs["to"])
    if x.dtype == object:
        if np.issubdtype(dtype, np.integer):
            return x
        raise TypeError("cast of a symbolic shape")
    return x.astype(dtype)


def _clamp_index(value) -> int:
    """A Slice bound clamped to +-2**62 (ONNX writes INT64_MAX for "to the end")."""
    return int(max(min(value, 2**62), -(2**62)))


@fold_rule("Slice")
def fold_slice(node: ConstantNode):
    """``x[starts:ends:steps]`` over ``axes`` (attributes before opset 10, inputs from then on)."""
    x, values, attrs = node.x, node.values, node.attrs
    if node.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes"), None
    else:
        starts, ends = values[1], values[2]
        axes, steps = optional_input(values, 3), optional_input(values, 4)
    axes = list(range(len(starts))) if axes is None else absolute_axes(axes, x.ndim)
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[a] = slice(_clamp_index(s), _clamp_index(e), int(st))
    return x[tuple(index)]


@fold_rule("Reshape")
def fold_reshape(node: ConstantNode):
    """Reshape to the target (0 copies the input's size unless ``allowzero``)."""
    x = node.x
    target = node.attrs["shape"] if node.opset < 5 else node.values[1]
    allowzero = node.attrs.get("allowzero", 0)
    shape = [x.shape[i] if (int(d) == 0 and not allowzero) else int(d) for i, d in enumerate(target)]
    return x.reshape(shape)


@fold_rule("Flatten")
def fold_flatten(node: ConstantNode):
    """A 2-d matrix: the axes before ``axis`` times the rest."""
    x = node.x
    axis = node.attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(math.prod(x.shape[:axis])), -1)


@fold_rule("Identity", "Dropout")
def fold_identity(node: ConstantNode):
    """The input itself (Dropout at inference is the identity)."""
    return node.x


@fold_rule("Transpose")
def fold_transpose(node: ConstantNode):
    """Axes permuted by ``perm`` (reversed by default)."""
    return np.transpose(node.x, node.attrs.get("perm"))


# --------------------------------------------------------------------------- arithmetic

_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power}
_UNARY = {"Neg": np.negative, "Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Exp": np.exp}


@fold_rule(*_BINARY)
def fold_binary(node: ConstantNode):
    """Element-wise arithmetic; integer Div truncates, Pow keeps the base's dtype."""
    a, b = node.values
    if a.dtype == object or b.dtype == object:
        raise TypeError("arithmetic on the symbolic batch size")
    if node.op_type == "Div" and np.issubdtype(a.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)
    result = _BINARY[node.op_type](a, b)
    return result.astype(np.result_type(a, b) if node.op_type != "Pow" else a.dtype)


@fold_rule(*_UNARY)
def fold_unary(node: ConstantNode):
    """Element-wise Neg, Sqrt, Reciprocal, Exp."""
    x = node.x
    if x.dtype == object:
        raise TypeError("arithmetic on the symbolic batch size")
    return _UNARY[node.op_type](x)


FOLDABLE = frozenset(FOLD_RULES)
"""The ONNX op types :func:`fold` evaluates."""
