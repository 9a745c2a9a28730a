"""Op kinds of the bsnn-graph IR.

Every node of the IR graph (see :mod:`bsnn_graph.ir`) carries one of these
dataclasses under the node attribute ``"op"``. An op holds its parameters
(weights as float32 ndarrays, attributes as plain Python values); its inputs
are the graph edges, ordered by the edge attribute ``index``. Each node has
exactly one output tensor whose name is the node's key.

Shapes in the IR are *per sample*: the batch axis is left out everywhere
(``graph.nodes[n]["shape"]``), and ops whose ONNX attributes count axes
(``Flatten.axis``, ``Concat.axis``, ``Softmax.axis``) keep the ONNX
convention, where axis 0 is the batch axis. Constants of element-wise ops
are stored as ONNX gives them and broadcast against the full tensor
(batch axis included), following numpy rules.

Standard ONNX ops keep their ONNX names. The spiking ops introduced by the
conversion passes live in the custom domain ``ai.bsnn`` (:data:`BSNN_DOMAIN`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

__all__ = [
    "BSNN_DOMAIN",
    "INITIAL_POTENTIALS",
    "LINEAR_PROJECTIONS",
    "MODES",
    "OP_CLASSES",
    "SPIKING_SOURCES",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Conv",
    "Div",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "Input",
    "LeakyRelu",
    "LogSoftmax",
    "MatMul",
    "MaxGate",
    "MaxPool",
    "Mul",
    "Op",
    "OutputAccumulator",
    "PRelu",
    "Pad",
    "Population",
    "Relu",
    "Reshape",
    "ShapeError",
    "Softmax",
    "Sub",
    "Sum",
    "SynchronousNeuron",
    "Transpose",
    "pool_output_size",
]

BSNN_DOMAIN = "ai.bsnn"
MODES = ("bsnn", "bsnn-nosn", "phase", "if-rate")
#: the modes that follow the bistable schedule (a first full output at (L + 1) K; runtime.schedule)
BISTABLE_MODES = ("bsnn", "bsnn-nosn")
#: where a spiking population's V starts (BSNN_SPEC.md, "Initial potential"; runtime.schedule)
INITIAL_POTENTIALS = ("half", "zero")

Shape = tuple[int, ...]


class ShapeError(ValueError):
    """An op received inputs whose shapes it cannot take."""


def pool_output_size(
    size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int, ceil_mode: bool
) -> int:
    """Length of one spatial axis after a convolution or pooling window.

    With ``ceil_mode`` the last window may hang over the end, but a window
    that would start inside the end padding is dropped (the PyTorch and
    ONNX rule).
    """
    extent = dilation * (kernel - 1) + 1
    span = size + pad_begin + pad_end - extent
    if span < 0:
        raise ShapeError(f"window of extent {extent} does not fit an axis of size {size} with padding")
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + pad_begin:
            out -= 1
    else:
        out = span // stride + 1
    return out


@dataclass(eq=False)
class Op:
    """Base class of all op kinds."""

    op_type: ClassVar[str] = ""
    domain: ClassVar[str] = ""
    #: number of tensor inputs; None means one or more
    arity: ClassVar[int | None] = 1

    def output_shape(self, input_shapes: list[Shape]) -> Shape:
        """Per-sample output shape for the given per-sample input shapes."""
        raise NotImplementedError(type(self).__name__)

    def parameters(self) -> dict[str, np.ndarray]:
        """The ndarray fields of the op (weights, biases, constants)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)}

    def attributes(self) -> dict[str, object]:
        """The non-array fields of the op."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not isinstance(getattr(self, f.name), np.ndarray) and getattr(self, f.name) is not None
        }

    def parameter_count(self) -> int:
        return int(sum(a.size for a in self.parameters().values()))

    def same_as(self, other: Op) -> bool:
        """Structural equality: same kind, attributes and parameter values."""
        if type(self) is not type(other):
            return False
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
                    return False
                if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True


def _one(shapes: list[Shape]) -> Shape:
    return tuple(shapes[0])


def _broadcast(shapes: list[Shape]) -> Shape:
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError as exc:
        raise ShapeError(f"shapes {shapes} do not broadcast") from exc


def _broadcast_constant(shape: Shape, constant: np.ndarray) -> Shape:
    # the constant is in ONNX layout (batch axis included when its rank is full)
    full = (1,) + tuple(shape)
    try:
        out = np.broadcast_shapes(full, constant.shape)
    except ValueError as exc:
        raise ShapeError(f"constant of shape {constant.shape} does not broadcast to {full}") from exc
    if len(out) != len(full) or out[0] != 1:
        raise ShapeError(f"constant of shape {constant.shape} would change the batch axis of {full}")
    return tuple(out[1:])


def _spatial_window_shape(op, shape: Shape, weight_channels: int | None = None) -> Shape:
    spatial = len(op.kernel_shape)
    if len(shape) != spatial + 1:
        raise ShapeError(f"expected {spatial + 1}-d per-sample input (C, spatial...), got {shape}")
    dims = []
    for i in range(spatial):
        dims.append(
            pool_output_size(
                shape[1 + i],
                op.kernel_shape[i],
                op.strides[i],
                op.pads[i],
                op.pads[i + spatial],
                op.dilations[i] if getattr(op, "dilations", None) else 1,
                getattr(op, "ceil_mode", False),
            )
        )
    return tuple(dims)


# --------------------------------------------------------------------------- graph input


@dataclass(eq=False)
class Input(Op):
    """A graph input; ``shape`` is per sample (no batch axis)."""

    op_type: ClassVar[str] = "Input"
    arity: ClassVar[int | None] = 0
    shape: Shape = ()  # per-sample shape, e.g. (1, 28, 28)
    scale: float = 1.0  # normalisation scale lambda of the analog input

    def output_shape(self, input_shapes):
        return tuple(self.shape)


# --------------------------------------------------------------------------- linear ops


@dataclass(eq=False)
class Conv(Op):
    """N-d convolution, ONNX semantics; ``y = conv(x, weight) + bias``."""

    op_type: ClassVar[str] = "Conv"
    weight: np.ndarray = None  # (out_channels, in_channels / group, *kernel)
    bias: np.ndarray | None = None  # (out_channels,) or None
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # ONNX order: begins of every axis, then ends
    dilations: tuple[int, ...] = ()
    group: int = 1

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    def output_shape(self, input_shapes):
        shape = _one(input_shapes)
        if shape[0] != self.weight.shape[1] * self.group:
            raise ShapeError(
                f"input has {shape[0]} channels, weight expects {self.weight.shape[1]} x group {self.group}"
            )
        return (self.weight.shape[0],) + _spatial_window_shape(self, shape)


@dataclass(eq=False)
class Gemm(Op):
    """Fully connected layer on a 2-d input: ``y = x @ weight.T + bias``.

    ONNX's alpha, beta and transB are folded into ``weight`` and ``bias`` on
    import; the input must be (batch, features).
    """

    op_type: ClassVar[str] = "Gemm"
    weight: np.ndarray = None  # (out_features, in_features)
    bias: np.ndarray | None = None  # (out_features,) or None

    def output_shape(self, input_shapes):
        shape = _one(input_shapes)
        if len(shape) != 1 or shape[0] != self.weight.shape[1]:
            raise ShapeError(f"Gemm expects ({self.weight.shape[1]},) per sample, got {shape}")
        return (self.weight.shape[0],)


@dataclass(eq=False)
class MatMul(Op):
    """Product with a constant right operand: ``y = x @ weight``."""

    op_type: ClassVar[str] = "MatMul"
    weight: np.ndarray = None  # (in_features, out_features)

    def output_shape(self, input_shapes):
        shape = _one(input_shapes)
        if self.weight.ndim != 2 or len(shape) < 1 or shape[-1] != self.weight.shape[0]:
            raise ShapeError(f"MatMul of {shape} by weight {self.weight.shape}")
        return tuple(shape[:-1]) + (self.weight.shape[1],)


@dataclass(eq=False)
class BatchNormalization(Op):
    """Inference batch norm over axis 1: ``y = scale (x - mean) / sqrt(var + epsilon) + bias``."""

    op_type: ClassVar[str] = "BatchNormalization"
    scale: np.ndarray = None  # (C,)
    bias: np.ndarray = None  # (C,)
    mean: np.ndarray = None  # (C,) running mean
    var: np.ndarray = None  # (C,) running variance
    epsilon: float = 1e-5

    def output_shape(self, input_shapes):
        shape = _one(input_shapes)
        if shape[0] != self.scale.shape[0]:
            raise ShapeError(f"BatchNormalization over {self.scale.shape[0]} channels got {shape}")
        return shape


@dataclass(eq=False)
class Relu(Op):
    """``y = max(x, 0)``."""

    op_type: ClassVar[str] = "Relu"

    def output_shape(self, input_shapes):
        return _one(input_shapes)


@dataclass(eq=False)
class LeakyRelu(Op):
    """``y = x if x >= 0 else alpha * x``."""

    op_type: ClassVar[str] = "LeakyRelu"
    alpha: float = 0.01

    def output_shape(self, input_shapes):
        return _one(input_shapes)


@dataclass(eq=False)
class PRelu(Op):
    """``y = x if x >= 0 else slope * x``; ``slope`` a constant broadcast like an element-wise operand."""

    op_type: ClassVar[str] = "PRelu"
    slope: np.ndarray = None  # ONNX-layout constant, e.g. (C, 1, 1) or (1,)

    def output_shape(self, input_shapes):
        return _broadcast_constant(_one(input_shapes), self.slope)


@dataclass(eq=False)
class Clip(Op):
    """``y = min(max(x, min), max)``; ReLU when ``min == 0`` and ``max`` is None, ReLU6 with ``max == 6``."""

    op_type: ClassVar[str] = "Clip"
    min: float | None = None
    max: float | None = None

    def output_shape(self, input_shapes):
        return _one(input_shapes)


@dataclass(eq=False)
class _WindowOp(Op):
    """The window attributes and output shape shared by MaxPool, AveragePool and MaxGate."""

    kernel_shape: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # begins, then ends
    dilations: tuple[int, ...] = ()
    ceil_mode: bool = False

    def output_shape(self, input_shapes):
        shape = _one(input_shapes)
        return (shape[0],) + _spatial_window_shape(self, shape)


@dataclass(eq=False)
class MaxPool(_WindowOp):
    """Max over windows; padding never wins (it is -inf)."""

    op_type: ClassVar[str] = "MaxPool"


@dataclass(eq=False)
class AveragePool(_WindowOp):
    """Mean over windows. With ``count_include_pad`` the explicit padding counts in the divisor;
    the part of a ``ceil_mode`` window beyond the padded input never counts."""

    op_type: ClassVar[str] = "AveragePool"
    count_include_pad: bool = False


@dataclass(eq=False)
class GlobalAveragePool(Op):
    """Mean over all spatial axes; output (C, 1, 1, ...)."""

    op_type: ClassVar[str] = "GlobalAveragePool"

    def output_shape(self, input_shapes):
        shape = _one(input_shapes)
        return (shape[0],) + (1,) * (len(shape) - 1)


@dataclass(eq=False)
class Add(Op):
    """Sum of two tensors, or of one tensor and ``constant`` (numpy broadcasting)."""

    op_type: ClassVar[str] = "Add"
    arity: ClassVar[int | None] = None
    constant: np.ndarray | None = None  # ONNX-layout constant operand, or None for two inputs

    def output_shape(self, input_shapes):
        if self.constant is not None:
            if len(input_shapes) != 1:
                raise ShapeError("Add with a constant takes one tensor input")
            return _broadcast_constant(input_shapes[0], self.constant)
        if len(input_shapes) != 2:
            raise ShapeError(f"Add takes two inputs, got {len(input_shapes)}")
        return _broadcast(input_shapes)


@dataclass(eq=False)
class Sum(Op):
    """Element-wise sum of one or more tensors."""

    op_type: ClassVar[str] = "Sum"
    arity: ClassVar[int | None] = None

    def output_shape(self, input_shapes):
        return _broadcast(input_shapes)


@dataclass(eq=False)
class _ConstantBinary(Op):
    constant: np.ndarray = None  # ONNX-layout constant operand
    constant_first: bool = False  # True: y = constant (op) x

    def output_shape(self, input_shapes):
        return _broadcast_constant(_one(input_shapes), self.constant)


@dataclass(eq=False)
class Sub(_ConstantBinary):
    """``y = x - constant`` (or ``constant - x``)."""

    op_type: ClassVar[str] = "Sub"


@dataclass(eq=False)
class Mul(_ConstantBinary):
    """``y = x * constant``."""

    op_type: ClassVar[str] = "Mul"


@dataclass(eq=False)
class Div(_ConstantBinary):
    """``y = x / constant`` (or ``constant / x``)."""

    op_type: ClassVar[str] = "Div"


@dataclass(eq=False)
class Flatten(Op):
    """ONNX Flatten; only ``axis == 1`` (the batch axis stays on its own)."""

    op_type: ClassVar[str] = "Flatten"
    axis: int = 1

    def output_shape(self, input_shapes):
        shape = _one(input_shapes)
        axis = self.axis if self.axis >= 0 else self.axis + len(shape) + 1
        if axis != 1:
            raise ShapeError(f"Flatten axis {self.axis} would merge the batch axis with others")
        return (int(math.prod(shape)),)


@dataclass(eq=False)
class Reshape(Op):
    """Reshape each sample to ``shape`` (resolved, per sample, no -1 or 0)."""

    op_type: ClassVar[str] = "Reshape"
    shape: tuple[int, ...] = ()  # per-sample target shape

    def output_shape(self, input_shapes):
        src = _one(input_shapes)
        if math.prod(src) != math.prod(self.shape):
            raise ShapeError(f"cannot reshape {src} to {self.shape}")
        return tuple(self.shape)


@dataclass(eq=False)
class Transpose(Op):
    """ONNX Transpose: ``y = np.transpose(x, perm)``; ``perm`` covers every axis, batch first, and keeps it.

    Per sample it is a permutation of the flat (C-order) element indices,
    so a linear projection with 0/1 weights: ``y.flat[i] = x.flat[P[i]]``
    with ``P = np.transpose(np.arange(n).reshape(in_shape), [p - 1 for p in perm[1:]]).ravel()``
    (see :meth:`flat_permutation`). ShuffleNet's channel shuffle is
    ``Reshape (g, C/g, H, W) -> Transpose (0, 2, 1, 3, 4) -> Reshape (C, H, W)``.
    """

    op_type: ClassVar[str] = "Transpose"
    perm: tuple[int, ...] = ()  # ONNX order, batch axis included; perm[0] == 0

    def output_shape(self, input_shapes):
        shape = _one(input_shapes)
        if sorted(self.perm) != list(range(len(shape) + 1)) or self.perm[0] != 0:
            raise ShapeError(
                f"Transpose perm {self.perm} is not a permutation of the {len(shape) + 1} axes keeping axis 0"
            )
        return tuple(shape[p - 1] for p in self.perm[1:])

    def flat_permutation(self, input_shape: Shape) -> np.ndarray:
        """``P`` (int64, per sample) with ``y.flat[i] = x.flat[P[i]]``."""
        n = int(math.prod(input_shape))
        return np.transpose(np.arange(n).reshape(input_shape), [p - 1 for p in self.perm[1:]]).ravel()


@dataclass(eq=False)
class Concat(Op):
    """Concatenation along ``axis`` (ONNX numbering, axis 0 is the batch axis)."""

    op_type: ClassVar[str] = "Concat"
    arity: ClassVar[int | None] = None
    axis: int = 1

    def output_shape(self, input_shapes):
        rank = len(input_shapes[0]) + 1
        axis = self.axis if self.axis >= 0 else self.axis + rank
        if axis < 1:
            raise ShapeError("Concat along the batch axis is not supported")
        out = list(input_shapes[0])
        for s in input_shapes[1:]:
            if len(s) != len(out) or any(a != b for i, (a, b) in enumerate(zip(s, out)) if i != axis - 1):
                raise ShapeError(f"Concat of mismatched shapes {input_shapes}")
            out[axis - 1] += s[axis - 1]
        return tuple(out)


@dataclass(eq=False)
class Pad(Op):
    """Constant, reflect or edge padding; ``pads`` covers every axis (batch first), begins then ends."""

    op_type: ClassVar[str] = "Pad"
    pads: tuple[int, ...] = ()
    mode: str = "constant"
    value: float = 0.0

    def output_shape(self, input_shapes):
        shape = _one(input_shapes)
        rank = len(shape) + 1
        if len(self.pads) != 2 * rank:
            raise ShapeError(f"Pad has {len(self.pads)} pads for rank {rank}")
        if self.pads[0] or self.pads[rank]:
            raise ShapeError("padding the batch axis is not supported")
        return tuple(shape[i] + self.pads[i + 1] + self.pads[i + 1 + rank] for i in range(rank - 1))


@dataclass(eq=False)
class Dropout(Op):
    """Identity at inference."""

    op_type: ClassVar[str] = "Dropout"
    ratio: float = 0.5

    def output_shape(self, input_shapes):
        return _one(input_shapes)


@dataclass(eq=False)
class Identity(Op):
    """``y = x``."""

    op_type: ClassVar[str] = "Identity"

    def output_shape(self, input_shapes):
        return _one(input_shapes)


@dataclass(eq=False)
class Softmax(Op):
    """Softmax along ``axis`` (ONNX numbering; opset >= 13 semantics)."""

    op_type: ClassVar[str] = "Softmax"
    axis: int = -1

    def output_shape(self, input_shapes):
        return _one(input_shapes)


@dataclass(eq=False)
class LogSoftmax(Softmax):
    """Log of the softmax along ``axis``."""

    op_type: ClassVar[str] = "LogSoftmax"


# --------------------------------------------------------------------------- spiking ops (domain ai.bsnn)


@dataclass(eq=False)
class Population(Op):
    """A population of spiking neurons replacing one ReLU (or one Add + ReLU merge).

    Its input current is the sum of its inputs (pre-activations already
    normalised, weights ``W' = W lambda_in / lambda_out``). Threshold 1.

    Mode ``bsnn`` (bistable): with stage s, it integrates ``V += I_t`` in
    periods ``p >= s - 1`` with ``p - s + 1`` even and fires in periods
    ``p >= s`` with ``p - s`` even: at phase k, if ``V >= 2^-(k+1)`` it emits
    a spike of that value and subtracts it. ``phase`` integrates and fires
    every step; ``if-rate`` integrates every step and fires value 1 when
    ``V >= 1``. V starts at the ``initial_potential`` (``"half"``: half the
    smallest spike value, so a fire period rounds V to K bits instead of
    truncating it; runtime.schedule.initial_potential). As an ANN op it is
    ``max(sum of inputs, 0)``.

    ``ceiling`` (normalised units, ``c / lambda``; infinite by default) is the
    population of a ``Clip(0, c)`` (ReLU6: c = 6): after each integrate
    period ``V = min(V, ceiling)``, the excess discarded, not carried. As an
    ANN op it is then ``clip(sum of inputs, 0, ceiling)``.
    """

    op_type: ClassVar[str] = "Population"
    domain: ClassVar[str] = BSNN_DOMAIN
    arity: ClassVar[int | None] = None
    mode: str = "bsnn"  # one of MODES
    phases: int = 8  # K, phases per period
    stage: int = 1  # 1 + stage of its sources
    threshold: float = 1.0
    scale: np.ndarray = field(default_factory=lambda: np.ones((), np.float32))  # lambda, () or (C,)
    initial_potential: str = "half"  # V at the start: "half" (theta 2^-(K+1); if-rate theta/2) or "zero"
    ceiling: np.ndarray = field(default_factory=lambda: np.full((), np.inf, np.float32))  # c / lambda, () or (C,)

    def output_shape(self, input_shapes):
        return _broadcast(input_shapes)


@dataclass(eq=False)
class SynchronousNeuron(Population):
    """A bistable population with identity weights: re-emits its source one stage later.

    Inserted by the synchronisation pass on early edges of multi-input
    projections; ``scale`` equals its source's.
    """

    op_type: ClassVar[str] = "SynchronousNeuron"
    arity: ClassVar[int | None] = 1


@dataclass(eq=False)
class MaxGate(_WindowOp):
    """Spiking max pool. In ``bsnn`` and ``bsnn-nosn`` modes, at the first phase of each
    fire period all window members are candidates; at phase k the output spikes
    iff a candidate spikes, and candidates that did not spike drop out (exact,
    since phase coding sends values MSB first). In ``phase`` and ``if-rate``
    modes the gate passes on the spikes of the member whose emitted value so
    far is largest (ties to the lowest index; Rueckauer et al. 2017).
    As an ANN op it is MaxPool."""

    op_type: ClassVar[str] = "MaxGate"
    domain: ClassVar[str] = BSNN_DOMAIN
    mode: str = "bsnn"
    phases: int = 8
    stage: int = 1  # the stage of its source population (the gate adds no delay)


@dataclass(eq=False)
class OutputAccumulator(Op):
    """Non-spiking output layer: integrates its input current whenever its sources
    fire; logits are its membrane potential. As an ANN op it is the identity."""

    op_type: ClassVar[str] = "OutputAccumulator"
    domain: ClassVar[str] = BSNN_DOMAIN
    mode: str = "bsnn"
    phases: int = 8
    stage: int = 1  # L + 1
    scale: np.ndarray = field(default_factory=lambda: np.ones((), np.float32))  # lambda of the logits

    def output_shape(self, input_shapes):
        return _one(input_shapes)


OP_CLASSES: dict[tuple[str, str], type[Op]] = {
    (cls.domain, cls.op_type): cls
    for cls in (
        Input,
        Conv,
        Gemm,
        MatMul,
        BatchNormalization,
        Relu,
        LeakyRelu,
        PRelu,
        Clip,
        MaxPool,
        AveragePool,
        GlobalAveragePool,
        Add,
        Sum,
        Sub,
        Mul,
        Div,
        Flatten,
        Reshape,
        Transpose,
        Concat,
        Pad,
        Dropout,
        Identity,
        Softmax,
        LogSoftmax,
        Population,
        SynchronousNeuron,
        MaxGate,
        OutputAccumulator,
    )
}


#: ops allowed between spiking nodes of a converted graph (the spiking graph
#: contract of docs/design.md; Identity and Dropout are harmless no-ops)
LINEAR_PROJECTIONS: tuple[type[Op], ...] = (
    Conv,
    Gemm,
    MatMul,
    AveragePool,
    GlobalAveragePool,
    Flatten,
    Reshape,
    Transpose,
    Add,
    Sum,
    Mul,
    Concat,
    Pad,
    Identity,
    Dropout,
)

#: nodes whose output is spikes (or, for Input, the analog drive); SynchronousNeuron is a Population
SPIKING_SOURCES: tuple[type[Op], ...] = (Input, Population, MaxGate)
