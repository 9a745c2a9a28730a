"""Pass infrastructure: :class:`Pass`, :class:`PassResult`, errors and small graph helpers.

A pass (after onnx/ir-py ``passes/_pass_infra.py`` and torch.fx
``passes/infra``) is a function from a graph to ``PassResult(graph,
modified)``. Passes **change the graph they are given, in place** (as
onnx/ir-py's in-place passes do) and return that same graph;
:func:`passes.convert` copies the caller's graph once at its entry, and
a caller that runs a pass alone and still needs the graph before it
copies it first (:func:`copy_graph`). :class:`Pass` wraps the function
that does the rewrite:

1. runs ``requires(graph)`` (raises when the pass cannot apply yet);
2. runs the rewrite on the graph; it returns whether it changed anything;
3. runs ``ensures(graph)`` and :func:`bsnn_graph.ir.verify`;
4. appends the pass name to the metadata key ``bsnn.passes``.

A rewrite that cannot apply raises :class:`NodeRefusal` (via
:func:`refuse`) naming the node and op; :class:`Pass` turns it into a
:class:`PassError` that also names the pass and the passes applied before
it. Both are :class:`bsnn_graph.errors.ConversionError`. A failed pass
may leave the graph half rewritten.

A rule-based pass (canonicalise, fold_batchnorm: :mod:`passes.rules`)
takes the option ``explain`` and reports every rule outcome to it; for the
other passes :class:`Pass` reports one line per pass.
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

from .rules import APPLIED, Explanation

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
    """What a pass returns: the rewritten graph (the one it was given, changed in place) and whether anything
    changed."""

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
    """A deep copy: ops and their arrays are not shared with ``graph`` (passes change the graph they get)."""
    return copy.deepcopy(graph)


@dataclass(frozen=True)
class Pass:
    """One graph rewrite with its checks. Call it as ``pass_(graph, **options) -> PassResult``.

    ``rewrite(graph, **options) -> bool`` changes the graph it is given in
    place and says whether it changed anything; options it does not accept
    are ignored, so a pipeline can hand every pass the same options.
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
        """Run the pass on ``graph`` **in place**; the result holds that same graph.

        Raises
        ------
        PassError naming this pass, the node, its op and the passes applied before.
        """
        applied = passes_applied(graph)
        graph.graph.setdefault("metadata", {})
        accepted = self.accepted_options()
        try:
            if self.requires is not None:
                self.requires(graph)
            modified = bool(self.rewrite(graph, **{k: v for k, v in options.items() if k in accepted}))
            if self.ensures is not None:
                self.ensures(graph)
        except NodeRefusal as exc:
            raise PassError(self.name, applied, exc) from None
        try:
            ir.verify(graph)
        except ir.GraphError as exc:  # a bug in the pass, not in the user's model
            raise ir.GraphError(f"pass {self.name} produced an invalid graph: {exc}") from exc
        graph.graph["metadata"]["bsnn.passes"] = ",".join(applied + [self.name])
        explain = options.get("explain")
        if explain is not None and "explain" not in accepted:
            explain(Explanation(self.name, None, None, APPLIED if modified else "nothing to change"))
        return PassResult(graph, modified)


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
