"""ONNX import and export for the bsnn-graph IR.

:func:`load_onnx` reads an ONNX file into the IR (:mod:`bsnn_graph.ir`):

- the model is checked at the wire level first, so that a file that is not
  ONNX, or that was cut short, is reported as such;
- ONNX shape inference runs, and its shapes are cross-checked against the
  shapes the IR infers;
- subgraphs that only compute constants (weights behind ``Constant``,
  ``ConstantOfShape``, ``Transpose``..., and ``Shape -> Gather -> Unsqueeze
  -> Concat`` chains that build ``Reshape`` targets) are evaluated with
  numpy. ``Shape`` of a data tensor yields the batch size as a symbol, so a
  target such as ``Concat(Shape(x)[0], -1)`` resolves to a per-sample shape;
- every other node becomes one IR node, keyed by its ONNX node name when
  that is non-empty and unique, else by its output tensor name; graph inputs
  are keyed by their names;
- nodes of the custom domain ``ai.bsnn`` (the spiking ops written by
  :func:`save_onnx`) map back to :data:`bsnn_graph.ops.OP_CLASSES`.

Every unsupported op is listed in one :class:`~bsnn_graph.errors.ModelError`
(``model.onnx: unsupported ops: Sigmoid (nodes s1, s2), LSTM (node l0)``).

:func:`save_onnx` writes the IR back as an opset-17 model (19 where a node
needs it), standard ops as standard ONNX, spiking ops as ``ai.bsnn`` nodes
whose attributes are the op's dataclass fields.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from . import ir
from . import ops as O
from .errors import BsnnError, ModelError
from .fileutil import atomic_output

__all__ = ["EXPORT_OPSET", "EXTERNAL_DATA_BYTES", "MIN_OPSET", "SUPPORTED_OPS", "load_onnx", "save_onnx"]

MIN_OPSET = 6
"""Oldest default-domain opset read (opsets 6-8 with their legacy attributes)."""

EXPORT_OPSET = 17
"""Default-domain opset written by :func:`save_onnx` (19 when a node needs it)."""

_EXPORT_IR_VERSION = 8  # the IR version of opset 17; onnxruntime reads it

#: initializer bytes above which save_onnx writes the weights to an external data file
EXTERNAL_DATA_BYTES = 1 << 30
_INPUT_SCALE_KEY = "bsnn.input_scale."  # metadata key prefix that carries Input.scale


class _Unsupported(Exception):
    """Raised by an op converter: this use of the op is not supported (label names it)."""

    def __init__(self, label: str):
        super().__init__(label)
        self.label = label


class _BatchSize:
    """The batch size of a model whose batch axis is symbolic (appears in folded shape vectors)."""

    def __repr__(self) -> str:
        return "N"


BATCH = _BatchSize()


# --------------------------------------------------------------------------- reading the file


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise EOFError
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _wire_problem(data: bytes) -> str | None:
    """Walk the top level of a serialised ModelProto; say what is wrong, or None."""
    if not data:
        return "empty file, not an ONNX model"
    wire_types = {}
    for f in onnx.ModelProto.DESCRIPTOR.fields:
        varint = f.type in (f.TYPE_INT64, f.TYPE_INT32, f.TYPE_UINT64, f.TYPE_BOOL, f.TYPE_ENUM)
        wire_types[f.number] = 0 if varint else 2  # ModelProto has no repeated scalar fields
    seen, pos = set(), 0
    try:
        while pos < len(data):
            tag, pos = _read_varint(data, pos)
            number, wire = tag >> 3, tag & 7
            expected = wire_types.get(number)
            if expected is None and 0 < number < 64 and wire in (0, 1, 2, 5):
                expected = wire  # a field of a newer ModelProto
            if expected != wire:
                return "not an ONNX model"
            if wire == 0:
                _, pos = _read_varint(data, pos)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
                if pos > len(data):
                    raise EOFError
            else:
                length, pos = _read_varint(data, pos)
                if pos + length > len(data):
                    return f"truncated ONNX file (a field of {length} bytes ends past the end of the file)"
                pos += length
            seen.add(number)
    except EOFError:
        return "truncated ONNX file (it ends inside a field)"
    except ValueError:
        return "not an ONNX model"
    if 7 not in seen or 1 not in seen:
        return "not an ONNX model (no graph or no IR version)"
    if 8 not in seen:
        return "truncated or invalid ONNX file (no opset_import)"
    return None


def _read_model(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None
    problem = _wire_problem(data)
    if problem:
        raise ModelError(f"{path}: {problem}")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    bad = _non_text_name(model)
    if bad:
        raise ModelError(f"{path}: damaged ONNX file: {bad} is not UTF-8 text")
    external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if external:
        for tensor in external:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            where = path.parent / location
            if not location or not where.is_file():
                raise ModelError(
                    f"{path}: weights of initializer {tensor.name!r} are stored in the external file "
                    f"{location or '(no location given)'!r}, which is not beside the model "
                    f"(copy {path.name}.data or the exporter's data file along with {path.name})"
                )
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # OSError, ValueError, onnx.checker.ValidationError  # noqa: BLE001
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: cannot load external weight data ({message})") from None
    return model


# --------------------------------------------------------------------------- constant folding


def _non_text_name(model: onnx.ModelProto) -> str | None:
    """Where a string field of the model decoded as bytes (invalid UTF-8, e.g. a bit flip), or None."""
    graph = model.graph
    fields = [("graph name", graph.name)]
    fields += [(f"metadata key {p.key!r}", p.key) for p in model.metadata_props]
    fields += [(f"metadata value of {p.key!r}", p.value) for p in model.metadata_props]
    fields += [("opset domain", o.domain) for o in model.opset_import]
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        fields.append(("a value name", info.name))
    fields += [("an initializer name", t.name) for t in graph.initializer]
    for node in graph.node:
        fields += [("a node name", node.name), ("an op type", node.op_type), ("a node domain", node.domain)]
        fields += [("an edge name", name) for name in list(node.input) + list(node.output)]
        fields += [("an attribute name", a.name) for a in node.attribute]
    for what, value in fields:
        if not isinstance(value, str):
            return what
    return None


def _source_module(node: onnx.NodeProto) -> str | None:
    """The module the exporter recorded for ``node`` (``features.1 (BatchNorm2d)``), or None.

    PyTorch's dynamo exporter stores ``pkg.torch.onnx.name_scopes`` and
    ``pkg.torch.onnx.class_hierarchy`` in the node's metadata.
    """
    import ast

    props = {p.key: p.value for p in getattr(node, "metadata_props", ())}
    try:
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        classes = ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(scopes, list) or not isinstance(classes, list):
        return None
    pairs = [
        (str(scope), str(cls).rsplit(".", 1)[-1])
        for scope, cls in zip(scopes, classes)
        if scope and not str(cls).startswith("aten.")
    ]
    return f"{pairs[-1][0]} ({pairs[-1][1]})" if pairs else None


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _axes(axes, rank: int) -> list[int]:
    return [int(a) + rank if int(a) < 0 else int(a) for a in axes]


def _optional(values: list, i: int):
    return values[i] if i < len(values) else None


def _fold(op_type: str, attrs: dict, values: list, opset: int):
    """numpy value of a node whose inputs are all constant (None for an absent optional input)."""
    x = values[0] if values else None
    if op_type == "Constant":
        if "value" in attrs:
            return numpy_helper.to_array(attrs["value"])
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32)):
            if key in attrs:
                return np.array(attrs[key], dtype)
        for key in ("value_int", "value_ints"):
            if key in attrs:
                return np.array(attrs[key], np.int64)
        raise _Unsupported("Constant of sparse or string value")
    if op_type == "ConstantOfShape":
        fill = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
        return np.full(tuple(int(d) for d in x), fill.reshape(-1)[0], dtype=fill.dtype)
    if op_type == "Shape":
        start, end = attrs.get("start", 0), attrs.get("end", None)
        return np.array(x.shape, np.int64)[start:end]
    if op_type == "Size":
        return np.array(x.size, np.int64)
    if op_type == "Gather":
        return np.take(x, np.asarray(values[1]).astype(np.int64), axis=attrs.get("axis", 0))
    if op_type == "Unsqueeze":
        axes = attrs["axes"] if opset < 13 else values[1]
        rank = x.ndim + len(axes)
        out = x
        for a in sorted(_axes(axes, rank)):
            out = np.expand_dims(out, a)
        return out
    if op_type == "Squeeze":
        axes = attrs.get("axes") if opset < 13 else _optional(values, 1)
        if axes is None:
            return np.squeeze(x)
        return np.squeeze(x, axis=tuple(_axes(axes, x.ndim)))
    if op_type == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in values], axis=attrs["axis"])
    if op_type == "Cast":
        dtype = helper.tensor_dtype_to_np_dtype(attrs["to"])
        if x.dtype == object:
            if np.issubdtype(dtype, np.integer):
                return x
            raise TypeError("cast of a symbolic shape")
        return x.astype(dtype)
    if op_type == "Slice":
        if opset < 10:
            starts, ends = attrs["starts"], attrs["ends"]
            axes, steps = attrs.get("axes"), None
        else:
            starts, ends = values[1], values[2]
            axes, steps = _optional(values, 3), _optional(values, 4)
        axes = list(range(len(starts))) if axes is None else _axes(axes, x.ndim)
        steps = [1] * len(starts) if steps is None else steps
        index = [slice(None)] * x.ndim
        for a, s, e, st in zip(axes, starts, ends, steps):
            index[a] = slice(int(max(min(s, 2**62), -(2**62))), int(max(min(e, 2**62), -(2**62))), int(st))
        return x[tuple(index)]
    if op_type == "Reshape":
        target = attrs["shape"] if opset < 5 else values[1]
        allowzero = attrs.get("allowzero", 0)
        shape = [x.shape[i] if (int(d) == 0 and not allowzero) else int(d) for i, d in enumerate(target)]
        return x.reshape(shape)
    if op_type == "Flatten":
        axis = attrs.get("axis", 1)
        axis = axis + x.ndim if axis < 0 else axis
        return x.reshape(int(math.prod(x.shape[:axis])), -1)
    if op_type in ("Identity", "Dropout"):
        return x
    if op_type == "Transpose":
        return np.transpose(x, attrs.get("perm"))
    if op_type in ("Add", "Sub", "Mul", "Div", "Pow"):
        a, b = values
        if a.dtype == object or b.dtype == object:
            raise TypeError("arithmetic on the symbolic batch size")
        if op_type == "Div" and np.issubdtype(a.dtype, np.integer):
            return np.trunc(a / b).astype(a.dtype)
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power}[op_type]
        return fn(a, b).astype(np.result_type(a, b) if op_type != "Pow" else a.dtype)
    if op_type in ("Neg", "Sqrt", "Reciprocal", "Exp"):
        if x.dtype == object:
            raise TypeError("arithmetic on the symbolic batch size")
        fn = {"Neg": np.negative, "Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Exp": np.exp}[op_type]
        return fn(x)
    if op_type == "Range":
        start, limit, delta = (np.asarray(v).item() for v in values)
        return np.arange(start, limit, delta, dtype=np.asarray(values[0]).dtype)
    raise _Unsupported(f"{op_type} on constants")


_FOLDABLE = frozenset(
    ("Constant", "ConstantOfShape", "Shape", "Size", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice")
    + ("Reshape", "Flatten", "Identity", "Dropout", "Transpose", "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Sqrt")
    + ("Reciprocal", "Exp", "Range")
)


# --------------------------------------------------------------------------- op converters
#
# A converter gets the loader, the node, its attributes and its inputs (each
# a _Tensor, a numpy constant, or None for an absent optional input) and
# returns (op, data_inputs). It raises _Unsupported for a use of the op the IR
# cannot express.


@dataclasses.dataclass
class _Tensor:
    key: str  # IR node computing this tensor
    shape: tuple[int, ...]  # per sample


def _float32(value: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype == object:
        raise _Unsupported(f"{what} that depends on the batch size")
    return np.ascontiguousarray(value, dtype=np.float32)


def _tensor(value, what: str) -> _Tensor:
    if not isinstance(value, _Tensor):
        raise _Unsupported(f"{what} given a constant")
    return value


def _const(value, what: str) -> np.ndarray:
    if isinstance(value, _Tensor):
        raise _Unsupported(f"{what} given a tensor computed from the input")
    return value


def _auto_pads(auto_pad: str, sizes, kernel, strides, dilations) -> list[int]:
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


def _window_attrs(node, attrs, x: _Tensor, kernel, has_dilations=True):
    spatial = len(kernel)
    if len(x.shape) != spatial + 1:
        raise ModelError(
            f"node {node.name or node.output[0]!r} ({node.op_type}): kernel {tuple(kernel)} "
            f"does not fit per-sample input shape {x.shape}"
        )
    strides = tuple(int(s) for s in attrs.get("strides", [1] * spatial))
    dilations = tuple(int(d) for d in attrs.get("dilations", [1] * spatial)) if has_dilations else (1,) * spatial
    auto_pad = _as_str(attrs.get("auto_pad", "NOTSET"))
    if auto_pad in ("NOTSET", ""):
        pads = tuple(int(p) for p in attrs.get("pads", [0] * (2 * spatial)))
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        pads = tuple(_auto_pads(auto_pad, x.shape[1:], kernel, strides, dilations))
    else:
        raise _Unsupported(f"{node.op_type} with auto_pad={auto_pad}")
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


def _convert_conv(loader, node, attrs, ins):
    x = _tensor(ins[0], "Conv input")
    weight = _float32(_const(ins[1], "Conv weight"), "Conv weight")
    bias = None if _optional(ins, 2) is None else _float32(_const(ins[2], "Conv bias"), "Conv bias")
    strides, pads, dilations = _window_attrs(node, attrs, x, weight.shape[2:])
    return O.Conv(
        weight=weight, bias=bias, strides=strides, pads=pads, dilations=dilations, group=int(attrs.get("group", 1))
    ), [x.key]


def _convert_gemm(loader, node, attrs, ins):
    if attrs.get("transA", 0):
        raise _Unsupported("Gemm with transA=1")
    x = _tensor(ins[0], "Gemm input A")
    b = _float32(_const(ins[1], "Gemm weight B"), "Gemm weight")
    if b.ndim != 2:
        raise _Unsupported("Gemm with a weight that is not 2-d")
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    weight = b if attrs.get("transB", 0) else b.T
    weight = np.ascontiguousarray(weight * np.float32(alpha), dtype=np.float32)
    bias = None
    c = _optional(ins, 2)
    if c is not None and beta != 0.0:
        c = _float32(_const(c, "Gemm bias C"), "Gemm bias")
        out = weight.shape[0]
        if c.size == 1:
            c = np.full(out, c.reshape(-1)[0], np.float32)
        elif c.shape in ((out,), (1, out)):
            c = c.reshape(out)
        else:
            raise _Unsupported(f"Gemm with a bias of shape {c.shape} (not per output feature)")
        bias = np.ascontiguousarray(c * np.float32(beta), dtype=np.float32)
    return O.Gemm(weight=weight, bias=bias), [x.key]


def _convert_matmul(loader, node, attrs, ins):
    x = _tensor(ins[0], "MatMul left operand")
    weight = _float32(_const(ins[1], "MatMul right operand"), "MatMul weight")
    if weight.ndim != 2:
        raise _Unsupported("MatMul with a right operand that is not 2-d")
    return O.MatMul(weight=weight), [x.key]


def _convert_batchnorm(loader, node, attrs, ins):
    if attrs.get("training_mode", 0):
        raise _Unsupported("BatchNormalization with training_mode=1")
    if loader.outputs_used(node, 1):
        raise _Unsupported("BatchNormalization with training outputs")
    x = _tensor(ins[0], "BatchNormalization input")
    params = [_float32(_const(v, "BatchNormalization parameter"), "BatchNormalization parameter") for v in ins[1:5]]
    channels = x.shape[0] if x.shape else 0
    if attrs.get("spatial", 1) == 0 or any(p.size != channels for p in params):
        raise _Unsupported("BatchNormalization with per-activation (spatial=0) statistics")
    scale, bias, mean, var = (p.reshape(-1) for p in params)
    return O.BatchNormalization(
        scale=scale, bias=bias, mean=mean, var=var, epsilon=float(np.float32(attrs.get("epsilon", 1e-5)))
    ), [x.key]


def _convert_relu(loader, node, attrs, ins):
    return O.Relu(), [_tensor(ins[0], "Relu input").key]


def _convert_leaky_relu(loader, node, attrs, ins):
    return O.LeakyRelu(alpha=float(np.float32(attrs.get("alpha", 0.01)))), [_tensor(ins[0], "LeakyRelu input").key]


def _convert_prelu(loader, node, attrs, ins):
    x = _tensor(ins[0], "PRelu input")
    slope = _float32(_const(ins[1], "PRelu slope"), "PRelu slope")
    if loader.opset < 7 and slope.size != 1:
        raise _Unsupported("PRelu before opset 7 with a slope per channel")
    _check_constant("PRelu", x, slope)
    return O.PRelu(slope=slope), [x.key]


_FLT_MAX = float(np.finfo(np.float32).max)


def _convert_clip(loader, node, attrs, ins):
    x = _tensor(ins[0], "Clip input")
    if loader.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo, hi = (
            None if v is None else _float32(_const(v, "Clip bound"), "Clip bound")
            for v in (_optional(ins, 1), _optional(ins, 2))
        )
        for v in (lo, hi):
            if v is not None and v.size != 1:
                raise _Unsupported("Clip with a non-scalar bound")
        lo, hi = (None if v is None else v.reshape(-1)[0] for v in (lo, hi))
    lo = None if lo is None or float(lo) <= -_FLT_MAX else float(np.float32(lo))
    hi = None if hi is None or float(hi) >= _FLT_MAX else float(np.float32(hi))
    return O.Clip(min=lo, max=hi), [x.key]


def _convert_maxpool(loader, node, attrs, ins):
    if loader.outputs_used(node, 1):
        raise _Unsupported("MaxPool with the Indices output")
    x = _tensor(ins[0], "MaxPool input")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    strides, pads, dilations = _window_attrs(node, attrs, x, kernel)
    return O.MaxPool(
        kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations, ceil_mode=bool(attrs.get("ceil_mode", 0))
    ), [x.key]


def _convert_avgpool(loader, node, attrs, ins):
    x = _tensor(ins[0], "AveragePool input")
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


def _convert_gap(loader, node, attrs, ins):
    return O.GlobalAveragePool(), [_tensor(ins[0], "GlobalAveragePool input").key]


def _legacy_broadcast(loader, attrs, tensor: _Tensor, constant: np.ndarray) -> np.ndarray:
    """Opset < 7 element-wise ops align a broadcast operand at ``axis``; make it numpy-style."""
    if loader.opset >= 7 or not attrs.get("broadcast", 0) or "axis" not in attrs:
        return constant
    rank = len(tensor.shape) + 1
    axis = attrs["axis"] + rank if attrs["axis"] < 0 else attrs["axis"]
    return constant.reshape(constant.shape + (1,) * (rank - axis - constant.ndim))


def _check_constant(op_type: str, tensor: _Tensor, constant: np.ndarray) -> np.ndarray:
    """A constant operand may broadcast over the batch axis but not span it."""
    rank = len(tensor.shape) + 1
    if constant.ndim > rank or (constant.ndim == rank and constant.shape[0] != 1):
        raise _Unsupported(f"{op_type} with a constant of shape {constant.shape} that spans the batch axis")
    return constant


def _same_rank(tensors: list[_Tensor], op_type: str) -> None:
    if len({len(t.shape) for t in tensors}) > 1:
        raise _Unsupported(f"{op_type} of tensors of different ranks")


def _convert_add(loader, node, attrs, ins):
    tensors = [v for v in ins if isinstance(v, _Tensor)]
    if len(tensors) == 2:
        _same_rank(tensors, "Add")
        return O.Add(), [t.key for t in tensors]
    constant = next(v for v in ins if not isinstance(v, _Tensor))
    constant = _legacy_broadcast(loader, attrs, tensors[0], _float32(constant, "Add constant"))
    _check_constant("Add", tensors[0], constant)
    return O.Add(constant=constant), [tensors[0].key]


def _convert_sum(loader, node, attrs, ins):
    tensors = [v for v in ins if isinstance(v, _Tensor)]
    constants = [_float32(v, "Sum constant") for v in ins if v is not None and not isinstance(v, _Tensor)]
    _same_rank(tensors, "Sum")
    if not constants:
        return O.Sum(), [t.key for t in tensors]
    constant = _check_constant("Sum", tensors[0], np.asarray(sum(constants), dtype=np.float32))
    if len(tensors) == 1:
        return O.Add(constant=constant), [tensors[0].key]
    # the sum of the tensors, then the constant
    total = loader.add_helper(f"{loader.current_key}/tensors", O.Sum(), [t.key for t in tensors])
    return O.Add(constant=constant), [total]


def _convert_constant_binary(loader, node, attrs, ins):
    cls = {"Sub": O.Sub, "Mul": O.Mul, "Div": O.Div}[node.op_type]
    if all(isinstance(v, _Tensor) for v in ins):
        raise _Unsupported(f"{node.op_type} of two tensors")
    first = not isinstance(ins[0], _Tensor)
    tensor = ins[1] if first else ins[0]
    constant = _float32(ins[0] if first else ins[1], f"{node.op_type} constant")
    if not first:
        constant = _legacy_broadcast(loader, attrs, tensor, constant)
    _check_constant(node.op_type, tensor, constant)
    return cls(constant=constant, constant_first=first), [tensor.key]


def _convert_flatten(loader, node, attrs, ins):
    x = _tensor(ins[0], "Flatten input")
    axis = int(attrs.get("axis", 1))
    axis = axis + len(x.shape) + 1 if axis < 0 else axis
    if axis != 1:
        raise _Unsupported(f"Flatten with axis={attrs.get('axis', 1)} (it would merge the batch axis)")
    return O.Flatten(axis=1), [x.key]


def _reshape_target(loader, node, x: _Tensor, target, allowzero: bool) -> tuple[int, ...]:
    """Per-sample target shape of a Reshape of ``x`` to the (folded) ONNX ``target``."""
    target = list(np.asarray(target).reshape(-1))
    full = [loader.batch_value] + list(x.shape)
    if not target:
        raise _Unsupported("Reshape to a scalar")
    first = target[0]
    if first is BATCH or (not allowzero and not isinstance(first, _BatchSize) and int(first) == 0):
        pass  # the batch axis is kept
    elif isinstance(loader.batch_value, int) and int(first) == loader.batch_value:
        pass
    elif (
        int(first) == -1
        and all(d is not BATCH and int(d) > 0 for d in target[1:])
        and (math.prod(int(d) for d in target[1:]) == math.prod(x.shape))
    ):
        pass  # -1 at the batch axis resolves to the batch size
    else:
        raise _Unsupported(f"Reshape to {[str(d) for d in target]} (it changes the batch axis)")
    per_sample = []
    for i, d in enumerate(target[1:], start=1):
        if d is BATCH:
            raise _Unsupported("Reshape that moves the batch size off axis 0")
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


def _convert_reshape(loader, node, attrs, ins):
    x = _tensor(ins[0], "Reshape input")
    target = attrs["shape"] if loader.opset < 5 else _const(ins[1], "Reshape target shape")
    shape = _reshape_target(loader, node, x, target, bool(attrs.get("allowzero", 0)))
    return O.Reshape(shape=shape), [x.key]


def _convert_transpose(loader, node, attrs, ins):
    x = _tensor(ins[0], "Transpose input")
    rank = len(x.shape) + 1
    perm = tuple(int(p) for p in attrs.get("perm", range(rank - 1, -1, -1)))
    if sorted(perm) != list(range(rank)):
        raise _Unsupported(f"Transpose with perm {list(perm)} for rank {rank}")
    if perm[0] != 0:
        raise _Unsupported("Transpose that moves the batch axis")
    return O.Transpose(perm=perm), [x.key]


def _convert_squeeze_unsqueeze(loader, node, attrs, ins):
    x = _tensor(ins[0], f"{node.op_type} input")
    axes = attrs.get("axes") if loader.opset < 13 else _optional(ins, 1)
    if axes is not None:
        axes = [int(a) for a in np.asarray(_const(axes, f"{node.op_type} axes")).reshape(-1)]
    full = [1] + list(x.shape)
    if node.op_type == "Unsqueeze":
        rank = len(full) + len(axes)
        out = list(full)
        for a in sorted(_axes(axes, rank)):
            out.insert(a, 1)
        if 0 in _axes(axes, rank):
            raise _Unsupported("Unsqueeze at the batch axis")
    else:
        drop = set(_axes(axes, len(full))) if axes is not None else {i for i, d in enumerate(full) if d == 1 and i}
        if 0 in drop:
            raise _Unsupported("Squeeze of the batch axis")
        if any(full[i] != 1 for i in drop):
            raise ModelError(f"node {loader.key_hint(node)!r} (Squeeze): axes {sorted(drop)} of {x.shape} are not 1")
        out = [d for i, d in enumerate(full) if i not in drop]
    return O.Reshape(shape=tuple(out[1:])), [x.key]


def _convert_concat(loader, node, attrs, ins):
    tensors = [_tensor(v, "Concat input") for v in ins]
    _same_rank(tensors, "Concat")
    rank = len(tensors[0].shape) + 1
    axis = int(attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise _Unsupported("Concat along the batch axis")
    return O.Concat(axis=axis), [t.key for t in tensors]


def _convert_pad(loader, node, attrs, ins):
    x = _tensor(ins[0], "Pad input")
    rank = len(x.shape) + 1
    mode = _as_str(attrs.get("mode", "constant"))
    if loader.opset < 11:
        pads = list(attrs.get("pads", attrs.get("paddings", [])))
        value = float(attrs.get("value", 0.0))
    else:
        pads = [int(p) for p in np.asarray(_const(ins[1], "Pad pads")).reshape(-1)]
        constant = _optional(ins, 2)
        value = 0.0 if constant is None else float(_float32(_const(constant, "Pad value"), "Pad value").reshape(-1)[0])
        axes = _optional(ins, 3)
        if axes is not None:
            axes = _axes(np.asarray(_const(axes, "Pad axes")).reshape(-1), rank)
            full = [0] * (2 * rank)
            for j, a in enumerate(axes):
                full[a], full[a + rank] = pads[j], pads[j + len(axes)]
            pads = full
    if mode not in ("constant", "reflect", "edge"):
        raise _Unsupported(f"Pad with mode={mode}")
    if len(pads) != 2 * rank:
        raise ModelError(f"node {loader.key_hint(node)!r} (Pad): {len(pads)} pads for a rank-{rank} tensor")
    if pads[0] or pads[rank]:
        raise _Unsupported("Pad of the batch axis")
    return O.Pad(pads=tuple(int(p) for p in pads), mode=mode, value=float(np.float32(value))), [x.key]


def _convert_dropout(loader, node, attrs, ins):
    if loader.outputs_used(node, 1):
        raise _Unsupported("Dropout with its mask output")
    x = _tensor(ins[0], "Dropout input")
    ratio = attrs.get("ratio", 0.5)
    if loader.opset >= 12:
        given = _optional(ins, 1)
        ratio = 0.5 if given is None else float(np.asarray(_const(given, "Dropout ratio")).reshape(-1)[0])
        training = _optional(ins, 2)
        if training is not None and bool(np.asarray(_const(training, "Dropout training_mode")).reshape(-1)[0]):
            raise _Unsupported("Dropout with training_mode=true")
    return O.Dropout(ratio=float(np.float32(ratio))), [x.key]


def _convert_identity(loader, node, attrs, ins):
    return O.Identity(), [_tensor(ins[0], "Identity input").key]


def _convert_softmax(loader, node, attrs, ins):
    cls = O.Softmax if node.op_type == "Softmax" else O.LogSoftmax
    x = _tensor(ins[0], f"{node.op_type} input")
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
            raise _Unsupported(
                f"{node.op_type} (opset {loader.opset}) with axis={axis} on rank {rank} normalising over several axes"
            )
    if axis == 0:
        raise _Unsupported(f"{node.op_type} along the batch axis")
    return cls(axis=axis), [x.key]


def _convert_reducemean(loader, node, attrs, ins):
    x = _tensor(ins[0], "ReduceMean input")
    rank = len(x.shape) + 1
    axes = attrs.get("axes") if loader.opset < 18 else _optional(ins, 1)
    if axes is not None:
        axes = sorted(_axes(np.asarray(_const(axes, "ReduceMean axes")).reshape(-1), rank))
    if not axes and loader.opset >= 18 and attrs.get("noop_with_empty_axes", 0):
        return O.Identity(), [x.key]
    if rank < 3 or axes != list(range(2, rank)):
        raise _Unsupported("ReduceMean over axes other than all spatial axes")
    if attrs.get("keepdims", 1):
        return O.GlobalAveragePool(), [x.key]
    # keepdims=0: the global average pool, then drop the spatial axes
    pooled = loader.add_helper(f"{loader.current_key}/pool", O.GlobalAveragePool(), [x.key])
    return O.Reshape(shape=(x.shape[0],)), [pooled]


_CONVERTERS = {
    "ReduceMean": _convert_reducemean,
    "Conv": _convert_conv,
    "Gemm": _convert_gemm,
    "MatMul": _convert_matmul,
    "BatchNormalization": _convert_batchnorm,
    "Relu": _convert_relu,
    "Clip": _convert_clip,
    "MaxPool": _convert_maxpool,
    "AveragePool": _convert_avgpool,
    "GlobalAveragePool": _convert_gap,
    "Add": _convert_add,
    "Sum": _convert_sum,
    "LeakyRelu": _convert_leaky_relu,
    "PRelu": _convert_prelu,
    "Sub": _convert_constant_binary,
    "Mul": _convert_constant_binary,
    "Div": _convert_constant_binary,
    "Flatten": _convert_flatten,
    "Reshape": _convert_reshape,
    "Squeeze": _convert_squeeze_unsqueeze,
    "Unsqueeze": _convert_squeeze_unsqueeze,
    "Concat": _convert_concat,
    "Transpose": _convert_transpose,
    "Pad": _convert_pad,
    "Dropout": _convert_dropout,
    "Identity": _convert_identity,
    "Softmax": _convert_softmax,
    "LogSoftmax": _convert_softmax,
}

SUPPORTED_OPS = tuple(sorted(_CONVERTERS))
"""Default-domain op types :func:`load_onnx` maps to IR nodes."""


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _convert_bsnn(loader, node, attrs, ins):
    cls = O.OP_CLASSES.get((O.BSNN_DOMAIN, node.op_type))
    if cls is None:
        raise _Unsupported(f"{O.BSNN_DOMAIN}:{node.op_type}")
    kwargs = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in attrs.items():
        if name not in known:
            raise ModelError(f"node {loader.key_hint(node)!r} ({node.op_type}): unknown attribute {name!r}")
        default = _field_default(known[name])
        where = f"node {loader.key_hint(node)!r} ({node.op_type}): attribute {name!r}"
        if isinstance(value, TensorProto):
            value = np.array(numpy_helper.to_array(value))
        elif isinstance(default, np.ndarray) and isinstance(value, list):
            value = np.asarray(value, np.float32)  # a tensor field given as FLOATS / INTS
        elif isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, tuple) or isinstance(value, list):
            value = tuple(int(v) for v in value)
        elif isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:
                raise ModelError(f"{where} is not UTF-8 text") from None
        # the type the op's field has: a damaged or hand-edited file may carry any attribute type
        if isinstance(default, str) and not isinstance(value, str):
            raise ModelError(f"{where} is {value!r}, expected a string")
        if isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int):
            raise ModelError(f"{where} is {value!r}, expected an integer")
        if isinstance(default, float) and not isinstance(value, (int, float)):
            raise ModelError(f"{where} is {value!r}, expected a number")
        if name == "mode" and value not in O.MODES:
            raise ModelError(f"{where} is {value!r}, expected one of {', '.join(O.MODES)}")
        if name == "phases" and not 1 <= value <= 16:
            raise ModelError(f"{where} is {value}, expected K in 1..16")
        if name == "stage" and not 0 <= value < 2**16:
            raise ModelError(f"{where} is {value}, expected a stage in 0..65535")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**31) <= value < 2**31:
            raise ModelError(f"{where} is {value}, out of the int32 range")
        if not isinstance(value, (str, int, float, tuple, np.ndarray)):
            raise ModelError(f"{where} is of ONNX type {type(value).__name__}, not a number, string or tensor")
        if isinstance(value, np.ndarray) and value.dtype.kind not in "biuf":
            raise ModelError(f"{where} is a tensor of {value.dtype}, expected numbers")
        if isinstance(default, np.ndarray) and not isinstance(value, (np.ndarray, int, float)):
            raise ModelError(f"{where} is {value!r}, expected a tensor or a number")
        if name == "scale" and isinstance(value, (int, float)) and not (math.isfinite(value) and value > 0):
            raise ModelError(f"{where} is {value}, expected a positive finite lambda")
        if name in ("scale", "ceiling") and isinstance(value, np.ndarray) and (value.ndim > 1 or value.size == 0):
            raise ModelError(f"{where} has shape {value.shape}, expected one value or one per channel")
        if name == "scale" and isinstance(value, np.ndarray) and not np.all(np.isfinite(value) & (value > 0)):
            raise ModelError(f"{where} holds {value.reshape(-1)[:4].tolist()}..., expected positive finite lambdas")
        if name == "initial_potential" and value not in O.INITIAL_POTENTIALS:
            raise ModelError(f"{where} is {value!r}, expected one of {', '.join(O.INITIAL_POTENTIALS)}")
        kwargs[name] = value
    if issubclass(cls, O.Population) and "initial_potential" not in kwargs:
        kwargs["initial_potential"] = "zero"  # converted before the attribute existed: truncation, as it ran then
    tensors = [_tensor(v, f"{node.op_type} input") for v in ins]
    return cls(**kwargs), [t.key for t in tensors]


# --------------------------------------------------------------------------- the loader


class _Loader:
    def __init__(self, path: Path, model: onnx.ModelProto):
        self.path = path
        self.model = model
        self.graph_proto = model.graph
        self.opset = 1
        self.bsnn_opset = None
        for entry in model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                self.opset = int(entry.version)
            elif entry.domain == O.BSNN_DOMAIN:
                self.bsnn_opset = int(entry.version)
        self.graph = ir.new_graph(name=model.graph.name or path.stem, opset=self.opset)
        self.values: dict[str, object] = {}  # tensor name -> _Tensor | ndarray
        self.poisoned: set[str] = set()  # tensors behind an unsupported op
        self.unsupported: dict[str, list[str]] = defaultdict(list)
        self.consumed = {i for n in model.graph.node for i in n.input if i}
        self.consumed |= {o.name for o in model.graph.output}
        self.tensor_of_key: dict[str, str] = {}
        self.batch_value = BATCH
        # onnx shape inference before opset 22 counts a ceil-mode pooling window
        # that starts in the end padding (onnxruntime and the spec drop it): no
        # cross-check for such pools and what follows them
        self.unchecked: set[str] = set()

    # helpers used by the converters
    def outputs_used(self, node: onnx.NodeProto, first: int) -> bool:
        return any(name and name in self.consumed for name in node.output[first:])

    def add_helper(self, name: str, op: O.Op, inputs: list[str]) -> str:
        """Add an extra IR node for an ONNX node that maps to two IR nodes; returns its key."""
        key = ir.unique_name(self.graph, name)
        try:
            return ir.add_node(self.graph, key, op, inputs)
        except BsnnError as exc:
            raise self.fail(str(exc)) from None
        except Exception as exc:  # noqa: BLE001  (as in _add_ir)
            raise self.fail(f"node {name!r} ({op.op_type}): cannot infer its output shape ({exc})") from None

    def key_hint(self, node: onnx.NodeProto) -> str:
        return node.name or (node.output[0] if node.output else node.op_type)

    def _shape_text(self, tensor: str) -> str:
        value = self.values.get(tensor)
        if isinstance(value, _Tensor):
            return str(("N",) + tuple(value.shape)).replace("'", "")
        if isinstance(value, np.ndarray):
            return f"constant {tuple(value.shape)}"
        inferred = self.inferred.get(tensor) if hasattr(self, "inferred") else None
        return str(tuple("?" if d is None else d for d in inferred)).replace("'", "") if inferred else "?"

    def describe(self, node: onnx.NodeProto) -> str:
        """``node 'n4' (Mul, inputs (N, 8, 4, 4) x (N, 8, 4, 4) -> (N, 8, 4, 4), module features.2 (SiLU))``."""
        ins = " x ".join(self._shape_text(i) for i in node.input if i) or "none"
        outs = ", ".join(self._shape_text(o) for o in node.output if o) or "none"
        where = _source_module(node)
        return (
            f"node {self.key_hint(node)!r} ({node.op_type}, inputs {ins} -> {outs}"
            + (f", module {where}" if where else "")
            + ")"
        )

    def fail(self, message: str) -> ModelError:
        return ModelError(f"{self.path}: {message}")

    def run(self) -> nx.DiGraph:
        if self.opset < MIN_OPSET:
            raise self.fail(f"unsupported opset {self.opset} (oldest supported: {MIN_OPSET})")
        if self.opset > onnx.defs.onnx_opset_version():
            raise self.fail(f"unsupported opset {self.opset} (newer than onnx {onnx.__version__} knows)")
        self.inferred = self._shape_inference()
        self._read_initializers()
        self._read_inputs()
        nodes = self._sorted_nodes()
        keys = self._node_keys(nodes)
        for node in nodes:
            self._add(node, keys)
        if self.unsupported:
            listing = ", ".join(
                f"{label} (node{'s' if len(names) > 1 else ''} {', '.join(names)})"
                for label, names in self.unsupported.items()
            )
            raise self.fail(f"unsupported ops: {listing}")
        self._set_outputs()
        self._read_metadata()
        try:
            ir.verify(self.graph)
        except BsnnError as exc:
            raise self.fail(str(exc)) from None
        return self.graph

    def _shape_inference(self) -> dict[str, list]:
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False, data_prop=True)
        except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as exc:
            for node in self.graph_proto.node:  # a clearer message than shape inference's, if it applies
                problem = self._arity_problem(node)
                if problem:
                    raise self.fail(f"{self.describe(node)}: {problem}") from None
            raise self.fail(f"ONNX shape inference failed: {str(exc).strip().splitlines()[-1]}") from None
        shapes = {}
        g = inferred.graph
        for info in list(g.value_info) + list(g.output):
            t = info.type.tensor_type
            if t.HasField("shape"):
                shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        return shapes

    def _read_initializers(self) -> None:
        for tensor in self.graph_proto.initializer:
            self.values[tensor.name] = self._decode(tensor, tensor.name)
        for sparse in self.graph_proto.sparse_initializer:
            self.values[sparse.values.name] = self._decode(sparse, sparse.values.name)

    def _decode(self, tensor, name: str) -> np.ndarray:
        """An initializer as an ndarray; a ModelError naming it if its data does not fit its dims or type."""
        proto = tensor.values if isinstance(tensor, onnx.SparseTensorProto) else tensor
        dims = tuple(int(d) for d in tensor.dims)
        try:
            dtype = TensorProto.DataType.Name(proto.data_type)
        except ValueError:
            raise self.fail(f"initializer {name!r}: unknown element type {proto.data_type}") from None
        try:
            return np.array(numpy_helper.to_array(tensor))
        except Exception as exc:  # ValueError, TypeError, KeyError of a damaged tensor  # noqa: BLE001
            stored = f"{len(proto.raw_data)} bytes of raw data" if proto.HasField("raw_data") else "its typed data"
            raise self.fail(
                f"initializer {name!r} ({dtype}, dims {dims}): {stored} cannot be read as {dtype} of these dims "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"
            ) from None

    def _read_inputs(self) -> None:
        batches = {}
        for info in self.graph_proto.input:
            if info.name in self.values:
                continue  # an initializer listed as an input (old exporters): a constant
            t = info.type.tensor_type
            if not info.type.HasField("tensor_type") or not t.HasField("shape"):
                raise self.fail(f"graph input {info.name!r} has no tensor shape")
            if t.elem_type != TensorProto.FLOAT:
                dtype = TensorProto.DataType.Name(t.elem_type)
                raise self.fail(f"unsupported graph input {info.name!r} of element type {dtype} (only FLOAT)")
            dims = list(t.shape.dim)
            if not dims:
                raise self.fail(f"unsupported graph input {info.name!r}: a scalar has no batch axis")
            first = dims[0]
            batches[info.name] = first.dim_value if first.HasField("dim_value") else (first.dim_param or "N")
            shape = []
            for axis, d in enumerate(dims[1:], start=1):
                if not d.HasField("dim_value"):
                    raise self.fail(
                        f"unsupported graph input {info.name!r}: axis {axis} is symbolic "
                        f"({d.dim_param or '?'}); only the batch axis may be"
                    )
                shape.append(int(d.dim_value))
            self._add_ir(info.name, O.Input(shape=tuple(shape)), [], "Input", info.name)
        if not batches:
            raise self.fail("model has no graph inputs")
        if len(set(batches.values())) > 1:
            listing = ", ".join(f"{k}: {v}" for k, v in batches.items())
            raise self.fail(f"unsupported: graph inputs have different batch dimensions ({listing})")
        batch = next(iter(batches.values()))
        self.graph.graph["batch"] = batch
        self.batch_value = batch if isinstance(batch, int) else BATCH

    def _sorted_nodes(self) -> list[onnx.NodeProto]:
        nodes = list(self.graph_proto.node)
        producer = {}
        for i, node in enumerate(nodes):
            for out in node.output:
                if out:
                    producer[out] = i
        known = set(self.values) | set(self.graph)
        for node in nodes:
            for name in node.input:
                if name and name not in producer and name not in known:
                    raise self.fail(
                        f"dangling edge: input {name!r} of node {self.key_hint(node)!r} ({node.op_type}) "
                        "is produced by no node and is not a graph input or initializer"
                    )
        for out in self.graph_proto.output:
            if out.name not in producer and out.name not in known:
                raise self.fail(f"dangling edge: graph output {out.name!r} is produced by no node")
        deps = nx.DiGraph()
        deps.add_nodes_from(range(len(nodes)))
        for i, node in enumerate(nodes):
            for name in node.input:
                if name in producer:
                    deps.add_edge(producer[name], i)
        if not nx.is_directed_acyclic_graph(deps):
            raise self.fail("the ONNX graph has a cycle")
        return [nodes[i] for i in nx.lexicographical_topological_sort(deps)]

    def _node_keys(self, nodes) -> dict[int, str]:
        counts = defaultdict(int)
        for node in nodes:
            if node.name:
                counts[node.name] += 1
        taken = set(self.graph.nodes)
        outputs = {o for node in nodes for o in node.output if o}
        keys = {}
        for node in nodes:
            if not node.output or not node.output[0]:
                continue
            name = node.name
            if name and counts[name] == 1 and name not in taken and (name not in outputs or name == node.output[0]):
                key = name
            else:
                key = node.output[0]
            if key in taken:
                key = ir.unique_name(self.graph, key)
                while key in taken:
                    key = key + "_"
            taken.add(key)
            keys[id(node)] = key
        return keys

    def _add_ir(self, key: str, op: O.Op, inputs: list[str], op_type: str, tensor: str) -> None:
        try:
            ir.add_node(self.graph, key, op, inputs)
        except BsnnError as exc:
            raise self.fail(str(exc)) from None
        except Exception as exc:  # attributes the op's shape rule cannot use (zero strides, short lists)  # noqa: BLE001
            shapes = " x ".join(str(("N",) + tuple(ir.shape_of(self.graph, i))).replace("'", "") for i in inputs)
            raise self.fail(
                f"node {key!r} ({op_type}, inputs {shapes or 'none'}): cannot infer its output shape "
                f"({type(exc).__name__}: {exc})"
            ) from None
        shape = ir.shape_of(self.graph, key)
        self.values[tensor] = _Tensor(key, shape)
        self.tensor_of_key[key] = tensor
        expected = self.inferred.get(tensor)
        if tensor in self.unchecked:
            expected = None
        if expected is not None and op_type != "Input":
            ours = [None] + list(shape)
            if len(expected) != len(ours) or any(
                e is not None and e != 0 and e != o for e, o in zip(expected[1:], ours[1:])
            ):
                raise self.fail(
                    f"node {key!r} ({op_type}): shape {tuple(shape)} per sample disagrees with ONNX shape "
                    f"inference ({['N' if e is None else e for e in expected]})"
                )

    def _arity_problem(self, node: onnx.NodeProto) -> str | None:
        """What is wrong with the number of inputs / outputs of a default-domain node, or None."""
        if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type):
            return None
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset)
        except Exception:  # noqa: BLE001  (no version of the op at this opset)
            return f"no {node.op_type} in opset {self.opset}"
        given = len(node.input)
        while given and not node.input[given - 1]:
            given -= 1
        if not schema.min_input <= given <= schema.max_input:
            return f"{given} inputs, {node.op_type} takes {schema.min_input}..{schema.max_input}"
        if len(node.output) < schema.min_output or not node.output[0]:
            return f"{len(node.output)} outputs, {node.op_type} has at least {max(schema.min_output, 1)}"
        return None

    def _dry_run(self, node: onnx.NodeProto, label: str, name: str) -> None:
        """A node behind an unsupported op: list it too if it is unsupported in itself."""
        ins = []
        for i in node.input:
            value = self.values.get(i) if i else None
            if value is None and i:
                # behind an unsupported op: stand in its ONNX-inferred shape
                inferred = self.inferred.get(i)
                if not inferred or any(d is None or d <= 0 for d in inferred[1:]):
                    value = None
                else:
                    value = _Tensor("?", tuple(int(d) for d in inferred[1:]))
            ins.append(value)
        unsupported = None
        if node.domain in ("", "ai.onnx"):
            known = node.op_type in _CONVERTERS or node.op_type in _FOLDABLE or node.op_type == "Shape"
        else:
            known = (node.domain, node.op_type) in O.OP_CLASSES
        if not known:
            unsupported = label
        elif node.domain in ("", "ai.onnx") and node.op_type in _FOLDABLE and node.op_type not in _CONVERTERS:
            unsupported = label  # folds constants only, and its input is computed from the data
        elif (
            node.domain in ("", "ai.onnx")
            and node.op_type in _CONVERTERS
            and all(v is not None for v, i in zip(ins, node.input) if i)
        ):
            try:
                self.current_key = "?"
                _CONVERTERS[node.op_type](self, node, _attributes(node), ins)
            except _Unsupported as exc:
                unsupported = exc.label
            except Exception:  # noqa: BLE001, S110  (the model fails anyway; only unsupported ops are listed)
                pass
        if unsupported is not None:
            self.unsupported[unsupported].append(self.where(node, name))
        self.poisoned.update(o for o in node.output if o)

    def where(self, node: onnx.NodeProto, name: str) -> str:
        """A node's name for the list of unsupported ops, with the module the exporter recorded."""
        module = _source_module(node)
        return f"{name} in {module}" if module else name

    def _add(self, node: onnx.NodeProto, keys: dict[int, str]) -> None:
        label = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        name = self.key_hint(node)
        problem = self._arity_problem(node)
        if problem:
            raise self.fail(f"{self.describe(node)}: {problem}")
        if any(i in self.poisoned for i in node.input if i):
            self._dry_run(node, label, name)
            return
        ins = [self.values[i] if i else None for i in node.input]
        try:
            attrs = _attributes(node)
        except Exception as exc:  # an attribute of undefined or mismatched type  # noqa: BLE001
            raise self.fail(f"{self.describe(node)}: unreadable attribute ({type(exc).__name__}: {exc})") from None
        ceil_pool = node.op_type in ("MaxPool", "AveragePool") and attrs.get("ceil_mode", 0) and self.opset < 22
        if ceil_pool or any(i in self.unchecked for i in node.input):
            self.unchecked.update(o for o in node.output if o)
        try:
            if node.domain in ("", "ai.onnx"):
                if node.op_type in _FOLDABLE and not any(isinstance(v, _Tensor) for v in ins):
                    self._fold(node, attrs, ins)
                    return
                if node.op_type == "Shape":
                    self._shape_of_tensor(node, attrs, ins[0])
                    return
                if node.op_type not in _CONVERTERS:
                    raise _Unsupported(label)
                self.current_key = keys[id(node)]
                op, data_inputs = _CONVERTERS[node.op_type](self, node, attrs, ins)
            elif node.domain == O.BSNN_DOMAIN:
                op, data_inputs = _convert_bsnn(self, node, attrs, ins)
            else:
                raise _Unsupported(label)
        except _Unsupported as exc:
            self.unsupported[exc.label].append(self.where(node, name))
            self.poisoned.update(o for o in node.output if o)
            return
        except ModelError as exc:
            message = str(exc)
            raise (exc if message.startswith(f"{self.path}:") else self.fail(message)) from None
        except Exception as exc:  # a damaged node: wrong attribute types, arities, values  # noqa: BLE001
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise self.fail(f"{self.describe(node)}: cannot read it ({type(exc).__name__}: {detail})") from None
        self._add_ir(keys[id(node)], op, data_inputs, node.op_type, node.output[0])

    def _fold(self, node, attrs, ins) -> None:
        try:
            value = _fold(node.op_type, attrs, ins, self.opset)
        except _Unsupported:
            raise
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise _Unsupported(f"{node.op_type} computing a shape from the batch size ({exc})") from None
        self.values[node.output[0]] = np.asarray(value) if not isinstance(value, np.ndarray) else value
        for extra in node.output[1:]:
            if extra and extra in self.consumed:
                raise _Unsupported(f"{node.op_type} with several outputs on constants")

    def _shape_of_tensor(self, node, attrs, x: _Tensor) -> None:
        full = np.array([self.batch_value] + list(x.shape), dtype=object)
        start, end = attrs.get("start", 0), attrs.get("end", None)
        value = full[start:end]
        if all(not isinstance(v, _BatchSize) for v in value):
            value = value.astype(np.int64)
        self.values[node.output[0]] = value

    def _set_outputs(self) -> None:
        outputs = []
        names = [info.name for info in self.graph_proto.output]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise self.fail(f"graph output {twice[0]!r} is listed more than once")
        for info in self.graph_proto.output:
            value = self.values.get(info.name)
            if not isinstance(value, _Tensor):
                raise self.fail(f"unsupported: graph output {info.name!r} is a constant, not computed from the input")
            outputs.append(value.key)
        if not outputs:
            raise self.fail("model has no graph outputs")
        self.graph.graph["outputs"] = outputs
        live = set(outputs) | set(self.graph.graph["inputs"])
        for out in outputs:
            live |= nx.ancestors(self.graph, out)
        self.graph.remove_nodes_from([n for n in list(self.graph.nodes) if n not in live])

    def _read_metadata(self) -> None:
        metadata = {}
        for prop in self.model.metadata_props:
            if prop.key.startswith(_INPUT_SCALE_KEY):
                name = prop.key[len(_INPUT_SCALE_KEY) :]
                if name in self.graph and isinstance(ir.op_of(self.graph, name), O.Input):
                    ir.op_of(self.graph, name).scale = float(prop.value)
                    continue
            metadata[prop.key] = prop.value
        self.graph.graph["metadata"] = metadata


def load_onnx(path: str | os.PathLike) -> nx.DiGraph:
    """Read an ONNX model into an IR graph.

    Parameters
    ----------
    path : the ``.onnx`` file (opset 6 up to the newest the installed onnx knows).

    Returns
    -------
    networkx.DiGraph
        The IR graph (see :mod:`bsnn_graph.ir`); it passes :func:`bsnn_graph.ir.verify`.

    Raises
    ------
    ModelError
        The file is missing, not ONNX, truncated or inconsistent (dangling
        edges, shapes that disagree), or uses unsupported ops (all listed in
        one message).
    """
    path = Path(path)
    model = _read_model(path)
    return _Loader(path, model).run()


# --------------------------------------------------------------------------- the writer


class _Writer:
    def __init__(self, graph: nx.DiGraph):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.names = set(graph.nodes)
        self.opset = EXPORT_OPSET
        self.uses_bsnn = False
        batch = graph.graph.get("batch", "N")
        self.batch = batch if isinstance(batch, int) else str(batch)

    def constant(self, node: str, what: str, value: np.ndarray) -> str:
        name = f"{node}.{what}"
        while name in self.names:
            name += "_"
        self.names.add(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        shape = [self.batch] + list(ir.shape_of(self.graph, name))
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    def add(self, name: str, op: O.Op, inputs: list[str]) -> None:
        if op.domain == O.BSNN_DOMAIN:
            self.uses_bsnn = True
            attrs = []
            for f in dataclasses.fields(op):
                value = getattr(op, f.name)
                if value is None:
                    continue
                if isinstance(value, np.ndarray):
                    attrs.append(helper.make_attribute(f.name, numpy_helper.from_array(value)))
                elif isinstance(value, bool):
                    attrs.append(helper.make_attribute(f.name, int(value)))
                elif isinstance(value, tuple):
                    attrs.append(helper.make_attribute(f.name, [int(v) for v in value], attr_type=AttributeProto.INTS))
                else:
                    attrs.append(helper.make_attribute(f.name, value))
            node = helper.make_node(op.op_type, inputs, [name], name=name, domain=O.BSNN_DOMAIN)
            node.attribute.extend(attrs)
            self.nodes.append(node)
            return
        method = getattr(self, f"_export_{op.op_type}", None)
        if method is None:
            raise ModelError(f"node {name!r} ({op.op_type}): no ONNX export for this op")
        method(name, op, inputs)

    def emit(self, name, op_type, inputs, **attrs) -> None:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))

    def _export_Conv(self, name, op, inputs):
        args = inputs + [self.constant(name, "weight", op.weight)]
        if op.bias is not None:
            args.append(self.constant(name, "bias", op.bias))
        spatial = op.weight.ndim - 2
        self.emit(
            name,
            "Conv",
            args,
            kernel_shape=list(op.kernel_shape),
            strides=list(op.strides or (1,) * spatial),
            pads=list(op.pads or (0,) * 2 * spatial),
            dilations=list(op.dilations or (1,) * spatial),
            group=int(op.group),
        )

    def _export_Gemm(self, name, op, inputs):
        args = inputs + [self.constant(name, "weight", op.weight)]
        if op.bias is not None:
            args.append(self.constant(name, "bias", op.bias))
        self.emit(name, "Gemm", args, transB=1)

    def _export_MatMul(self, name, op, inputs):
        self.emit(name, "MatMul", inputs + [self.constant(name, "weight", op.weight)])

    def _export_BatchNormalization(self, name, op, inputs):
        args = inputs + [self.constant(name, k, getattr(op, k)) for k in ("scale", "bias", "mean", "var")]
        self.emit(name, "BatchNormalization", args, epsilon=float(op.epsilon))

    def _export_Relu(self, name, op, inputs):
        self.emit(name, "Relu", inputs)

    def _export_LeakyRelu(self, name, op, inputs):
        self.emit(name, "LeakyRelu", inputs, alpha=float(op.alpha))

    def _export_PRelu(self, name, op, inputs):
        self.emit(name, "PRelu", inputs + [self.constant(name, "slope", op.slope)])

    def _export_Clip(self, name, op, inputs):
        lo = "" if op.min is None else self.constant(name, "min", np.array(op.min, np.float32))
        hi = "" if op.max is None else self.constant(name, "max", np.array(op.max, np.float32))
        args = inputs + [lo, hi]
        while args[-1] == "":
            args.pop()
        self.emit(name, "Clip", args)

    def _pool_attrs(self, op) -> dict:
        spatial = len(op.kernel_shape)
        return {
            "kernel_shape": list(op.kernel_shape),
            "strides": list(op.strides or (1,) * spatial),
            "pads": list(op.pads or (0,) * 2 * spatial),
            "ceil_mode": int(op.ceil_mode),
        }

    def _export_MaxPool(self, name, op, inputs):
        spatial = len(op.kernel_shape)
        self.emit(name, "MaxPool", inputs, dilations=list(op.dilations or (1,) * spatial), **self._pool_attrs(op))

    def _export_AveragePool(self, name, op, inputs):
        attrs = self._pool_attrs(op)
        if op.dilations and any(d != 1 for d in op.dilations):
            self.opset = max(self.opset, 19)  # AveragePool dilations arrived in opset 19
            attrs["dilations"] = list(op.dilations)
        self.emit(name, "AveragePool", inputs, count_include_pad=int(op.count_include_pad), **attrs)

    def _export_GlobalAveragePool(self, name, op, inputs):
        self.emit(name, "GlobalAveragePool", inputs)

    def _export_Add(self, name, op, inputs):
        if op.constant is not None:
            inputs = inputs + [self.constant(name, "constant", op.constant)]
        self.emit(name, "Add", inputs)

    def _export_Sum(self, name, op, inputs):
        self.emit(name, "Sum", inputs)

    def _export_binary(self, name, op, inputs):
        c = self.constant(name, "constant", op.constant)
        self.emit(name, op.op_type, [c] + inputs if op.constant_first else inputs + [c])

    _export_Sub = _export_Mul = _export_Div = _export_binary

    def _export_Flatten(self, name, op, inputs):
        self.emit(name, "Flatten", inputs, axis=int(op.axis))

    def _export_Reshape(self, name, op, inputs):
        target = self.constant(name, "shape", np.array([0, *op.shape], np.int64))
        self.emit(name, "Reshape", inputs + [target])

    def _export_Transpose(self, name, op, inputs):
        self.emit(name, "Transpose", inputs, perm=[int(p) for p in op.perm])

    def _export_Concat(self, name, op, inputs):
        self.emit(name, "Concat", inputs, axis=int(op.axis))

    def _export_Pad(self, name, op, inputs):
        pads = self.constant(name, "pads", np.array(op.pads, np.int64))
        args = inputs + [pads]
        if op.mode == "constant":
            args.append(self.constant(name, "value", np.array(op.value, np.float32)))
        self.emit(name, "Pad", args, mode=op.mode)

    def _export_Dropout(self, name, op, inputs):
        self.emit(name, "Dropout", inputs + [self.constant(name, "ratio", np.array(op.ratio, np.float32))])

    def _export_Identity(self, name, op, inputs):
        self.emit(name, "Identity", inputs)

    def _export_Softmax(self, name, op, inputs):
        self.emit(name, op.op_type, inputs, axis=int(op.axis))

    _export_LogSoftmax = _export_Softmax

    def build(self) -> onnx.ModelProto:
        g = self.graph
        inputs = []
        for name in g.graph["inputs"]:
            inputs.append(self.value_info(name))
        for name in ir.topological_order(g):
            op = ir.op_of(g, name)
            if isinstance(op, O.Input):
                continue
            self.add(name, op, ir.inputs_of(g, name))
        outputs = [self.value_info(name) for name in g.graph["outputs"]]
        hidden = [
            self.value_info(n)
            for n in ir.topological_order(g)
            if n not in g.graph["outputs"] and not isinstance(ir.op_of(g, n), O.Input)
        ]
        graph_proto = helper.make_graph(
            self.nodes, str(g.graph.get("name") or "graph"), inputs, outputs, self.initializers, value_info=hidden
        )
        opsets = [helper.make_opsetid("", self.opset)]
        if self.uses_bsnn:
            opsets.append(helper.make_opsetid(O.BSNN_DOMAIN, 1))
        model = helper.make_model(graph_proto, opset_imports=opsets, producer_name="bsnn-graph")
        model.ir_version = _EXPORT_IR_VERSION if self.opset <= 17 else 9
        metadata = {str(k): str(v) for k, v in (g.graph.get("metadata") or {}).items()}
        for name in g.graph["inputs"]:
            scale = ir.op_of(g, name).scale
            if scale != 1.0:
                metadata[_INPUT_SCALE_KEY + name] = repr(float(scale))
        helper.set_model_props(model, metadata)
        return model


def save_onnx(graph: nx.DiGraph, path: str | os.PathLike) -> None:
    """Write an IR graph as an ONNX model (atomically: a failed write leaves ``path`` untouched).

    Standard ops are written as opset-17 ONNX (opset 19 if an AveragePool is
    dilated), weights as initializers, the batch axis as ``graph.graph["batch"]``
    (a symbol name or a fixed size), a Reshape target as ``[0, *shape]``.
    Spiking ops become nodes of the ``ai.bsnn`` domain (version 1) carrying
    every dataclass field as an attribute (tuples as ints, bools as 0/1,
    arrays as tensors). ``graph.graph["metadata"]`` becomes metadata_props.

    Weights beyond :data:`EXTERNAL_DATA_BYTES` in all (protobuf cannot hold
    a message over 2 GiB) go to one external data file ``<name>.data``
    beside ``path`` (ONNX external data, location relative to the model;
    tensors under 1 KiB stay inline); :func:`load_onnx` reads it back.

    Parameters
    ----------
    graph : the IR graph; it must pass :func:`bsnn_graph.ir.verify`.
    path : the output ``.onnx`` file.
    """
    ir.verify(graph)
    model = _Writer(graph).build()
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if weight_bytes <= EXTERNAL_DATA_BYTES:
        try:
            onnx.checker.check_model(model, full_check=False)
        except onnx.checker.ValidationError as exc:
            raise ModelError(f"{path}: exported model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
        with atomic_output(path) as tmp:
            onnx.save_model(model, str(tmp))
        return
    _save_with_external_data(model, Path(path))


def _save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Write ``path`` and its weights ``<path name>.data`` beside it (each file replaced atomically)."""
    location = f"{path.name}.data"
    with atomic_output(path) as tmp:  # checks the folder; the temporary name reserves the rename target
        staging = Path(tmp).parent / f".{path.name}.{os.getpid()}.staging"
        staging.mkdir()
        try:
            onnx.save_model(
                model,
                str(staging / path.name),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=location,
                size_threshold=1024,
            )
            try:
                onnx.checker.check_model(str(staging / path.name), full_check=False)
            except onnx.checker.ValidationError as exc:
                raise ModelError(f"{path}: exported model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
            os.replace(staging / location, path.parent / location)
            os.replace(staging / path.name, tmp)
        finally:
            for leftover in staging.iterdir():
                leftover.unlink()
            staging.rmdir()
