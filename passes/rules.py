"""Rewrite rules (after onnxscript's rewriter): a rule anchors on an op kind, checks, and rewrites.

A :class:`Rule` is ``(name, anchor, check, rewrite)``:

- ``anchor``: the op classes of the nodes it can apply at (its *candidates*);
- ``check(graph, node)``: a :class:`Match` (what the rewrite needs, by
  name) or a :class:`NoMatch` giving the reason it does not apply; it
  never changes the graph;
- ``rewrite(graph, node, match)``: changes the graph in place.

:func:`apply_rules` applies a list of rules in sweeps: each sweep visits the
nodes in topological order and, at each node, applies the first rule that
matches, then tries the rules at that node again until none matches; sweeps
repeat until one changes nothing (a fixed point). With ``explain`` every
outcome is reported as an :class:`Explanation` (pass, rule, node,
``applied`` or the reason), a reason only when it differs from the one last
reported for that rule and node, so each candidate's reason is told once;
a pass none of whose rules had a candidate says so in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx

from bsnn_graph import ir

__all__ = ["APPLIED", "NO_CANDIDATES", "Explain", "Explanation", "Match", "NoMatch", "Rule", "apply_rules"]

#: the outcome reported when a rule rewrote a node
APPLIED = "applied"
#: the outcome of a rule-based pass when no node was a candidate of any of its rules
NO_CANDIDATES = "no candidate node for any rule"


@dataclass(frozen=True)
class Explanation:
    """One outcome of one rule at one node (``rule`` and ``node`` None: the outcome of a pass without rules)."""

    pass_name: str
    rule: str | None
    node: str | None
    outcome: str  # "applied", or why the rule does not apply

    def __str__(self) -> str:
        if self.rule is None:
            return f"{self.pass_name}: {self.outcome}"
        return f"{self.pass_name}: {self.rule} at {self.node}: {self.outcome}"


#: the callback ``passes.convert(..., explain=...)`` calls once per :class:`Explanation`
Explain = Callable[[Explanation], None]


@dataclass(frozen=True)
class NoMatch:
    """Why a rule does not apply at a node."""

    reason: str


class Match:
    """What a rule's check found at a node: the nodes and values its rewrite needs, by name
    (``Match(add="fc_bias", bias=b)``; ``match["bias"]``)."""

    def __init__(self, **values):
        self.values = values

    def __getitem__(self, key: str):
        return self.values[key]


@dataclass(frozen=True)
class Rule:
    """One rewrite: applies at nodes whose op is an ``anchor`` when ``check`` returns a :class:`Match`."""

    name: str
    anchor: tuple[type, ...]  # op classes of the candidate nodes
    check: Callable[[nx.DiGraph, str], Match | NoMatch]  # never changes the graph
    rewrite: Callable[[nx.DiGraph, str, Match], None]  # changes the graph in place


def apply_rules(graph: nx.DiGraph, rules: list[Rule], pass_name: str, explain: Explain | None = None) -> bool:
    """Apply ``rules`` to ``graph`` (in place) in sweeps until a sweep changes nothing; True if any applied.

    Parameters
    ----------
    graph : the graph, changed in place.
    rules : tried in this order at each node; the first that matches is applied.
    pass_name : named in the explanations.
    explain : called with an :class:`Explanation` per outcome (see the module docstring).
    """
    reporter = _Reporter(pass_name, explain)
    modified = False
    while True:
        changed = False
        for node in ir.topological_order(graph):
            while node in graph and _apply_first(graph, node, rules, reporter):
                changed = modified = True
        if not changed:
            reporter.no_candidates()
            return modified


def _apply_first(graph: nx.DiGraph, node: str, rules: list[Rule], reporter: _Reporter) -> bool:
    """Apply the first rule of ``rules`` that matches at ``node``; False when none does."""
    for rule in rules:
        if not isinstance(ir.op_of(graph, node), rule.anchor):
            continue
        found = rule.check(graph, node)
        if isinstance(found, NoMatch):
            reporter.report(rule.name, node, found.reason)
            continue
        rule.rewrite(graph, node, found)
        reporter.report(rule.name, node, APPLIED)
        return True
    return False


class _Reporter:
    """Sends outcomes to ``explain``; a reason only when it changed since the last one for the rule and node."""

    def __init__(self, pass_name: str, explain: Explain | None):
        self.pass_name, self.explain = pass_name, explain
        self.last: dict[tuple[str, str], str] = {}

    def report(self, rule: str, node: str, outcome: str) -> None:
        if self.explain is None or (outcome != APPLIED and self.last.get((rule, node)) == outcome):
            return
        self.last[rule, node] = outcome
        self.explain(Explanation(self.pass_name, rule, node, outcome))

    def no_candidates(self) -> None:
        """Say so when no node was a candidate of any rule (else the pass would not be heard of)."""
        if self.explain is not None and not self.last:
            self.explain(Explanation(self.pass_name, None, None, NO_CANDIDATES))
