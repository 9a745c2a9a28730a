"""Converters from standard ONNX nodes to IR ops, one per ONNX op type.

:data:`IMPORTERS` maps an ONNX op type to its converter (filled by
:func:`importer`). A converter is called as ``convert(loader, node, attrs,
ins)``: the :class:`~bsnn_graph.onnx_io.load.ModelLoader`, the
``onnx.NodeProto``, its attributes (name -> Python value) and its inputs (each
a :class:`~bsnn_graph.onnx_io.values.Tensor`, a numpy constant, or None for
an absent optional input). It returns ``(op, data_inputs)``: the IR op and the
IR node keys it reads. It raises
:class:`~bsnn_graph.onnx_io.values.Unsupported` for a use of the op the IR
cannot express (the label goes into the list of unsupported ops), and
ModelError for a node that is malformed.

Weights and other parameters must be constants (initializers or folded
subgraphs); data inputs must be tensors. The batch axis is never touched:
an op that would merge, move or reduce it is unsupported. Legacy attributes
of opsets 6-12 (``broadcast``/``axis``, attribute forms of later inputs) are
read as their opset defines them.

The nodes of the ``ai.bsnn`` domain are read by
:func:`bsnn_graph.onnx_io.bsnn_domain.import_bsnn_node`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .. import ops as O
from ..errors import ModelError
from .registry import registrar
from .values import (
    BATCH,
    BatchSize,
    Tensor,
    Unsupported,
    absolute_axes,
    as_text,
    optional_input,
)

if TYPE_CHECKING:
    from .load import ModelLoader

__all__ = ["IMPORTERS", "SUPPORTED_OPS", "importer", "tensor_input"]

IMPORTERS: dict = {}
"""ONNX op type (default domain) -> ``convert(loader, node, attrs, ins) -> (op, data_inputs)``."""

importer = registrar(IMPORTERS, "importer")

_FLT_MAX = float(np.finfo(np.float32).max)


# --------------------------------------------------------------------------- reading inputs


def _float32(value: np.ndarray, what: str) -> np.ndarray:
    """A constant as a contiguous float32 array (not one that holds the symbolic batch size)."""
    if not isinstance(value, np.ndarray) or value.dtype == object:
        raise Unsupported(f"{what} that depends on the batch size")
    return np.ascontiguousarray(value, dtype=np.float32)


def tensor_input(value, what: str) -> Tensor:
    """``value`` if it is a tensor computed from the input; Unsupported if it is a constant."""
    if not isinstance(value, Tensor):
        raise Unsupported(f"{what} given a constant")
    return value


def _const(value, what: str) -> np.ndarray:
    """``value`` if it is a constant; Unsupported if it is computed from the input."""
    if isinstance(value, Tensor):
        raise Unsupported(f"{what} given a tensor computed from the input")
    return value


def _legacy_broadcast(loader: ModelLoader, attrs, tensor: Tensor, constant: np.ndarray) -> np.ndarray:
    """Opset < 7 element-wise ops align a broadcast operand at ``axis``; make it numpy-style."""
    if loader.opset >= 7 or not attrs.get("broadcast", 0) or "axis" not in attrs:
        return constant
    rank = len(tensor.shape) + 1
    axis = attrs["axis"] + rank if attrs["axis"] < 0 else attrs["axis"]
    return constant.reshape(constant.shape + (1,) * (rank - axis - constant.ndim))


def _check_constant(op_type: str, tensor: Tensor, constant: np.ndarray) -> np.ndarray:
    """A constant operand may broadcast over the batch axis but not span it."""
    rank = len(tensor.shape) + 1
    if constant.ndim > rank or (constant.ndim == rank and constant.shape[0] != 1):
        raise Unsupported(f"{op_type} with a constant of shape {constant.shape} that spans the batch axis")
    return constant


def _same_rank(tensors: list[Tensor], op_type: str) -> None:
    """Unsupported unless all ``tensors`` have the same rank (the IR does not broadcast tensors)."""
    if len({len(t.shape) for t in tensors}) > 1:
        raise Unsupported(f"{op_type} of tensors of different ranks")


# --------------------------------------------------------------------------- windows (Conv, pools)


def _auto_pads(auto_pad: str, sizes, kernel, strides, dilations) -> list[int]:
    """Explicit pads (begins, then ends) of ``auto_pad`` ``SAME_UPPER`` / ``SAME_LOWER`` / ``VALID``."""
    spatial = len(kernel)
    if auto_pad == "VALID":
        return [0] * (2 * spatial)
    begins, ends = [], []
    for i in range(spatial):
        out = -(-sizes[i] // strides[i])
        extent = dilations[i] * (kernel[i] - 1) + 1
        total = max((out - 1) * strides[i] + extent - sizes[i], 0)
        small, large = total // 2, total - total // 2
        begins.append(large if auto_pad == "SAME_LOWER" else small)
        ends.append(small if auto_pad == "SAME_LOWER" else large)
    return begins + ends


def _window_attrs(node, attrs, x: Tensor, kernel, has_dilations=True):
    """``(strides, pads, dilations)`` of a sliding-window node, checked against its kernel and input."""
    spatial = len(kernel)
    if len(x.shape) != spatial + 1:
        raise ModelError(
            f"node {node.name or node.output[0]!r} ({node.op_type}): kernel {tuple(kernel)} "
            f"does not fit per-sample input shape {x.shape}"
        )
    strides = tuple(int(s) for s in attrs.get("strides", [1] * spatial))
    dilations = tuple(int(d) for d in attrs.get("dilations", [1] * spatial)) if has_dilations else (1,) * spatial
    auto_pad = as_text(attrs.get("auto_pad", "NOTSET"))
    if auto_pad in ("NOTSET", ""):
        pads = tuple(int(p) for p in attrs.get("pads", [0] * (2 * spatial)))
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        pads = tuple(_auto_pads(auto_pad, x.shape[1:], kernel, strides, dilations))
    else:
        raise Unsupported(f"{node.op_type} with auto_pad={auto_pad}")
    where = f"node {node.name or node.output[0]!r} ({node.op_type})"
    for what, values, size, least in (
        ("kernel_shape", tuple(int(k) for k in kernel), spatial, 1),
        ("strides", strides, spatial, 1),
        ("dilations", dilations, spatial, 1),
        ("pads", pads, 2 * spatial, 0),
    ):
        if len(values) != size or any(v < least for v in values):
            raise ModelError(f"{where}: {what} {list(values)} (expected {size} values >= {least})")
    return strides, pads, dilations


@importer("Conv")
def import_conv(loader, node, attrs, ins):
    """Conv with a constant weight and optional constant bias (any group, auto_pad)."""
    x = tensor_input(ins[0], "Conv input")
    weight = _float32(_const(ins[1], "Conv weight"), "Conv weight")
    bias = None if optional_input(ins, 2) is None else _float32(_const(ins[2], "Conv bias"), "Conv bias")
    strides, pads, dilations = _window_attrs(node, attrs, x, weight.shape[2:])
    return O.Conv(
        weight=weight, bias=bias, strides=strides, pads=pads, dilations=dilations, group=int(attrs.get("group", 1))
    ), [x.key]


@importer("MaxPool")
def import_maxpool(loader, node, attrs, ins):
    """MaxPool without its Indices output."""
    if loader.outputs_used(node, 1):
        raise Unsupported("MaxPool with the Indices output")
    x = tensor_input(ins[0], "MaxPool input")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    strides, pads, dilations = _window_attrs(node, attrs, x, kernel)
    return O.MaxPool(
        kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations, ceil_mode=bool(attrs.get("ceil_mode", 0))
    ), [x.key]


@importer("AveragePool")
def import_avgpool(loader, node, attrs, ins):
    """AveragePool, with ``count_include_pad`` and ``ceil_mode``."""
    x = tensor_input(ins[0], "AveragePool input")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    strides, pads, dilations = _window_attrs(node, attrs, x, kernel)
    return O.AveragePool(
        kernel_shape=kernel,
        strides=strides,
        pads=pads,
        dilations=dilations,
        ceil_mode=bool(attrs.get("ceil_mode", 0)),
        count_include_pad=bool(attrs.get("count_include_pad", 0)),
    ), [x.key]


@importer("GlobalAveragePool")
def import_global_avgpool(loader, node, attrs, ins):
    """GlobalAveragePool."""
    return O.GlobalAveragePool(), [tensor_input(ins[0], "GlobalAveragePool input").key]


@importer("ReduceMean")
def import_reducemean(loader, node, attrs, ins):
    """ReduceMean over all spatial axes: a GlobalAveragePool (then a Reshape if ``keepdims=0``)."""
    x = tensor_input(ins[0], "ReduceMean input")
    rank = len(x.shape) + 1
    axes = attrs.get("axes") if loader.opset < 18 else optional_input(ins, 1)
    if axes is not None:
        axes = sorted(absolute_axes(np.asarray(_const(axes, "ReduceMean axes")).reshape(-1), rank))
    if not axes and loader.opset >= 18 and attrs.get("noop_with_empty_axes", 0):
        return O.Identity(), [x.key]
    if rank < 3 or axes != list(range(2, rank)):
        raise Unsupported("ReduceMean over axes other than all spatial axes")
    if attrs.get("keepdims", 1):
        return O.GlobalAveragePool(), [x.key]
    # keepdims=0: the global average pool, then drop the spatial axes
    pooled = loader.add_helper(f"{loader.current_key}/pool", O.GlobalAveragePool(), [x.key])
    return O.Reshape(shape=(x.shape[0],)), [pooled]


# --------------------------------------------------------------------------- dense layers, normalisation


def _gemm_bias(c, beta: float, out: int) -> np.ndarray:
    """The Gemm bias ``beta * C`` as one value per output feature (C a scalar, ``(out,)`` or ``(1, out)``)."""
    c = _float32(_const(c, "Gemm bias C"), "Gemm bias")
    if c.size == 1:
        c = np.full(out, c.reshape(-1)[0], np.float32)
    elif c.shape in ((out,), (1, out)):
        c = c.reshape(out)
    else:
        raise Unsupported(f"Gemm with a bias of shape {c.shape} (not per output feature)")
    return np.ascontiguousarray(c * np.float32(beta), dtype=np.float32)


@importer("Gemm")
def import_gemm(loader, node, attrs, ins):
    """Gemm ``alpha A B' + beta C`` with constant B and C: weight ``alpha B'`` (out x in), bias ``beta C``."""
    if attrs.get("transA", 0):
        raise Unsupported("Gemm with transA=1")
    x = tensor_input(ins[0], "Gemm input A")
    b = _float32(_const(ins[1], "Gemm weight B"), "Gemm weight")
    if b.ndim != 2:
        raise Unsupported("Gemm with a weight that is not 2-d")
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    weight = b if attrs.get("transB", 0) else b.T
    weight = np.ascontiguousarray(weight * np.float32(alpha), dtype=np.float32)
    c = optional_input(ins, 2)
    bias = _gemm_bias(c, beta, weight.shape[0]) if c is not None and beta != 0.0 else None
    return O.Gemm(weight=weight, bias=bias), [x.key]


@importer("MatMul")
def import_matmul(loader, node, attrs, ins):
    """MatMul of a tensor by a constant 2-d matrix."""
    x = tensor_input(ins[0], "MatMul left operand")
    weight = _float32(_const(ins[1], "MatMul right operand"), "MatMul weight")
    if weight.ndim != 2:
        raise Unsupported("MatMul with a right operand that is not 2-d")
    return O.MatMul(weight=weight), [x.key]


@importer("BatchNormalization")
def import_batchnorm(loader, node, attrs, ins):
    """Inference BatchNormalization with per-channel constant statistics."""
    if attrs.get("training_mode", 0):
        raise Unsupported("BatchNormalization with training_mode=1")
    if loader.outputs_used(node, 1):
        raise Unsupported("BatchNormalization with training outputs")
    x = tensor_input(ins[0], "BatchNormalization input")
    params = [_float32(_const(v, "BatchNormalization parameter"), "BatchNormalization parameter") for v in ins[1:5]]
    channels = x.shape[0] if x.shape else 0
    if attrs.get("spatial", 1) == 0 or any(p.size != channels for p in params):
        raise Unsupported("BatchNormalization with per-activation (spatial=0) statistics")
    scale, bias, mean, var = (p.reshape(-1) for p in params)
    return O.BatchNormalization(
        scale=scale, bias=bias, mean=mean, var=var, epsilon=float(np.float32(attrs.get("epsilon", 1e-5)))
    ), [x.key]


# --------------------------------------------------------------------------- activations


@importer("Relu")
def import_relu(loader, node, attrs, ins):
    """Relu."""
    return O.Relu(), [tensor_input(ins[0], "Relu input").key]


@importer("LeakyRelu")
def import_leaky_relu(loader, node, attrs, ins):
    """LeakyRelu with its ``alpha`` (float32)."""
    return O.LeakyRelu(alpha=float(np.float32(attrs.get("alpha", 0.01)))), [tensor_input(ins[0], "LeakyRelu input").key]


@importer("PRelu")
def import_prelu(loader, node, attrs, ins):
    """PRelu with a constant slope (one value before opset 7)."""
    x = tensor_input(ins[0], "PRelu input")
    slope = _float32(_const(ins[1], "PRelu slope"), "PRelu slope")
    if loader.opset < 7 and slope.size != 1:
        raise Unsupported("PRelu before opset 7 with a slope per channel")
    _check_constant("PRelu", x, slope)
    return O.PRelu(slope=slope), [x.key]


@importer("Clip")
def import_clip(loader, node, attrs, ins):
    """Clip with scalar constant bounds (attributes before opset 11); +-FLT_MAX means no bound."""
    x = tensor_input(ins[0], "Clip input")
    if loader.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo, hi = (
            None if v is None else _float32(_const(v, "Clip bound"), "Clip bound")
            for v in (optional_input(ins, 1), optional_input(ins, 2))
        )
        for v in (lo, hi):
            if v is not None and v.size != 1:
                raise Unsupported("Clip with a non-scalar bound")
        lo, hi = (None if v is None else v.reshape(-1)[0] for v in (lo, hi))
    lo = None if lo is None or float(lo) <= -_FLT_MAX else float(np.float32(lo))
    hi = None if hi is None or float(hi) >= _FLT_MAX else float(np.float32(hi))
    return O.Clip(min=lo, max=hi), [x.key]


@importer("Softmax", "LogSoftmax")
def import_softmax(loader, node, attrs, ins):
    """Softmax / LogSoftmax over one non-batch axis (opset < 13: only if it is the same as the 2-d form)."""
    cls = O.Softmax if node.op_type == "Softmax" else O.LogSoftmax
    x = tensor_input(ins[0], f"{node.op_type} input")
    rank = len(x.shape) + 1
    if loader.opset >= 13:
        axis = int(attrs.get("axis", -1))
        axis = axis + rank if axis < 0 else axis
    else:
        # opset < 13 flattens to 2-d at axis: the same as a one-axis softmax
        # only if every axis after it has size 1 (or it is the last axis)
        axis = int(attrs.get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        if any(d != 1 for d in x.shape[axis:]):
            raise Unsupported(
                f"{node.op_type} (opset {loader.opset}) with axis={axis} on rank {rank} normalising over several axes"
            )
    if axis == 0:
        raise Unsupported(f"{node.op_type} along the batch axis")
    return cls(axis=axis), [x.key]


@importer("Dropout")
def import_dropout(loader, node, attrs, ins):
    """Inference Dropout (the identity), without its mask output."""
    if loader.outputs_used(node, 1):
        raise Unsupported("Dropout with its mask output")
    x = tensor_input(ins[0], "Dropout input")
    ratio = attrs.get("ratio", 0.5)
    if loader.opset >= 12:
        given = optional_input(ins, 1)
        ratio = 0.5 if given is None else float(np.asarray(_const(given, "Dropout ratio")).reshape(-1)[0])
        training = optional_input(ins, 2)
        if training is not None and bool(np.asarray(_const(training, "Dropout training_mode")).reshape(-1)[0]):
            raise Unsupported("Dropout with training_mode=true")
    return O.Dropout(ratio=float(np.float32(ratio))), [x.key]


@importer("Identity")
def import_identity(loader, node, attrs, ins):
    """Identity."""
    return O.Identity(), [tensor_input(ins[0], "Identity input").key]


# --------------------------------------------------------------------------- element-wise arithmetic


@importer("Add")
def import_add(loader, node, attrs, ins):
    """Add of two tensors of one rank, or of a tensor and a constant."""
    tensors = [v for v in ins if isinstance(v, Tensor)]
    if len(tensors) == 2:
        _same_rank(tensors, "Add")
        return O.Add(), [t.key for t in tensors]
    constant = next(v for v in ins if not isinstance(v, Tensor))
    constant = _legacy_broadcast(loader, attrs, tensors[0], _float32(constant, "Add constant"))
    _check_constant("Add", tensors[0], constant)
    return O.Add(constant=constant), [tensors[0].key]


@importer("Sum")
def import_sum(loader, node, attrs, ins):
    """Sum of tensors; constants among the inputs become one Add after the Sum."""
    tensors = [v for v in ins if isinstance(v, Tensor)]
    constants = [_float32(v, "Sum constant") for v in ins if v is not None and not isinstance(v, Tensor)]
    _same_rank(tensors, "Sum")
    if not constants:
        return O.Sum(), [t.key for t in tensors]
    constant = _check_constant("Sum", tensors[0], np.asarray(sum(constants), dtype=np.float32))
    if len(tensors) == 1:
        return O.Add(constant=constant), [tensors[0].key]
    # the sum of the tensors, then the constant
    total = loader.add_helper(f"{loader.current_key}/tensors", O.Sum(), [t.key for t in tensors])
    return O.Add(constant=constant), [total]


@importer("Sub", "Mul", "Div")
def import_constant_binary(loader, node, attrs, ins):
    """Sub / Mul / Div of a tensor and a constant, on either side (``constant_first``)."""
    cls = {"Sub": O.Sub, "Mul": O.Mul, "Div": O.Div}[node.op_type]
    if all(isinstance(v, Tensor) for v in ins):
        raise Unsupported(f"{node.op_type} of two tensors")
    first = not isinstance(ins[0], Tensor)
    tensor = ins[1] if first else ins[0]
    constant = _float32(ins[0] if first else ins[1], f"{node.op_type} constant")
    if not first:
        constant = _legacy_broadcast(loader, attrs, tensor, constant)
    _check_constant(node.op_type, tensor, constant)
    return cls(constant=constant, constant_first=first), [tensor.key]


# --------------------------------------------------------------------------- shape ops


@importer("Flatten")
def import_flatten(loader, node, attrs, ins):
    """Flatten at axis 1 (any other axis would merge the batch axis or keep it split)."""
    x = tensor_input(ins[0], "Flatten input")
    axis = int(attrs.get("axis", 1))
    axis = axis + len(x.shape) + 1 if axis < 0 else axis
    if axis != 1:
        raise Unsupported(f"Flatten with axis={attrs.get('axis', 1)} (it would merge the batch axis)")
    return O.Flatten(axis=1), [x.key]


def _keeps_batch_axis(loader: ModelLoader, x: Tensor, target: list, allowzero: bool) -> bool:
    """Whether the first entry of a Reshape target keeps the batch axis as it is."""
    first = target[0]
    if first is BATCH or (not allowzero and not isinstance(first, BatchSize) and int(first) == 0):
        return True
    if isinstance(loader.batch_value, int) and int(first) == loader.batch_value:
        return True
    # -1 at the batch axis resolves to the batch size
    return (
        int(first) == -1
        and all(d is not BATCH and int(d) > 0 for d in target[1:])
        and (math.prod(int(d) for d in target[1:]) == math.prod(x.shape))
    )


def _reshape_target(loader: ModelLoader, node, x: Tensor, target, allowzero: bool) -> tuple[int, ...]:
    """Per-sample target shape of a Reshape of ``x`` to the (folded) ONNX ``target``."""
    target = list(np.asarray(target).reshape(-1))
    full = [loader.batch_value] + list(x.shape)
    if not target:
        raise Unsupported("Reshape to a scalar")
    if not _keeps_batch_axis(loader, x, target, allowzero):
        raise Unsupported(f"Reshape to {[str(d) for d in target]} (it changes the batch axis)")
    per_sample = []
    for i, d in enumerate(target[1:], start=1):
        if d is BATCH:
            raise Unsupported("Reshape that moves the batch size off axis 0")
        d = int(d)
        if d == 0 and not allowzero:
            if i >= len(full):
                raise ModelError(f"node {loader.key_hint(node)!r} (Reshape): 0 at axis {i} of a rank-{len(full)} input")
            d = full[i]
        per_sample.append(d)
    if per_sample.count(-1) > 1:
        raise ModelError(f"node {loader.key_hint(node)!r} (Reshape): more than one -1 in {target}")
    if -1 in per_sample:
        known = math.prod(d for d in per_sample if d != -1)
        total = math.prod(x.shape)
        if known == 0 or total % known:
            raise ModelError(f"node {loader.key_hint(node)!r} (Reshape): cannot reshape {x.shape} to {target}")
        per_sample[per_sample.index(-1)] = total // known
    return tuple(per_sample)


@importer("Reshape")
def import_reshape(loader, node, attrs, ins):
    """Reshape to a constant target that keeps the batch axis first (0 and -1 resolved)."""
    x = tensor_input(ins[0], "Reshape input")
    target = attrs["shape"] if loader.opset < 5 else _const(ins[1], "Reshape target shape")
    shape = _reshape_target(loader, node, x, target, bool(attrs.get("allowzero", 0)))
    return O.Reshape(shape=shape), [x.key]


@importer("Squeeze", "Unsqueeze")
def import_squeeze_unsqueeze(loader, node, attrs, ins):
    """Squeeze / Unsqueeze of non-batch axes: a Reshape."""
    x = tensor_input(ins[0], f"{node.op_type} input")
    axes = attrs.get("axes") if loader.opset < 13 else optional_input(ins, 1)
    if axes is not None:
        axes = [int(a) for a in np.asarray(_const(axes, f"{node.op_type} axes")).reshape(-1)]
    full = [1] + list(x.shape)
    if node.op_type == "Unsqueeze":
        rank = len(full) + len(axes)
        out = list(full)
        for a in sorted(absolute_axes(axes, rank)):
            out.insert(a, 1)
        if 0 in absolute_axes(axes, rank):
            raise Unsupported("Unsqueeze at the batch axis")
    else:
        if axes is not None:
            drop = set(absolute_axes(axes, len(full)))
        else:
            drop = {i for i, d in enumerate(full) if d == 1 and i}
        if 0 in drop:
            raise Unsupported("Squeeze of the batch axis")
        if any(full[i] != 1 for i in drop):
            raise ModelError(f"node {loader.key_hint(node)!r} (Squeeze): axes {sorted(drop)} of {x.shape} are not 1")
        out = [d for i, d in enumerate(full) if i not in drop]
    return O.Reshape(shape=tuple(out[1:])), [x.key]


@importer("Transpose")
def import_transpose(loader, node, attrs, ins):
    """Transpose that keeps the batch axis first."""
    x = tensor_input(ins[0], "Transpose input")
    rank = len(x.shape) + 1
    perm = tuple(int(p) for p in attrs.get("perm", range(rank - 1, -1, -1)))
    if sorted(perm) != list(range(rank)):
        raise Unsupported(f"Transpose with perm {list(perm)} for rank {rank}")
    if perm[0] != 0:
        raise Unsupported("Transpose that moves the batch axis")
    return O.Transpose(perm=perm), [x.key]


@importer("Concat")
def import_concat(loader, node, attrs, ins):
    """Concat of tensors of one rank along a non-batch axis."""
    tensors = [tensor_input(v, "Concat input") for v in ins]
    _same_rank(tensors, "Concat")
    rank = len(tensors[0].shape) + 1
    axis = int(attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise Unsupported("Concat along the batch axis")
    return O.Concat(axis=axis), [t.key for t in tensors]


def _pads_of_inputs(ins, pads: list[int], rank: int) -> list[int]:
    """Opset >= 18 Pad ``axes`` input: the pads of those axes spread over all ``rank`` axes."""
    axes = optional_input(ins, 3)
    if axes is None:
        return pads
    axes = absolute_axes(np.asarray(_const(axes, "Pad axes")).reshape(-1), rank)
    full = [0] * (2 * rank)
    for j, a in enumerate(axes):
        full[a], full[a + rank] = pads[j], pads[j + len(axes)]
    return full


@importer("Pad")
def import_pad(loader, node, attrs, ins):
    """Pad of non-batch axes, mode constant / reflect / edge (attributes before opset 11)."""
    x = tensor_input(ins[0], "Pad input")
    rank = len(x.shape) + 1
    mode = as_text(attrs.get("mode", "constant"))
    if loader.opset < 11:
        pads = list(attrs.get("pads", attrs.get("paddings", [])))
        value = float(attrs.get("value", 0.0))
    else:
        pads = [int(p) for p in np.asarray(_const(ins[1], "Pad pads")).reshape(-1)]
        constant = optional_input(ins, 2)
        value = 0.0 if constant is None else float(_float32(_const(constant, "Pad value"), "Pad value").reshape(-1)[0])
        pads = _pads_of_inputs(ins, pads, rank)
    if mode not in ("constant", "reflect", "edge"):
        raise Unsupported(f"Pad with mode={mode}")
    if len(pads) != 2 * rank:
        raise ModelError(f"node {loader.key_hint(node)!r} (Pad): {len(pads)} pads for a rank-{rank} tensor")
    if pads[0] or pads[rank]:
        raise Unsupported("Pad of the batch axis")
    return O.Pad(pads=tuple(int(p) for p in pads), mode=mode, value=float(np.float32(value))), [x.key]


SUPPORTED_OPS = tuple(sorted(IMPORTERS))
"""Default-domain op types :func:`~bsnn_graph.onnx_io.load_onnx` maps to IR nodes."""
