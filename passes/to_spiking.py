"""to_spiking: replace the normalised ANN's non-linearities by spiking ops (domain ai.bsnn).

Before / After:
- ``Relu(x)`` -> ``Population(x)`` with ``scale`` = its lambda (from
  normalise), threshold 1; the node keeps its name.
- ``Clip(x, 0, c)`` (ReLU6: c = 6) -> ``Population(x)`` with ``scale`` =
  lambda and ``ceiling`` = ``c / lambda`` (normalise has put the bound in
  these units): after each integrate period ``V = min(V, ceiling)``, which
  is exactly ``clip(x, 0, c) / lambda`` as an ANN.
- ``Relu(Add(a, b))`` where the ReLU alone reads the Add (a residual merge)
  -> one ``Population(a, b)`` that sums its two inputs; the Add disappears.
- ``MaxPool(p)`` with ``p`` a Population / SynchronousNeuron -> ``MaxGate(p)``
  with the same window (MaxPool after ReLU is arranged by canonicalise).
- the graph output ``y`` (the last linear layer, no ReLU) -> ``y`` feeds a
  new ``OutputAccumulator`` that takes over the output's name (the linear
  node is renamed ``<name>_current``); its ``scale`` is the unit of the
  logits (1: normalise keeps them in ANN units).
Every spiking op gets ``mode`` (bsnn, bsnn-nosn, phase, if-rate) and
``phases`` (K, 1..16), every population its ``initial_potential``
(``half``, the default: rounding; or ``zero``: truncation; BSNN_SPEC.md);
metadata ``bsnn.mode``, ``bsnn.phases`` and ``bsnn.initial_potential``.
Stages are set as in ``bsnn-nosn`` (1 + the largest source stage);
synchronise fixes them (and inserts SNs) for ``bsnn``.

Refusal (one ConversionError naming the first offending node and then
every other one, with op and reason; nothing else happens): anything but
a linear projection (Conv, Gemm, AveragePool, GlobalAveragePool, Flatten,
Reshape, Add, Sum, Mul by a constant, Concat, Pad with 0, Transpose
keeping the batch axis) left between spiking nodes -- e.g. a ``Clip``
whose minimum is not 0, ``Softmax`` inside the network, a ``Sub`` / ``Div`` of input
normalisation that could not be folded, a ``MaxPool`` not reading a
population (e.g. on the analog input or after a residual Add with no ReLU),
more than one graph output, or a graph that was not normalised.
:func:`check_convertible` runs the same op checks on an un-normalised ANN,
so that :func:`passes.convert` fails before calibrating.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O

from ._infra import Pass, is_population_activation, merge_add, refuse
from .normalise import read_scales

__all__ = ["LINEAR", "SPIKING", "check_convertible", "compute_stages", "spiking_sources", "to_spiking"]

SPIKING = O.SPIKING_SOURCES
LINEAR = O.LINEAR_PROJECTIONS


def _linear_problem(graph: nx.DiGraph, name: str, op: O.Op) -> str | None:
    """Why ``op`` cannot sit between spiking nodes, or None if it can."""
    if isinstance(op, O.Pad):
        if op.mode != "constant" or op.value != 0:
            return f"Pad in mode {op.mode!r} with value {op.value} (only constant 0 padding is linear)"
        return None
    if isinstance(op, O.Mul):
        return None
    if isinstance(op, LINEAR):
        return None
    if isinstance(op, O.Clip):
        return (
            f"Clip(min={op.min}, max={op.max}) is not supported between layers: a population is "
            "Clip(0, c) with c > 0 (ReLU, ReLU6) only"
        )
    if isinstance(op, O.Softmax):
        return f"{op.op_type} inside the network is not supported (only a trailing output Softmax is removed)"
    if isinstance(op, (O.Sub, O.Div)):
        return (
            f"{op.op_type} by a constant could not be folded into a linear layer "
            "(only input normalisation right before a Conv/Gemm is folded)"
        )
    if isinstance(op, O.MatMul):
        return "MatMul on a multi-dimensional input per sample is not supported"
    if isinstance(op, O.BatchNormalization):
        return "BatchNormalization must be folded first"
    return f"{op.op_type} has no spiking equivalent"


def check_convertible(graph: nx.DiGraph) -> None:
    """Refuse (one NodeRefusal) every node of an ANN graph to_spiking could not convert.

    The refusal names the first offending node (``node``, ``op_type``) and
    its reason, then every other offending node with its op and reason, in
    topological order, so a user sees all of them at once.
    """
    if len(graph.graph["outputs"]) != 1:
        refuse(graph, None, f"the graph must have exactly one output, has {graph.graph['outputs']}")
    problems: list[tuple[str, str]] = []
    for name in ir.topological_order(graph):
        op = ir.op_of(graph, name)
        if isinstance(op, (O.Input, O.Dropout, O.Identity, SPIKING)) or is_population_activation(op):
            continue
        if isinstance(op, O.MaxPool):
            (src,) = ir.inputs_of(graph, name)
            src_op = ir.op_of(graph, src)
            if not (isinstance(src_op, O.Population) or is_population_activation(src_op)):
                problems.append((name, f"MaxPool must read a ReLU population, reads {src!r} ({src_op.op_type})"))
            continue
        if isinstance(op, O.OutputAccumulator):
            continue
        problem = _linear_problem(graph, name, op)
        if problem is not None:
            problems.append((name, problem))
    if not problems:
        return
    (first, reason), others = problems[0], problems[1:]
    if others:
        listed = "; ".join(f"{n!r} ({ir.op_of(graph, n).op_type}): {r}" for n, r in others)
        reason = f"{reason}; and {len(others)} more node(s) that cannot be converted: {listed}"
    refuse(graph, first, reason)


def spiking_sources(graph: nx.DiGraph, name: str) -> list[str]:
    """The spiking nodes whose output reaches ``name`` through linear projections only (in order)."""
    return ir.walk_until(graph, ir.inputs_of(graph, name), SPIKING, forward=False)


def compute_stages(graph: nx.DiGraph) -> int:
    """Set ``stage`` on every spiking op, ``bsnn-nosn`` rule; returns L (the largest population stage)."""
    stage: dict[str, int] = {}
    accumulators = []
    for name in ir.topological_order(graph):
        op = ir.op_of(graph, name)
        if isinstance(op, O.Input):
            stage[name] = 0
        elif isinstance(op, O.MaxGate):
            stage[name] = stage[ir.inputs_of(graph, name)[0]]
            op.stage = stage[name]
        elif isinstance(op, O.Population):
            stage[name] = 1 + max(stage[s] for s in spiking_sources(graph, name))
            op.stage = stage[name]
        elif isinstance(op, O.OutputAccumulator):
            accumulators.append(op)
    populations = [s for n, s in stage.items() if isinstance(ir.op_of(graph, n), O.Population)]
    top = max(populations, default=0)
    for op in accumulators:
        op.stage = top + 1
    return top


def _check_options(graph: nx.DiGraph, mode: str, phases, initial_potential: str) -> None:
    if mode not in O.MODES:
        refuse(graph, None, f"mode {mode!r} is not one of {', '.join(O.MODES)}")
    if initial_potential not in O.INITIAL_POTENTIALS:
        refuse(graph, None, f"initial potential {initial_potential!r} is not one of {', '.join(O.INITIAL_POTENTIALS)}")
    if not (isinstance(phases, (int, np.integer)) and 1 <= phases <= 16):
        refuse(graph, None, f"phases (K) must be an integer in 1..16, got {phases!r}")


def _to_population(graph: nx.DiGraph, name: str, op: O.Op, scale: np.ndarray, **spiking) -> None:
    """The ReLU / Clip(0, c) ``name`` (with the merge Add it alone reads) -> one Population."""
    add = merge_add(graph, name)
    inputs = ir.inputs_of(graph, add) if add is not None else ir.inputs_of(graph, name)
    ceiling = np.full((), np.inf, np.float32)
    if isinstance(op, O.Clip):  # ReLU6: normalise made the bound c / lambda
        ceiling = np.asarray(op.max, np.float32)
    graph.nodes[name]["op"] = O.Population(scale=scale.astype(np.float32), ceiling=ceiling, **spiking)
    ir.set_inputs(graph, name, inputs)
    if add is not None:
        ir.remove_node(graph, add)


def _to_max_gate(graph: nx.DiGraph, name: str, op: O.MaxPool, mode: str, phases: int) -> None:
    graph.nodes[name]["op"] = O.MaxGate(
        mode=mode,
        phases=phases,
        kernel_shape=tuple(op.kernel_shape),
        strides=tuple(op.strides),
        pads=tuple(op.pads),
        dilations=tuple(op.dilations),
        ceil_mode=bool(op.ceil_mode),
    )


def _add_output_accumulator(graph: nx.DiGraph, mode: str, phases: int) -> None:
    """The graph output ``y`` -> ``y_current`` read by a new OutputAccumulator named ``y``."""
    (output,) = graph.graph["outputs"]
    if output in graph.graph["inputs"]:
        refuse(graph, output, "the graph output is its input")
    current = ir.unique_name(graph, f"{output}_current")
    nx.relabel_nodes(graph, {output: current}, copy=False)
    ir.add_node(graph, output, O.OutputAccumulator(mode=mode, phases=phases, scale=np.ones((), np.float32)), [current])
    graph.graph["outputs"] = [output]


def _to_spiking(graph: nx.DiGraph, mode: str = "bsnn", phases: int = 8, initial_potential: str = "half") -> bool:
    _check_options(graph, mode, phases, initial_potential)
    phases = int(phases)
    scales = read_scales(graph)
    check_convertible(graph)
    for name in ir.topological_order(graph):
        op = ir.op_of(graph, name)
        if is_population_activation(op):
            if name not in scales:
                refuse(graph, name, "has no lambda: run normalise first")
            _to_population(graph, name, op, scales[name], mode=mode, phases=phases,
                           initial_potential=initial_potential)
        elif isinstance(op, O.MaxPool):
            _to_max_gate(graph, name, op, mode, phases)
        elif isinstance(op, (O.Dropout, O.Identity)):
            refuse(graph, name, "run canonicalise first")
    _add_output_accumulator(graph, mode, phases)
    compute_stages(graph)
    meta = graph.graph["metadata"]
    meta["bsnn.mode"] = mode
    meta["bsnn.phases"] = str(phases)
    meta["bsnn.initial_potential"] = initial_potential
    return True


def _requires_normalised(graph: nx.DiGraph) -> None:
    if "bsnn.scales" not in graph.graph["metadata"]:
        refuse(graph, None, "the graph is not normalised (run normalise first)")
    for name in graph.nodes:
        if isinstance(ir.op_of(graph, name), (O.Population, O.OutputAccumulator)):
            refuse(graph, name, "the graph is already spiking")


to_spiking = Pass(
    name="to_spiking",
    description="ReLU -> Population, Add+ReLU -> merge Population, MaxPool -> MaxGate, output -> OutputAccumulator",
    rewrite=_to_spiking,
    requires=_requires_normalised,
)
