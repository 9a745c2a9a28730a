"""The pipeline as a whole: convert(), the spiking graph contract, round trip through ONNX, the pass infrastructure."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
from test_passes_graphs import random_input, resnet, vgg

from bsnn_graph import evaluate, ir, load_onnx, save_onnx
from bsnn_graph import ops as O
from passes import (
    PIPELINE,
    PassError,
    PassResult,
    convert,
    copy_graph,
    default_calibration,
    pass_names,
)

SPIKING_SOURCES = (O.Input, O.Population, O.MaxGate)
LINEAR = (O.Conv, O.Gemm, O.AveragePool, O.GlobalAveragePool, O.Flatten, O.Reshape, O.Add, O.Sum, O.Mul, O.Concat)


def assert_spiking_contract(graph, mode, phases):
    """The spiking graph contract of docs/design.md."""
    accumulators = [n for n in graph.nodes if isinstance(ir.op_of(graph, n), O.OutputAccumulator)]
    assert accumulators == graph.graph["outputs"] and len(accumulators) == 1
    stage = {}
    for name in ir.topological_order(graph):
        op = ir.op_of(graph, name)
        srcs = ir.inputs_of(graph, name)
        if isinstance(op, O.Pad):
            assert op.mode == "constant" and op.value == 0
        elif isinstance(op, O.Input):
            stage[name] = 0
            continue
        else:
            assert isinstance(op, (*LINEAR, *SPIKING_SOURCES, O.OutputAccumulator)), f"{name}: {op.op_type}"
        if op.domain:
            assert (op.mode, op.phases) == (mode, phases), name
        if isinstance(op, O.MaxGate):
            assert isinstance(ir.op_of(graph, srcs[0]), O.Population)
            assert op.stage == stage[srcs[0]]
            stage[name] = op.stage
        elif isinstance(op, O.SynchronousNeuron):
            assert len(srcs) == 1 and isinstance(ir.op_of(graph, srcs[0]), SPIKING_SOURCES)
            assert op.stage == stage[srcs[0]] + 1
            stage[name] = op.stage
        elif isinstance(op, (O.Population, O.OutputAccumulator)):
            source_stages = {stage[s] for s in _sources(graph, name)}
            if mode == "bsnn":
                assert len(source_stages) == 1, f"{name}: sources of stages {source_stages}"
            if isinstance(op, O.Population):
                assert op.stage == 1 + max(source_stages)
                assert op.threshold == 1.0 and op.scale.dtype == np.float32
                stage[name] = op.stage
            else:
                top = max((s for n, s in stage.items() if isinstance(ir.op_of(graph, n), O.Population)), default=0)
                assert op.stage == top + 1


def _sources(graph, name):
    found, stack = set(), list(ir.inputs_of(graph, name))
    while stack:
        node = stack.pop()
        if isinstance(ir.op_of(graph, node), SPIKING_SOURCES):
            found.add(node)
        else:
            stack.extend(ir.inputs_of(graph, node))
    return found


MODELS = {
    "vgg_max": lambda: vgg("max"),
    "vgg_avg": lambda: vgg("avg"),
    "resnet": resnet,
    "vgg_tiny_legacy": lambda: load_onnx(_data("vgg_tiny_legacy.onnx")),
    "resnet_tiny_dynamo": lambda: load_onnx(_data("resnet_tiny_dynamo.onnx")),
    "resnet_tiny_legacy": lambda: load_onnx(_data("resnet_tiny_legacy.onnx")),
}


def _data(name):
    from pathlib import Path

    return Path(__file__).resolve().parent / "data" / name


@pytest.mark.parametrize("mode", ["bsnn", "bsnn-nosn", "if-rate"])
@pytest.mark.parametrize("model", list(MODELS))
def test_converted_models_meet_the_contract_and_keep_the_ann_meaning(model, mode):
    graph = MODELS[model]()
    x = random_input(graph, n=24)
    original = copy.deepcopy(graph)
    snn = convert(graph, x, mode=mode, phases=4, channelwise=model.startswith("resnet"))
    assert ir.graphs_equal(graph, original)  # the input graph is not mutated
    assert_spiking_contract(snn, mode, 4)
    assert snn.graph["metadata"]["bsnn.passes"] == ",".join(pass_names())
    reference = evaluate(graph, x)
    if "Softmax" in snn.graph["metadata"].get("bsnn.removed_output_op", ""):
        np.testing.assert_array_equal(evaluate(snn, x).argmax(1), reference.argmax(1))
    else:
        np.testing.assert_allclose(evaluate(snn, x), reference, rtol=1e-4, atol=1e-5)


def test_scales_stages_and_metadata_survive_the_onnx_file(tmp_path):
    graph = resnet()
    snn = convert(graph, random_input(graph), channelwise=True)
    save_onnx(snn, tmp_path / "snn.onnx")
    back = load_onnx(tmp_path / "snn.onnx")
    assert ir.graphs_equal(snn, back)
    for name in snn.nodes:
        op = ir.op_of(snn, name)
        if isinstance(op, O.Population):
            np.testing.assert_array_equal(ir.op_of(back, name).scale, op.scale)
            assert ir.op_of(back, name).stage == op.stage
    assert back.graph["metadata"]["bsnn.synchronise"] == "applied"


def test_passes_run_alone_in_order_give_what_convert_gives():
    graph = resnet()
    x = random_input(graph)
    step = copy_graph(graph)  # the passes change the graph they are given
    # normalise alone defaults to the percentile; convert resolves the mode's default (search for phase)
    for pass_ in PIPELINE:
        result = pass_(step, calibration=x, mode="phase", phases=3, calibrate=default_calibration("phase"))
        assert isinstance(result, PassResult) and result.graph is step
        step = result.graph
    assert ir.graphs_equal(step, convert(graph, x, mode="phase", phases=3))


def test_until_stops_after_the_named_pass_and_progress_counts_samples():
    graph = vgg("max")
    x = random_input(graph, n=21)
    seen = []
    partial = convert(graph, x, until="normalise", batch_size=8, progress=seen.append, calibrate="percentile")
    assert seen == [8, 8, 5]
    assert partial.graph["metadata"]["bsnn.passes"] == "canonicalise,fold_batchnorm,normalise"
    assert not any(ir.op_of(partial, n).domain for n in partial.nodes)
    with pytest.raises(PassError, match="unknown pass 'sync'"):
        convert(graph, x, until="sync")


def test_convert_and_calibration_passes_never_change_the_callers_graph_even_when_refusing():
    from test_passes_graphs import Builder

    import passes

    graph = vgg("max")
    original = copy.deepcopy(graph)
    assert passes.calibration_passes(graph, "search") > 1
    convert(graph, random_input(graph), until="fold_batchnorm")
    assert ir.graphs_equal(graph, original) and graph.graph == original.graph
    b = Builder(2)
    x = b.input("x", (2, 4, 4))
    h = b.op("odd", O.Softmax(axis=1), b.relu("relu", b.op("drop", O.Dropout(), b.conv("conv", x, 2))))
    refused = b.output(b.gemm("fc", b.op("flat", O.Flatten(), h), 3))
    before = copy.deepcopy(refused)
    with pytest.raises(PassError, match=r"'odd' \(Softmax\)"):
        convert(refused, random_input(refused))
    assert ir.graphs_equal(refused, before) and "drop" in refused and refused.graph == before.graph


def test_pipeline_order_and_descriptions():
    assert pass_names() == ["canonicalise", "fold_batchnorm", "normalise", "to_spiking", "synchronise"]
    assert all(p.description and "\n" not in p.description for p in PIPELINE)
    import passes

    for module in ("canonicalise", "fold_batchnorm", "normalise", "to_spiking", "synchronise"):
        doc = importlib.import_module(f"passes.{module}").__doc__
        assert "Refus" in doc or "refus" in doc, module
    assert passes.__doc__


REFERENCE_RESNETS = ["resnet14.onnx", "resnet14.dynamo.onnx", "resnet32.onnx"]


@pytest.mark.parametrize("filename", REFERENCE_RESNETS)
def test_reference_resnets_get_one_sn_per_shortcut_and_synchronised_sources(filename):
    """The trained reference ResNets (basic blocks, identity and 1x1 projection shortcuts, GAP)."""
    from pathlib import Path

    from bsnn_graph.data import load_dataset

    root = Path(__file__).resolve().parents[1] / "data"
    ann = load_onnx(root / filename)
    shortcuts = [
        n for n in ann.nodes if isinstance(ir.op_of(ann, n), (O.Add, O.Sum)) and len(ir.inputs_of(ann, n)) == 2
    ]
    projections = [
        n
        for n in shortcuts
        if any(
            isinstance(ir.op_of(ann, s), O.Conv) and ir.op_of(ann, s).kernel_shape == (1, 1)
            for s in ir.inputs_of(ann, n)
        )
    ]
    assert len(shortcuts) == {"resnet14": 6, "resnet32": 15}[filename.split(".")[0]]
    assert 0 < len(projections) < len(shortcuts)  # both kinds of shortcut are present
    calib, _ = load_dataset(root / "fmnist_calib.npz", limit=32)
    snn = convert(ann, calib, mode="bsnn", phases=8)
    synchronous = [n for n in snn.nodes if isinstance(ir.op_of(snn, n), O.SynchronousNeuron)]
    assert len(synchronous) == len(shortcuts)
    assert_spiking_contract(snn, "bsnn", 8)  # all sources of every population share a stage
    np.testing.assert_allclose(evaluate(snn, calib), evaluate(ann, calib), rtol=1e-4, atol=1e-4)
    nosn = convert(ann, calib, mode="bsnn-nosn", phases=8)
    assert not any(isinstance(ir.op_of(nosn, n), O.SynchronousNeuron) for n in nosn.nodes)
