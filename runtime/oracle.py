"""Exactness oracle of the bistable mode: a dense per-period evaluation in plain numpy.

In mode ``bsnn`` the network is a K-bit quantised ANN evaluated once per
period with the residual carried (BSNN_SPEC.md, "Exactness oracle"): in its
m-th fire period a population emits ``Q_K(V)`` with
``V = min(residual + W' q + b', ceiling)`` (the residual starts at the
population's initial potential, :func:`runtime.schedule.initial_potential`;
the ceiling is infinite unless the population has one), where ``q`` are the values its sources emitted
in their m-th fire period (the analog input: ``x``), ``Q_K`` is the MSB-first
greedy binary expansion to K bits (phase weights ``2^-(k+1)`` times the
threshold) and the residual is ``V - Q_K(V)``. A max gate emits the max of
its window's K-bit values, a synchronous neuron re-emits its source's value,
the output accumulates ``W' q + b'`` once per wave.

The linear projections are evaluated with the reference executor
(:mod:`bsnn_graph.executor`), independently of the runtime's lowering. The
neuron rules (fire, ceiling, spike value) are those of the step-by-step
reference simulator (:mod:`runtime.reference`), which this oracle evaluates
one wave at a time.

- :func:`dense_bsnn` runs the waves free (the oracle's own values feed the next layer);
- :func:`teacher_forced_check` checks an event-driven run layer by layer: each
  population's emitted values must equal ``Q_K`` of the V computed from the
  *run's* source values; a difference is accepted only as a float32 tie (a
  threshold comparison the two summation orders can decide differently),
  and is counted;
- :func:`emitted_per_wave` turns a run's spike events into per-wave values.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.executor import apply_op, pool_nd

from .reference import apply_ceiling, fire, spike_value
from .schedule import fire_period, initial_potential

__all__ = ["OracleResult", "WaveCheck", "dense_bsnn", "emitted_per_wave", "quantise", "teacher_forced_check"]


@dataclass
class OracleResult:
    """Per-wave values of a dense bistable evaluation (M waves, N samples)."""

    values: dict[str, np.ndarray]  # spiking node -> float32 (M, N, *shape) value emitted in its m-th fire period
    logits: np.ndarray  # float32 (M, N, classes): output V after its m-th integrate period


@dataclass
class WaveCheck:
    """Comparison of one population's emitted values with the oracle."""

    neuron_periods: int  # neurons x samples x waves compared
    mismatches: int  # how many differ
    ties: int  # how many of those are float32 ties (within ``tolerance`` of a threshold)

    @property
    def unexplained(self) -> int:
        return self.mismatches - self.ties


def quantise(v: np.ndarray, phases: int, threshold: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``Q_K(V)`` as a bistable fire period computes it, and the smallest |V_k - threshold_k| met.

    Greedy MSB first in float32: the K phases of a bistable fire period, each
    the reference's fire rule (:func:`runtime.reference.fire`: if
    ``V >= threshold 2^-(k+1)`` emit that value and subtract it). Returns
    (emitted values, margin).
    """
    rest = np.asarray(v, np.float32).copy()
    emitted = np.zeros_like(rest)
    margin = np.full(rest.shape, np.inf, np.float32)
    for k in range(phases):
        w = spike_value("bsnn", threshold, k)
        margin = np.minimum(margin, np.abs(rest - w))
        fired, rest = fire(rest, w)
        emitted = np.where(fired, emitted + w, emitted)
    return emitted, margin


def _waves(graph: nx.DiGraph, x: np.ndarray, waves: int, forced: dict[str, np.ndarray] | None):
    order = ir.topological_order(graph)
    phases = next(ir.op_of(graph, n).phases for n in order if isinstance(ir.op_of(graph, n), O.OutputAccumulator))
    residual: dict[str, np.ndarray] = {}
    values: dict[str, list[np.ndarray]] = {}
    margins: dict[str, list[np.ndarray]] = {}
    logits: list[np.ndarray] = []
    accumulated = None
    x = np.asarray(x, np.float32)
    for m in range(waves):
        current: dict[str, np.ndarray] = {}
        for name in order:
            op = ir.op_of(graph, name)
            args = [current[s] for s in ir.inputs_of(graph, name)]
            if isinstance(op, O.Input):
                current[name] = x
            elif isinstance(op, O.Population):  # includes SynchronousNeuron
                pre = args[0]
                for a in args[1:]:
                    pre = pre + a
                if name not in residual:
                    v0 = initial_potential(op.mode, op.phases, op.threshold, op.initial_potential)
                    residual[name] = np.full(pre.shape, v0, np.float32)
                v = apply_ceiling(op, residual[name] + pre)
                q, margin = quantise(v, phases, op.threshold)
                values.setdefault(name, []).append(q)
                margins.setdefault(name, []).append(margin)
                used = forced[name][m].reshape(q.shape).astype(np.float32) if forced is not None else q
                residual[name] = v - used
                current[name] = used
            elif isinstance(op, O.MaxGate):
                q = pool_nd(args[0], op)
                values.setdefault(name, []).append(q)
                margins.setdefault(name, []).append(np.full(q.shape, np.inf, np.float32))
                current[name] = forced[name][m].reshape(q.shape).astype(np.float32) if forced is not None else q
            elif isinstance(op, O.OutputAccumulator):
                accumulated = args[0] if accumulated is None else accumulated + args[0]
                logits.append(accumulated.reshape(accumulated.shape[0], -1).copy())
                current[name] = accumulated
            else:
                current[name] = np.asarray(apply_op(op, args), np.float32)
    stacked = {k: np.stack(v) for k, v in values.items()}
    stacked_margins = {k: np.stack(v) for k, v in margins.items()}
    return stacked, stacked_margins, np.stack(logits)


def dense_bsnn(graph: nx.DiGraph, x: np.ndarray, periods: int) -> OracleResult:
    """Dense per-period evaluation of a ``bsnn`` graph for ``periods`` waves.

    Parameters
    ----------
    graph : a spiking graph (mode ``bsnn``; every population's sources one stage earlier).
    x : float32 (N, *input_shape).
    periods : number of waves M; wave m of a population of stage s is its
        fire period ``s + 2m``.

    Returns
    -------
    OracleResult
    """
    values, _, logits = _waves(graph, x, periods, None)
    return OracleResult(values=values, logits=logits)


def teacher_forced_check(
    graph: nx.DiGraph, x: np.ndarray, emitted: dict[str, np.ndarray], tolerance: float = 2e-5
) -> tuple[dict[str, WaveCheck], np.ndarray]:
    """Check an event-driven run wave by wave against ``Q_K(V)`` computed from the run's own source values.

    Parameters
    ----------
    graph : the spiking graph that was run (mode ``bsnn``).
    x : its inputs, float32 (N, *input_shape).
    emitted : spiking node -> (M, N, *shape) values the run emitted per wave
        (see :func:`emitted_per_wave`), for every spiking node.
    tolerance : a mismatch counts as a float32 tie when a threshold
        comparison of the greedy expansion was closer than this.

    Returns
    -------
    (checks, logits) : per spiking node a :class:`WaveCheck`; and the output
        V after each wave (M, N, classes) computed from the run's values.
    """
    waves = next(iter(emitted.values())).shape[0]
    values, margins, logits = _waves(graph, x, waves, emitted)
    checks = {}
    for name, expected in values.items():
        got = emitted[name].reshape(expected.shape)
        differ = got != expected
        ties = differ & (margins[name] < tolerance)
        checks[name] = WaveCheck(int(expected.size), int(differ.sum()), int(ties.sum()))
    return checks, logits


def emitted_per_wave(result, graph: nx.DiGraph, name: str, waves: int) -> np.ndarray:
    """Values a ``bsnn`` run emitted per wave for node ``name``: float32 (waves, N, *shape).

    ``result`` must have recorded ``name`` for all its samples. A spike outside
    the node's fire periods (``p = stage + 2m``) raises ``AssertionError``.
    """
    op = ir.op_of(graph, name)
    shape = tuple(ir.shape_of(graph, name))
    threshold = op.threshold if isinstance(op, O.Population) else ir.op_of(graph, ir.inputs_of(graph, name)[0]).threshold
    k_phases = op.phases
    n = result.predictions.shape[1]
    out = np.zeros((waves, n, int(np.prod(shape))), np.float32)
    events = result.events[name]
    if len(events):
        sample, step, neuron = events[:, 0], events[:, 1], events[:, 2]
        period, phase = step // k_phases, step % k_phases
        wave = (period - op.stage) // 2
        assert np.all(fire_period(op.stage, wave) == period) and np.all(wave >= 0), f"{name}: spike outside a fire period"
        keep = wave < waves
        value = np.array([spike_value(op.mode, threshold, k) for k in range(k_phases)], np.float32)[phase]
        np.add.at(out, (wave[keep], sample[keep], neuron[keep]), value[keep])
    return out.reshape((waves, n) + shape)
