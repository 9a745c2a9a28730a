"""The executable spec: a plain numpy, step-by-step simulation of a converted spiking graph, all four modes.

:func:`reference_simulate` runs a spiking graph (the spiking graph contract
of docs/design.md) exactly as BSNN_SPEC.md words it, one time step at a
time, every neuron of every population, with no lowering, no coalescing and
no Numba: it is what ``runtime.simulate`` is checked against
(tests/test_reference.py), and it needs no torch.

Per step ``t`` (period ``p = t // K``, phase ``k = t % K``) the nodes run in
topological order:

- a linear projection (:data:`bsnn_graph.ops.LINEAR_PROJECTIONS`) applies its
  linear part (its constant terms removed, :func:`without_constants`) to the
  spike values its sources emit in this step (:func:`bsnn_graph.executor.apply_op`);
- a population (or synchronous neuron) adds that current to V, then its
  *constant current* if it integrates in period p
  (:func:`runtime.schedule.integrates`); if it fires in p
  (:func:`runtime.schedule.fires`) and p is within its light cone
  (:func:`runtime.schedule.light_cone`), it bounds V by its ceiling (in the
  bistable modes once, at the first phase of the fire period) and fires
  (:func:`fire`) spikes of value :func:`spike_value`;
- a max gate passes spikes by :func:`bistable_max_gate` (``bsnn``,
  ``bsnn-nosn``) or :func:`rate_max_gate` (``phase``, ``if-rate``);
- the output accumulator integrates like a population and never fires; the
  prediction at step t is the argmax of its V, the logits of period p its V
  at the end of the period.

The constant current of a population or of the output is its input with the
spiking sources silent: ``W' x + b'`` for the analog input x (divided by
``Input.scale``), the biases otherwise, times :func:`constant_current_fraction`
(``1 / K``; 1 in ``if-rate``).

Light cone (the default) or ``full_dynamics=True``: the light cone prunes a
population's fire periods that cannot reach the output by the last step;
predictions and logits are those of the full simulation either way, spike
counts and SOPs are those of the schedule that ran.

SOPs (BSNN_SPEC.md, "Accounting": one per (spike, synapse) pair delivered) are
counted on the spike counts after the run (:func:`synaptic_operations`): the
synapses of a spike are what the linear ops between its population and each
target reach with every weight set to one, counted through each op of the
path (a spike that an overlapping average pool sends to two pooled positions
before a Gemm reaches the Gemm's outputs twice). ``runtime.simulate`` counts
the same, except where its lowering fuses a stride-1 convolution with the
average pool after it into one convolution: there it counts the fused
kernel's synapses (tests/test_reference.py marks the difference).

Rules the spec states that :mod:`runtime.schedule` does not hold (yet) are
here: :func:`spike_value`, :func:`constant_current_fraction`, :func:`fire`,
:func:`apply_ceiling` and the two max-gate rules; :mod:`runtime.oracle` uses
:func:`fire` and :func:`apply_ceiling`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import networkx as nx
import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.errors import BsnnError, DataError, ModelError
from bsnn_graph.executor import apply_op, conv_nd, sliding_windows

from . import schedule
from .schedule import (
    MODE_CODES,
    constant_current_fraction,
    fires,
    initial_potential,
    integrates,
    light_cone,
    periods_of,
)

__all__ = [
    "ReferenceResult",
    "apply_ceiling",
    "bistable_max_gate",
    "constant_current_fraction",
    "fire",
    "rate_max_gate",
    "reference_simulate",
    "spike_value",
    "synaptic_operations",
    "with_unit_weights",
    "without_constants",
]

BISTABLE_MODES = schedule.BISTABLE_MODES


@dataclass
class ReferenceResult:
    """What a reference simulation produced (N samples, T steps, P = ceil(T / K) periods)."""

    predictions: np.ndarray  # int32 (T, N): argmax of the output V at every step (ties: lowest index)
    logits: np.ndarray  # float32 (P, N, classes): output V at the end of each period (or at step T - 1)
    spike_counts: dict[str, np.ndarray]  # spiking node -> int32 (N,) spikes per sample
    neuron_spike_counts: dict[str, np.ndarray]  # spiking node -> int32 (N, *shape) spikes per neuron
    sops: np.ndarray  # int64 (N,) synaptic operations per sample
    sops_per_population: dict[str, np.ndarray]  # spiking node -> int64 (N,) SOPs of its spikes
    timesteps: int
    phases: int
    mode: str
    schedule: str  # "light-cone" or "full"


# --------------------------------------------------------------------------- the neuron rules


def spike_value(mode: str, threshold: float, phase: int) -> np.float32:
    """Value of a spike at phase k (``schedule.spike_value``, by mode name): ``theta 2^-(k+1)``, ``theta`` in
    ``if-rate``; float32."""
    return np.float32(schedule.spike_value(schedule.MODE_CODES[mode], np.float32(threshold), phase))


def fire(potential: np.ndarray, value: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Reset-by-subtraction firing: a neuron spikes iff ``V >= value``, and then V loses ``value``.

    Returns (spikes: bool, the potential after firing), float32, exact comparisons.
    """
    spikes = potential >= value
    return spikes, np.where(spikes, potential - value, potential)


def apply_ceiling(population: O.Population, potential: np.ndarray) -> np.ndarray:
    """``min(V, ceiling)`` of a population with a ceiling (Clip / ReLU6; one value or one per channel), else V.

    ``potential`` is batched: (N, *shape); a per-channel ceiling bounds axis 1.
    """
    ceiling = np.asarray(getattr(population, "ceiling", np.inf), np.float32)
    if not np.any(np.isfinite(ceiling)):
        return potential
    if ceiling.ndim == 1:
        ceiling = ceiling.reshape((1, -1) + (1,) * (potential.ndim - 2))
    return np.minimum(potential, ceiling).astype(np.float32)


def bistable_max_gate(candidates: np.ndarray, member_spikes: np.ndarray) -> np.ndarray:
    """One phase of the bistable max gate (``bsnn``, ``bsnn-nosn``); updates ``candidates`` in place.

    Parameters
    ----------
    candidates : bool (..., window): members still candidates in this fire
        period (all True at its first phase).
    member_spikes : bool (..., window): which window members spike now.

    Returns
    -------
    bool (...): an output spikes iff a candidate spikes; where it does, the
    candidates that did not spike drop out.
    """
    hits = candidates & member_spikes
    out = hits.any(axis=-1)
    candidates[...] = np.where(out[..., None], hits, candidates)
    return out


def rate_max_gate(member_emitted: np.ndarray, member_spikes: np.ndarray) -> np.ndarray:
    """One step of the rate max gate (``phase``, ``if-rate``): the spikes of the member that emitted most.

    ``member_emitted`` float32 (..., window): value each member emitted so far,
    this step included (padding: -inf); ``member_spikes`` bool (..., window).
    The largest member wins, ties to the lowest index (Rueckauer et al. 2017).
    """
    best = member_emitted.argmax(axis=-1)[..., None]  # argmax: the first maximum
    return np.take_along_axis(member_spikes, best, axis=-1)[..., 0]


def _windows(op: O.MaxGate | O.AveragePool, x: np.ndarray, fill) -> np.ndarray:
    """The windows of a 2-d window op over ``x`` (N, C, H, W) as (N, C, OH, OW, kh * kw), padding ``fill``."""
    spatial = x.ndim - 2
    strides = tuple(op.strides) or (1,) * spatial
    pads = tuple(op.pads) or (0,) * (2 * spatial)
    dilations = tuple(op.dilations or ()) or (1,) * spatial
    win, _, _ = sliding_windows(x, op.kernel_shape, strides, pads, dilations, bool(op.ceil_mode), fill)
    return win.reshape(win.shape[: 2 + spatial] + (-1,))


# --------------------------------------------------------------------------- the linear projections


def without_constants(op: O.Op) -> O.Op:
    """The linear part of a linear projection: biases, added constants and the pad value removed."""
    if isinstance(op, (O.Conv, O.Gemm)) and op.bias is not None:
        return dataclasses.replace(op, bias=None)
    if isinstance(op, O.Add) and op.constant is not None:
        return O.Identity()
    if isinstance(op, O.Pad):
        return dataclasses.replace(op, value=0.0)
    return op


def with_unit_weights(op: O.Op, args: list[np.ndarray]) -> np.ndarray:
    """A linear projection with every weight one and no constant, applied to nonnegative ``args``.

    Applied to spike counts it counts the synapses the spikes reach through the op
    (average pooling: a window sum; global average pooling: a sum). A Conv's
    output is float32 (:func:`bsnn_graph.executor.conv_nd`): exact for integers below 2^24.
    """
    op = without_constants(op)
    if isinstance(op, O.Conv):
        return conv_nd(args[0], np.ones_like(op.weight), None, op.strides, op.pads, op.dilations, op.group)
    if isinstance(op, (O.Gemm, O.MatMul)):
        return apply_op(dataclasses.replace(op, weight=np.ones_like(op.weight)), args)
    if isinstance(op, O.Mul):
        return apply_op(dataclasses.replace(op, constant=np.ones_like(op.constant)), args)
    if isinstance(op, O.AveragePool):
        return _windows(op, args[0], 0.0).sum(axis=-1)
    if isinstance(op, O.GlobalAveragePool):
        return args[0].sum(axis=tuple(range(2, args[0].ndim)), keepdims=True)
    return apply_op(op, args)  # moves values (Flatten, Reshape, Transpose, Concat, Pad) or sums them (Add, Sum)


def _linear(graph: nx.DiGraph, name: str, args: list[np.ndarray | None], rule) -> np.ndarray | None:
    """Linear projection ``name`` through ``rule(op, args)`` (None if every input is silent; a silent one is zero)."""
    present = [a for a in args if a is not None]
    if not present:
        return None
    samples = present[0].shape[0]
    full = [np.zeros((samples,) + tuple(ir.shape_of(graph, s)), present[0].dtype) if a is None else a
            for a, s in zip(args, ir.inputs_of(graph, name))]  # fmt: skip
    return rule(ir.op_of(graph, name), full)


def _propagate(graph: nx.DiGraph, order: list[str], sources: dict[str, np.ndarray], rule) -> dict[str, list]:
    """The inputs of every non-linear node when the sources (input, spiking nodes) emit ``sources``.

    A source missing from ``sources`` is silent; ``rule(op, args)`` applies a
    linear projection. Returns node -> its input tensors in input order
    (None where silent), for the populations, max gates and the output.
    """
    values: dict[str, np.ndarray | None] = {}
    inputs: dict[str, list] = {}
    for name in order:
        args = [values[s] for s in ir.inputs_of(graph, name)]
        if isinstance(ir.op_of(graph, name), O.LINEAR_PROJECTIONS):
            values[name] = _linear(graph, name, args, rule)
        else:
            inputs[name] = args
            values[name] = sources.get(name)
    return inputs


def _linear_part(op: O.Op, args: list[np.ndarray]) -> np.ndarray:
    """A projection's linear part (:func:`without_constants`) on spike values, float32."""
    return np.asarray(apply_op(without_constants(op), args), np.float32)


def _total(args: list[np.ndarray | None]) -> np.ndarray | None:
    """The sum of a node's inputs in input order (None: no input)."""
    total = None
    for a in args:
        if a is not None:
            total = a if total is None else total + a
    return total


# --------------------------------------------------------------------------- the network


@dataclass
class _Network:
    """A spiking graph's nodes as the simulation visits them."""

    order: list[str]  # every node, topological
    input: str  # the analog input
    output: str  # the output accumulator
    spiking: list[str]  # populations, synchronous neurons, max gates (topological)
    mode: str
    phases: int

    @staticmethod
    def of(graph: nx.DiGraph) -> _Network:
        """Classify the nodes; refuses a graph outside the spiking graph contract (naming the node and op)."""
        order = ir.topological_order(graph)
        kinds: dict[str, list[str]] = {"input": [], "output": [], "spiking": []}
        for name in order:
            op = ir.op_of(graph, name)
            if isinstance(op, O.Input):
                kinds["input"].append(name)
            elif isinstance(op, O.OutputAccumulator):
                kinds["output"].append(name)
            elif isinstance(op, (O.Population, O.MaxGate)):
                kinds["spiking"].append(name)
            elif not isinstance(op, O.LINEAR_PROJECTIONS):
                raise ModelError(f"node {name!r} ({op.op_type}): not a linear projection of the spiking graph contract")
        if len(kinds["input"]) != 1 or len(kinds["output"]) != 1:
            raise ModelError(f"a spiking graph has one Input and one OutputAccumulator, this one has "
                             f"{kinds['input']} and {kinds['output']}")  # fmt: skip
        spiking_ops = [ir.op_of(graph, n) for n in kinds["spiking"] + kinds["output"]]
        modes, phases = {op.mode for op in spiking_ops}, {int(op.phases) for op in spiking_ops}
        if len(modes) != 1 or len(phases) != 1 or next(iter(modes)) not in MODE_CODES:
            raise ModelError(f"spiking nodes disagree on the mode or the phases K: {sorted(modes)}, {sorted(phases)}")
        return _Network(order, kinds["input"][0], kinds["output"][0], kinds["spiking"], modes.pop(), phases.pop())

    def last_fire(self, graph: nx.DiGraph, timesteps: int, full_dynamics: bool) -> dict[str, int]:
        """The light cone (:func:`runtime.schedule.light_cone`): the last period each spiking node fires in."""
        names = self.spiking + [self.output]
        index = {name: i for i, name in enumerate(names)}
        targets = [
            sorted(index[t] for t in ir.walk_until(graph, ir.consumers(graph, name), (O.Population, O.MaxGate,
                                                                                       O.OutputAccumulator), True))
            for name in names
        ]  # fmt: skip
        last = light_cone(
            self.mode,
            periods_of(timesteps, self.phases),
            np.array([ir.op_of(graph, n).stage for n in names]),
            np.array([isinstance(ir.op_of(graph, n), O.Population) for n in names]),
            targets,
            index[self.output],
            full_dynamics,
        )
        return {name: int(last[index[name]]) for name in names}


# --------------------------------------------------------------------------- the simulation


class _Simulation:
    """The state of one reference run: membrane potentials, gate state, counters, outputs."""

    def __init__(self, graph: nx.DiGraph, network: _Network, x: np.ndarray, timesteps: int, full_dynamics: bool):
        self.graph, self.net, self.timesteps = graph, network, timesteps
        self.mode, self.code, self.phases = network.mode, MODE_CODES[network.mode], network.phases
        self.bistable = network.mode in BISTABLE_MODES
        n = x.shape[0]
        self.last = network.last_fire(graph, timesteps, full_dynamics)
        self.constant = self._constant_currents(x)
        self.potential = self._initial_potentials(n)
        self.counts = {name: np.zeros((n,) + self._shape(name), np.int32) for name in network.spiking}
        # a max gate: its source population, whose threshold its spikes carry
        self.source = {g: ir.inputs_of(graph, g)[0] for g in network.spiking if isinstance(ir.op_of(graph, g), O.MaxGate)}
        self.threshold = {name: ir.op_of(graph, self.source.get(name, name)).threshold for name in network.spiking}
        self.candidates: dict[str, np.ndarray] = {}  # bistable gates: bool (N, C, OH, OW, window)
        self.emitted: dict[str, np.ndarray] = {}  # rate modes: value each gate source emitted so far
        for gate, source in self.source.items():
            if self.bistable:
                self.candidates[gate] = np.ones(_windows(ir.op_of(graph, gate), self.counts[source], 0).shape, bool)
            else:
                self.emitted[source] = np.zeros((n,) + self._shape(source), np.float32)
        classes = int(np.prod(self._shape(network.output)))
        self.predictions = np.zeros((timesteps, n), np.int32)
        self.logits = np.zeros((periods_of(timesteps, self.phases), n, classes), np.float32)

    def _initial_potentials(self, n: int) -> dict[str, np.ndarray]:
        """V of every population at its initial potential (:func:`runtime.schedule.initial_potential`), the output's 0."""
        potential = {self.net.output: np.zeros((n,) + self._shape(self.net.output), np.float32)}
        for name in self.net.spiking:
            op = ir.op_of(self.graph, name)
            if isinstance(op, O.Population):
                v0 = initial_potential(self.mode, self.phases, op.threshold, op.initial_potential)
                potential[name] = np.full((n,) + self._shape(name), v0, np.float32)
        return potential

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(ir.shape_of(self.graph, name))

    def _constant_currents(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Per-step constant current of each population and the output: its input with the spikes silent, x fed."""
        def affine(op, args):
            return np.asarray(apply_op(op, args), np.float32)

        silent = {name: np.zeros((x.shape[0],) + self._shape(name), np.float32) for name in self.net.spiking}
        inputs = _propagate(self.graph, self.net.order, {self.net.input: x, **silent}, affine)
        fraction = constant_current_fraction(self.mode, self.phases)
        return {name: _total(args) * fraction for name, args in inputs.items()
                if isinstance(ir.op_of(self.graph, name), (O.Population, O.OutputAccumulator))}  # fmt: skip

    def step(self, t: int) -> None:
        """Time step t: every node in topological order (a node's sources have emitted their spikes of step t)."""
        p, k = divmod(t, self.phases)
        values: dict[str, np.ndarray | None] = {}  # spike values of this step (None: silent)
        spikes: dict[str, np.ndarray | None] = {}  # bool spikes of this step (None: silent)
        for name in self.net.order:
            op = ir.op_of(self.graph, name)
            args = [values[s] for s in ir.inputs_of(self.graph, name)]
            if isinstance(op, O.Input):  # its drive is in the constant current
                values[name] = None
            elif isinstance(op, O.LINEAR_PROJECTIONS):
                values[name] = _linear(self.graph, name, args, _linear_part)
            elif isinstance(op, O.OutputAccumulator):
                self._output_step(name, op, _total(args), t, p, k)
            else:
                if isinstance(op, O.MaxGate):
                    spikes[name] = self._gate_step(name, op, spikes[self.source[name]], p, k)
                else:
                    spikes[name] = self._population_step(name, op, _total(args), p, k)
                values[name] = self._emit(name, spikes[name], k)

    def _emit(self, name: str, spikes: np.ndarray | None, k: int) -> np.ndarray | None:
        """Count a spiking node's spikes of phase k and return their values (float32, 0 where silent)."""
        if spikes is None:
            return None
        values = np.where(spikes, spike_value(self.mode, self.threshold[name], k), np.float32(0.0))
        self.counts[name] += spikes
        if name in self.emitted:
            self.emitted[name] = self.emitted[name] + values
        return values

    def _integrate(self, name: str, op, current: np.ndarray | None, p: int) -> np.ndarray:
        """V += this step's current from spikes, then the constant current if the node integrates in period p."""
        v = self.potential[name]
        if current is not None:
            v = v + current
        if integrates(self.code, op.stage, p):
            v = v + self.constant[name]
        self.potential[name] = v
        return v

    def _population_step(self, name: str, op: O.Population, current, p: int, k: int) -> np.ndarray | None:
        """Integrate, then fire if the population fires in period p and p is in its light cone; bool spikes."""
        v = self._integrate(name, op, current, p)
        if not (fires(self.code, op.stage, p) and p <= self.last[name]):
            return None
        if not self.bistable or k == 0:  # bistable: the ceiling applies once the integrate period is over
            v = apply_ceiling(op, v)
        fired, self.potential[name] = fire(v, spike_value(self.mode, op.threshold, k))
        return fired

    def _gate_step(self, name: str, op: O.MaxGate, source_spikes, p: int, k: int) -> np.ndarray | None:
        """A max gate's spikes (bool (N, C, OH, OW)) in step t, or None when it is silent."""
        if not (fires(self.code, op.stage, p) and p <= self.last[name]):
            return None
        if self.bistable and k == 0:
            self.candidates[name][...] = True  # a fire period starts: every member is a candidate
        if source_spikes is None:
            return None
        members = _windows(op, source_spikes, False)
        if self.bistable:
            return bistable_max_gate(self.candidates[name], members)
        emitted = self.emitted[self.source[name]]
        return rate_max_gate(_windows(op, emitted, -np.inf), members)

    def _output_step(self, name: str, op: O.OutputAccumulator, current, t: int, p: int, k: int) -> None:
        """The output integrates (never fires); prediction at every step, logits at the end of each period."""
        v = self._integrate(name, op, current, p)
        v = v.reshape(v.shape[0], -1)
        self.predictions[t] = v.argmax(axis=1)
        if k == self.phases - 1 or t == self.timesteps - 1:
            self.logits[p] = v


def synaptic_operations(graph: nx.DiGraph, neuron_counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """SOPs caused by each spiking node's spikes, per sample: int64 (N,) per node.

    One SOP per (spike, synapse) pair: the spike counts of one node, put
    through the linear ops to every population and the output with unit
    weights (:func:`with_unit_weights`), summed over the targets' neurons.
    A max gate reads its population directly (no synapse).
    """
    order = ir.topological_order(graph)
    out = {}
    for name, counts in neuron_counts.items():
        inputs = _propagate(graph, order, {name: counts.astype(np.float64)}, with_unit_weights)
        total = np.zeros(counts.shape[0], np.int64)
        for target, args in inputs.items():
            if isinstance(ir.op_of(graph, target), (O.Population, O.OutputAccumulator)):
                for a in args:
                    if a is not None:
                        total += np.rint(a.reshape(a.shape[0], -1).sum(axis=1, dtype=np.float64)).astype(np.int64)
        out[name] = total
    return out


def _checked_input(graph: nx.DiGraph, network: _Network, x) -> np.ndarray:
    """x as float32 (N, *input_shape), divided by the input's lambda (``Input.scale``)."""
    x = np.asarray(x, np.float32)
    shape = tuple(ir.shape_of(graph, network.input))
    if x.shape == shape:
        x = x[None]
    if x.shape[1:] != shape or x.shape[0] == 0:
        raise DataError(f"input of shape {x.shape} does not fit graph input {network.input!r}: expected (N, {shape})")
    scale = np.float32(np.asarray(ir.op_of(graph, network.input).scale))
    return x / scale if scale != 1 else x


def reference_simulate(graph: nx.DiGraph, x: np.ndarray, timesteps: int, full_dynamics: bool = False) -> ReferenceResult:
    """Simulate a spiking graph step by step in plain numpy, exactly as BSNN_SPEC.md defines its mode.

    Parameters
    ----------
    graph : a spiking IR graph (modes ``bsnn``, ``bsnn-nosn``, ``phase``, ``if-rate``).
    x : float array (N, *input_shape) (one sample without the batch axis is accepted).
    timesteps : T >= 1.
    full_dynamics : False (default): the light-cone schedule, as ``runtime.simulate``; True: every period.

    Returns
    -------
    ReferenceResult

    Raises
    ------
    ModelError
        if the graph is not a spiking graph (names the node and op).
    DataError
        if ``x`` does not fit the graph input.
    """
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise BsnnError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    network = _Network.of(graph)
    x = _checked_input(graph, network, x)
    run = _Simulation(graph, network, x, int(timesteps), full_dynamics)
    for t in range(int(timesteps)):
        run.step(t)
    sops = synaptic_operations(graph, run.counts)
    return ReferenceResult(
        predictions=run.predictions,
        logits=run.logits,
        spike_counts={k: c.reshape(c.shape[0], -1).sum(axis=1).astype(np.int32) for k, c in run.counts.items()},
        neuron_spike_counts=run.counts,
        sops=sum(sops.values(), np.zeros(x.shape[0], np.int64)),
        sops_per_population=sops,
        timesteps=int(timesteps),
        phases=network.phases,
        mode=network.mode,
        schedule="full" if full_dynamics else "light-cone",  # schedule.SCHEDULES
    )
