"""Calibration data in bounded memory: batches, the activation statistics of every population, percentile lambdas.

Shared by :mod:`passes.normalise` (percentile lambdas) and
:mod:`passes.lambda_search` (lambda by search). The calibration data is an
array (split into batches) or an iterable of batches; every batch is
checked against the graph input (:func:`bsnn_graph.data.fit_to_input`).
Nothing here holds more than one batch of activations: the statistics are
:class:`~passes.percentile.StreamingPercentile` histograms of fixed size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import networkx as nx
import numpy as np

from bsnn_graph import ir
from bsnn_graph.data import fit_to_input
from bsnn_graph.errors import DataError
from bsnn_graph.executor import iterate_activations

from ._infra import is_population_activation, refuse
from .percentile import StreamingPercentile

__all__ = [
    "CALIBRATION_MEMORY_BYTES",
    "activation_statistics",
    "calibration_batch_size",
    "calibration_batches",
    "calibration_inputs",
    "percentile_lambdas",
    "population_names",
    "population_scales",
]

#: activation memory a calibration batch may take when the caller gives no batch size
CALIBRATION_MEMORY_BYTES = 1 << 30
#: the temporaries (padded copies, pooling) on top of the live activations, as a factor
_TEMPORARY_FACTOR = 2


def calibration_batch_size(graph: nx.DiGraph, budget_bytes: int = CALIBRATION_MEMORY_BYTES, largest: int = 256) -> int:
    """The largest calibration batch (1..``largest``) whose activations fit in ``budget_bytes``.

    The per-sample peak is the largest sum of live float32 activations when
    :func:`bsnn_graph.executor.iterate_activations` frees each tensor after
    its last reader, times a factor of 2 for temporaries (padded copies);
    a convolution's im2col block is bounded separately
    (:data:`bsnn_graph.executor.CONV_BLOCK_BYTES`).
    """
    remaining = {n: len(ir.consumers(graph, n)) for n in graph.nodes}
    keep = set(graph.graph["outputs"])
    live: dict[str, int] = {}
    peak = 0
    for name in ir.topological_order(graph):
        live[name] = 4 * int(np.prod(ir.shape_of(graph, name), dtype=np.int64))
        peak = max(peak, sum(live.values()))
        for src in set(ir.inputs_of(graph, name)):
            remaining[src] -= 1
            if remaining[src] == 0 and src not in keep:
                live.pop(src, None)
    per_sample = max(1, _TEMPORARY_FACTOR * peak)
    return int(max(1, min(largest, budget_bytes // per_sample)))


def calibration_batches(calibration, batch_size: int = 64) -> Iterable[np.ndarray]:
    """Batches of calibration inputs: an ndarray is split into ``batch_size`` slices,
    any other iterable is taken as a sequence of batches (arrays)."""
    if isinstance(calibration, np.ndarray):
        for start in range(0, len(calibration), batch_size):
            yield calibration[start : start + batch_size]
        return
    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Iterable):
        raise DataError(f"calibration data must be an array or an iterable of arrays, not {type(calibration).__name__}")
    yield from calibration


def calibration_inputs(graph: nx.DiGraph, calibration, batch_size: int) -> Iterator[np.ndarray]:
    """The non-empty calibration batches as float32 arrays fitted to the graph's one input."""
    if len(graph.graph["inputs"]) != 1:
        refuse(graph, None, f"calibration needs exactly one graph input, found {graph.graph['inputs']}")
    shape = ir.shape_of(graph, graph.graph["inputs"][0])
    for batch in calibration_batches(calibration, batch_size):
        x = fit_to_input(np.asarray(batch, np.float32), shape, "calibration data")
        if len(x):
            yield x


def population_names(graph: nx.DiGraph) -> list[str]:
    """The population activations (ReLU, Clip(0, c)) of the ANN ``graph``, in topological order."""
    return [n for n in ir.topological_order(graph) if is_population_activation(ir.op_of(graph, n))]


def activation_statistics(
    graph: nx.DiGraph,
    calibration,
    channelwise: bool = False,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, StreamingPercentile], int]:
    """One pass of the ANN over the calibration data: a histogram of every population's positive activations.

    Returns ``(statistics, samples)``: name -> :class:`StreamingPercentile`
    (one row, or one per channel (axis 1) with ``channelwise``) and the
    number of samples seen. ``progress(n)`` is called after each batch of
    ``n`` samples. Refuses calibration data without a sample.
    """
    if batch_size is None:
        batch_size = calibration_batch_size(graph)
    statistics = {
        r: StreamingPercentile(ir.shape_of(graph, r)[0] if channelwise and ir.shape_of(graph, r) else None)
        for r in population_names(graph)
    }
    samples = 0
    for x in calibration_inputs(graph, calibration, batch_size):
        for name, value in iterate_activations(graph, x):
            if name in statistics:
                statistics[name].update(value)
        samples += len(x)
        if progress is not None:
            progress(len(x))
    if samples == 0:
        raise DataError("calibration data holds no samples")
    return statistics, samples


def percentile_lambdas(statistics: dict[str, StreamingPercentile], percentile: float) -> dict[str, np.ndarray]:
    """The p-th percentile of each population's positive activations (float64, shape () or (C,)).

    A population with no positive activation gets 1; a channel with none
    gets its population's percentile (1 if the population has none either).
    """
    lambdas = {}
    for name, estimator in statistics.items():
        value = estimator.percentile(percentile)
        if estimator.channels is not None:
            overall = StreamingPercentile(None, estimator.bins_per_octave, estimator.min_exponent)
            overall.counts = estimator.counts.sum(axis=0, keepdims=True)
            overall.minimum = estimator.minimum.min(keepdims=True)
            overall.maximum = estimator.maximum.max(keepdims=True)
            layer = overall.percentile(percentile)
            value = np.where(np.isnan(value), 1.0 if np.isnan(layer) else layer, value)
        elif np.isnan(value):
            value = np.array(1.0)
        lambdas[name] = np.asarray(value, np.float64)
    return lambdas


def population_scales(
    graph: nx.DiGraph,
    calibration,
    percentile: float = 99.99,
    channelwise: bool = False,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Percentile lambdas of every ReLU (and Clip(0, c)) of the ANN ``graph`` over the calibration data.

    Returns ``(lambdas, samples)``: name -> float64 array of shape () or
    (C,) and the number of calibration samples seen. ``progress(n)`` is
    called after each batch of ``n`` samples. An array ``calibration`` is
    split into ``batch_size`` batches; None: :func:`calibration_batch_size`.
    """
    if not 0 < percentile <= 100:
        raise DataError(f"percentile {percentile} is not in (0, 100]")
    statistics, samples = activation_statistics(graph, calibration, channelwise, batch_size, progress)
    return percentile_lambdas(statistics, percentile), samples
