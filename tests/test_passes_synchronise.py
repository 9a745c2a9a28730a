"""synchronise: stages, SN chains on ResNet shortcuts, the no-SN modes, and the refusal."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_graphs import Builder, op_types, random_input, resnet, vgg
from test_rewrites import _check_run_against_oracle

from bsnn_graph import evaluate, ir
from bsnn_graph import ops as O
from passes import PassError, convert, synchronise
from passes.to_spiking import spiking_sources

BLOCKS = ("identity", "projection", "identity", "projection", "identity")


def _stage(graph, name):
    op = ir.op_of(graph, name)
    return 0 if isinstance(op, O.Input) else op.stage


def _populations(graph):
    return [n for n in ir.topological_order(graph) if isinstance(ir.op_of(graph, n), O.Population)]


@pytest.mark.parametrize("maxpool_stem", [True, False])
def test_resnet_gets_one_sn_per_shortcut_and_all_sources_share_a_stage(maxpool_stem):
    graph = resnet(blocks=BLOCKS, maxpool_stem=maxpool_stem)
    x = random_input(graph, n=16)
    spiking = convert(graph, x, until="to_spiking")
    result = synchronise(spiking)
    synced = result.graph
    assert result.modified
    sns = [n for n in synced.nodes if isinstance(ir.op_of(synced, n), O.SynchronousNeuron)]
    assert len(sns) == len(BLOCKS)
    assert synced.graph["metadata"]["bsnn.synchronise"] == "applied"
    assert synced.graph["metadata"]["bsnn.synchronous_neurons"] == str(len(BLOCKS))
    for name in _populations(synced) + synced.graph["outputs"]:
        stages = {_stage(synced, s) for s in spiking_sources(synced, name)}
        assert len(stages) == 1, name
        if isinstance(ir.op_of(synced, name), O.Population):
            assert _stage(synced, name) == stages.pop() + 1
    top = max(_stage(synced, n) for n in _populations(synced))
    assert ir.op_of(synced, synced.graph["outputs"][0]).stage == top + 1
    # the ANN meaning is unchanged (an SN is the identity)
    np.testing.assert_allclose(evaluate(synced, x), evaluate(graph, x), rtol=1e-4, atol=1e-5)


def test_sn_sits_right_after_the_source_before_the_shortcut_ops():
    graph = convert(resnet(blocks=("identity", "projection"), maxpool_stem=False), random_input(resnet()))
    for sn in (n for n in graph.nodes if isinstance(ir.op_of(graph, n), O.SynchronousNeuron)):
        (source,) = ir.inputs_of(graph, sn)
        assert isinstance(ir.op_of(graph, source), O.Population)
        np.testing.assert_array_equal(ir.op_of(graph, sn).scale, ir.op_of(graph, source).scale)
        assert ir.op_of(graph, sn).stage == ir.op_of(graph, source).stage + 1
        (reader,) = ir.consumers(graph, sn)
        assert isinstance(ir.op_of(graph, reader), (O.Mul, O.Conv))  # identity rescale or projection conv
    assert ir.inputs_of(graph, "b0_relu2_sn4") == ["b0_relu2"]
    assert ir.consumers(graph, "b0_relu2_sn4") == ["b1_proj"]


def test_a_two_stage_gap_gets_a_chain_of_two():
    b = Builder(20)
    x = b.input("x", (2, 5, 5))
    r0 = b.relu("r0", b.conv("c0", x, 2))
    r1 = b.relu("r1", b.conv("c1", r0, 2))
    r2 = b.relu("r2", b.conv("c2", r1, 2))
    merge = b.relu("merge", b.op("add", O.Add(), b.conv("c3", r2, 2), r0))
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), merge), 3))
    xs = random_input(graph)
    synced = convert(graph, xs)
    chain = ["r0_sn2", "r0_sn3"]
    assert op_types(synced).count("SynchronousNeuron") == 2
    assert ir.inputs_of(synced, chain[0]) == ["r0"] and ir.inputs_of(synced, chain[1]) == [chain[0]]
    assert [ir.op_of(synced, n).stage for n in chain] == [2, 3]
    assert ir.op_of(synced, "merge").stage == 4


@pytest.mark.parametrize("mode", ["bsnn-nosn", "phase", "if-rate"])
def test_other_modes_insert_no_sn(mode):
    graph = resnet(blocks=("identity", "projection"))
    synced = convert(graph, random_input(graph), mode=mode)
    assert "SynchronousNeuron" not in op_types(synced)
    assert synced.graph["metadata"]["bsnn.synchronise"] == "skipped"
    for name in _populations(synced):
        stages = [_stage(synced, s) for s in spiking_sources(synced, name)]
        assert ir.op_of(synced, name).stage == 1 + max(stages)
    assert ir.op_of(synced, "b1_relu2").stage == 5  # stem 1, b0: 2, 3; b1: 4, 5


def test_vgg_needs_no_sn_and_is_not_modified():
    graph = vgg("max")
    spiking = convert(graph, random_input(graph), until="to_spiking")
    result = synchronise(spiking)
    assert not result.modified
    assert result.graph.graph["metadata"]["bsnn.synchronise"] == "applied"


def test_a_shortcut_op_shared_with_another_population_is_copied_for_the_delayed_target():
    b = Builder(21)
    x = b.input("x", (2, 5, 5))
    r1 = b.relu("r1", b.conv("c1", x, 2))
    r2 = b.relu("r2", b.conv("c2", r1, 2))
    shared = b.conv("shared", r1, 2)
    merge = b.relu("merge", b.op("add", O.Add(), b.conv("c4", r2, 2), shared))
    other = b.relu("other", shared)
    h = b.op("cat", O.Concat(axis=1), merge, other)
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), h), 3))
    x = random_input(graph)
    spiking = convert(graph, x)
    np.testing.assert_allclose(evaluate(spiking, x), evaluate(graph, x), rtol=1e-4, atol=1e-5)
    assert spiking.graph["metadata"]["bsnn.copied_nodes"] == "1"
    # 'other' still reads the shared conv from r1 directly (stage 2); the merge reads a copy through r1's SN
    (copy,) = [n for n in spiking.nodes if n.startswith("shared_for_")]
    assert ir.op_of(spiking, copy).op_type == "Conv" and ir.op_of(spiking, ir.inputs_of(spiking, copy)[0]).op_type == (
        "SynchronousNeuron")
    assert ir.inputs_of(spiking, "shared") == ["r1"] and _stage(spiking, "other") == 2
    for name in _populations(spiking) + spiking.graph["outputs"]:
        assert len({_stage(spiking, s) for s in spiking_sources(spiking, name)}) == 1, name
    _check_run_against_oracle(spiking, np.abs(x))


def test_requires_a_spiking_graph():
    graph = vgg("avg")
    with pytest.raises(PassError, match="not spiking yet"):
        synchronise(convert(graph, random_input(graph), until="normalise"))
