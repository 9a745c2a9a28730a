"""Pass infrastructure: :class:`Pass`, :class:`PassResult`, errors and small graph helpers.

A pass (after onnx/ir-py ``passes/_pass_infra.py`` and torch.fx
``passes/infra``) is a function from a graph to ``PassResult(graph,
modified)``. :class:`Pass` wraps the function that does the rewrite:

1. copies the input graph (the caller's graph is never mutated);
2. runs ``requires(graph)`` (raises when the pass cannot apply yet);
3. runs the rewrite on the copy; it returns whether it changed anything;
4. runs ``ensures(graph)`` and :func:`bsnn_graph.ir.verify`;
5. appends the pass name to the metadata key ``bsnn.passes``.

A rewrite that cannot apply raises :class:`NodeRefusal` (via
:func:`refuse`) naming the node and op; :class:`Pass` turns it into a
:class:`PassError` that also names the pass and the passes applied before
it. Both are :class:`bsnn_graph.errors.ConversionError`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx

from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.errors import ConversionError

__all__ = [
    "NodeRefusal",
    "Pass",
    "PassError",
    "PassResult",
    "bypass",
    "copy_graph",
    "insert_after",
    "insert_on_edge",
    "is_population_activation",
    "merge_add",
    "passes_applied",
    "refuse",
    "single_consumer",
]


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the rewritten graph and whether anything changed."""

    graph: nx.DiGraph
    modified: bool


class NodeRefusal(ConversionError):
    """A rewrite cannot apply at ``node`` (an op of kind ``op_type``)."""

    def __init__(self, node: str | None, op_type: str | None, reason: str):
        self.node, self.op_type, self.reason = node, op_type, reason
        where = f"node {node!r} ({op_type}): " if node is not None else ""
        super().__init__(f"{where}{reason}")


class PassError(ConversionError):
    """A pass failed; the message names the pass, the node, the op and the passes applied before."""

    def __init__(self, pass_name: str, applied: list[str], refusal: NodeRefusal):
        self.pass_name, self.applied = pass_name, list(applied)
        self.node, self.op_type, self.reason = refusal.node, refusal.op_type, refusal.reason
        before = ", ".join(applied) if applied else "none"
        super().__init__(f"pass {pass_name} (after: {before}): {refusal}")


def refuse(graph: nx.DiGraph, node: str | None, reason: str) -> None:
    """Raise :class:`NodeRefusal` for ``node`` (its op kind is looked up in ``graph``)."""
    op_type = ir.op_of(graph, node).op_type if node is not None and node in graph else None
    raise NodeRefusal(node, op_type, reason)


def passes_applied(graph: nx.DiGraph) -> list[str]:
    """Names of the passes applied to ``graph`` so far (metadata ``bsnn.passes``)."""
    text = graph.graph.get("metadata", {}).get("bsnn.passes", "")
    return [p for p in text.split(",") if p]


def copy_graph(graph: nx.DiGraph) -> nx.DiGraph:
    """A deep copy: ops and their arrays are not shared with ``graph``."""
    return copy.deepcopy(graph)


@dataclass(frozen=True)
class Pass:
    """One graph rewrite with its checks. Call it as ``pass_(graph, **options) -> PassResult``.

    ``rewrite(graph, **options) -> bool`` mutates the copy it is given and
    says whether it changed anything; options it does not accept are
    ignored, so a pipeline can hand every pass the same options.
    """

    name: str
    description: str  # one line, shown by ``bsnn passes``
    rewrite: Callable[..., bool]
    requires: Callable[[nx.DiGraph], None] | None = None
    ensures: Callable[[nx.DiGraph], None] | None = None

    def accepted_options(self) -> set[str]:
        params = inspect.signature(self.rewrite).parameters
        return {p for p in list(params)[1:]}

    def __call__(self, graph: nx.DiGraph, **options) -> PassResult:
        applied = passes_applied(graph)
        work = copy_graph(graph)
        work.graph.setdefault("metadata", {})
        accepted = self.accepted_options()
        try:
            if self.requires is not None:
                self.requires(work)
            modified = bool(self.rewrite(work, **{k: v for k, v in options.items() if k in accepted}))
            if self.ensures is not None:
                self.ensures(work)
        except NodeRefusal as exc:
            raise PassError(self.name, applied, exc) from None
        try:
            ir.verify(work)
        except ir.GraphError as exc:  # a bug in the pass, not in the user's model
            raise ir.GraphError(f"pass {self.name} produced an invalid graph: {exc}") from exc
        work.graph["metadata"]["bsnn.passes"] = ",".join(applied + [self.name])
        return PassResult(work, modified)


# --------------------------------------------------------------------------- graph helpers


def single_consumer(graph: nx.DiGraph, name: str) -> str | None:
    """The only consumer of ``name``, or None if it has several, none, or is a graph output."""
    users = ir.consumers(graph, name)
    if len(users) != 1 or name in graph.graph["outputs"]:
        return None
    (user,) = users
    if len(graph.edges[name, user]["indices"]) != 1:
        return None
    return user


def bypass(graph: nx.DiGraph, name: str) -> None:
    """Remove the one-input node ``name``, making its consumers (and outputs) read its input."""
    (src,) = ir.inputs_of(graph, name)
    ir.replace_uses(graph, name, src)
    ir.remove_node(graph, name)


def insert_after(graph: nx.DiGraph, name: str, new: str, op) -> str:
    """Insert node ``new`` computing ``op`` on ``name``'s output; all former consumers read ``new``."""
    ir.add_node(graph, new, op, [name])
    ir.replace_uses(graph, name, new, except_for=(new,))
    return new


def insert_on_edge(graph: nx.DiGraph, src: str, dst: str, new: str, op) -> str:
    """Insert node ``new`` computing ``op`` between ``src`` and ``dst`` only (other consumers unchanged)."""
    ir.add_node(graph, new, op, [src])
    ir.set_inputs(graph, dst, [new if s == src else s for s in ir.inputs_of(graph, dst)])
    return new


def is_population_activation(op: O.Op) -> bool:
    """True for the activations one population replaces: ``Relu``, and ``Clip(0, c)`` with ``c > 0``
    (ReLU6; the population gets the ceiling ``c / lambda``)."""
    if isinstance(op, O.Relu):
        return True
    return isinstance(op, O.Clip) and op.min == 0 and op.max is not None and op.max > 0


def merge_add(graph: nx.DiGraph, relu: str) -> str | None:
    """The two-tensor Add that ``relu`` alone reads (a residual merge), or None."""
    (src,) = ir.inputs_of(graph, relu)
    op = ir.op_of(graph, src)
    if isinstance(op, O.Add) and op.constant is None and single_consumer(graph, src) == relu:
        return src
    return None
