"""Writers of standard IR ops as ONNX nodes, one per op class.

:data:`EXPORTERS` maps an IR op class to its exporter (filled by
:func:`exporter`). An exporter is called as ``export(writer, name, op,
inputs)``: the :class:`~bsnn_graph.onnx_io.write.ModelWriter`, the IR node key
(also the name of the node and of its one output tensor), the op and the
names of its input tensors. It appends the node with ``writer.emit`` and
its parameters as initializers with ``writer.constant``.

Each op is written in the form of opset 17 (the default
:data:`~bsnn_graph.onnx_io.write.EXPORT_OPSET`): optional attributes spelled
out, a Reshape target as ``[0, *shape]`` (the batch axis kept). A dilated
AveragePool raises the model's opset to 19. The spiking ops (domain
``ai.bsnn``) are written by :func:`bsnn_graph.onnx_io.bsnn_domain.export_bsnn_node`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import ops as O
from .registry import registrar

if TYPE_CHECKING:
    from .write import ModelWriter

__all__ = ["EXPORTERS", "exporter"]

EXPORTERS: dict = {}
"""IR op class (standard domain) -> ``export(writer, name, op, inputs)``."""

exporter = registrar(EXPORTERS, "exporter")


def _with_weight_and_bias(writer: ModelWriter, name: str, op, inputs: list[str]) -> list[str]:
    """The inputs followed by the op's weight and, if it has one, its bias, as initializers."""
    args = inputs + [writer.constant(name, "weight", op.weight)]
    if op.bias is not None:
        args.append(writer.constant(name, "bias", op.bias))
    return args


def _window_attrs(op: O.MaxPool | O.AveragePool) -> dict:
    """``kernel_shape``, ``strides``, ``pads`` (defaults spelled out) and ``ceil_mode`` of a pool."""
    spatial = len(op.kernel_shape)
    return {
        "kernel_shape": list(op.kernel_shape),
        "strides": list(op.strides or (1,) * spatial),
        "pads": list(op.pads or (0,) * 2 * spatial),
        "ceil_mode": int(op.ceil_mode),
    }


# --------------------------------------------------------------------------- layers with weights


@exporter(O.Conv)
def export_conv(writer: ModelWriter, name: str, op: O.Conv, inputs: list[str]) -> None:
    """Conv with its weight (and bias) as initializers and every window attribute spelled out."""
    spatial = op.weight.ndim - 2
    writer.emit(
        name,
        "Conv",
        _with_weight_and_bias(writer, name, op, inputs),
        kernel_shape=list(op.kernel_shape),
        strides=list(op.strides or (1,) * spatial),
        pads=list(op.pads or (0,) * 2 * spatial),
        dilations=list(op.dilations or (1,) * spatial),
        group=int(op.group),
    )


@exporter(O.Gemm)
def export_gemm(writer: ModelWriter, name: str, op: O.Gemm, inputs: list[str]) -> None:
    """Gemm with ``transB=1`` (the IR weight is out x in)."""
    writer.emit(name, "Gemm", _with_weight_and_bias(writer, name, op, inputs), transB=1)


@exporter(O.MatMul)
def export_matmul(writer: ModelWriter, name: str, op: O.MatMul, inputs: list[str]) -> None:
    """MatMul by the constant weight."""
    writer.emit(name, "MatMul", inputs + [writer.constant(name, "weight", op.weight)])


@exporter(O.BatchNormalization)
def export_batchnorm(writer: ModelWriter, name: str, op: O.BatchNormalization, inputs: list[str]) -> None:
    """BatchNormalization with scale, bias, mean and var as initializers."""
    args = inputs + [writer.constant(name, k, getattr(op, k)) for k in ("scale", "bias", "mean", "var")]
    writer.emit(name, "BatchNormalization", args, epsilon=float(op.epsilon))


# --------------------------------------------------------------------------- activations


@exporter(O.Relu)
def export_relu(writer: ModelWriter, name: str, op: O.Relu, inputs: list[str]) -> None:
    """Relu."""
    writer.emit(name, "Relu", inputs)


@exporter(O.LeakyRelu)
def export_leaky_relu(writer: ModelWriter, name: str, op: O.LeakyRelu, inputs: list[str]) -> None:
    """LeakyRelu with its ``alpha``."""
    writer.emit(name, "LeakyRelu", inputs, alpha=float(op.alpha))


@exporter(O.PRelu)
def export_prelu(writer: ModelWriter, name: str, op: O.PRelu, inputs: list[str]) -> None:
    """PRelu with the slope as an initializer."""
    writer.emit(name, "PRelu", inputs + [writer.constant(name, "slope", op.slope)])


@exporter(O.Clip)
def export_clip(writer: ModelWriter, name: str, op: O.Clip, inputs: list[str]) -> None:
    """Clip with its bounds as scalar inputs (an absent bound as an empty input name, trailing ones dropped)."""
    lo = "" if op.min is None else writer.constant(name, "min", np.array(op.min, np.float32))
    hi = "" if op.max is None else writer.constant(name, "max", np.array(op.max, np.float32))
    args = inputs + [lo, hi]
    while args[-1] == "":
        args.pop()
    writer.emit(name, "Clip", args)


@exporter(O.Softmax, O.LogSoftmax)
def export_softmax(writer: ModelWriter, name: str, op: O.Softmax, inputs: list[str]) -> None:
    """Softmax / LogSoftmax over ``axis``."""
    writer.emit(name, op.op_type, inputs, axis=int(op.axis))


@exporter(O.Dropout)
def export_dropout(writer: ModelWriter, name: str, op: O.Dropout, inputs: list[str]) -> None:
    """Dropout with its ratio as an input (inference: the identity)."""
    writer.emit(name, "Dropout", inputs + [writer.constant(name, "ratio", np.array(op.ratio, np.float32))])


@exporter(O.Identity)
def export_identity(writer: ModelWriter, name: str, op: O.Identity, inputs: list[str]) -> None:
    """Identity."""
    writer.emit(name, "Identity", inputs)


# --------------------------------------------------------------------------- pooling


@exporter(O.MaxPool)
def export_maxpool(writer: ModelWriter, name: str, op: O.MaxPool, inputs: list[str]) -> None:
    """MaxPool with every window attribute spelled out."""
    spatial = len(op.kernel_shape)
    writer.emit(name, "MaxPool", inputs, dilations=list(op.dilations or (1,) * spatial), **_window_attrs(op))


@exporter(O.AveragePool)
def export_avgpool(writer: ModelWriter, name: str, op: O.AveragePool, inputs: list[str]) -> None:
    """AveragePool; dilations (opset 19) only when some dilation is not 1."""
    attrs = _window_attrs(op)
    if op.dilations and any(d != 1 for d in op.dilations):
        writer.opset = max(writer.opset, 19)  # AveragePool dilations arrived in opset 19
        attrs["dilations"] = list(op.dilations)
    writer.emit(name, "AveragePool", inputs, count_include_pad=int(op.count_include_pad), **attrs)


@exporter(O.GlobalAveragePool)
def export_global_avgpool(writer: ModelWriter, name: str, op: O.GlobalAveragePool, inputs: list[str]) -> None:
    """GlobalAveragePool."""
    writer.emit(name, "GlobalAveragePool", inputs)


# --------------------------------------------------------------------------- element-wise arithmetic


@exporter(O.Add)
def export_add(writer: ModelWriter, name: str, op: O.Add, inputs: list[str]) -> None:
    """Add of two tensors, or of a tensor and its constant (an initializer)."""
    if op.constant is not None:
        inputs = inputs + [writer.constant(name, "constant", op.constant)]
    writer.emit(name, "Add", inputs)


@exporter(O.Sum)
def export_sum(writer: ModelWriter, name: str, op: O.Sum, inputs: list[str]) -> None:
    """Sum."""
    writer.emit(name, "Sum", inputs)


@exporter(O.Sub, O.Mul, O.Div)
def export_constant_binary(writer: ModelWriter, name: str, op: O.Sub | O.Mul | O.Div, inputs: list[str]) -> None:
    """Sub / Mul / Div by the constant, on the side ``constant_first`` says."""
    c = writer.constant(name, "constant", op.constant)
    writer.emit(name, op.op_type, [c] + inputs if op.constant_first else inputs + [c])


# --------------------------------------------------------------------------- shape ops


@exporter(O.Flatten)
def export_flatten(writer: ModelWriter, name: str, op: O.Flatten, inputs: list[str]) -> None:
    """Flatten at ``axis``."""
    writer.emit(name, "Flatten", inputs, axis=int(op.axis))


@exporter(O.Reshape)
def export_reshape(writer: ModelWriter, name: str, op: O.Reshape, inputs: list[str]) -> None:
    """Reshape to ``[0, *shape]``: the batch axis kept, whatever the batch size."""
    target = writer.constant(name, "shape", np.array([0, *op.shape], np.int64))
    writer.emit(name, "Reshape", inputs + [target])


@exporter(O.Transpose)
def export_transpose(writer: ModelWriter, name: str, op: O.Transpose, inputs: list[str]) -> None:
    """Transpose by ``perm``."""
    writer.emit(name, "Transpose", inputs, perm=[int(p) for p in op.perm])


@exporter(O.Concat)
def export_concat(writer: ModelWriter, name: str, op: O.Concat, inputs: list[str]) -> None:
    """Concat along ``axis``."""
    writer.emit(name, "Concat", inputs, axis=int(op.axis))


@exporter(O.Pad)
def export_pad(writer: ModelWriter, name: str, op: O.Pad, inputs: list[str]) -> None:
    """Pad with the pads (and, in constant mode, the value) as inputs."""
    pads = writer.constant(name, "pads", np.array(op.pads, np.int64))
    args = inputs + [pads]
    if op.mode == "constant":
        args.append(writer.constant(name, "value", np.array(op.value, np.float32)))
    writer.emit(name, "Pad", args, mode=op.mode)
