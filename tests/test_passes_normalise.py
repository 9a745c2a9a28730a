"""normalise: the streaming percentile (error bound, bounded state) and the rescaling contract."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from test_passes_graphs import Builder, random_input, resnet, vgg

from bsnn_graph import evaluate, ir
from bsnn_graph import ops as O
from bsnn_graph.errors import DataError
from passes import (
    PassError,
    StreamingPercentile,
    canonicalise,
    copy_graph,
    fold_batchnorm,
    normalise,
)
from passes.normalise import population_scales, read_scales

# --------------------------------------------------------------------------- streaming percentile


@pytest.mark.parametrize("p", [0.0, 50.0, 99.0, 99.9, 99.99, 100.0])
def test_streaming_percentile_is_within_the_stated_bound(p):
    rng = np.random.default_rng(0)
    batches = [rng.lognormal(0.0, 2.0, size=(50, 3, 4, 4)) - 0.5 for _ in range(20)]
    estimator = StreamingPercentile()
    for batch in batches:
        estimator.update(batch)
    values = np.concatenate([b.ravel() for b in batches])
    exact = np.percentile(values[values > 0], p)
    assert abs(estimator.percentile(p) - exact) <= estimator.relative_error * exact
    assert estimator.relative_error == pytest.approx(2 ** (1 / 256) - 1)


def test_streaming_percentile_per_channel_and_coarser_bins():
    rng = np.random.default_rng(1)
    batches = [rng.gamma(2.0, np.array([0.1, 1.0, 30.0])[None, :, None], size=(40, 3, 7)) for _ in range(10)]
    estimator = StreamingPercentile(channels=3, bins_per_octave=16)
    for batch in batches:
        estimator.update(batch)
    data = np.concatenate(batches)
    for c in range(3):
        exact = np.percentile(data[:, c], 99.9)
        assert abs(estimator.percentile(99.9)[c] - exact) <= estimator.relative_error * exact
    # the bound is tight enough to matter: a coarse histogram is not exact
    assert estimator.relative_error > 0.02


def test_streaming_percentile_state_does_not_grow_with_batches():
    rng = np.random.default_rng(2)
    estimator = StreamingPercentile(channels=4)
    estimator.update(rng.random((8, 4, 5, 5)))
    size = estimator.nbytes
    for _ in range(300):
        estimator.update(rng.random((8, 4, 5, 5)))
    assert estimator.nbytes == size
    assert estimator.count.sum() == 301 * 8 * 4 * 25


def test_streaming_percentile_without_positive_values_is_nan():
    estimator = StreamingPercentile()
    estimator.update(-np.ones((3, 4)))
    assert np.isnan(estimator.percentile(99.0))


def test_calibration_memory_is_independent_of_the_number_of_batches():
    graph = fold_batchnorm(canonicalise(vgg("max")).graph).graph
    rng = np.random.default_rng(3)

    def peak(batches: int) -> int:
        stream = (rng.random((32, 1, 8, 8), dtype=np.float32) for _ in range(batches))
        tracemalloc.start()
        population_scales(graph, stream)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    few, many = peak(4), peak(80)
    assert many < 1.3 * few + 200_000


# --------------------------------------------------------------------------- rescaling


def _folded(graph):
    return fold_batchnorm(canonicalise(graph).graph).graph


def _check_normalised(folded, normalised, x, input_lambda=1.0):
    """Every population is its ANN activation / lambda; outputs are unchanged."""
    relus = [n for n in folded.nodes if isinstance(ir.op_of(folded, n), O.Relu)]
    ann = evaluate(folded, x, outputs=relus + folded.graph["outputs"])
    snn = evaluate(normalised, x / input_lambda, outputs=relus + normalised.graph["outputs"])
    scales = read_scales(normalised)
    assert set(scales) == set(relus)
    for name in relus:
        lam = scales[name].reshape((-1,) + (1,) * (ann[name].ndim - 2)) if scales[name].ndim else scales[name]
        np.testing.assert_allclose(snn[name] * lam, ann[name], rtol=1e-4, atol=1e-5)
    (out,) = folded.graph["outputs"]
    np.testing.assert_allclose(snn[normalised.graph["outputs"][0]], ann[out], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channelwise", [False, True])
@pytest.mark.parametrize("make", [lambda: vgg("max"), lambda: vgg("avg"), resnet])
def test_normalised_network_is_the_ann_divided_by_lambda(make, channelwise):
    folded = _folded(make())
    x = random_input(folded, n=32)
    result = normalise(copy_graph(folded), calibration=x, channelwise=channelwise, percentile=99.9)
    assert result.modified
    _check_normalised(folded, result.graph, x)
    meta = result.graph.graph["metadata"]
    assert meta["bsnn.channelwise"] == ("true" if channelwise else "false")
    assert meta["bsnn.percentile"] == "99.9" and meta["bsnn.calibration_samples"] == "32"


def test_lambda_is_the_percentile_of_positive_activations():
    folded = _folded(vgg("max"))
    x = random_input(folded, n=40)
    result = normalise(copy_graph(folded), calibration=x, percentile=99.0, batch_size=7)
    scales = read_scales(result.graph)
    activation = evaluate(folded, x, outputs=["relu2"])
    exact = np.percentile(activation[activation > 0], 99.0)
    assert abs(scales["relu2"] - exact) <= StreamingPercentile().relative_error * exact * 1.0001
    per_channel = read_scales(normalise(copy_graph(folded), calibration=x, percentile=99.0, channelwise=True).graph)
    assert per_channel["relu2"].shape == (6,)
    first = activation[:, 0]
    assert per_channel["relu2"][0] == pytest.approx(np.percentile(first[first > 0], 99.0), rel=3e-3)


def test_iterable_of_batches_equals_array_split():
    folded = _folded(vgg("avg"))
    x = random_input(folded, n=30)
    a = normalise(copy_graph(folded), calibration=x, batch_size=8).graph
    b = normalise(copy_graph(folded), calibration=iter([x[:8], x[8:16], x[16:24], x[24:]])).graph
    assert json.loads(a.graph["metadata"]["bsnn.scales"]) == json.loads(b.graph["metadata"]["bsnn.scales"])
    assert ir.graphs_equal(a, b)


def test_identity_shortcut_gets_a_mul_and_projection_conv_is_rescaled():
    folded = _folded(resnet(blocks=("identity", "projection"), maxpool_stem=False))
    x = random_input(folded, n=16)
    graph = normalise(copy_graph(folded), calibration=x, percentile=99.0).graph
    scales = read_scales(graph)
    (mul,) = [n for n in graph.nodes if isinstance(ir.op_of(graph, n), O.Mul)]
    assert ir.inputs_of(graph, mul) == ["stem_relu"]
    assert ir.consumers(graph, mul) == ["b0_add"]
    expected = scales["stem_relu"] / scales["b0_relu2"]
    np.testing.assert_allclose(ir.op_of(graph, mul).constant, expected, rtol=1e-6)
    proj_before, proj_after = ir.op_of(folded, "b1_proj").weight, ir.op_of(graph, "b1_proj").weight
    ratio = scales["b0_relu2"] / scales["b1_relu2"]
    np.testing.assert_allclose(proj_after, proj_before * ratio, rtol=1e-5)


def test_channelwise_shortcut_mul_is_per_channel():
    folded = _folded(resnet(blocks=("identity",), maxpool_stem=False))
    x = random_input(folded, n=16)
    graph = normalise(copy_graph(folded), calibration=x, channelwise=True).graph
    (mul,) = [n for n in graph.nodes if isinstance(ir.op_of(graph, n), O.Mul)]
    assert ir.op_of(graph, mul).constant.shape == (1, 4, 1, 1)
    _check_normalised(folded, graph, x)


def test_output_layer_keeps_ann_units():
    folded = _folded(vgg("max"))
    x = random_input(folded, n=16)
    graph = normalise(copy_graph(folded), calibration=x).graph
    lam = read_scales(graph)["relu3"]
    np.testing.assert_allclose(ir.op_of(graph, "fc2").weight, ir.op_of(folded, "fc2").weight * lam, rtol=1e-6)
    np.testing.assert_array_equal(ir.op_of(graph, "fc2").bias, ir.op_of(folded, "fc2").bias)


def test_configured_input_lambda():
    folded = _folded(vgg("avg"))
    x = random_input(folded, n=16)
    graph = normalise(copy_graph(folded), calibration=x, input_lambda=2.5).graph
    assert ir.op_of(graph, "x").scale == 2.5
    _check_normalised(folded, graph, x, input_lambda=2.5)


def test_pooling_between_populations_gets_a_rescaling_mul():
    b = Builder(11)
    x = b.input("x", (2, 6, 6))
    r1 = b.relu("r1", b.conv("c1", x, 3))
    pooled = b.op("avg", O.AveragePool(kernel_shape=(2, 2), strides=(2, 2), pads=(0,) * 4), r1)
    r2 = b.relu("r2", b.op("shift", O.Add(constant=np.float32(-0.1)), pooled))
    folded = b.output(b.gemm("fc", b.op("flat", O.Flatten(), r2), 3))
    xs = random_input(folded, n=16)
    graph = normalise(copy_graph(folded), calibration=xs).graph
    assert any(isinstance(ir.op_of(graph, n), O.Mul) for n in graph.nodes)
    _check_normalised(folded, graph, xs)


def test_refuses_unfolded_batchnorm_and_empty_data():
    graph = canonicalise(vgg("max")).graph
    with pytest.raises(PassError, match=r"pass normalise .*'bn1' \(BatchNormalization\).*fold_batchnorm"):
        normalise(copy_graph(graph), calibration=random_input(graph))
    folded = fold_batchnorm(graph).graph
    with pytest.raises(DataError, match="no samples"):
        normalise(copy_graph(folded), calibration=[])
    with pytest.raises(DataError, match="do not fit the model input"):
        normalise(copy_graph(folded), calibration=np.zeros((4, 3, 3), np.float32))
