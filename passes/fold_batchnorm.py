"""fold_batchnorm: fold every inference BatchNormalization into a neighbouring Conv or Gemm, else make it affine.

Three :class:`passes.rules.Rule` anchored on BatchNormalization, tried in
this order (the first that matches applies): fold_into_previous,
fold_into_next, to_affine_projection.

With ``s = scale / sqrt(var + epsilon)`` and ``t = bias - mean * s``,
``BN(y) = s * y + t`` per channel (axis 1).

Before / After (fold_into_previous: into the preceding linear op, the usual Conv -> BN):
    ``BN(Conv(x, W, c))`` -> ``Conv(x, W', c')`` with
    ``W'[o] = s[o] W[o]`` and ``c' = s (c - mean) + bias`` (``c = 0`` when the
    Conv has no bias). Grouped and depthwise convs fold the same way (the
    output channel is axis 0 of the weight); a Gemm over (features,) too.
    Refused when the linear op has other consumers (they need the unfolded
    output) or is a graph output.

Before / After (fold_into_next: into the following linear op, e.g. Add -> BN -> Conv):
    ``Conv(BN(x))`` -> ``Conv'(x)``, the per-channel affine map folded into
    the Conv's input side (see :mod:`passes._affine`): exact, including a
    padded Conv, whose border windows get an exact ``Add(constant)``
    correction (the padding zeros are *after* BN, so they are not ``t``).
    A Flatten/Reshape between BN and a Gemm is allowed. Refused (naming the
    BN) when a reshape before a Conv makes its scale vary within a channel.

Before / After (to_affine_projection: no linear op on either side: pre-activation ResNets'
Add -> BN -> ReLU, DenseNet's Concat -> BN -> ReLU, ReLU -> BN -> MaxPool):
    ``BN(x)`` -> ``Add(Mul(x, s), t)`` with ``s`` and ``t`` constants of
    shape (1, C, 1, ...): a per-channel affine projection between the
    spiking sources and the next population, linear ops the spiking
    contract allows (normalise divides ``t`` by the unit of ``x``; ``s``
    keeps it). The Add keeps the BN's name, the Mul is ``<bn>_scale``.
    Exact; the two folds above are tried first because they leave no
    extra node. Nothing is refused.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O

from ._affine import find_linear_reader, fold_affine_into
from ._infra import Pass, bypass, refuse, single_consumer
from .rules import Explain, Match, NoMatch, Rule, apply_rules

__all__ = ["RULES", "batchnorm_affine", "fold_batchnorm"]


def batchnorm_affine(op: O.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(s, t)`` with ``BN(y) = s y + t`` (float64, shape (C,))."""
    s = op.scale.astype(np.float64) / np.sqrt(op.var.astype(np.float64) + op.epsilon)
    t = op.bias.astype(np.float64) - op.mean.astype(np.float64) * s
    return s, t


def _check_previous(graph: nx.DiGraph, bn: str) -> Match | NoMatch:
    (src,) = ir.inputs_of(graph, bn)
    if not isinstance(ir.op_of(graph, src), (O.Conv, O.Gemm)):
        return NoMatch(f"reads {src!r} ({ir.op_of(graph, src).op_type}), not a Conv or Gemm")
    if single_consumer(graph, src) != bn:
        return NoMatch(f"{src!r} has other readers or is a graph output")
    return Match(linear=src)


def _fold_into_previous(graph: nx.DiGraph, bn: str, match: Match) -> None:
    src_op = ir.op_of(graph, match["linear"])
    s, t = batchnorm_affine(ir.op_of(graph, bn))
    weight = src_op.weight.astype(np.float64)
    src_op.weight = (weight * s.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(np.float32)
    bias = src_op.bias.astype(np.float64) if src_op.bias is not None else 0.0
    src_op.bias = (bias * s + t).astype(np.float32)
    bypass(graph, bn)


def _check_next(graph: nx.DiGraph, bn: str) -> Match | NoMatch:
    found = find_linear_reader(graph, bn)
    if found is None:
        return NoMatch("not read by one Conv or Gemm (through Flatten/Reshape)")
    linear, _ = found
    shape = ir.shape_of(graph, bn)
    s, t = batchnorm_affine(ir.op_of(graph, bn))
    channel_shape = (-1,) + (1,) * (len(shape) - 1)
    target = ir.shape_of(graph, ir.inputs_of(graph, linear)[0])
    a = np.broadcast_to(s.reshape(channel_shape), shape).reshape(target)
    b = np.broadcast_to(t.reshape(channel_shape), shape).reshape(target)
    return Match(linear=linear, a=a, b=b)


def _fold_into_next(graph: nx.DiGraph, bn: str, match: Match) -> None:
    """Refuses (naming ``bn``) when its scale, seen through the reshapes, varies within a Conv input channel."""
    fold_affine_into(graph, match["linear"], match["a"], match["b"], culprit=bn)
    bypass(graph, bn)


def _to_affine_projection(graph: nx.DiGraph, bn: str, match: Match) -> None:
    (src,) = ir.inputs_of(graph, bn)
    shape = ir.shape_of(graph, bn)
    s, t = batchnorm_affine(ir.op_of(graph, bn))
    channel_shape = (1, -1) + (1,) * (len(shape) - 1)
    mul = O.Mul(constant=s.reshape(channel_shape).astype(np.float32))
    scale = ir.add_node(graph, ir.unique_name(graph, f"{bn}_scale"), mul, [src])
    graph.nodes[bn]["op"] = O.Add(constant=t.reshape(channel_shape).astype(np.float32))
    ir.set_inputs(graph, bn, [scale])


_BN = (O.BatchNormalization,)

#: fold_batchnorm's rules, in the order they are tried at a BatchNormalization (the last always applies)
RULES: list[Rule] = [
    Rule("fold_into_previous", _BN, _check_previous, _fold_into_previous),
    Rule("fold_into_next", _BN, _check_next, _fold_into_next),
    Rule("to_affine_projection", _BN, lambda graph, bn: Match(), _to_affine_projection),
]


def _fold_batchnorm(graph: nx.DiGraph, explain: Explain | None = None) -> bool:
    return apply_rules(graph, RULES, "fold_batchnorm", explain)


def _no_batchnorm_left(graph: nx.DiGraph) -> None:
    for name in graph.nodes:
        if isinstance(ir.op_of(graph, name), O.BatchNormalization):
            refuse(graph, name, "BatchNormalization left after folding")


fold_batchnorm = Pass(
    name="fold_batchnorm",
    description="fold BatchNormalization into the preceding (or else the following) Conv/Gemm, else Mul+Add",
    rewrite=_fold_batchnorm,
    ensures=_no_batchnorm_left,
)
