"""runtime.simulate / runtime.load: result fields, streaming, recording, validation and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from spiking_graphs import chain_graph, resnet_graph, vgg_graph

import bsnn_graph
import runtime
from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.errors import BsnnError, DataError, ModelError


@pytest.fixture(scope="module")
def vgg():
    return vgg_graph()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(9).random((5, 1, 12, 12)).astype(np.float32)


def test_result_fields(vgg, images):
    result = runtime.simulate(vgg, images, 50, batch_size=2, per_neuron_counts=True)
    assert result.predictions.shape == (50, 5) and result.predictions.dtype == np.int32
    assert result.logits.shape == (7, 5, 10) and result.logits.dtype == np.float32  # P = ceil(50 / 8)
    np.testing.assert_array_equal(result.predictions[-1], result.logits[-1].argmax(axis=1))
    names = [p["name"] for p in result.populations]
    assert names == list(result.spike_counts) == list(result.sops_per_population)
    assert [p["op_type"] for p in result.populations].count("MaxGate") == 1
    for pop in result.populations:
        counts = result.spike_counts[pop["name"]]
        assert counts.shape == (5,) + pop["shape"] and counts.dtype == np.int32
        assert isinstance(pop["stage"], int) and pop["scale"] > 0
    assert result.sops.dtype == np.int64 and result.sops.shape == (5,)
    assert result.events == {}
    assert (result.timesteps, result.phases, result.mode) == (50, 8, "bsnn")
    assert (result.schedule, result.initial_potential) == ("light-cone", "half")
    memory = result.extra["bytes_per_sample"]
    assert memory["result"] > 4 * 50 + 4 * 7 * 10 and memory["batch"] > memory["result"] and memory["thread"] > 0
    assert result.accuracy(result.predictions[-1]).shape == (50,)
    assert result.accuracy(result.predictions[-1])[-1] == 1.0


def test_energy_estimate_is_labelled(vgg, images):
    result = runtime.simulate(vgg, images[:2], 48)
    energy = result.energy_estimate()
    assert "estimate" in energy["label"]
    assert energy["sops_per_sample"] == result.sops.mean()
    conv1 = vgg.nodes["conv1"]["op"]
    assert result.input_macs == 12 * 12 * conv1.weight[0].size * conv1.weight.shape[0]
    assert result.ann_macs > result.input_macs
    assert energy["snn_energy_pj_per_sample"] == pytest.approx(0.9 * result.sops.mean() + 4.6 * result.input_macs)
    assert energy["ann_energy_pj_per_sample"] == pytest.approx(4.6 * result.ann_macs)


def test_on_batch_streams_and_results_concatenate(vgg, images):
    seen = []

    def on_batch(start, stop, part):
        seen.append((start, stop, part.predictions.shape, sorted(set(part.events["gate5"][:, 0].tolist()))))

    # T = 24 < T_first = 48: nothing can reach the output, so only the full schedule fires at all
    whole = runtime.simulate(vgg, images, 24, batch_size=2, record=["gate5"], on_batch=on_batch, full_dynamics=True)
    assert [s[:3] for s in seen] == [(0, 2, (24, 2)), (2, 4, (24, 2)), (4, 5, (24, 1))]
    assert [s[3] for s in seen] == [[0, 1], [2, 3], [4]]  # global sample indices
    alone = runtime.simulate(vgg, images[3:4], 24, record=["gate5"], full_dynamics=True)
    assert runtime.simulate(vgg, images, 24, record=["gate5"]).events["gate5"].size == 0  # the light cone
    events = whole.events["gate5"]
    mine = events[events[:, 0] == 3]
    np.testing.assert_array_equal(mine[:, 1:], alone.events["gate5"][:, 1:])


def test_recorded_events_match_counts(vgg, images):
    result = runtime.simulate(vgg, images, 40, batch_size=3, record="all", record_samples=[1, 4],
                              per_neuron_counts=True)
    for name, counts in result.spike_counts.items():
        events = result.events[name]
        assert set(events[:, 0].tolist()) <= {1, 4}
        for sample in (1, 4):
            rows = events[events[:, 0] == sample]
            rebuilt = np.bincount(rows[:, 2], minlength=counts[sample].size)
            np.testing.assert_array_equal(rebuilt, counts[sample].reshape(-1))
            assert np.all(np.diff(rows[:, 1]) >= 0)  # in time order


def test_total_counts_option(vgg, images):
    full = runtime.simulate(vgg, images[:2], 32, per_neuron_counts=True)
    totals = runtime.simulate(vgg, images[:2], 32)  # the default: spikes per sample only
    streamed = []
    batches = runtime.simulate(vgg, images[:2], 32, batch_size=1, per_neuron_counts="batches",
                               on_batch=lambda start, stop, part: streamed.append(part.spike_counts))
    for name in full.spike_counts:
        assert totals.spike_counts[name].tolist() == full.spike_counts[name].reshape(2, -1).sum(axis=1).tolist()
        assert batches.spike_counts[name].tolist() == totals.spike_counts[name].tolist()
        np.testing.assert_array_equal(np.concatenate([s[name] for s in streamed]), full.spike_counts[name])
    assert full.extra["bytes_per_sample"]["result"] > totals.extra["bytes_per_sample"]["result"]


def test_single_sample_without_batch_axis(vgg, images):
    a = runtime.simulate(vgg, images[0], 16)
    b = runtime.simulate(vgg, images[:1], 16)
    np.testing.assert_array_equal(a.logits, b.logits)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"x": np.zeros((2, 1, 10, 12), np.float32)}, DataError, r"\(2, 1, 10, 12\).*\(N, 1, 12, 12\)"),
        ({"x": np.zeros((0, 1, 12, 12), np.float32)}, DataError, "has no samples"),
        ({"timesteps": 0}, BsnnError, "timesteps must be an integer >= 1"),
        ({"batch_size": 0}, BsnnError, "batch_size"),
        ({"threads": 99}, BsnnError, "threads must be between 1 and"),
        ({"record": ["conv1"]}, BsnnError, "cannot record 'conv1'"),
        ({"record": "all", "record_samples": [7]}, BsnnError, "record sample 7"),
    ],
)
def test_validation_errors(vgg, images, kwargs, error, text):
    args = {"x": images[:2], "timesteps": 8} | kwargs
    with pytest.raises(error, match=text):
        runtime.simulate(vgg, **args)


def test_unsupported_projection_names_node_and_op():
    graph = chain_graph([1.0, 1.0], [0.0, 0.0])
    fc1 = graph.nodes["fc1"]["op"]
    graph.remove_node("fc1")
    ir.add_node(graph, "relu", O.Relu(), ["pop0"])
    ir.add_node(graph, "fc1", fc1, ["relu"])
    ir.set_inputs(graph, "out", ["fc1"])
    with pytest.raises(runtime.LoweringError, match=r"node 'relu' \(Relu\).*not a linear projection"):
        runtime.simulate(graph, np.zeros((1, 1), np.float32), 8)


def test_bsnn_refuses_unsynchronised_sources():
    graph = resnet_graph(mode="bsnn-nosn")
    for name in graph.nodes:
        op = graph.nodes[name]["op"]
        if hasattr(op, "mode"):
            op.mode = "bsnn"
    with pytest.raises(runtime.LoweringError, match=r"stage 3 but source 'gate3' has stage 1 \(expected 2\)"):
        runtime.lower(graph)


def test_mixed_modes_are_refused():
    graph = chain_graph([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    graph.nodes["pop1"]["op"].mode = "phase"
    with pytest.raises(runtime.LoweringError, match="disagree on the mode"):
        runtime.lower(graph)


def test_load_round_trip_and_refuses_an_ann(tmp_path, images):
    graph = resnet_graph()
    path = tmp_path / "snn.onnx"
    bsnn_graph.save_onnx(graph, path)
    loaded = runtime.load(path)
    a = runtime.simulate(graph, images[:2], 40)
    b = runtime.simulate(loaded, images[:2], 40)
    np.testing.assert_array_equal(a.logits, b.logits)
    ann = ir.new_graph("ann")
    ir.add_node(ann, "x", O.Input(shape=(3,)))
    ir.add_node(ann, "fc", O.Gemm(weight=np.ones((2, 3), np.float32), bias=np.zeros(2, np.float32)), ["x"])
    ann.graph["outputs"] = ["fc"]
    bsnn_graph.save_onnx(ann, tmp_path / "ann.onnx")
    with pytest.raises(ModelError, match="not a converted spiking graph"):
        runtime.load(tmp_path / "ann.onnx")


def test_input_lambda_set_at_conversion_is_applied_to_the_data():
    """convert(..., input_lambda=L) scales the first layer by L; simulate must feed x / L."""
    import passes
    from bsnn_graph import load_onnx

    root = Path(__file__).resolve().parent / "data"
    ann = load_onnx(root / "vgg_tiny_legacy.onnx")
    rng = np.random.default_rng(3)
    x = rng.random((6, *ann.nodes[ann.graph["inputs"][0]]["shape"]), dtype=np.float32)
    plain = passes.convert(ann, x, phases=4)
    scaled = passes.convert(ann, x, phases=4, input_lambda=4.0)
    assert float(scaled.nodes[scaled.graph["inputs"][0]]["op"].scale) == 4.0
    a = runtime.simulate(plain, x, 40)
    b = runtime.simulate(scaled, x, 40)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("layer", "expected"), [("workqueue", 1), ("omp", "all"), ("tbb", "all")])
def test_one_sample_split_follows_the_threading_layer(monkeypatch, layer, expected):
    """Batch of one, threads not given: split only under a layer that starts parallel regions fast."""
    import numba

    from runtime.simulate import one_sample_threads

    monkeypatch.setattr(numba, "threading_layer", lambda: layer)
    assert one_sample_threads(None) == (numba.get_num_threads() if expected == "all" else expected)
    assert one_sample_threads(2) == 2  # the caller's choice stands


def test_one_sample_threads_before_any_parallel_region(monkeypatch):
    """Before the layer is initialised numba.threading_layer raises: the configured layer decides."""
    import numba

    from runtime.simulate import one_sample_threads

    def not_yet():
        raise ValueError("Threading layer is not initialized.")

    monkeypatch.setattr(numba, "threading_layer", not_yet)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "workqueue")
    assert one_sample_threads(None) == 1
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "omp")
    assert one_sample_threads(None) == numba.get_num_threads()
