"""The bsnn-graph IR: a ``networkx.DiGraph`` of op nodes.

- Nodes are keyed by stable string names; the key is also the name of the
  node's single output tensor. Node attributes: ``op`` (an
  :class:`~bsnn_graph.ops.Op` dataclass) and ``shape`` (per-sample output
  shape, no batch axis).
- An edge ``u -> v`` with attribute ``index`` says that ``u``'s output is
  input number ``index`` of ``v``. A node may consume the same tensor twice
  (``Add(x, x)``); such edges are recorded in ``indices`` (a tuple) since a
  DiGraph holds one edge per pair.
- Graph attributes: ``inputs`` and ``outputs`` (ordered lists of node
  names), ``name``, ``opset`` (the default-domain opset it came from),
  ``batch`` (the batch dimension for export: an int or a symbol name) and
  ``metadata`` (str -> str, saved as ONNX metadata_props).

:func:`verify` checks the invariants; every pass ends with it.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from .errors import BsnnError
from .ops import Input, Op, ShapeError

__all__ = [
    "GraphError",
    "add_node",
    "consumers",
    "graphs_equal",
    "infer_shapes",
    "inputs_of",
    "new_graph",
    "op_of",
    "remove_node",
    "replace_uses",
    "set_inputs",
    "shape_of",
    "topological_order",
    "unique_name",
    "verify",
    "walk_until",
]


class GraphError(BsnnError):
    """The graph breaks an IR invariant; the message names the node and op."""


def new_graph(name: str = "graph", opset: int = 17, batch: int | str = "N") -> nx.DiGraph:
    """An empty IR graph."""
    graph = nx.DiGraph()
    graph.graph.update(name=name, opset=opset, batch=batch, inputs=[], outputs=[], metadata={})
    return graph


def add_node(graph: nx.DiGraph, name: str, op: Op, inputs: list[str] = (), shape=None) -> str:
    """Add node ``name`` computing ``op`` on ``inputs`` (names of existing nodes).

    The per-sample output shape is inferred unless given. Returns ``name``.
    """
    if name in graph:
        raise GraphError(f"node {name!r} already exists")
    for src in inputs:
        if src not in graph:
            raise GraphError(f"node {name!r} ({op.op_type}): input {src!r} does not exist")
    graph.add_node(name, op=op, shape=None)
    set_inputs(graph, name, list(inputs))
    if isinstance(op, Input):
        graph.graph["inputs"].append(name)
    if shape is None:
        shape = _infer_node(graph, name)
    graph.nodes[name]["shape"] = tuple(int(d) for d in shape)
    return name


def op_of(graph: nx.DiGraph, name: str) -> Op:
    return graph.nodes[name]["op"]


def shape_of(graph: nx.DiGraph, name: str) -> tuple[int, ...]:
    return graph.nodes[name]["shape"]


def inputs_of(graph: nx.DiGraph, name: str) -> list[str]:
    """Input node names of ``name`` in input order."""
    slots = []
    for src, _, data in graph.in_edges(name, data=True):
        for index in data["indices"]:
            slots.append((index, src))
    slots.sort()
    return [src for _, src in slots]


def consumers(graph: nx.DiGraph, name: str) -> list[str]:
    """Names of the nodes reading ``name``'s output (graph outputs not included)."""
    return list(graph.successors(name))


def topological_order(graph: nx.DiGraph) -> list[str]:
    """Nodes in a deterministic topological order (ties broken by insertion order)."""
    position = {n: i for i, n in enumerate(graph.nodes)}
    return list(nx.lexicographical_topological_sort(graph, key=position.__getitem__))


def set_inputs(graph: nx.DiGraph, name: str, inputs: list[str]) -> None:
    """Replace the ordered inputs of ``name``."""
    graph.remove_edges_from(list(graph.in_edges(name)))
    for index, src in enumerate(inputs):
        if graph.has_edge(src, name):
            graph.edges[src, name]["indices"] += (index,)
        else:
            graph.add_edge(src, name, indices=(index,))
        graph.edges[src, name]["index"] = graph.edges[src, name]["indices"][0]


def replace_uses(graph: nx.DiGraph, old: str, new: str, except_for: tuple[str, ...] = ()) -> None:
    """Make every consumer of ``old`` (and the graph outputs) read ``new`` instead."""
    for consumer in consumers(graph, old):
        if consumer in except_for or consumer == new:
            continue
        set_inputs(graph, consumer, [new if s == old else s for s in inputs_of(graph, consumer)])
    graph.graph["outputs"] = [new if o == old else o for o in graph.graph["outputs"]]


def remove_node(graph: nx.DiGraph, name: str) -> None:
    """Remove ``name``; it must have no consumers and not be a graph output."""
    if consumers(graph, name) or name in graph.graph["outputs"]:
        raise GraphError(f"node {name!r} is still used")
    graph.remove_node(name)
    if name in graph.graph["inputs"]:
        graph.graph["inputs"].remove(name)


def unique_name(graph: nx.DiGraph, base: str) -> str:
    """``base`` or ``base_1``, ``base_2``... whichever is not yet a node."""
    if base not in graph:
        return base
    i = 1
    while f"{base}_{i}" in graph:
        i += 1
    return f"{base}_{i}"


def walk_until(graph: nx.DiGraph, starts: list[str], stop: tuple[type, ...], forward: bool) -> list[str]:
    """Nodes of the op types ``stop`` first met walking from ``starts`` (depth first, in input order).

    The walk goes through consumers (``forward``) or inputs and does not pass
    a ``stop`` node; e.g. the spiking sources of a population are the
    spiking nodes met walking back through its linear projections.
    """
    found, stack, seen = [], list(reversed(starts)), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(op_of(graph, node), stop):
            found.append(node)
        else:
            stack.extend(reversed(consumers(graph, node) if forward else inputs_of(graph, node)))
    return found


def _infer_node(graph: nx.DiGraph, name: str) -> tuple[int, ...]:
    op = op_of(graph, name)
    shapes = [shape_of(graph, s) for s in inputs_of(graph, name)]
    try:
        return tuple(int(d) for d in op.output_shape(shapes))
    except ShapeError as exc:
        raise GraphError(f"node {name!r} ({op.op_type}): {exc}") from None


def infer_shapes(graph: nx.DiGraph) -> None:
    """Recompute every node's per-sample shape in topological order."""
    for name in topological_order(graph):
        graph.nodes[name]["shape"] = _infer_node(graph, name)


def verify(graph: nx.DiGraph) -> None:
    """Check the IR invariants; raise :class:`GraphError` naming the node and op.

    - the graph is acyclic; every node has an ``op`` whose input count fits it;
    - input indices of each node are exactly 0..n-1;
    - every stored shape equals the shape inferred from its inputs;
    - ``inputs`` are the Input nodes, ``outputs`` exist, and every node
      reaches an output (no dead code).
    - parameters are float32 ndarrays.
    """
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        raise GraphError(f"graph has a cycle through {cycle[0][0]!r}")
    input_nodes = [n for n in graph.nodes if isinstance(graph.nodes[n].get("op"), Input)]
    if sorted(input_nodes) != sorted(graph.graph["inputs"]):
        raise GraphError(f"graph inputs {graph.graph['inputs']} do not match Input nodes {input_nodes}")
    if not graph.graph["outputs"]:
        raise GraphError("graph has no outputs")
    for out in graph.graph["outputs"]:
        if out not in graph:
            raise GraphError(f"graph output {out!r} is not a node")
    live = set(graph.graph["outputs"])
    for out in graph.graph["outputs"]:
        live |= nx.ancestors(graph, out)
    for name in topological_order(graph):
        op = graph.nodes[name].get("op")
        if not isinstance(op, Op):
            raise GraphError(f"node {name!r} has no op")
        indices = sorted(i for _, _, d in graph.in_edges(name, data=True) for i in d["indices"])
        if indices != list(range(len(indices))):
            raise GraphError(f"node {name!r} ({op.op_type}): input positions {indices} are not 0..n-1")
        if op.arity is not None and len(indices) != op.arity:
            raise GraphError(f"node {name!r} ({op.op_type}): takes {op.arity} inputs, has {len(indices)}")
        if op.arity is None and not indices:
            raise GraphError(f"node {name!r} ({op.op_type}): has no inputs")
        for pname, value in op.parameters().items():
            if value.dtype != np.float32:
                raise GraphError(f"node {name!r} ({op.op_type}): parameter {pname} is {value.dtype}, not float32")
        expected = _infer_node(graph, name)
        if tuple(graph.nodes[name]["shape"] or ()) != expected:
            raise GraphError(
                f"node {name!r} ({op.op_type}): stored shape {graph.nodes[name]['shape']} != inferred {expected}"
            )
        if name not in live:
            raise GraphError(f"node {name!r} ({op.op_type}) does not reach any graph output")


def graphs_equal(a: nx.DiGraph, b: nx.DiGraph) -> bool:
    """Same nodes, ops (parameters compared exactly), shapes, edges and graph inputs/outputs."""
    if set(a.nodes) != set(b.nodes):
        return False
    if list(a.graph["inputs"]) != list(b.graph["inputs"]) or list(a.graph["outputs"]) != list(b.graph["outputs"]):
        return False
    for n in a.nodes:
        if not op_of(a, n).same_as(op_of(b, n)) or shape_of(a, n) != shape_of(b, n):
            return False
        if inputs_of(a, n) != inputs_of(b, n):
            return False
    return True
