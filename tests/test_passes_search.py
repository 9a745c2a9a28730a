"""Lambda by search (passes.lambda_search): the objective, the layer-by-layer property, the real network, wiring."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from test_passes_graphs import Builder, random_input, resnet, vgg
from test_passes_normalise import _check_normalised, _folded

from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.errors import DataError
from passes import PassError, calibration_passes, convert, copy_graph, normalise
from passes.calibration import population_scales
from passes.lambda_search import (
    _level_plan,
    candidate_lambdas,
    fake_quantise,
    population_levels,
    quantised_forward,
    search_passes,
    search_scales,
)

DATA = Path(__file__).resolve().parent.parent / "data"


def _quantised(z, lam, phases, offset=0.5):
    """The test's own K-bit model: lam * clip(floor(z / lam 2^K + offset), 0, 2^K - 1) 2^-K (float64)."""
    levels = 2.0**phases
    return lam * np.clip(np.floor(z / lam * levels + offset), 0, levels - 1) / levels


def _error(z, target, lam, phases):
    return float(((_quantised(z, lam, phases) - target) ** 2).sum())


def _one_population(weight=1.0, bias=0.0):
    """Input (1,) -> Gemm (weight, bias) -> Relu -> Gemm -> output."""
    b = Builder(3)
    x = b.input("x", (1,))
    h = b.op("fc1", O.Gemm(weight=np.array([[weight]], np.float32), bias=np.array([bias], np.float32)), x)
    h = b.relu("relu1", h)
    return b.output(b.gemm("fc2", h, 2))


def _chain(bias=-0.3):
    """Input (1,) -> Gemm identity -> Relu -> Gemm (1, bias) -> Relu -> Gemm -> output: two populations."""
    b = Builder(4)
    x = b.input("x", (1,))
    h = b.relu("relu1", b.op("fc1", O.Gemm(weight=np.ones((1, 1), np.float32), bias=np.zeros(1, np.float32)), x))
    h = b.op("fc2", O.Gemm(weight=np.ones((1, 1), np.float32), bias=np.array([bias], np.float32)), h)
    h = b.relu("relu2", h)
    return b.output(b.gemm("fc3", h, 2))


# --------------------------------------------------------------------------- the objective, by hand


@pytest.mark.parametrize("phases", [2, 3])
def test_uniform_activations_give_the_lambda_at_which_nothing_saturates(phases):
    graph = _one_population()
    x = np.linspace(0.0, 1.0, 20001, dtype=np.float32).reshape(-1, 1)
    lambdas, samples = search_scales(graph, x, phases=phases)
    expected = 2**phases / (2**phases - 0.5)  # max 2^K / (2^K - 1/2): the top of the grid
    assert samples == 20001
    assert float(lambdas["relu1"]) == pytest.approx(expected, rel=2e-3)
    # far from the percentile, which saturates the top tenth of an LSB-wide band
    assert abs(float(population_scales(graph, x)[0]["relu1"]) - expected) > 0.05


def test_heavy_tailed_activations_give_an_interior_optimum_no_worse_than_the_percentile():
    phases = 3
    z = np.random.default_rng(0).exponential(1.0, 200_000).astype(np.float32)
    graph = _one_population()
    lam = float(search_scales(graph, z.reshape(-1, 1), phases=phases)[0]["relu1"])
    fine = np.linspace(0.5, 1.2 * z.max(), 6000)
    errors = np.array([_error(z, z, f, phases) for f in fine])
    best = fine[errors.argmin()]
    assert np.percentile(z, 90) < best < 0.5 * z.max()  # interior: neither end of the grid
    assert lam == pytest.approx(best, rel=0.03)
    assert _error(z, z, lam, phases) <= errors.min() * 1.01
    percentile = float(population_scales(graph, z.reshape(-1, 1))[0]["relu1"])
    assert _error(z, z, lam, phases) < 0.75 * _error(z, z, percentile, phases)  # measured: 0.52


def test_candidates_span_low_to_unsaturated_and_include_the_percentile():
    table = candidate_lambdas(np.array([1.0, 0.0]), np.array([4.0, 0.0]), np.array([3.0, 1.0]), 4, count=8)
    assert table.shape == (2, 9)
    np.testing.assert_allclose(table[0, [0, 7, 8]], [1.0, 4.0 / (1 - 2**-5), 3.0], rtol=1e-6)
    assert np.all(np.diff(np.log(table[0, :8])) == pytest.approx(np.log(4 / (1 - 2**-5)) / 7))
    np.testing.assert_array_equal(table[1], 1.0)  # no positive activation: only its percentile lambda
    truncating = candidate_lambdas(1.0, 4.0, 3.0, 4, "zero", count=8)
    assert truncating[0, 7] == pytest.approx(4.0 / (1 - 2**-4))


# --------------------------------------------------------------------------- layer by layer


def test_second_population_is_searched_on_the_quantised_first():
    phases, bias = 2, -0.5
    graph = _chain(bias=bias)
    z1 = np.linspace(0.0, 1.0, 40001, dtype=np.float32)
    lambdas, _ = search_scales(graph, z1.reshape(-1, 1), phases=phases)
    assert population_levels(graph) == {"relu1": 1, "relu2": 2} and search_passes(graph) == 3
    target = np.maximum(z1 + bias, 0)  # the float ANN's second activation
    z2 = _quantised(z1, float(lambdas["relu1"]), phases) + bias  # its pre-activation in the K-bit network
    positive = target[target > 0]  # brute force over the range the candidates span
    fine = np.geomspace(np.percentile(positive, 90), positive.max() / (1 - 2 ** -(phases + 1)), 3000)
    quantised_errors = np.array([_error(z2, target, f, phases) for f in fine])
    float_errors = np.array([_error(z1 + bias, target, f, phases) for f in fine])
    ignoring = fine[float_errors.argmin()]  # what a search ignoring the upstream quantisation finds
    searched = float(lambdas["relu2"])
    assert _error(z2, target, searched, phases) <= quantised_errors.min() * 1.01
    assert abs(np.log(searched / ignoring)) > 0.15  # measured: 0.46 against 0.57
    assert _error(z2, target, searched, phases) < 0.7 * _error(z2, target, ignoring, phases)


# --------------------------------------------------------------------------- the real network


def _clipped_vgg():
    b = Builder(7)
    x = b.input("x", (2, 8, 8))
    h = b.op("clip1", O.Clip(min=0.0, max=0.8), b.conv("conv1", x, 4))
    h = b.op("pool1", O.MaxPool(kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0)), h)
    h = b.relu("relu2", b.conv("conv2", h, 6))
    h = b.op("pool2", O.AveragePool(kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0)), h)
    h = b.relu("relu3", b.gemm("fc1", b.op("flatten", O.Flatten(), h), 10))
    return b.output(b.gemm("fc2", h, 4))


@pytest.mark.parametrize(
    "make, channelwise, initial_potential",
    [(vgg, False, "half"), (vgg, True, "zero"), (resnet, False, "half"), (_clipped_vgg, False, "half")],
)
def test_converted_network_emits_the_searched_k_bit_network(make, channelwise, initial_potential):
    from runtime.oracle import dense_bsnn

    phases = 3
    graph = make()
    x = random_input(graph, n=48)
    snn = convert(graph, x, phases=phases, calibrate="search", channelwise=channelwise,
                  initial_potential=initial_potential)
    folded = convert(graph, x, until="fold_batchnorm")
    lambdas = {n: np.asarray(ir.op_of(snn, n).scale, np.float64) for n in population_levels(folded)}
    expected = quantised_forward(folded, x, lambdas, phases, initial_potential)
    oracle = dense_bsnn(snn, x, 1)
    for name, lam in lambdas.items():
        values = oracle.values[name][0]
        unit = np.broadcast_to(lam.reshape((1, -1) + (1,) * (values.ndim - 2)) if lam.ndim else lam, values.shape)
        got = values * unit
        differ = ~np.isclose(got, expected[name], rtol=1e-5, atol=1e-6)
        assert differ.mean() <= 2e-3, name  # float32 ties only, each one LSB (lambda 2^-K) apart
        np.testing.assert_allclose(np.abs(got - expected[name])[differ], unit[differ] / 2**phases, rtol=1e-4)
    (out,) = folded.graph["outputs"]
    np.testing.assert_allclose(oracle.logits[0], expected[out].reshape(len(x), -1), rtol=1e-3, atol=1e-3)
    assert snn.graph["metadata"]["bsnn.calibrate"] == "search"
    assert float(snn.graph["metadata"]["bsnn.calibration_seconds"]) > 0


def test_fake_quantise_is_what_a_fire_period_emits():
    from runtime.oracle import quantise

    z = np.random.default_rng(5).normal(0.5, 1.0, (200, 3, 4)).astype(np.float32)
    lam = np.array([0.5, 1.0, 2.0])
    for start, offset in (("half", 2**-5), ("zero", 0.0)):
        emitted = quantise(np.minimum(z / lam[:, None] + offset, 1.5 / lam[:, None]), 4)[0] * lam[:, None]
        np.testing.assert_allclose(fake_quantise(z, lam, 4, start, ceiling=1.5), emitted, atol=1e-6)


# --------------------------------------------------------------------------- options and refusals


def test_channelwise_search_gives_per_channel_lambdas_and_a_valid_normalisation():
    folded = _folded(vgg("max"))
    x = random_input(folded, n=32)
    per_channel, _ = search_scales(folded, x, phases=4, channelwise=True)
    assert per_channel["relu2"].shape == (6,) and len(set(per_channel["relu2"].tolist())) > 1
    result = normalise(copy_graph(folded), calibration=x, calibrate="search", channelwise=True, phases=4)
    _check_normalised(folded, result.graph, x)
    meta = result.graph.graph["metadata"]
    assert meta["bsnn.calibrate"] == "search" and meta["bsnn.channelwise"] == "true"


def test_progress_covers_every_pass_over_the_calibration_data():
    graph = resnet()
    x = random_input(graph, n=20)
    seen = []
    convert(graph, x, calibrate="search", phases=4, batch_size=8, progress=seen.append)
    passes = calibration_passes(graph, "search")
    assert passes == 1 + max(population_levels(convert(graph, x, until="fold_batchnorm")).values())
    assert sum(seen) == 20 * passes and calibration_passes(graph) == 1


def test_search_memory_is_bounded_by_the_frontier_budget_not_the_number_of_batches():
    """The values kept between passes take at most ``frontier_bytes`` of memory; the rest goes to files."""
    import tracemalloc

    folded = _folded(vgg("max"))
    rng = np.random.default_rng(3)
    batches = {n: [rng.random((16, 1, 8, 8), dtype=np.float32) for _ in range(n)] for n in (1, 4, 60)}

    def peak(n: int, budget: int) -> tuple[int, dict]:
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        lambdas, _ = search_scales(folded, batches[n], phases=4, frontier_bytes=budget)
        top = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        return top, lambdas

    peak(1, 0)  # compile the kernel first
    few, _ = peak(4, 0)
    many, spilled = peak(60, 0)
    assert many < 1.3 * few + 200_000  # everything on disk: independent of the number of batches
    budget = 400_000
    bounded, in_memory = peak(60, budget)
    everything, held = peak(60, 1 << 30)
    assert bounded < 1.3 * few + 200_000 + budget < everything  # the budget is what grows, and it binds
    for name in spilled:  # where the values were kept changes nothing
        assert np.array_equal(spilled[name], in_memory[name]) and np.array_equal(spilled[name], held[name])


def test_each_node_is_evaluated_in_one_pass_only():
    """Later passes start from the values kept by earlier ones: every ancestor of a population's input is
    evaluated in exactly one pass (P node evaluations in all, not one per level each)."""
    graph = _folded(resnet())
    levels = population_levels(graph)
    source = graph.graph["inputs"][0]
    evaluated: set[str] = set()
    seen: list[str] = []
    for level in range(1, max(levels.values()) + 1):
        members = [p for p, lv in levels.items() if lv == level]
        order, keep = _level_plan(graph, members, evaluated)
        assert set(members) <= set(order) and not keep & set(members)
        assert all(any(c not in evaluated for c in ir.consumers(graph, n)) for n in keep)
        seen += [n for n in order if n not in members]
    wanted = set().union(*(nx.ancestors(graph, ir.inputs_of(graph, p)[0]) | {ir.inputs_of(graph, p)[0]}
                           for p in levels)) - {source}
    assert sorted(seen) == sorted(wanted)  # each once


@pytest.mark.parametrize(
    "mode, expected", [("bsnn", "search"), ("bsnn-nosn", "search"), ("phase", "search"), ("if-rate", "percentile")]
)
def test_default_calibration_is_search_for_the_k_bit_codes_and_the_percentile_for_if_rate(mode, expected):
    graph = vgg("max")
    x = random_input(graph, n=16)
    default = convert(graph, x, mode=mode, phases=3)
    chosen = convert(graph, x, mode=mode, phases=3, calibrate=expected)
    other = convert(graph, x, mode=mode, phases=3, calibrate=({"search", "percentile"} - {expected}).pop())
    assert default.graph["metadata"]["bsnn.calibrate"] == expected
    assert default.graph["metadata"]["bsnn.scales"] == chosen.graph["metadata"]["bsnn.scales"]
    assert default.graph["metadata"]["bsnn.scales"] != other.graph["metadata"]["bsnn.scales"]
    assert calibration_passes(graph, expected) == (1 if expected == "percentile" else search_passes(_folded(graph)))


def test_refusals_are_one_line():
    graph = _clipped_vgg()
    x = random_input(graph, n=8)
    with pytest.raises(DataError, match=r"^calibrate 'grid' is not one of percentile, search$"):
        convert(graph, x, calibrate="grid")
    seen = []
    with pytest.raises(PassError, match=r"'clip1' \(Clip\).*per-channel lambdas is not supported"):
        convert(graph, x, calibrate="search", channelwise=True, progress=seen.append)
    assert seen == []  # refused before calibrating
    with pytest.raises(DataError, match="reads the calibration data several times"):
        search_scales(_folded(vgg("max")), (b for b in [random_input(vgg("max"), n=4)]))


# --------------------------------------------------------------------------- the bundled model


@pytest.mark.slow  # 84 s measured on the shared machine under load: the search reads the calibration data 7 times
@pytest.mark.xfail(
    strict=True,
    reason="measured: search 93.80 % < percentile 99.9 93.85 % at the first full output (one image in 2000); "
    "remove this marker when the search beats the percentile here",
)
def test_search_is_at_least_as_accurate_as_the_percentile_on_vgg_max_at_k4():
    import runtime
    from bsnn_graph import load_onnx
    from bsnn_graph.data import load_dataset

    calib, _ = load_dataset(DATA / "fmnist_calib.npz")
    x, y = load_dataset(DATA / "fmnist_test.npz")
    graph = load_onnx(DATA / "vgg_max.onnx")
    accuracy = {}
    for calibrate in ("percentile", "search"):
        snn = convert(graph, calib, phases=4, percentile=99.9, calibrate=calibrate)
        stage = max(ir.op_of(snn, n).stage for n in snn.nodes if isinstance(ir.op_of(snn, n), O.Population))
        accuracy[calibrate] = runtime.simulate(snn, x, (stage + 1) * 4).accuracy(y)[-1]
    assert len(x) == 2000
    assert accuracy["search"] >= accuracy["percentile"], accuracy
