"""normalise: data-based weight normalisation (percentile or search), threshold 1 for every population.

Populations (in the folded ANN): every ReLU and every ``Clip(0, c)``
(ReLU6; its lambda is the percentile of its clipped output, so ``lambda <= c``,
and its bound becomes ``c / lambda``: per-population lambda only); a ReLU
that alone reads a two-tensor Add is one residual *merge* population whose
branches are the Add's inputs.

1. Calibrate (in batches of the given size, or else of the size
   :func:`calibration_batch_size` fits in :data:`CALIBRATION_MEMORY_BYTES`;
   :mod:`passes.calibration`), as ``calibrate`` says:

   - ``"percentile"`` (the default of this pass called alone; :func:`passes.convert`
     defaults to :func:`default_calibration` of its mode: search for the K-bit
     codes, bsnn, bsnn-nosn and phase): run the ANN
     (:func:`bsnn_graph.executor.iterate_activations`) on the calibration
     batches and feed every population's activation to a
     :class:`~passes.percentile.StreamingPercentile` (bounded memory,
     relative error <= 0.27 %); ``lambda`` = the p-th percentile (default
     99.99) of the positive activations, per population or, with
     ``channelwise``, per channel (axis 1). A population with no positive
     activation gets 1, a channel with none its population's lambda.
   - ``"search"``: :func:`passes.lambda_search.search_scales`, population by
     population in topological order with the earlier ones quantised to K
     = ``phases`` bits (``initial_potential``: rounding or truncation), the
     candidate lambda with the least squared error between the K-bit
     network's activation and the ANN's over the calibration data; ``1 +
     levels`` passes over the data instead of one.
2. Rescale. Every tensor gets a *unit* ``u`` (ANN value = ``u`` x value in
   the normalised graph): the Input ``Input.scale`` (1 unless configured),
   a population its ``lambda``. A Conv / Gemm turns input unit ``u_in`` into
   the unit ``u_out`` its output is read in:

       W' = W * u_in / u_out     b' = b / u_out

   ``u_out`` is the lambda of the population it feeds (looked up through
   scale-transparent ops: AveragePool, GlobalAveragePool, Flatten, Reshape,
   Pad with 0, Add with a constant, the Add of a merge); the last linear
   layer (graph output, no ReLU) keeps ANN units, ``u_out = 1``, so
   ``W' = W * u_in``, ``b' = b``. Per-channel units follow the channels
   through Flatten into Gemm columns. Constants added to a tensor are
   divided by its unit. Where a tensor reaches a population (or a merge Add)
   in a unit other than the one required (an identity shortcut from a
   population of another lambda, a pooling between two populations) a
   ``Mul`` by the constant ``u_src / u_required`` (scalar or (1, C, 1, 1))
   is inserted on that edge.

After: ``evaluate(normalised)[p] * lambda_p == evaluate(ann)[p]`` for every
population p and the outputs are unchanged (float32 rounding aside). The
lambdas are kept in metadata ``bsnn.scales`` (JSON: population name ->
number or per-channel list) until to_spiking moves them into
``Population.scale``; ``bsnn.input_scale``, ``bsnn.percentile``,
``bsnn.channelwise``, ``bsnn.calibration_samples``, ``bsnn.calibrate``
(percentile or search) and ``bsnn.calibration_seconds`` (wall-clock time of
step 1) are recorded too.

Refusal: an op with no linear meaning between populations (Softmax,
a Clip other than Clip(0, c), BatchNormalization, MatMul on a >1-d input, Div of a
constant by a tensor), a Conv whose input unit varies within a channel,
a graph without exactly one Input, calibration data that yields no
sample, a ``calibrate`` other than percentile or search (one line naming
them), ``channelwise`` with a ``Clip(0, c)`` population (before calibrating),
and, for search, calibration data that can be read only once (an iterator).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import networkx as nx
import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.errors import DataError

from ._infra import Pass, insert_after, insert_on_edge, is_population_activation, refuse
from .calibration import (
    CALIBRATION_MEMORY_BYTES,
    calibration_batch_size,
    calibration_batches,
    population_names,
    population_scales,
)
from .lambda_search import search_scales

__all__ = [
    "CALIBRATIONS",
    "CALIBRATION_MEMORY_BYTES",
    "calibration_batch_size",
    "calibration_batches",
    "check_calibrate",
    "default_calibration",
    "normalise",
    "population_scales",
    "read_scales",
]

#: the ways normalise chooses the lambdas (``calibrate``)
CALIBRATIONS = ("percentile", "search")


def default_calibration(mode: str) -> str:
    """The calibration used when none is asked for: ``search`` for the K-bit codes (``bsnn``, ``bsnn-nosn``,
    ``phase``), ``percentile`` for ``if-rate``.

    On the full Fashion-MNIST test set search beat the percentile at K = 3 on all four reference models and at
    K = 4 on three, and was level (within 0.15 point either way) at K = 5..8 (docs/benchmarks.md, the
    headline). ``phase`` under search had the higher mean accuracy over T on three of the four models (1,000
    images) and came within 1 point sooner or as soon on the full set; ``if-rate`` (not a K-bit code) came
    within 1 point 1.4 to 2.5 times later under search and had the lower mean on all four.
    """
    return "search" if mode in O.BISTABLE_MODES or mode == "phase" else "percentile"


_TRANSPARENT = (O.MaxPool, O.AveragePool, O.GlobalAveragePool, O.Dropout, O.Identity, O.Pad)


def read_scales(graph: nx.DiGraph) -> dict[str, np.ndarray]:
    """The lambdas normalise stored in metadata ``bsnn.scales`` (name -> () or (C,) float32)."""
    text = graph.graph["metadata"].get("bsnn.scales")
    if text is None:
        return {}
    return {k: np.asarray(v, np.float32) for k, v in json.loads(text).items()}


# --------------------------------------------------------------------------- units


def _compact(unit: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The smallest form of ``unit`` over ``shape``: scalar, per channel (C, 1, ...), or full."""
    full = np.broadcast_to(np.asarray(unit, np.float64), shape)
    flat = full.reshape(-1)
    if flat.size == 0 or np.all(flat == flat[0]):
        return np.array(flat[0] if flat.size else 1.0)
    per_channel = full.reshape(shape[0], -1)
    if np.all(per_channel == per_channel[:, :1]):
        return per_channel[:, 0].reshape((shape[0],) + (1,) * (len(shape) - 1))
    return np.array(full)


def _same(a: np.ndarray, b: np.ndarray, shape) -> bool:
    return bool(np.allclose(np.broadcast_to(a, shape), np.broadcast_to(b, shape), rtol=1e-12, atol=0))


def _channel_unit(graph, node, unit, shape) -> np.ndarray:
    """``unit`` as a vector over axis 0 of ``shape``; refuse if it varies within a channel."""
    unit = _compact(unit, shape)
    if unit.ndim and unit.shape != (shape[0],) + (1,) * (len(shape) - 1):
        refuse(graph, node, "its input unit varies within a channel; it cannot be normalised")
    return np.broadcast_to(unit.reshape(-1), (shape[0],)).astype(np.float64)


def _onnx_constant(unit: np.ndarray) -> np.ndarray:
    """A per-sample unit as an ONNX-layout float32 constant (batch axis added)."""
    unit = np.asarray(unit, np.float64)
    return (unit[None] if unit.ndim else unit).astype(np.float32)


class _Normaliser:
    def __init__(self, graph: nx.DiGraph, lambdas: dict[str, np.ndarray], input_scale: float):
        self.graph = graph
        self.lambdas = {
            n: _compact(
                lam.reshape((-1,) + (1,) * (len(ir.shape_of(graph, n)) - 1)) if lam.ndim else lam, ir.shape_of(graph, n)
            )
            for n, lam in lambdas.items()
        }
        self.input_scale = float(input_scale)
        self.unit: dict[str, np.ndarray] = {}
        self._targets: dict[str, np.ndarray | None] = {}

    # ----- backward: the unit a tensor is read in
    def target(self, name: str) -> np.ndarray | None:
        if name not in self._targets:
            self._targets[name] = self._find_target(name)
        return self._targets[name]

    def _find_target(self, name: str) -> np.ndarray | None:
        g = self.graph
        if name in g.graph["outputs"]:
            return np.array(1.0)
        for reader in ir.consumers(g, name):
            required = self._required_by(reader, name)
            if required is not None:
                return required
        return None

    def _required_by(self, reader: str, name: str) -> np.ndarray | None:
        g = self.graph
        op = ir.op_of(g, reader)
        shape, reader_shape = ir.shape_of(g, name), ir.shape_of(g, reader)
        if is_population_activation(op):
            return self.lambdas[reader]
        if isinstance(
            op,
            (
                O.Add,
                O.Sum,
                O.Sub,
                O.Mul,
                O.Div,
                O.AveragePool,
                O.GlobalAveragePool,
                O.MaxPool,
                O.Pad,
                O.Dropout,
                O.Identity,
            ),
        ):
            target = self.target(reader)
            if target is None or target.ndim == 0:
                return target
            if len(shape) == len(reader_shape) and target.shape == (reader_shape[0],) + (1,) * (len(shape) - 1):
                return target if shape[0] == reader_shape[0] else None
            return None
        if isinstance(op, (O.Flatten, O.Reshape)):
            target = self.target(reader)
            if target is None or target.ndim == 0:
                return target
            return _compact(np.broadcast_to(target, reader_shape).reshape(shape), shape)
        if isinstance(op, O.Transpose):
            target = self.target(reader)
            if target is None or target.ndim == 0:
                return target
            inverse = np.argsort([p - 1 for p in op.perm[1:]])
            return _compact(np.transpose(np.broadcast_to(target, reader_shape), inverse), shape)
        if isinstance(op, O.Concat):
            target = self.target(reader)
            if target is None or target.ndim == 0:
                return target
            axis = (op.axis if op.axis >= 0 else op.axis + len(reader_shape) + 1) - 1
            start = 0
            for src in ir.inputs_of(g, reader):
                if src == name:
                    break
                start += ir.shape_of(g, src)[axis]
            full = np.broadcast_to(target, reader_shape)
            return _compact(np.take(full, range(start, start + shape[axis]), axis=axis), shape)
        return None

    # ----- forward: rescale
    def require(self, src: str, dst: str, unit: np.ndarray) -> None:
        """Make ``dst`` read ``src`` in ``unit``, inserting a Mul on the edge if needed."""
        shape = ir.shape_of(self.graph, src)
        if _same(self.unit[src], unit, shape):
            return
        ratio = _compact(np.broadcast_to(self.unit[src], shape) / np.broadcast_to(unit, shape), shape)
        mul = ir.unique_name(self.graph, f"{src}_rescale")
        insert_on_edge(self.graph, src, dst, mul, O.Mul(constant=_onnx_constant(ratio)))
        self.unit[mul] = _compact(unit, shape)

    def run(self) -> None:
        """Rescale every node in topological order, then bring the graph outputs back to ANN units."""
        g = self.graph
        for name in ir.topological_order(g):
            op = ir.op_of(g, name)
            srcs = ir.inputs_of(g, name)
            shape = ir.shape_of(g, name)
            if isinstance(op, O.Input):
                op.scale = self.input_scale
                self.unit[name] = np.array(self.input_scale)
            elif is_population_activation(op):
                self._population(name, op, srcs[0])
            elif isinstance(op, (O.Conv, O.Gemm)):
                self._linear(name, op, srcs[0], shape)
            elif (isinstance(op, O.Add) and op.constant is None) or isinstance(op, O.Sum):
                self._merge(name, srcs, shape)
            elif isinstance(op, (O.Add, O.Sub)):  # x + c, x - c or c - x: c is divided by x's unit
                unit = self.unit[srcs[0]]
                op.constant = (op.constant.astype(np.float64) / _onnx_constant(unit).astype(np.float64)).astype(
                    np.float32
                )
                self.unit[name] = _compact(unit, shape)
            elif isinstance(op, (O.Mul, O.Div)):
                if op.constant_first and isinstance(op, O.Div):
                    refuse(g, name, "constant / tensor has no linear meaning between populations")
                self.unit[name] = self.unit[srcs[0]]
            elif isinstance(op, _TRANSPARENT):
                self._transparent(name, op, srcs[0])
            else:
                self.unit[name] = self._moved_unit(name, op, srcs, shape)
        self._outputs_in_ann_units()

    def _population(self, name: str, op, src: str) -> None:
        """A population reads its input in its lambda; a Clip(0, c) bound becomes c / lambda."""
        g = self.graph
        self.require(src, name, self.lambdas[name])
        self.unit[name] = self.lambdas[name]
        if isinstance(op, O.Clip):  # the bound in the population's unit: c / lambda
            if self.lambdas[name].ndim:
                refuse(
                    g,
                    name,
                    f"Clip(0, {op.max}) with per-channel lambdas is not supported (its bound is one "
                    "number); normalise it per population (channelwise off)",
                )
            op.max = float(np.float64(op.max) / float(self.lambdas[name]))

    def _merge(self, name: str, srcs: list[str], shape) -> None:
        """A two-tensor Add or a Sum: every input in the unit the sum is read in."""
        g = self.graph
        target = self.target(name)
        unit = _compact(target if target is not None else self.unit[srcs[0]], shape)
        for src in srcs:
            if ir.shape_of(g, src) != shape and not _same(self.unit[src], unit, ir.shape_of(g, src)):
                refuse(g, name, "adds tensors of different shapes in different units")
            self.require(src, name, unit)
        self.unit[name] = unit

    def _transparent(self, name: str, op, src: str) -> None:
        """Pooling, Pad, Dropout, Identity: the unit passes through (one per channel at most)."""
        g = self.graph
        unit = self.unit[src]
        _channel_unit(g, name, unit, ir.shape_of(g, src))
        if isinstance(op, O.Pad) and op.mode == "constant" and op.value != 0:
            if unit.ndim:
                refuse(g, name, "pads with a non-zero value in a per-channel unit")
            op.value = float(op.value / unit)
        self.unit[name] = unit

    def _moved_unit(self, name: str, op, srcs: list[str], shape) -> np.ndarray:
        """The unit after an op that moves elements (Flatten, Reshape, Transpose, Concat); refuse any other op."""
        g = self.graph
        if isinstance(op, (O.Flatten, O.Reshape)):
            in_shape = ir.shape_of(g, srcs[0])
            return _compact(np.broadcast_to(self.unit[srcs[0]], in_shape).reshape(shape), shape)
        if isinstance(op, O.Transpose):
            unit = np.broadcast_to(self.unit[srcs[0]], ir.shape_of(g, srcs[0]))
            return _compact(np.transpose(unit, [p - 1 for p in op.perm[1:]]), shape)
        if isinstance(op, O.Concat):
            axis = (op.axis if op.axis >= 0 else op.axis + len(shape) + 1) - 1
            parts = [np.broadcast_to(self.unit[s], ir.shape_of(g, s)) for s in srcs]
            return _compact(np.concatenate(parts, axis=axis), shape)
        if isinstance(op, O.MatMul):
            refuse(g, name, f"MatMul on a {ir.shape_of(g, srcs[0])} input per sample is not supported")
        refuse(g, name, f"{op.op_type} has no place between spiking populations")

    def _outputs_in_ann_units(self) -> None:
        """A ``Mul`` after every graph output that is not in ANN units (unit 1)."""
        g = self.graph
        for out in list(g.graph["outputs"]):
            shape = ir.shape_of(g, out)
            if not _same(self.unit[out], np.array(1.0), shape):
                mul = ir.unique_name(g, f"{out}_rescale")
                insert_after(g, out, mul, O.Mul(constant=_onnx_constant(_compact(self.unit[out], shape))))
                self.unit[mul] = np.array(1.0)

    def _linear(self, name: str, op, src: str, shape) -> None:
        g = self.graph
        in_shape = ir.shape_of(g, src)
        target = self.target(name)
        target = np.array(1.0) if target is None else _compact(target, shape)
        if target.ndim and target.shape != (shape[0],) + (1,) * (len(shape) - 1):
            target = np.array(1.0)  # varies within a channel: a Mul downstream fixes the unit
        out_unit = np.broadcast_to(target.reshape(-1), (shape[0],)).astype(np.float64)
        weight = op.weight.astype(np.float64)
        if isinstance(op, O.Gemm):
            in_unit = np.broadcast_to(self.unit[src], in_shape).astype(np.float64)
            weight = weight * in_unit[None, :]
        else:
            channel_unit = _channel_unit(g, name, self.unit[src], in_shape)
            out_channels, group = weight.shape[0], op.group
            in_per_group, out_per_group = in_shape[0] // group, out_channels // group
            channel_of = (np.arange(out_channels)[:, None] // out_per_group) * in_per_group + np.arange(in_per_group)
            weight = weight * channel_unit[channel_of].reshape(weight.shape[:2] + (1,) * (weight.ndim - 2))
        op.weight = (weight / out_unit.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(np.float32)
        if op.bias is not None:
            op.bias = (op.bias.astype(np.float64) / out_unit).astype(np.float32)
        self.unit[name] = target


def check_calibrate(calibrate: str) -> None:
    """Refuse an unknown ``calibrate`` in one line naming the allowed values."""
    if calibrate not in CALIBRATIONS:
        raise DataError(f"calibrate {calibrate!r} is not one of {', '.join(CALIBRATIONS)}")


def _refuse_channelwise_clips(graph: nx.DiGraph) -> None:
    for name in population_names(graph):
        op = ir.op_of(graph, name)
        if isinstance(op, O.Clip):
            refuse(
                graph,
                name,
                f"Clip(0, {op.max}) with per-channel lambdas is not supported (its bound is one "
                "number); normalise it per population (channelwise off)",
            )


def _normalise(
    graph: nx.DiGraph,
    calibration=None,
    percentile: float = 99.99,
    channelwise: bool = False,
    batch_size: int | None = None,
    input_lambda: float | None = None,
    progress: Callable[[int], None] | None = None,
    calibrate: str = "percentile",
    phases: int = 8,
    initial_potential: str = "half",
) -> bool:
    check_calibrate(calibrate)
    if calibration is None:
        raise DataError("normalise needs calibration data")
    if channelwise:
        _refuse_channelwise_clips(graph)
    started = time.perf_counter()
    if calibrate == "search":
        lambdas, samples = search_scales(
            graph, calibration, phases, initial_potential, percentile, channelwise, batch_size, progress
        )
    else:
        lambdas, samples = population_scales(graph, calibration, percentile, channelwise, batch_size, progress)
    seconds = time.perf_counter() - started
    if input_lambda is None:
        (name,) = graph.graph["inputs"]
        input_lambda = ir.op_of(graph, name).scale
    if not input_lambda > 0:
        raise DataError(f"input lambda {input_lambda} must be positive")
    _Normaliser(graph, lambdas, input_lambda).run()
    meta = graph.graph["metadata"]
    meta["bsnn.scales"] = json.dumps({n: lam.tolist() for n, lam in lambdas.items()})
    meta["bsnn.input_scale"] = repr(float(input_lambda))
    meta["bsnn.percentile"] = repr(float(percentile))
    meta["bsnn.channelwise"] = "true" if channelwise else "false"
    meta["bsnn.calibration_samples"] = str(samples)
    meta["bsnn.calibrate"] = calibrate
    meta["bsnn.calibration_seconds"] = repr(round(seconds, 3))
    return True


def _requires_folded(graph: nx.DiGraph) -> None:
    for name in graph.nodes:
        if isinstance(ir.op_of(graph, name), O.BatchNormalization):
            refuse(graph, name, "BatchNormalization must be folded first (run fold_batchnorm)")
    if "bsnn.scales" in graph.graph["metadata"]:
        refuse(graph, None, "the graph is already normalised")


normalise = Pass(
    name="normalise",
    description="lambda per population from calibration data (percentile or search); W' = W lambda_in / lambda_out",
    rewrite=_normalise,
    requires=_requires_folded,
)
