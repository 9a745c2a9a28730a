"""The simulation driver: validate, lower, run the kernels batch by batch, name the results.

``simulate(graph, x, timesteps)`` runs a converted spiking graph on a batch
of inputs for ``timesteps`` steps, event-driven, in the mode the graph was
converted for (``bsnn``, ``bsnn-nosn``, ``phase`` or ``if-rate``; see
BSNN_SPEC.md and :mod:`runtime.kernels` for the schedules).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import networkx as nx
import numba
import numpy as np

from bsnn_graph import ops as O
from bsnn_graph.errors import BsnnError, DataError, ModelError

from . import kernels
from .energy import E_AC_PJ, E_MAC_PJ, energy_estimate
from .lowering import (
    KIND_GATE,
    KIND_OUTPUT,
    N_KIND,
    N_SIZE,
    N_SPIKE,
    LoweredGraph,
    lower,
)
from .schedule import MODE_CODES, periods_of

__all__ = ["E_AC_PJ", "E_MAC_PJ", "SimulationResult", "concatenate_results", "kernel_tables", "load", "one_sample_threads", "simulate"]

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
    populations: list[dict]  # ordered: name, op_type, shape, stage, scale (and a MaxGate's source)
    ann_macs: int = 0  # multiply-accumulates per sample of the ANN the graph encodes
    input_macs: int = 0  # MACs per sample of the analog input layer, computed densely by the SNN too
    schedule: str = "light-cone"  # "light-cone" (pruned to what can reach the output by T) or "full"
    initial_potential: str = "half"  # the graph's: "half" (rounding) or "zero" (truncation)
    # deliveries (int64 (N,) row scatters per sample), sops_per_period (int64 (P, N): SOPs of each period's
    # spikes), bytes_per_sample
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

    def energy_estimate(self) -> dict[str, float | str | None]:
        """Energy per sample, an *estimate* (``runtime.energy.energy_estimate`` of this run's mean SOPs)."""
        sops = float(self.sops.mean()) if self.sops.size else 0.0
        return energy_estimate(sops, self.ann_macs, self.input_macs)


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
    """The spiking nodes as the result lists them (made once per lowered graph; each result gets a copy)."""
    cached = lowered.__dict__.get("_populations")
    if cached is None:
        cached = lowered.__dict__["_populations"] = _describe_populations(lowered)
    return [dict(p) for p in cached]


def _describe_populations(lowered: LoweredGraph) -> list[dict]:
    out = []
    graph = lowered.graph
    for name in lowered.spiking:
        op = graph.nodes[name]["op"]
        entry = {"name": name, "op_type": op.op_type, "shape": tuple(lowered.shapes[name]), "stage": int(op.stage)}
        if isinstance(op, O.MaxGate):
            src = next(iter(graph.predecessors(name)))
            scale = graph.nodes[src]["op"].scale
            entry["source"] = src  # the population a max gate reads
        else:
            scale = op.scale
        scale = np.asarray(scale, np.float32)
        entry["scale"] = float(scale) if scale.ndim == 0 else scale.tolist()
        out.append(entry)
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
    per_neuron_counts: bool | str = False,
    full_dynamics: bool = False,
) -> SimulationResult:
    """Run a spiking graph event-driven on the inputs ``x`` for ``timesteps`` steps.

    Results (predictions, logits, spikes, SOPs, events) are bit-identical for
    any ``batch_size`` and ``threads``.

    Parameters
    ----------
    graph : a spiking IR graph (or one already lowered with :func:`runtime.lowering.lower`).
    x : float array (N, *input_shape) (a single sample without the batch axis is accepted).
    timesteps : T >= 1.
    batch_size : samples per kernel call; a batch of one sample splits the
        work of each period (or step) over the threads instead of the samples.
    threads : number of threads (None: all cores; a batch of one sample then
        runs on one thread unless the threading layer is OpenMP or TBB, see
        :func:`one_sample_threads`).
    record : names of spiking nodes whose spike events to return, or ``"all"``.
    record_samples : sample indices (into ``x``) whose events to return; None: all.
        Recording runs the recorded samples a second time with an event
        buffer of exactly the size the first run counted (a mismatch raises).
    on_batch : called as ``on_batch(start, stop, batch_result)`` after each
        batch; ``batch_result`` holds samples ``start:stop`` only (its events
        carry global sample indices), so a trace writer can stream.
    per_neuron_counts : False (default): ``spike_counts[name]`` is int32 (N,),
        spikes per sample, and no per-neuron counts are kept; True: int32
        (N, *shape) per neuron; ``"batches"``: per neuron in the batch results
        given to ``on_batch`` only (a trace writer streams them), per sample
        in the returned result.
    full_dynamics : False (default): the light-cone schedule
        (:func:`runtime.schedule.light_cone`): populations fire and integrate
        only in the periods whose spikes can still reach the output by T
        (predictions and logits are those of the full run; spike counts,
        SOPs and events are the pruned run's). True: every period.

    Returns
    -------
    SimulationResult (``schedule`` says which schedule ran)

    Raises
    ------
    DataError
        if ``x`` does not fit the graph input.
    BsnnError
        for a bad ``timesteps``, ``batch_size``, ``threads`` or record name,
        or a graph the runtime cannot lower.
    """
    lowered = graph if isinstance(graph, LoweredGraph) else lower(graph)
    x = _scaled_input(lowered, x)
    _check_settings(timesteps, batch_size, per_neuron_counts, threads)
    timesteps = int(timesteps)
    record_flags, wanted = _record_plan(lowered, record, record_samples, x.shape[0])
    with _numba_threads(threads):
        plan = _Plan(
            lowered=lowered,
            net=kernel_tables(lowered),
            timesteps=timesteps,
            last_fire=lowered.last_fire(timesteps, full_dynamics),
            schedule="full" if full_dynamics else "light-cone",
            one_sample=one_sample_threads(threads),
            per_neuron=per_neuron_counts is not False,
        )
        parts = []
        for start in range(0, x.shape[0], batch_size):
            stop = min(start + batch_size, x.shape[0])
            part = _run_batch(plan, x[start:stop], start, record_flags, wanted[start:stop])
            if on_batch is not None:
                on_batch(start, stop, part)
            if per_neuron_counts == "batches":
                part.spike_counts = {k: _per_sample(v) for k, v in part.spike_counts.items()}
            parts.append(part)
    result = concatenate_results(parts)
    result.extra["bytes_per_sample"] = lowered.bytes_per_sample(timesteps, per_neuron_counts is True)
    return result


def _scaled_input(lowered: LoweredGraph, x) -> np.ndarray:
    """``x`` checked against the graph input (:func:`_check_input`) and divided by the input's lambda
    (``Input.scale``, 1 unless configured at conversion)."""
    x = _check_input(lowered, x)
    input_scale = np.float32(np.asarray(lowered.graph.nodes[lowered.input_name]["op"].scale))
    if input_scale != 1:
        x = x / input_scale
    return x


def _check_settings(timesteps, batch_size, per_neuron_counts, threads) -> None:
    """Refuse a bad ``timesteps``, ``batch_size``, ``per_neuron_counts`` or ``threads`` of :func:`simulate`."""
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise BsnnError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise BsnnError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if per_neuron_counts not in (False, True, "batches"):
        raise BsnnError(f"per_neuron_counts must be False, True or 'batches', got {per_neuron_counts!r}")
    available = numba.config.NUMBA_NUM_THREADS
    if threads is not None and (isinstance(threads, bool) or not 1 <= int(threads) <= available):
        raise BsnnError(f"threads must be between 1 and {available}, got {threads!r}")


@contextlib.contextmanager
def _numba_threads(threads: int | None):
    """Numba's thread count set to ``threads`` (None: all) for the block, then restored."""
    previous = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS if threads is None else int(threads))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _per_sample(counts: np.ndarray) -> np.ndarray:
    """Per-neuron counts (N, *shape) summed to spikes per sample, int32 (N,)."""
    return counts.reshape(counts.shape[0], -1).sum(axis=1, dtype=np.int64).astype(np.int32)


def _record_plan(lowered: LoweredGraph, record, record_samples, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 flag per node, bool per sample) of what to record; refuses unknown names and samples."""
    spiking = lowered.spiking
    if isinstance(record, str):
        record = spiking if record == "all" else [record]
    record = list(record)
    for name in record:
        if name not in spiking:
            raise BsnnError(f"cannot record {name!r}: not a spiking node; spiking nodes are {', '.join(spiking)}")
    if record_samples is None:
        wanted = np.ones(n, bool)
    else:
        wanted = np.zeros(n, bool)
        for s in record_samples:
            if not 0 <= int(s) < n:
                raise BsnnError(f"record sample {s} is outside 0..{n - 1}")
            wanted[int(s)] = True
    flags = np.zeros(len(lowered.names), np.uint8)
    index = lowered.index
    for name in record:
        flags[index[name]] = 1
    return flags, wanted


def kernel_tables(lowered: LoweredGraph) -> kernels.Net:
    """The lowered tables packed for the kernels (:class:`runtime.kernels.Net`), built once per lowered graph."""
    cached = lowered.__dict__.get("_kernel_tables")
    if cached is not None:
        return cached
    lo = lowered
    gates = lo.node_table[:, N_KIND] == KIND_GATE
    net = kernels.Net(
        node_table=lo.node_table,
        threshold=lo.node_threshold,
        v0=lo.node_v0,
        proj=lo.proj_table,
        weights=lo.weights,
        indptr=lo.csr_indptr,
        cols=lo.csr_cols,
        vals=lo.csr_vals,
        gate=lo.gate_table,
        fanout=lo.fanout,
        bias=lo.bias,
        ceiling=lo.ceiling,
        output_order=lo.output_order,
        output=np.int64(lo.output),
        state_size=np.int64(lo.state_size),
        spike_size=np.int64(lo.spike_size),
        candidate_size=np.int64(lo.candidate_size),
        emitted_size=np.int64(lo.emitted_size),
        max_gate_out=np.int64(lo.node_table[gates, N_SIZE].max() if gates.any() else 0),
        mode=np.int64(MODE_CODES[lo.mode]),
        phases=np.int64(lo.phases),
    )
    lowered.__dict__["_kernel_tables"] = net
    return net


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


@dataclass
class _Plan:
    """What every batch of one simulate call shares."""

    lowered: LoweredGraph
    net: kernels.Net
    timesteps: int
    last_fire: np.ndarray  # int32 (S,) light cone (schedule.light_cone)
    schedule: str  # "light-cone" or "full"
    one_sample: int  # threads that split a batch of one sample
    per_neuron: bool  # count spikes per neuron


def _new_run(plan: _Plan, drive: np.ndarray, per_neuron: bool, record: np.ndarray, event_start: np.ndarray,
             events: np.ndarray) -> kernels.Run:
    lo = plan.lowered
    b = drive.shape[0]
    nodes = len(lo.names)
    periods = periods_of(plan.timesteps, lo.phases)
    return kernels.Run(
        timesteps=np.int64(plan.timesteps),
        periods=np.int64(periods),
        last_fire=plan.last_fire,
        drive=drive,
        per_neuron=np.int64(per_neuron),
        neuron_counts=np.zeros((b, max(lo.spike_size, 1) if per_neuron else 1), np.int32),
        node_counts=np.zeros((b, nodes), np.int64),
        sops=np.zeros((b, nodes), np.int64),
        period_sops=np.zeros((periods, b), np.int64),
        predictions=np.zeros((plan.timesteps, b), np.int32),
        logits=np.zeros((periods, b, lo.classes), np.float32),
        events=events,
        event_start=event_start,
        event_stop=np.zeros(b, np.int64),
        record=record,
        deliveries=np.zeros(b, np.int64),
        split_min_work=np.int64(kernels._SPLIT_MIN_WORK),
    )


_STATE_LOCK = threading.Lock()


def _working_state(lowered: LoweredGraph, net: kernels.Net, slots: int):
    """The kernels' working state for ``slots`` threads, kept on the lowered graph for the next call.

    Allocating and first touching it costs as much as simulating a large
    sample (ResNet-50 at 224x224: 360 MB per thread, 0.3 s), so it is made
    once per lowered graph, path and thread count and reused; a concurrent
    call on the same lowered graph gets its own.
    """
    key = ("_period_state" if kernels.uses_period_path(net) else "_step_state", slots)
    with _STATE_LOCK:
        cached = lowered.__dict__.setdefault("_kernel_states", {}).pop(key, None)
    if cached is None:
        cached = kernels.new_state(net, slots)
    return key, cached


def _release_state(lowered: LoweredGraph, key, state) -> None:
    with _STATE_LOCK:
        lowered.__dict__.setdefault("_kernel_states", {})[key] = state


def _launch(plan: _Plan, run: kernels.Run) -> None:
    """Run one batch (:func:`runtime.kernels.run_batch`) on a working state borrowed from the lowered graph."""
    threads = numba.get_num_threads()
    key, state = _working_state(plan.lowered, plan.net, 1 if run.drive.shape[0] == 1 else threads)
    try:
        kernels.run_batch(plan.net, run, state, threads, plan.one_sample)
    finally:
        _release_state(plan.lowered, key, state)


def _run_batch(plan: _Plan, xb: np.ndarray, start: int, record_flags: np.ndarray, wanted: np.ndarray) -> SimulationResult:
    """One batch: its input drive, the kernels, the recording pass if any, the named results."""
    lo = plan.lowered
    b = xb.shape[0]
    count_nodes = len(lo.names)
    drive = lo.input_drive(xb)
    run = _new_run(plan, drive, plan.per_neuron, np.zeros(count_nodes, np.uint8), np.zeros(b + 1, np.int64),
                   np.zeros((0, 3), np.int32))
    _launch(plan, run)
    events_by_name = _recorded_events(plan, run, drive, start, record_flags, wanted)
    spike_counts, sops_per = _named_counts(lo, run, plan.per_neuron)
    return SimulationResult(
        predictions=run.predictions,
        logits=run.logits,
        spike_counts=spike_counts,
        sops=run.sops.sum(axis=1),
        sops_per_population=sops_per,
        events=events_by_name,
        timesteps=plan.timesteps,
        phases=lo.phases,
        mode=lo.mode,
        populations=_populations(lo),
        ann_macs=lo.ann_macs,
        input_macs=lo.input_macs,
        schedule=plan.schedule,
        initial_potential=lo.initial_potential,
        extra={"deliveries": run.deliveries, "sops_per_period": run.period_sops},
    )


def _recorded_events(plan: _Plan, run: kernels.Run, drive: np.ndarray, start: int, record_flags: np.ndarray,
                     wanted: np.ndarray) -> dict[str, np.ndarray]:
    """The events of the recorded nodes and samples of a batch (rows: global sample, step, natural index).

    A second pass over the recorded samples, with an event buffer of exactly
    the size the first pass (``run``) counted; it must give the same spikes.
    """
    lo = plan.lowered
    events_by_name: dict[str, np.ndarray] = {}
    recorded = [i for i in range(len(lo.names)) if record_flags[i]]
    if recorded and wanted.any():
        rows = np.nonzero(wanted)[0]
        per_sample = run.node_counts[rows][:, recorded].sum(axis=1)
        event_start = np.zeros(rows.size + 1, np.int64)
        np.cumsum(per_sample, out=event_start[1:])
        events = np.zeros((int(event_start[-1]), 3), np.int32)
        again = _new_run(plan, np.ascontiguousarray(drive[rows]), False, record_flags, event_start, events)
        _launch(plan, again)
        _check_recording_pass(run, again, rows, event_start, start)
        sample_of = np.repeat(rows + start, per_sample).astype(np.int32)
        for i in recorded:
            name = lo.names[i]
            mask = events[:, 1] == i
            flat = lo.orders[name][events[mask, 2]]
            events_by_name[name] = np.stack([sample_of[mask], events[mask, 0], flat.astype(np.int32)], axis=1)
    for i in recorded:
        events_by_name.setdefault(lo.names[i], np.zeros((0, 3), np.int32))
    return events_by_name


def _check_recording_pass(run: kernels.Run, again: kernels.Run, rows: np.ndarray, event_start: np.ndarray,
                          start: int) -> None:
    """Refuse a recording pass whose spikes differ from the first pass's (the events would not match the counts)."""
    if np.array_equal(again.event_stop, event_start[1:]) and np.array_equal(again.node_counts, run.node_counts[rows]):
        return
    bad = int(rows[np.argmax((again.event_stop != event_start[1:]) | (again.node_counts != run.node_counts[rows]).any(1))])
    raise BsnnError(
        f"internal error: the recording pass of sample {start + bad} gave other spikes than the first pass "
        "(events would not match the spike counts); please report this with the model"
    )


def _named_counts(lo: LoweredGraph, run: kernels.Run, per_neuron: bool) -> tuple[dict, dict]:
    """(spike counts, SOPs) per spiking node name: int32 (B,) or per neuron (B, *shape) natural layout; int64 (B,)."""
    b = run.drive.shape[0]
    spike_counts, sops_per = {}, {}
    for i, name in enumerate(lo.names):
        if lo.node_table[i, N_KIND] == KIND_OUTPUT:
            continue
        if per_neuron:
            off, size = int(lo.node_table[i, N_SPIKE]), int(lo.node_table[i, N_SIZE])
            block = run.neuron_counts[:, off : off + size]
            shape = lo.shapes[name]
            if len(shape) >= 2:  # internal layout = channels last (lowering.internal_order)
                natural = np.moveaxis(block.reshape((b,) + shape[1:] + shape[:1]), -1, 1)
                spike_counts[name] = np.ascontiguousarray(natural)
            else:
                spike_counts[name] = block.copy().reshape((b,) + shape)
        else:
            spike_counts[name] = run.node_counts[:, i].astype(np.int32)
        sops_per[name] = run.sops[:, i].copy()
    return spike_counts, sops_per


def concatenate_results(parts: list[SimulationResult]) -> SimulationResult:
    """Results of consecutive sample ranges of one run as one result, in sample order."""
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
        timesteps=first.timesteps,
        phases=first.phases,
        mode=first.mode,
        populations=first.populations,
        ann_macs=first.ann_macs,
        input_macs=first.input_macs,
        schedule=first.schedule,
        initial_potential=first.initial_potential,
        extra={
            "deliveries": np.concatenate([p.extra["deliveries"] for p in parts]),
            "sops_per_period": np.concatenate([p.extra["sops_per_period"] for p in parts], axis=1),
        },
    )
