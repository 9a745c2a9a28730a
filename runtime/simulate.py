"""The simulation driver: validate, lower, run the kernels batch by batch, name the results.

``simulate(graph, x, timesteps)`` runs a converted spiking graph on a batch
of inputs for ``timesteps`` steps, event-driven, in the mode the graph was
converted for (``bsnn``, ``bsnn-nosn``, ``phase`` or ``if-rate``; see
BSNN_SPEC.md and :mod:`runtime.kernels` for the schedules).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import networkx as nx
import numba
import numpy as np

from bsnn_graph import ops as O
from bsnn_graph.errors import BsnnError, DataError, ModelError

from . import kernels
from .lowering import (
    KIND_GATE,
    KIND_OUTPUT,
    MODE_CODES,
    N_KIND,
    N_SIZE,
    N_SPIKE,
    LoweredGraph,
    lower,
)

__all__ = ["E_AC_PJ", "E_MAC_PJ", "SimulationResult", "load", "simulate"]

#: energy per synaptic operation (an accumulate), pJ, 45 nm (Horowitz 2014)
E_AC_PJ = 0.9
#: energy per multiply-accumulate, pJ, 45 nm (Horowitz 2014)
E_MAC_PJ = 4.6


@dataclass
class SimulationResult:
    """What a simulation produced (N samples, T steps, P = ceil(T / K) periods).

    Spike counts and events use the natural (C-order) flat neuron index of
    each population's per-sample shape.
    """

    predictions: np.ndarray  # int32 (T, N): argmax of the output V at every step
    logits: np.ndarray  # float32 (P, N, classes): output V at the end of each period
    spike_counts: dict[str, np.ndarray]  # name -> int32 (N, *shape) spikes per neuron per sample
    sops: np.ndarray  # int64 (N,) synaptic operations per sample
    sops_per_population: dict[str, np.ndarray]  # name -> int64 (N,) SOPs caused by that source's spikes
    events: dict[str, np.ndarray]  # name -> int32 (E, 3) rows (global sample index, step, flat neuron index)
    timesteps: int
    phases: int
    mode: str
    populations: list[dict]  # ordered: name, op_type, shape, stage, scale
    ann_macs: int = 0  # multiply-accumulates per sample of the ANN the graph encodes
    input_macs: int = 0  # MACs per sample of the analog input layer, computed densely by the SNN too
    extra: dict = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return int(self.predictions.shape[1])

    def accuracy(self, labels: np.ndarray) -> np.ndarray:
        """Fraction of correct predictions at every step: float64 (T,)."""
        labels = np.asarray(labels).reshape(1, -1)
        if labels.shape[1] != self.samples:
            raise DataError(f"{labels.shape[1]} labels for {self.samples} samples")
        return (self.predictions == labels).mean(axis=1)

    def energy_estimate(self) -> dict[str, float | str]:
        """Energy per sample, an *estimate* with 45 nm figures (Horowitz 2014).

        SNN: ``E_AC * SOPs + E_MAC * input MACs`` (the analog input layer is
        dense); ANN: ``E_MAC * MACs``.
        """
        sops = float(self.sops.mean()) if self.sops.size else 0.0
        snn = E_AC_PJ * sops + E_MAC_PJ * self.input_macs
        ann = E_MAC_PJ * self.ann_macs
        return {
            "label": "estimate: E_AC = 0.9 pJ per SOP, E_MAC = 4.6 pJ per MAC (45 nm, Horowitz 2014)",
            "sops_per_sample": sops,
            "ann_macs_per_sample": float(self.ann_macs),
            "input_macs_per_sample": float(self.input_macs),
            "snn_energy_pj_per_sample": snn,
            "ann_energy_pj_per_sample": ann,
            "snn_over_ann": snn / ann if ann else float("nan"),
        }


def load(path: str | os.PathLike) -> nx.DiGraph:
    """Load a converted spiking graph (ONNX with ``ai.bsnn`` ops).

    Raises
    ------
    ModelError
        if the file is not a spiking graph (no ``OutputAccumulator``).
    """
    import bsnn_graph

    graph = bsnn_graph.load_onnx(path)
    if not any(isinstance(graph.nodes[n]["op"], O.OutputAccumulator) for n in graph.nodes):
        raise ModelError(f"{path}: not a converted spiking graph (no OutputAccumulator); run `bsnn convert` first")
    return graph


def _populations(lowered: LoweredGraph) -> list[dict]:
    out = []
    graph = lowered.graph
    for name in lowered.spiking:
        op = graph.nodes[name]["op"]
        if isinstance(op, O.MaxGate):
            src = next(iter(graph.predecessors(name)))
            scale = graph.nodes[src]["op"].scale
        else:
            scale = op.scale
        scale = np.asarray(scale, np.float32)
        out.append(
            {
                "name": name,
                "op_type": op.op_type,
                "shape": tuple(lowered.shapes[name]),
                "stage": int(op.stage),
                "scale": float(scale) if scale.ndim == 0 else scale.tolist(),
            }
        )
    return out


def _check_input(lowered: LoweredGraph, x) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"input is not a numeric array ({exc})") from None
    expected = lowered.input_shape
    if x.ndim == len(expected) and x.shape == expected:
        x = x[None]
    if x.shape[1:] != expected or x.ndim != len(expected) + 1:
        raise DataError(
            f"input of shape {x.shape} does not fit graph input {lowered.input_name!r}: "
            f"expected (N, {', '.join(map(str, expected))})"
        )
    if x.shape[0] == 0:
        raise DataError(f"input of shape {x.shape} has no samples")
    return np.ascontiguousarray(x)


def simulate(
    graph: nx.DiGraph | LoweredGraph,
    x: np.ndarray,
    timesteps: int,
    batch_size: int = 64,
    threads: int | None = None,
    record: Iterable[str] | str = (),
    record_samples: Iterable[int] | None = None,
    on_batch: Callable[[int, int, SimulationResult], None] | None = None,
    per_neuron_counts: bool = True,
) -> SimulationResult:
    """Run a spiking graph event-driven on the inputs ``x`` for ``timesteps`` steps.

    Parameters
    ----------
    graph : a spiking IR graph (or one already lowered with :func:`runtime.lowering.lower`).
    x : float array (N, *input_shape) (a single sample without the batch axis is accepted).
    timesteps : T >= 1.
    batch_size : samples per kernel call; batches of one sample split the work
        of each step over the threads instead of the samples.
    threads : number of threads (None: all cores; a batch of one sample then
        runs on one thread unless the threading layer is OpenMP or TBB, see
        :func:`one_sample_threads`).
    record : names of spiking nodes whose spike events to return, or ``"all"``.
    record_samples : sample indices (into ``x``) whose events to return; None: all.
        Recording runs the recorded samples a second time with an event
        buffer of exactly the size the first run counted.
    on_batch : called as ``on_batch(start, stop, batch_result)`` after each
        batch; ``batch_result`` holds samples ``start:stop`` only (its events
        carry global sample indices), so a trace writer can stream.
    per_neuron_counts : False keeps only spikes per sample, ``spike_counts[name]``
        then being int32 (N,) (saves memory on large evaluations).

    Returns
    -------
    SimulationResult

    Raises
    ------
    DataError
        if ``x`` does not fit the graph input.
    BsnnError
        for a bad ``timesteps``, ``batch_size``, ``threads`` or record name,
        or a graph the runtime cannot lower.
    """
    lowered = graph if isinstance(graph, LoweredGraph) else lower(graph)
    x = _check_input(lowered, x)
    # the analog input is normalised by its lambda (Input.scale, 1 unless configured at conversion)
    input_scale = np.float32(np.asarray(lowered.graph.nodes[lowered.input_name]["op"].scale))
    if input_scale != 1:
        x = x / input_scale
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise BsnnError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise BsnnError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    timesteps = int(timesteps)
    spiking = lowered.spiking
    index = lowered.index
    if isinstance(record, str):
        record = spiking if record == "all" else [record]
    record = list(record)
    for name in record:
        if name not in spiking:
            raise BsnnError(f"cannot record {name!r}: not a spiking node; spiking nodes are {', '.join(spiking)}")
    n = x.shape[0]
    if record_samples is None:
        wanted = np.ones(n, bool)
    else:
        wanted = np.zeros(n, bool)
        for s in record_samples:
            if not 0 <= int(s) < n:
                raise BsnnError(f"record sample {s} is outside 0..{n - 1}")
            wanted[int(s)] = True
    record_flags = np.zeros(len(lowered.names), np.uint8)
    for name in record:
        record_flags[index[name]] = 1

    available = numba.config.NUMBA_NUM_THREADS
    if threads is not None and (isinstance(threads, bool) or not 1 <= int(threads) <= available):
        raise BsnnError(f"threads must be between 1 and {available}, got {threads!r}")
    previous = numba.get_num_threads()
    numba.set_num_threads(available if threads is None else int(threads))
    one_sample = one_sample_threads(threads)
    try:
        parts = []
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            part = _run_batch(
                lowered, x[start:stop], start, timesteps, record_flags, wanted[start:stop], per_neuron_counts,
                one_sample,
            )
            if on_batch is not None:
                on_batch(start, stop, part)
            parts.append(part)
    finally:
        numba.set_num_threads(previous)
    return _concatenate(parts, lowered, timesteps)


def _kernel_args(lowered: LoweredGraph):
    lo = lowered
    max_gate_out = 0
    for i in range(len(lo.names)):
        if lo.node_table[i, N_KIND] == KIND_GATE:
            max_gate_out = max(max_gate_out, int(lo.node_table[i, N_SIZE]))
    return (
        lo.node_table,
        lo.node_threshold,
        lo.proj_table,
        lo.weights,
        lo.csr_indptr,
        lo.csr_cols,
        lo.csr_vals,
        lo.gate_table,
        lo.fanout,
        lo.bias,
    ), (
        lo.output_order,
        np.int64(lo.output),
        np.int64(lo.state_size),
        np.int64(lo.spike_size),
        np.int64(lo.candidate_size),
        np.int64(lo.emitted_size),
        np.int64(max_gate_out),
    )


def one_sample_threads(threads: int | None) -> int:
    """Threads that split a batch of one sample (each owns a band of output rows, see runtime.kernels).

    The caller's ``threads`` when given. Otherwise all threads under a
    threading layer whose workers wake fast (OpenMP, TBB), and one under
    workqueue, the runtime's default: its parallel regions cost more to start
    than the split saves at the reference networks' size (VGG T = 56, idle
    2-core machine: 3.4 ms on one thread, 4.7 ms split over two with
    workqueue, 2.7 ms with OpenMP; benchmarks/latency.py, docs/benchmarks.md).
    """
    if threads is not None:
        return int(threads)
    try:
        layer = numba.threading_layer()  # the layer in use, once a parallel region has run
    except ValueError:
        layer = numba.config.THREADING_LAYER  # what will be used (kernels sets workqueue unless the user chose)
    return numba.get_num_threads() if layer in ("omp", "tbb") else 1


def _execute(lowered: LoweredGraph, drive, timesteps, counts, sops, predictions, logits, events, event_start, record,
             one_sample: int):
    tables, sizes = _kernel_args(lowered)
    mode = np.int64(MODE_CODES[lowered.mode])
    phases = np.int64(lowered.phases)
    deliveries = np.zeros(drive.shape[0], np.int64)
    threads = np.int64(numba.get_num_threads() if drive.shape[0] > 1 else min(one_sample, numba.get_num_threads()))
    split = np.int64(kernels._SPLIT_MIN_WORK)
    outputs = (counts, sops, predictions, logits, events, event_start, record, deliveries)
    if mode == 0 and kernels._COALESCE:  # bsnn: period by period, coalesced delivery
        period_args = (phases, np.int64(timesteps), *tables, drive, *sizes[:4], *outputs)
        if drive.shape[0] == 1:
            kernels._bsnn_one(*period_args, threads, split)
        else:
            kernels._bsnn_batch(*period_args, np.int64(4 * threads))
        return deliveries
    args = (mode, phases, np.int64(timesteps), *tables, drive, *sizes, *outputs)
    if drive.shape[0] == 1:
        kernels._simulate_one(*args, threads, split)
    else:
        kernels._simulate_batch(*args)
    return deliveries


def _run_batch(lowered, xb, start, timesteps, record_flags, wanted, per_neuron_counts, one_sample) -> SimulationResult:
    b = xb.shape[0]
    periods = math.ceil(timesteps / lowered.phases)
    drive = lowered.input_drive(xb)
    count_nodes = len(lowered.names)
    counts = np.zeros((b, max(lowered.spike_size, 1)), np.int32)
    sops = np.zeros((b, count_nodes), np.int64)
    predictions = np.zeros((timesteps, b), np.int32)
    logits = np.zeros((periods, b, lowered.classes), np.float32)
    no_events = np.zeros((0, 3), np.int32)
    deliveries = _execute(
        lowered,
        drive,
        timesteps,
        counts,
        sops,
        predictions,
        logits,
        no_events,
        np.zeros(b + 1, np.int64),
        np.zeros(count_nodes, np.uint8),
        one_sample,
    )

    events_by_name: dict[str, np.ndarray] = {}
    recorded = [i for i in range(count_nodes) if record_flags[i]]
    if recorded and wanted.any():
        # second pass over the recorded samples, with an event buffer of exactly the right size
        rows = np.nonzero(wanted)[0]
        per_sample = np.zeros(rows.size, np.int64)
        for i in recorded:
            off, size = int(lowered.node_table[i, N_SPIKE]), int(lowered.node_table[i, N_SIZE])
            per_sample += counts[rows, off : off + size].sum(axis=1)
        event_start = np.zeros(rows.size + 1, np.int64)
        np.cumsum(per_sample, out=event_start[1:])
        events = np.zeros((int(event_start[-1]), 3), np.int32)
        c2 = np.zeros((rows.size, counts.shape[1]), np.int32)
        s2 = np.zeros((rows.size, count_nodes), np.int64)
        p2 = np.zeros((timesteps, rows.size), np.int32)
        l2 = np.zeros((periods, rows.size, lowered.classes), np.float32)
        _execute(
            lowered, np.ascontiguousarray(drive[rows]), timesteps, c2, s2, p2, l2, events, event_start, record_flags,
            one_sample,
        )
        sample_of = np.repeat(rows + start, per_sample).astype(np.int32)
        for i in recorded:
            name = lowered.names[i]
            mask = events[:, 1] == i
            flat = lowered.orders[name][events[mask, 2]]
            events_by_name[name] = np.stack([sample_of[mask], events[mask, 0], flat.astype(np.int32)], axis=1)
    for i in recorded:
        events_by_name.setdefault(lowered.names[i], np.zeros((0, 3), np.int32))

    spike_counts, sops_per = {}, {}
    for i, name in enumerate(lowered.names):
        if lowered.node_table[i, N_KIND] == KIND_OUTPUT:
            continue
        off, size = int(lowered.node_table[i, N_SPIKE]), int(lowered.node_table[i, N_SIZE])
        block = counts[:, off : off + size]
        if per_neuron_counts:
            shape = lowered.shapes[name]
            if len(shape) >= 2:  # internal layout = channels last (lowering.internal_order)
                natural = np.moveaxis(block.reshape((b,) + shape[1:] + shape[:1]), -1, 1)
                spike_counts[name] = np.ascontiguousarray(natural)
            else:
                spike_counts[name] = block.copy().reshape((b,) + shape)
        else:
            spike_counts[name] = block.sum(axis=1, dtype=np.int64).astype(np.int32)
        sops_per[name] = sops[:, i].copy()
    return SimulationResult(
        predictions=predictions,
        logits=logits,
        spike_counts=spike_counts,
        sops=sops.sum(axis=1),
        sops_per_population=sops_per,
        events=events_by_name,
        timesteps=timesteps,
        phases=lowered.phases,
        mode=lowered.mode,
        populations=_populations(lowered),
        ann_macs=lowered.ann_macs,
        input_macs=lowered.input_macs,
        extra={"deliveries": deliveries},
    )


def _concatenate(parts: list[SimulationResult], lowered: LoweredGraph, timesteps: int) -> SimulationResult:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return SimulationResult(
        predictions=np.concatenate([p.predictions for p in parts], axis=1),
        logits=np.concatenate([p.logits for p in parts], axis=1),
        spike_counts={k: np.concatenate([p.spike_counts[k] for p in parts]) for k in first.spike_counts},
        sops=np.concatenate([p.sops for p in parts]),
        sops_per_population={
            k: np.concatenate([p.sops_per_population[k] for p in parts]) for k in first.sops_per_population
        },
        events={k: np.concatenate([p.events[k] for p in parts]) for k in first.events},
        timesteps=timesteps,
        phases=lowered.phases,
        mode=lowered.mode,
        populations=first.populations,
        ann_macs=lowered.ann_macs,
        input_macs=lowered.input_macs,
        extra={"deliveries": np.concatenate([p.extra["deliveries"] for p in parts])},
    )
