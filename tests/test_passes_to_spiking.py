"""to_spiking: spiking ops replace ReLU / Add+ReLU / MaxPool / the output; refusals name one node."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_graphs import Builder, op_types, random_input, resnet, vgg

from bsnn_graph import evaluate, ir
from bsnn_graph import ops as O
from passes import (
    PassError,
    canonicalise,
    convert,
    copy_graph,
    fold_batchnorm,
    normalise,
    to_spiking,
)
from passes.normalise import read_scales


def _normalised(graph, x):
    return normalise(fold_batchnorm(canonicalise(copy_graph(graph)).graph).graph, calibration=x).graph


@pytest.mark.parametrize("mode", ["bsnn", "bsnn-nosn", "phase", "if-rate"])
def test_vgg_becomes_populations_gates_and_an_accumulator(mode):
    graph = vgg("max")
    x = random_input(graph, n=16)
    normalised = _normalised(graph, x)
    result = to_spiking(copy_graph(normalised), mode=mode, phases=5)
    spiking = result.graph
    assert result.modified
    types = op_types(spiking)
    assert types.count("Population") == 3 and types.count("MaxGate") == 2
    assert "Relu" not in types and "MaxPool" not in types
    assert spiking.graph["outputs"] == ["fc2"]
    assert isinstance(ir.op_of(spiking, "fc2"), O.OutputAccumulator)
    assert ir.inputs_of(spiking, "fc2") == ["fc2_current"]
    for name in spiking.nodes:
        op = ir.op_of(spiking, name)
        if isinstance(op, (O.Population, O.MaxGate, O.OutputAccumulator)):
            assert (op.mode, op.phases) == (mode, 5)
    assert ir.op_of(spiking, "relu2").scale.dtype == np.float32
    assert [ir.op_of(spiking, n).stage for n in ("relu1", "pool1", "relu2", "pool2", "relu3", "fc2")] == [
        1,
        1,
        2,
        2,
        3,
        4,
    ]
    meta = spiking.graph["metadata"]
    assert meta["bsnn.mode"] == mode and meta["bsnn.phases"] == "5"
    np.testing.assert_allclose(evaluate(spiking, x), evaluate(normalised, x), rtol=1e-6)


def test_residual_add_and_relu_become_one_merge_population():
    graph = resnet(blocks=("identity",), maxpool_stem=False)
    x = random_input(graph, n=16)
    normalised = _normalised(graph, x)
    spiking = to_spiking(copy_graph(normalised)).graph
    assert "b0_add" not in spiking
    merge = ir.op_of(spiking, "b0_relu2")
    assert isinstance(merge, O.Population)
    assert ir.inputs_of(spiking, "b0_relu2") == ["b0_conv2", "stem_relu_rescale"]
    assert float(merge.scale) == float(read_scales(normalised)["b0_relu2"])
    np.testing.assert_allclose(evaluate(spiking, x), evaluate(normalised, x), rtol=1e-6)


def _with(op_factory):
    """x -> fc -> relu -> <op> -> fc -> out."""
    b = Builder(12)
    x = b.input("x", (2, 4, 4))
    h = b.relu("relu", b.conv("conv", x, 2))
    h = b.op("odd", op_factory(), h)
    return b.output(b.gemm("fc", b.op("flat", O.Flatten(), h), 3))


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (lambda: O.Clip(min=-1.0, max=6.0), r"'odd' \(Clip\): Clip\(min=-1.0, max=6.0\) is not supported"),
        (lambda: O.Softmax(axis=1), r"'odd' \(Softmax\): Softmax inside the network"),
        (lambda: O.Pad(pads=(0, 0, 1, 1, 0, 0, 1, 1), mode="edge"), r"'odd' \(Pad\): Pad in mode 'edge'"),
    ],
)
def test_unconvertible_ops_stop_the_conversion_before_calibration(factory, pattern):
    graph = _with(factory)
    calls = []
    with pytest.raises(PassError, match=r"pass to_spiking \(after: canonicalise, fold_batchnorm\): node " + pattern):
        convert(graph, random_input(graph), progress=calls.append)
    assert calls == []  # refused before any calibration batch


def test_maxpool_not_after_a_population_is_refused():
    b = Builder(13)
    x = b.input("x", (2, 4, 4))
    h = b.op("pool", O.MaxPool(kernel_shape=(2, 2), strides=(2, 2), pads=(0,) * 4), x)
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), b.relu("r", b.conv("c", h, 2))), 3))
    with pytest.raises(PassError, match=r"'pool' \(MaxPool\): MaxPool must read a ReLU population, reads 'x'"):
        convert(graph, random_input(graph))


def test_maxpool_after_a_residual_add_without_relu_is_refused():
    b = Builder(14)
    x = b.input("x", (2, 4, 4))
    r1 = b.relu("r1", b.conv("c1", x, 2))
    s = b.op("add", O.Add(), b.conv("c2", r1, 2), r1)
    h = b.op("pool", O.MaxPool(kernel_shape=(2, 2), strides=(2, 2), pads=(0,) * 4), s)
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), h), 3))
    with pytest.raises(PassError, match=r"'pool' \(MaxPool\).*reads 'add' \(Add\)"):
        convert(graph, random_input(graph))


def test_residual_add_with_no_relu_before_the_classifier_is_linear_and_allowed():
    b = Builder(15)
    x = b.input("x", (2, 4, 4))
    r1 = b.relu("r1", b.conv("c1", x, 2))
    s = b.op("add", O.Add(), b.conv("c2", b.relu("r2", b.conv("c3", r1, 2)), 2), r1)
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), s), 3))
    xs = random_input(graph)
    spiking = convert(graph, xs)
    assert isinstance(ir.op_of(spiking, "add"), O.Add)
    np.testing.assert_allclose(evaluate(spiking, xs), evaluate(graph, xs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("options", "pattern"), [({"mode": "rate"}, "mode 'rate'"), ({"phases": 17}, "1..16")])
def test_bad_mode_or_phases_are_refused(options, pattern):
    graph = vgg("avg")
    with pytest.raises(PassError, match=pattern):
        convert(graph, random_input(graph), **options)
    normalised = _normalised(graph, random_input(graph))
    with pytest.raises(PassError, match=pattern):
        to_spiking(normalised, **options)


def test_requires_a_normalised_graph():
    graph = fold_batchnorm(canonicalise(vgg("avg")).graph).graph
    with pytest.raises(PassError, match="not normalised"):
        to_spiking(graph)


def test_two_outputs_are_refused():
    b = Builder(16)
    x = b.input("x", (3,))
    graph = b.output(b.gemm("a", x, 2), b.gemm("b", x, 2))
    with pytest.raises(PassError, match="exactly one output"):
        convert(graph, random_input(graph))
