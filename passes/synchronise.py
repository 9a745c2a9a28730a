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

Refusal: a linear node on the path from an early source that also feeds
other spiking nodes (delaying it would delay them too), and graphs that are
not spiking yet.
"""

from __future__ import annotations

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


def _insert_chain(graph: nx.DiGraph, source: str, target: str, length: int, stage: int) -> list[str]:
    first_hops = [x for x in ir.consumers(graph, source) if x == target or target in spiking_targets(graph, x)]
    for hop in first_hops:
        reached = spiking_targets(graph, hop)
        if reached != {target}:
            others = ", ".join(sorted(reached - {target}))
            refuse(
                graph,
                hop,
                f"lies on the path from {source!r} to {target!r} but also feeds {others}; "
                "cannot delay it for synchronisation",
            )
    target_op = ir.op_of(graph, target)
    mode, phases = target_op.mode, target_op.phases
    start = getattr(target_op, "initial_potential", None) or graph.graph["metadata"].get("bsnn.initial_potential", "half")
    scale = _source_scale(graph, source)
    chain, previous = [], source
    for i in range(length):
        name = ir.unique_name(graph, f"{source}_sn{stage + i + 1}")
        sn = O.SynchronousNeuron(mode=mode, phases=phases, stage=stage + i + 1, scale=scale.copy(),
                                 initial_potential=start)
        ir.add_node(graph, name, sn, [previous])
        chain.append(name)
        previous = name
    for hop in first_hops:
        ir.set_inputs(graph, hop, [previous if s == source else s for s in ir.inputs_of(graph, hop)])
    return chain


def _synchronise(graph: nx.DiGraph) -> bool:
    mode = graph.graph["metadata"].get("bsnn.mode", "bsnn")
    if mode != "bsnn":
        compute_stages(graph)
        graph.graph["metadata"]["bsnn.synchronise"] = "skipped"
        graph.graph["metadata"]["bsnn.synchronous_neurons"] = "0"
        return False
    stage: dict[str, int] = {}
    inserted: list[str] = []
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
                    chain = _insert_chain(graph, source, name, latest - stage[source], stage[source])
                    for i, sn in enumerate(chain):
                        stage[sn] = stage[source] + i + 1
                    inserted += chain
            stage[name] = latest + 1
    compute_stages(graph)
    graph.graph["metadata"]["bsnn.synchronise"] = "applied"
    graph.graph["metadata"]["bsnn.synchronous_neurons"] = str(len(inserted))
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
