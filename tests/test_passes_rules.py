"""passes.rules: rules applied in sweeps to a fixed point, and the explanations convert(..., explain=...) collects."""

from __future__ import annotations

from test_passes_graphs import Builder, op_types, random_input

from bsnn_graph import ir
from bsnn_graph import ops as O
from passes import Explanation, canonicalise, convert, copy_graph
from passes.rules import Match, NoMatch, Rule, apply_rules


def _tiny():
    """x -> fc -> relu -> drop -> fc2: drop_identity applies at drop, bias_into_linear does not at fc."""
    b = Builder(1)
    x = b.input("x", (4,))
    return b.output(b.gemm("fc2", b.op("drop", O.Dropout(), b.relu("relu", b.gemm("fc", x, 3))), 2))


#: what convert(..., explain=...) reports for :func:`_tiny`, in order
TINY_EXPLANATION = [
    "canonicalise: fold_input_normalisation at x: not read by one Sub/Mul/Div/Add by a constant",
    "canonicalise: bias_into_linear at fc: read by 'relu' (Relu), not an Add",
    "canonicalise: drop_double_relu at relu: not a Relu of a Relu (reads 'fc', Gemm)",
    "canonicalise: relu_before_maxpool at relu: reads 'fc' (Gemm), not a MaxPool",
    "canonicalise: drop_identity at drop: applied",
    "canonicalise: bias_into_linear at fc2: 'fc2' is a graph output",
    "fold_batchnorm: no candidate node for any rule",
    "normalise: applied",
    "to_spiking: applied",
    "synchronise: nothing to change",
]


def test_convert_explains_each_rule_at_each_candidate_once():
    graph = _tiny()
    seen: list[Explanation] = []
    convert(graph, random_input(graph), explain=seen.append)
    assert [str(e) for e in seen] == TINY_EXPLANATION
    applied = [e for e in seen if e.outcome == "applied" and e.rule is not None]
    assert [(e.pass_name, e.rule, e.node) for e in applied] == [("canonicalise", "drop_identity", "drop")]


def test_a_pass_run_alone_explains_too_and_the_same_graph_comes_out_without_explain():
    graph = _tiny()
    seen = []
    explained = canonicalise(copy_graph(graph), explain=seen.append).graph
    assert [str(e) for e in seen] == TINY_EXPLANATION[:6]
    assert ir.graphs_equal(explained, canonicalise(copy_graph(graph)).graph)


def _counting_rule(limit: int, applied: list[str]) -> Rule:
    """Turns an Identity reading the Input or a Dropout into a Dropout, ``limit`` times at most."""

    def check(graph, name):
        (src,) = ir.inputs_of(graph, name)
        if not isinstance(ir.op_of(graph, src), (O.Dropout, O.Input)):
            return NoMatch(f"reads {src!r}, an {ir.op_of(graph, src).op_type}")
        if len(applied) >= limit:
            return NoMatch("limit reached")
        return Match(source=src)

    def rewrite(graph, name, match):
        graph.nodes[name]["op"] = O.Dropout()
        applied.append(name)

    return Rule("identity_to_dropout", (O.Identity,), check, rewrite)


def test_rules_run_in_sweeps_to_a_fixed_point_and_report_a_reason_only_when_it_changes():
    # a chain x -> a -> b -> c of Identities: a rewrite at a enables b, which enables c
    graph = ir.new_graph()
    ir.add_node(graph, "x", O.Input(shape=(3,)))
    for src, name in (("x", "a"), ("a", "b"), ("b", "c")):
        ir.add_node(graph, name, O.Identity(), [src])
    graph.graph["outputs"] = ["c"]
    applied, seen = [], []
    assert apply_rules(graph, [_counting_rule(3, applied)], "test", seen.append)
    assert applied == ["a", "b", "c"]  # one sweep: each rewrite enables the next node, visited later
    assert op_types(graph) == ["Input", "Dropout", "Dropout", "Dropout"]
    assert [str(e) for e in seen] == [
        "test: identity_to_dropout at a: applied",
        "test: identity_to_dropout at b: applied",
        "test: identity_to_dropout at c: applied",
    ]
    # a rule that does not match is told once per node, however many sweeps visit it
    applied, seen = [], []
    graph = ir.new_graph()
    ir.add_node(graph, "x", O.Input(shape=(3,)))
    ir.add_node(graph, "a", O.Identity(), ["x"])
    ir.add_node(graph, "b", O.Identity(), ["a"])
    assert apply_rules(graph, [_counting_rule(1, applied)], "test", seen.append)
    assert [str(e) for e in seen] == [
        "test: identity_to_dropout at a: applied",
        "test: identity_to_dropout at b: limit reached",
    ]
    assert not apply_rules(graph, [_counting_rule(0, [])], "test")
