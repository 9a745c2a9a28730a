"""Folding a per-element affine map ``y = a * x + b`` into the linear op that reads ``y``.

Used by canonicalise (constant input normalisation: Sub / Mul / Div right
after the Input) and by fold_batchnorm (a BatchNormalization that follows
no linear op but precedes one).

Formula, for ``L(y) = W * y + c`` (Conv or Gemm) reading ``y`` through
optional Flatten / Reshape nodes:

    L(a x + b) = (W . a) * x + (W * b + c)

- ``W . a`` scales the weight column of each input element by ``a``. A Conv
  shares one weight per input *channel* over all positions, so ``a`` must be
  the same at every position of a channel; otherwise the fold is refused.
- ``W * b`` is the linear op applied to the constant image ``b``. For a Gemm
  or an unpadded Conv with ``b`` constant per channel it is the same at every
  output position and joins the bias. A padded Conv pads ``y`` with zeros,
  i.e. the border windows see ``b``-free zeros that ``x`` does not have: the
  contribution then differs at the borders. It is computed exactly (the
  convolution of the zero-padded constant image) and added by an
  ``Add(constant)`` node of shape (1, C_out, H_out, W_out) right after the
  Conv, which the spiking contract allows as a linear projection.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.executor import conv_nd

from ._infra import insert_after, refuse, single_consumer

__all__ = ["find_linear_reader", "fold_affine_into", "fold_problem", "per_sample"]


def per_sample(constant: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An ONNX-layout constant broadcast to the per-sample ``shape`` (float64)."""
    return np.broadcast_to(np.asarray(constant, np.float64), (1,) + tuple(shape)).reshape(shape)


def find_linear_reader(graph: nx.DiGraph, name: str) -> tuple[str, list[str]] | None:
    """The Conv or Gemm reading ``name``'s output through single-consumer Flatten / Reshape nodes.

    Returns ``(linear, reshapes)`` or None when the only reader is something else.
    """
    reshapes = []
    node = single_consumer(graph, name)
    while node is not None and isinstance(ir.op_of(graph, node), (O.Flatten, O.Reshape)):
        reshapes.append(node)
        node = single_consumer(graph, node)
    if node is None or not isinstance(ir.op_of(graph, node), (O.Conv, O.Gemm)):
        return None
    return node, reshapes


def fold_problem(graph: nx.DiGraph, linear: str, a: np.ndarray) -> str | None:
    """Why ``y = a x + b`` cannot be folded into ``linear`` (a Conv whose ``a`` varies within an input
    channel), or None when it can; ``a`` as in :func:`fold_affine_into`."""
    if isinstance(ir.op_of(graph, linear), O.Gemm):
        return None
    in_shape = ir.shape_of(graph, ir.inputs_of(graph, linear)[0])
    per_channel = np.broadcast_to(np.asarray(a, np.float64), in_shape).reshape(in_shape[0], -1)
    if np.all(per_channel == per_channel[:, :1]):
        return None
    return f"its scale varies across positions of a channel; it cannot be folded into Conv {linear!r}"


def fold_affine_into(graph: nx.DiGraph, linear: str, a: np.ndarray, b: np.ndarray, culprit: str) -> None:
    """Fold ``y = a x + b`` into ``linear``, which reads ``y`` (after its reshapes).

    ``a`` and ``b`` are per-sample arrays of the shape of ``linear``'s input
    (reshape them first). ``culprit`` is the node named when the fold is
    refused (:func:`fold_problem` says beforehand whether it would be). The caller removes the affine
    nodes afterwards.
    """
    op = ir.op_of(graph, linear)
    in_shape = ir.shape_of(graph, ir.inputs_of(graph, linear)[0])
    a = np.broadcast_to(np.asarray(a, np.float64), in_shape)
    b = np.broadcast_to(np.asarray(b, np.float64), in_shape)
    weight = op.weight.astype(np.float64)
    if isinstance(op, O.Gemm):
        new_weight = weight * a[None, :]
        contribution = weight @ b
        old_bias = op.bias.astype(np.float64) if op.bias is not None else 0.0
        op.weight = new_weight.astype(np.float32)
        if np.any(contribution != 0) or op.bias is not None:
            op.bias = (old_bias + contribution).astype(np.float32)
        return
    problem = fold_problem(graph, linear, a)
    if problem is not None:
        refuse(graph, culprit, problem)
    channels = in_shape[0]
    a_channel = a.reshape(channels, -1)[:, 0]
    out_channels, group = weight.shape[0], op.group
    in_per_group, out_per_group = channels // group, out_channels // group
    # input channel multiplied by weight[o, j]: (o // out_per_group) * in_per_group + j
    channel_of = (np.arange(out_channels)[:, None] // out_per_group) * in_per_group + np.arange(in_per_group)[None, :]
    scale = a_channel[channel_of].reshape(weight.shape[:2] + (1,) * (weight.ndim - 2))
    op.weight = (weight * scale).astype(np.float32)
    if not np.any(b != 0):
        return
    per_channel_b = b.reshape(channels, -1)
    unpadded = not any(op.pads)
    if unpadded and np.all(per_channel_b == per_channel_b[:, :1]):
        # constant image through an unpadded conv: the same at every output position
        contribution = (weight.sum(axis=tuple(range(2, weight.ndim))) * per_channel_b[:, 0][channel_of]).sum(axis=1)
        old_bias = op.bias.astype(np.float64) if op.bias is not None else 0.0
        op.bias = (old_bias + contribution).astype(np.float32)
        return
    # exact border-aware contribution: the convolution of the zero-padded constant image
    contribution = conv_nd(
        b[None].astype(np.float32), weight.astype(np.float32), None, op.strides, op.pads, op.dilations, op.group
    )
    spatial_size = math.prod(contribution.shape[2:])
    flat = contribution.reshape(out_channels, spatial_size)
    if np.allclose(flat, flat[:, :1], rtol=1e-7, atol=0):
        old_bias = op.bias.astype(np.float64) if op.bias is not None else 0.0
        op.bias = (old_bias + flat[:, 0]).astype(np.float32)
        return
    name = ir.unique_name(graph, f"{linear}_border_bias")
    insert_after(graph, linear, name, O.Add(constant=contribution.astype(np.float32)))
