"""synchronise: give every population sources of one stage by inserting synchronous neurons (SN).

Stages: Input 0; a population (or SN) 1 + the stage of its spiking sources
(the spiking nodes reaching it through linear projections only); a MaxGate
its source's; the OutputAccumulator L + 1, L the largest population stage.

Before / After (mode ``bsnn``): a population P whose sources have stages
``s_1 < ... < s_max`` (a residual merge: the shortcut's source is older than
the main path's) gets, for each early source S, a chain of ``s_max - s_S``
``SynchronousNeuron`` nodes (identity weights, threshold 1, ``scale`` =
S's lambda) placed directly after S, before the shortcut's linear ops
(the projection conv, or the ``Mul`` normalise put on an identity shortcut):
every first node on a path S -> P through linear ops reads the last SN
instead of S. An SN re-emits its source's K-bit values one stage later,
exactly, so the ANN meaning is unchanged and all of P's sources share
stage ``s_max``. The OutputAccumulator's sources are synchronised the same
way. Metadata ``bsnn.synchronise = applied``, ``bsnn.synchronous_neurons``.

Modes ``bsnn-nosn``, ``phase``, ``if-rate``: no SN is inserted; stages are
1 + the largest source stage; ``bsnn.synchronise = skipped``.

A source delayed for several targets has one chain, each target reading
the SN of its own delay. A linear node on a path from an early source that
also feeds other spiking nodes (a Concat that later layers of a DenseNet
block all read, the branches of an Inception block) is copied for the
target first, so its paths are delayed without delaying the others
(:func:`_privatise`); ``bsnn.copied_nodes`` counts those copies.

Refusal: graphs that are not spiking yet.
"""

from __future__ import annotations

import copy

import networkx as nx
import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O

from ._infra import Pass, refuse
from .to_spiking import SPIKING, compute_stages, spiking_sources

__all__ = ["spiking_targets", "synchronise"]


def spiking_targets(graph: nx.DiGraph, name: str) -> set[str]:
    """The spiking nodes and output accumulators reading ``name`` through linear projections only.

    ``{name}`` itself when ``name`` is one of them.
    """
    targets = (*SPIKING, O.OutputAccumulator)
    if isinstance(ir.op_of(graph, name), targets):
        return {name}
    return set(ir.walk_until(graph, ir.consumers(graph, name), targets, forward=True))


def _source_scale(graph: nx.DiGraph, name: str) -> np.ndarray:
    op = ir.op_of(graph, name)
    if isinstance(op, O.Input):
        return np.asarray(op.scale, np.float32)
    if isinstance(op, O.MaxGate):
        return _source_scale(graph, ir.inputs_of(graph, name)[0])
    return np.array(op.scale, np.float32)


def _privatise(graph: nx.DiGraph, source: str, target: str) -> int:
    """Give ``target`` its own copy of every linear node on a path ``source -> target`` that also feeds other
    spiking nodes (a DenseNet or Inception Concat read by several later layers), so that those paths can be
    delayed for ``target`` alone; returns how many nodes were copied.

    A copy computes the same op on the same inputs (copies where those were
    copied), and the nodes of the paths to ``target`` read the copies; the
    originals keep feeding the other nodes. The runtime lowers every path
    from a source to a target as its own projection, so the copies cost no
    memory there.
    """
    stops = (*SPIKING, O.OutputAccumulator)
    linear, frontier = set(), [c for c in ir.consumers(graph, source) if not isinstance(ir.op_of(graph, c), stops)]
    while frontier:  # the linear nodes reachable from the source without crossing a spiking node
        node = frontier.pop()
        if node not in linear:
            linear.add(node)
            frontier += [c for c in ir.consumers(graph, node) if not isinstance(ir.op_of(graph, c), stops)]
    reached: dict[str, frozenset] = {}
    order = [n for n in ir.topological_order(graph) if n in linear]
    for node in reversed(order):  # the spiking nodes each one feeds, from its consumers'
        reached[node] = frozenset().union(*({c} if c not in linear else reached[c] for c in ir.consumers(graph, node)))
    region = [n for n in order if target in reached[n]]
    shared = {n for n in region if reached[n] != {target}}
    copies: dict[str, str] = {}
    for name in region:
        if name in shared:
            copy_name = ir.unique_name(graph, f"{name}_for_{target}")
            inputs = [copies.get(i, i) for i in ir.inputs_of(graph, name)]
            ir.add_node(graph, copy_name, copy.copy(ir.op_of(graph, name)), inputs, shape=ir.shape_of(graph, name))
            copies[name] = copy_name
    for name in [n for n in region if n not in shared] + [target]:
        inputs = ir.inputs_of(graph, name)
        if any(i in copies for i in inputs):
            ir.set_inputs(graph, name, [copies.get(i, i) for i in inputs])
    return len(copies)


def _delay(
    graph: nx.DiGraph, source: str, target: str, length: int, stage: int, chains: dict[str, list[str]]
) -> tuple[list[str], int]:
    """Make ``target`` read ``source`` ``length`` stages later, through the source's chain of SNs (extended as
    needed, shared by every target of the source); returns the SNs added and the linear nodes copied."""
    copied = _privatise(graph, source, target)
    first_hops = [x for x in ir.consumers(graph, source) if x == target or target in spiking_targets(graph, x)]
    target_op = ir.op_of(graph, target)
    mode, phases = target_op.mode, target_op.phases
    start = getattr(target_op, "initial_potential", None) or graph.graph["metadata"].get("bsnn.initial_potential", "half")
    scale = _source_scale(graph, source)
    chain = chains.setdefault(source, [])
    added = []
    while len(chain) < length:
        name = ir.unique_name(graph, f"{source}_sn{stage + len(chain) + 1}")
        sn = O.SynchronousNeuron(mode=mode, phases=phases, stage=stage + len(chain) + 1, scale=scale.copy(),
                                 initial_potential=start)
        ir.add_node(graph, name, sn, [chain[-1] if chain else source])
        chain.append(name)
        added.append(name)
    for hop in first_hops:
        ir.set_inputs(graph, hop, [chain[length - 1] if s == source else s for s in ir.inputs_of(graph, hop)])
    return added, copied


def _synchronise(graph: nx.DiGraph) -> bool:
    mode = graph.graph["metadata"].get("bsnn.mode", "bsnn")
    if mode != "bsnn":
        compute_stages(graph)
        graph.graph["metadata"]["bsnn.synchronise"] = "skipped"
        graph.graph["metadata"]["bsnn.synchronous_neurons"] = "0"
        return False
    stage: dict[str, int] = {}
    inserted: list[str] = []
    chains: dict[str, list[str]] = {}
    copied = 0
    for name in ir.topological_order(graph):
        op = ir.op_of(graph, name)
        if isinstance(op, O.Input):
            stage[name] = 0
        elif isinstance(op, O.MaxGate):
            stage[name] = stage[ir.inputs_of(graph, name)[0]]
        elif isinstance(op, (O.Population, O.OutputAccumulator)):
            sources = spiking_sources(graph, name)
            latest = max(stage[s] for s in sources)
            for source in sources:
                if stage[source] < latest:
                    added, copies = _delay(graph, source, name, latest - stage[source], stage[source], chains)
                    copied += copies
                    for sn in added:
                        stage[sn] = ir.op_of(graph, sn).stage
                    inserted += added
            stage[name] = latest + 1
    compute_stages(graph)
    graph.graph["metadata"]["bsnn.synchronise"] = "applied"
    graph.graph["metadata"]["bsnn.synchronous_neurons"] = str(len(inserted))
    graph.graph["metadata"]["bsnn.copied_nodes"] = str(copied)
    return bool(inserted)


def _all_sources_share_a_stage(graph: nx.DiGraph) -> None:
    if graph.graph["metadata"].get("bsnn.mode", "bsnn") != "bsnn":
        return
    for name in graph.nodes:
        op = ir.op_of(graph, name)
        if isinstance(op, (O.Population, O.OutputAccumulator)):
            stages = {_stage(graph, s) for s in spiking_sources(graph, name)}
            if len(stages) > 1:
                refuse(graph, name, f"sources still have different stages {sorted(stages)}")


def _stage(graph: nx.DiGraph, name: str) -> int:
    op = ir.op_of(graph, name)
    return 0 if isinstance(op, O.Input) else op.stage


def _requires_spiking(graph: nx.DiGraph) -> None:
    if not any(isinstance(ir.op_of(graph, n), O.OutputAccumulator) for n in graph.nodes):
        refuse(graph, None, "the graph is not spiking yet (run to_spiking first)")
    if "bsnn.synchronise" in graph.graph["metadata"]:
        refuse(graph, None, "the graph is already synchronised")


synchronise = Pass(
    name="synchronise",
    description="stages; in bsnn mode SynchronousNeuron chains on early edges so all sources share a stage",
    rewrite=_synchronise,
    requires=_requires_spiking,
    ensures=_all_sources_share_a_stage,
)
