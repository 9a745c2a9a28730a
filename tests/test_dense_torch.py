"""The dense PyTorch baseline (benchmarks/dense_torch.py) against plain numpy references and the runtime.

- mode ``bsnn`` against the spec's exactness oracle, written here in numpy:
  per period, a population emits ``Q_K(V)`` with ``V = residual + W' q + b'``,
  a max gate the max of its window's K-bit values, and the output V at the
  end of each output integrate period is the sum of ``W' q + b'`` so far;
- the linear projections (constant terms included) against the reference
  executor;
- the ``if-rate`` / ``phase`` max-gate rule against a numpy step loop;
- predictions equal ``runtime.simulate``'s and the numpy step simulator's
  (``runtime.reference``, the executable spec) on the same graphs.

``benchmarks/dense_torch.py`` and ``benchmarks/compare_runtime.py`` are
loaded by file path (the benchmarks are scripts, not a package).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spiking_graphs import Builder, with_mode

from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.errors import BsnnError, DataError, ModelError
from bsnn_graph.executor import evaluate
from runtime.reference import reference_simulate

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as module ``name`` (registered, so a script importing it finds it)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


DenseSimulator = load_benchmark("dense_torch").DenseSimulator

K = 8


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: the tests share two cores with other work, where OpenMP barriers stall."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- hand-built graphs


def vgg_like(mode="bsnn", seed=0):
    """Pad, conv, max gate 2x2; two convs concatenated; max gate 3x3/2 pad 1 ceil mode; conv with a constant
    added before it; average pool (ceil mode, padded); fc; fc output. L = 4."""
    b = Builder((1, 12, 12), mode, K, seed, calibration=48)
    padded = b.op("pad", O.Pad(pads=(0, 0, 1, 1, 0, 0, 1, 1)), ["x"])
    p1 = b.population([b.conv(padded, 4, pad=0)], 1)  # 12x12
    g1 = b.maxgate(p1)  # 6x6
    cat = b.op("cat", O.Concat(axis=1), [b.conv(g1, 4), b.conv(g1, 2, k=1, pad=0)])
    p2 = b.population([cat], 2)
    g2 = b.maxgate(p2, k=3, stride=2, pad=1, ceil_mode=True)  # 4x4
    shifted = b.op("shift", O.Add(constant=np.full((1, 6, 1, 1), 0.05, np.float32)), [g2])
    p3 = b.population([b.conv(shifted, 8, pad=(1, 0, 1, 0))], 3)  # asymmetric pads: 4x4
    avg = b.op("avg", O.AveragePool(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True), [p3])
    flat = b.op("flat", O.Flatten(axis=1), [avg])
    p4 = b.population([b.gemm(flat, 16)], 4)
    return b.output(b.gemm(p4, 10), 5)


def resnet_like(mode="bsnn", seed=1):
    """Stem conv + max gate; an identity block (SN + Mul on the shortcut); a projection block (SN + 1x1 conv
    stride 2); global average pool; fc output. L = 5."""
    b = Builder((1, 12, 12), mode, K, seed, calibration=48)
    sync = mode != "bsnn-nosn"
    p1 = b.population([b.conv("x", 4)], 1)
    g = b.maxgate(p1)
    p2 = b.population([b.conv(g, 4)], 2)
    short = b.synchronous(g, 2) if sync else g
    ident = b.op("mul", O.Mul(constant=np.full((1, 4, 1, 1), 0.8, np.float32)), [short])
    p3 = b.population([b.conv(p2, 4), ident], 3)
    p4 = b.population([b.conv(p3, 8, stride=2)], 4)
    short = b.synchronous(p3, 4) if sync else p3
    proj = b.conv(short, 8, k=1, stride=2, pad=0)
    p5 = b.population([b.conv(p4, 8), proj], 5)
    gap = b.op("gap", O.GlobalAveragePool(), [p5])
    flat = b.op("flat", O.Flatten(axis=1), [gap])
    return b.output(b.gemm(flat, 10), 6)


# --------------------------------------------------------------------------- numpy oracle


def oracle_logits(graph, x, waves):
    """Output V after each of ``waves`` output integrate periods: the spec's exactness oracle (runtime.oracle)."""
    from runtime import oracle

    return oracle.dense_bsnn(graph, x, waves).logits


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).random((12, 1, 12, 12)).astype(np.float32)


@pytest.mark.parametrize("make, largest", [(vgg_like, 4), (resnet_like, 5)])
@pytest.mark.parametrize("skip_silent", [False, True])
def test_bsnn_matches_oracle(make, largest, skip_silent, images):
    graph = make()
    waves = 3
    timesteps = (largest + 2 * waves) * K  # the output's 3rd integrate period ends at period L + 4
    result = DenseSimulator(graph, skip_silent=skip_silent).simulate(images, timesteps, batch_size=5)
    expected = oracle_logits(graph, images, waves)
    got = result.logits[[largest + 2 * m for m in range(waves)]]
    assert np.abs(expected).max() > 1.0  # the network is active, not a trivial zero
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the output holds still during its fire periods and before period L holds only biases
    np.testing.assert_array_equal(result.logits[largest + 1], result.logits[largest])
    assert np.all(result.predictions[(largest + 1) * K - 1] == expected[0].argmax(axis=1))


def test_modes_and_batches_are_consistent(images):
    graph = resnet_like()
    sim = DenseSimulator(graph)
    whole = sim.simulate(images, 40, batch_size=64)
    split = sim.simulate(images, 40, batch_size=4, threads=1)
    np.testing.assert_array_equal(whole.predictions, split.predictions)
    np.testing.assert_allclose(whole.logits, split.logits, rtol=1e-5, atol=1e-5)
    assert whole.predictions.shape == (40, len(images)) and whole.predictions.dtype == np.int32
    assert whole.logits.shape == (5, len(images), 10)
    np.testing.assert_array_equal(sim.run(images[:3], 40), whole.predictions[:, :3])


def test_linear_projections_match_executor():
    """Output fed straight from the input through the linear ops: if-rate V after one step = W' x + b'."""
    rng = np.random.default_rng(3)
    g = ir.new_graph("linear")
    ir.add_node(g, "x", O.Input(shape=(2, 5, 5)))
    w = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
    ir.add_node(g, "pad", O.Pad(pads=(0, 0, 1, 0, 0, 0, 0, 2), value=0.5), ["x"])
    ir.add_node(g, "conv", O.Conv(weight=w, bias=np.arange(3, dtype=np.float32), strides=(1, 2), pads=(1, 0, 0, 1),
                                  dilations=(2, 1)), ["pad"])  # fmt: skip
    ir.add_node(g, "avg", O.AveragePool(kernel_shape=(3, 3), strides=(3, 3), pads=(1, 1, 1, 1), ceil_mode=True,
                                        count_include_pad=True), ["x"])  # fmt: skip
    ir.add_node(g, "avg2", O.AveragePool(kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0),
                                         dilations=(2, 2)), ["x"])  # fmt: skip
    ir.add_node(g, "sum", O.Sum(), ["avg", "avg2"])
    ir.add_node(g, "f1", O.Flatten(axis=1), ["conv"])
    ir.add_node(g, "f2", O.Flatten(axis=1), ["sum"])
    ir.add_node(g, "cat", O.Concat(axis=1), ["f1", "f2"])
    n = ir.shape_of(g, "cat")[0]
    ir.add_node(g, "fc", O.Gemm(weight=rng.standard_normal((6, n)).astype(np.float32),
                                bias=rng.standard_normal(6).astype(np.float32)), ["cat"])  # fmt: skip
    ir.add_node(g, "r", O.Reshape(shape=(6, 1)), ["fc"])
    ir.add_node(g, "mm", O.MatMul(weight=rng.standard_normal((1, 2)).astype(np.float32)), ["r"])
    ir.add_node(g, "m", O.Mul(constant=np.array([2.0, -1.0], np.float32)), ["mm"])
    ir.add_node(g, "a", O.Add(constant=np.full((1, 1, 2), 0.25, np.float32)), ["m"])
    ir.add_node(g, "gap", O.GlobalAveragePool(), ["a"])
    ir.add_node(g, "out", O.OutputAccumulator(mode="if-rate", stage=1), ["gap"])
    g.graph["outputs"] = ["out"]
    ir.verify(g)
    x = rng.standard_normal((4, 2, 5, 5)).astype(np.float32)
    got = DenseSimulator(g).simulate(x, 1).logits[0]
    np.testing.assert_allclose(got, evaluate(g, x).reshape(4, -1), rtol=1e-4, atol=1e-5)


def _gate_graph(mode, drive):
    """x (16,) -> Reshape (1, 4, 4) -> population (input-fed) -> max gate 2x2/2 -> flatten -> identity fc -> output."""
    g = ir.new_graph("gate")
    ir.add_node(g, "x", O.Input(shape=(16,)))
    ir.add_node(g, "r", O.Reshape(shape=(1, 4, 4)), ["x"])
    ir.add_node(g, "pop", O.Population(mode=mode, phases=4, stage=1, initial_potential="zero"), ["r"])
    ir.add_node(g, "gate", O.MaxGate(mode=mode, phases=4, stage=1, kernel_shape=(2, 2), strides=(2, 2),
                                     pads=(0, 0, 0, 0), dilations=(1, 1)), ["pop"])  # fmt: skip
    ir.add_node(g, "f", O.Flatten(axis=1), ["gate"])
    ir.add_node(g, "fc", O.Gemm(weight=np.eye(4, dtype=np.float32), bias=None), ["f"])
    ir.add_node(g, "out", O.OutputAccumulator(mode=mode, phases=4, stage=2), ["fc"])
    g.graph["outputs"] = ["out"]
    ir.verify(g)
    return g, np.asarray(drive, np.float32).reshape(1, 16)


@pytest.mark.parametrize("mode", ["if-rate", "phase"])
def test_rate_gate_follows_the_largest_emitter(mode):
    """Baseline max pooling: pass the spikes of the member with the largest emitted value so far (this step
    included), ties to the lowest index; checked against a numpy step loop."""
    drive = [0.25, 0.5, 0.5, 0.125, 0.375, 0.375, 0.75, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.25, 0.125, 1.0]
    graph, x = _gate_graph(mode, drive)
    T, phases = 24, 4
    result = DenseSimulator(graph).simulate(x, T)
    a = x.reshape(4, 4)
    V = np.zeros((4, 4), np.float32)
    emitted = np.zeros((4, 4), np.float32)
    out = np.zeros(4, np.float32)
    expected = []
    for t in range(T):
        k = t % phases
        w = np.float32(1.0) if mode == "if-rate" else np.float32(2.0 ** -(k + 1))
        V += a if mode == "if-rate" else a * np.float32(1.0 / phases)
        spk = V >= w
        V[spk] -= w
        emitted[spk] += w
        for o, (oy, ox) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
            window = [(oy + dy, ox + dx) for dy in (0, 1) for dx in (0, 1)]
            best = max(range(4), key=lambda i: (emitted[window[i]], -i))
            if spk[window[best]]:
                out[o] += w
        if k == phases - 1:
            expected.append(out.copy())
    np.testing.assert_allclose(result.logits[:, 0], np.stack(expected), rtol=0, atol=1e-6)
    assert np.abs(np.stack(expected)).sum() > 0


def test_bistable_gate_drops_candidates():
    """bsnn: one gate window holds 0.75 (0.11) and 0.625 (0.101); the gate emits 0.75 exactly, not the OR (0.875)."""
    drive = [0.75, 0.625, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    graph, x = _gate_graph("bsnn", drive)
    result = DenseSimulator(graph).simulate(x, 4 * 4)
    # output integrates in period 1 (the population's first fire period)
    np.testing.assert_allclose(result.logits[1, 0], [0.75, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(result.logits[3, 0], [1.5, 0, 0, 0], atol=1e-7)


def test_refusals(images):
    graph = resnet_like()
    with pytest.raises(DataError, match="does not fit graph input"):
        DenseSimulator(graph).simulate(np.zeros((2, 1, 10, 10), np.float32), 8)
    with pytest.raises(BsnnError, match="timesteps"):
        DenseSimulator(graph).simulate(images, 0)
    with pytest.raises(ModelError, match="synchronisation"):
        DenseSimulator(resnet_like("bsnn-nosn"), mode="bsnn")
    # bsnn-nosn runs the same graph
    assert DenseSimulator(resnet_like("bsnn-nosn")).run(images[:2], 16).shape == (16, 2)
    bad = vgg_like()
    first = next(n for n in ir.topological_order(bad) if isinstance(ir.op_of(bad, n), O.Population))
    bad.nodes[first]["op"] = O.Relu()
    with pytest.raises(ModelError, match="Relu"):
        DenseSimulator(bad)


# --------------------------------------------------------------------------- against the runtime

runtime_cases = [
    ("bsnn", vgg_like),
    ("bsnn", resnet_like),
    ("if-rate", vgg_like),
    ("if-rate", resnet_like),
    ("phase", vgg_like),
    ("bsnn-nosn", resnet_like),
]


@pytest.mark.parametrize("mode, make", runtime_cases)
def test_predictions_equal_runtime(mode, make, images):
    runtime = pytest.importorskip("runtime")
    if not hasattr(runtime, "simulate"):
        pytest.skip("runtime.simulate is not available")
    graph = make(mode) if mode == "bsnn-nosn" else with_mode(make(), mode)
    T = 56
    for cone in (False, True):  # both simulate every period, or both only the light cone of the output
        theirs = runtime.simulate(graph, images, T, batch_size=len(images), threads=1, full_dynamics=not cone)
        ours = DenseSimulator(graph, light_cone=cone).simulate(images, T, batch_size=len(images), count_spikes=True)
        np.testing.assert_array_equal(ours.predictions, theirs.predictions)
        np.testing.assert_allclose(ours.logits, theirs.logits, rtol=1e-3, atol=1e-3)
        spikes = sum(c.reshape(len(images), -1).sum(axis=1) for c in theirs.spike_counts.values())
        assert spikes.sum() > 0
        # float32 summation order may flip a spike at an exact threshold tie, nothing more
        assert np.abs(ours.spikes - spikes).sum() <= 1e-4 * spikes.sum()


@pytest.mark.parametrize("mode, make", runtime_cases)
def test_predictions_equal_reference(mode, make, images):
    """The dense baseline against the numpy step simulator of the spec, both schedules."""
    graph = make(mode) if mode == "bsnn-nosn" else with_mode(make(), mode)
    T = 56
    for cone in (False, True):
        reference = reference_simulate(graph, images, T, full_dynamics=not cone)
        ours = DenseSimulator(graph, light_cone=cone).simulate(images, T, batch_size=len(images), count_spikes=True)
        np.testing.assert_array_equal(ours.predictions, reference.predictions)
        np.testing.assert_allclose(ours.logits, reference.logits, rtol=1e-3, atol=1e-3)
        spikes = sum(reference.spike_counts.values())
        assert spikes.sum() > 0
        # float32 summation order may flip a spike at an exact threshold tie, nothing more
        assert np.abs(ours.spikes - spikes).sum() <= 1e-4 * spikes.sum()


def test_compare_script_quick(tmp_path):
    """benchmarks/compare_runtime.py end to end on a tiny converted ResNet: table, JSON, both simulators agree."""
    runtime = pytest.importorskip("runtime")
    if not hasattr(runtime, "simulate"):
        pytest.skip("runtime.simulate is not available")
    compare_runtime = load_benchmark("compare_runtime")  # it imports dense_torch, registered above

    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x=rng.random((40, 1, 12, 12)).astype(np.float32), y=rng.integers(0, 10, 40))
    out = tmp_path / "compare.json"
    model = Path(__file__).resolve().parent / "data" / "resnet_tiny_legacy.onnx"
    compare_runtime.main([str(model), "--calib", str(data), "--data", str(data), "--modes", "bsnn,if-rate",
                          "--quick", "--threads", "1", "--json-out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert [m["mode"] for m in report["modes"]] == ["bsnn", "if-rate"]
    assert report["timesteps"] == (report["modes"][0]["largest_stage"] + 1) * report["phases"]
    for record in report["modes"]:
        assert record["agreement"] == 1.0
        assert record["accuracy_runtime"] == record["accuracy_dense"]
        assert {r["simulator"] for r in record["runs"]} == {"runtime", "dense"}
        assert all(r["images_per_s"] > 0 and r["latency_ms"] > 0 for r in record["runs"])
        assert record["sops_per_image"] > 0


@pytest.mark.parametrize("make", [vgg_like, resnet_like])
def test_input_lambda_divides_the_input(make, images):
    """Input.scale = lambda_in: the simulator feeds x / lambda_in (as runtime.simulate does)."""
    graph = with_mode(make(), "bsnn")
    scaled = graph.copy()
    name = next(n for n in scaled.nodes if isinstance(ir.op_of(scaled, n), O.Input))
    scaled.nodes[name]["op"] = dataclasses.replace(ir.op_of(scaled, name), scale=4.0)
    plain = DenseSimulator(graph).simulate(images, 40, batch_size=len(images))
    ours = DenseSimulator(scaled).simulate(4.0 * images, 40, batch_size=len(images))
    np.testing.assert_array_equal(ours.predictions, plain.predictions)
    np.testing.assert_allclose(ours.logits, plain.logits, rtol=1e-5, atol=1e-5)
