"""CLI commands run, eval and inspect (click's CliRunner in a temporary folder)."""

from __future__ import annotations

import json
import os
import stat
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from test_trace import CLASSES, POPULATIONS, K, T, batch_of, make_result

import runtime
from bsnn_graph import evaluate, ir, save_onnx
from bsnn_graph import ops as O
from bsnn_graph.cli import main
from runtime.trace import TraceWriter, open_trace, write_trace


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result) -> str:
    """The error line of a failed command: exit 1, one ``error:`` line (after any progress label), no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result.output
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    return errors[0]


# --------------------------------------------------------------------------- inspect on written traces


@pytest.fixture
def synthetic_trace(tmp_path):
    n = 12
    result = make_result(n, seed=3)
    labels = np.random.default_rng(4).integers(0, CLASSES, size=n)
    path = write_trace(tmp_path / "synthetic.h5", result, labels=labels, ann_macs=1000, output_stage=3, record=["fc1"])
    return path, result, labels


def test_inspect_json_matches_the_arrays(synthetic_trace):
    path, result, labels = synthetic_trace
    out = invoke("inspect", path, "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    n = 12
    assert (doc["samples"], doc["samples_total"], doc["complete"]) == (n, n, True)
    assert (doc["mode"], doc["phases"], doc["timesteps"]) == ("bsnn", K, T)
    assert doc["first_output_step"] == 3 * K
    assert doc["accuracy"] == pytest.approx(np.mean(result.predictions[-1] == labels))
    assert doc["accuracy_first_output"] == pytest.approx(np.mean(result.predictions[3 * K - 1] == labels))
    assert doc["sops_per_sample"] == pytest.approx(result.sops.mean())
    assert [p["name"] for p in doc["populations"]] == [p["name"] for p in POPULATIONS]
    periods = -(-T // K)
    for summary in doc["populations"]:
        counts = result.spike_counts[summary["name"]].reshape(n, -1)
        neurons = counts.shape[1]
        assert summary["neurons"] == neurons
        assert summary["firing_rate"] == pytest.approx(counts.sum() / (n * neurons * T))
        assert summary["spikes_per_neuron_per_period"] == pytest.approx(counts.sum() / (n * neurons * periods))
        assert summary["silent_share"] == pytest.approx((counts == 0).mean())
        assert summary["sops_per_sample"] == pytest.approx(result.sops_per_population[summary["name"]].mean())
        assert summary["recorded"] == (summary["name"] == "fc1")
    energy = doc["energy"]
    assert energy["estimate"] is True
    assert energy["snn_energy_pj_per_sample"] == pytest.approx(0.9 * result.sops.mean())
    assert energy["ann_energy_pj_per_sample"] == pytest.approx(4.6 * 1000)
    assert doc["plot"] is None


def test_inspect_table_labels_the_energy_as_an_estimate(synthetic_trace):
    path, _, _ = synthetic_trace
    out = invoke("inspect", path, "--population", "pool1")
    assert out.exit_code == 0, out.output
    assert "estimate: E_AC = 0.9 pJ per SOP, E_MAC = 4.6 pJ per MAC" in out.stdout
    assert "pool1" in out.stdout and "fc1" not in out.stdout.split("population")[1].split("total")[0]


def test_inspect_plot_is_written_and_not_clobbered(synthetic_trace, tmp_path):
    path, result, _ = synthetic_trace
    png = tmp_path / "raster.png"
    out = invoke("inspect", path, "--plot", png, "--json")
    assert out.exit_code == 0, out.output
    plot = json.loads(out.stdout)["plot"]
    rows = result.events["fc1"]
    assert plot["raster_population"] == "fc1" and plot["raster_sample"] == 0
    assert plot["raster_spikes"] == int(np.sum(rows[:, 0] == 0))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(png.stat().st_mode) == 0o666 & ~umask  # atomic_output's temporary file was 0600
    before = png.read_bytes()
    line = one_error_line(invoke("inspect", path, "--plot", png))
    assert "file exists" in line and png.read_bytes() == before
    assert invoke("inspect", path, "--plot", png, "--overwrite", "--sample", "3").exit_code == 0
    line = one_error_line(invoke("inspect", path, "--plot", tmp_path / "x.png", "--population", "pool1"))
    assert "no recorded events" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raster.png", "synthetic.h5"]


def test_inspect_plot_without_matplotlib_is_one_clear_line(synthetic_trace, tmp_path, monkeypatch):
    path, _, _ = synthetic_trace
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    line = one_error_line(invoke("inspect", path, "--plot", tmp_path / "r.png"))
    assert "needs matplotlib" in line and "bsnn-graph[plot]" in line
    assert not (tmp_path / "r.png").exists()


def test_inspect_partial_trace_says_so(tmp_path):
    n = 10
    result = make_result(n)
    path = tmp_path / "partial.h5"
    with (
        pytest.raises(KeyboardInterrupt),
        TraceWriter(
            path, populations=POPULATIONS, timesteps=T, phases=K, mode="bsnn", classes=CLASSES, samples_total=n
        ) as writer,
    ):
        writer.append(0, 4, batch_of(result, 0, 4))
        raise KeyboardInterrupt
    out = invoke("inspect", path)
    assert out.exit_code == 0 and "4 of 10 samples, INCOMPLETE" in out.stdout
    doc = json.loads(invoke("inspect", path, "--json").stdout)
    assert (doc["samples"], doc["complete"], doc["accuracy"]) == (4, False, None)
    assert doc["sops_per_sample"] == pytest.approx(result.sops[:4].mean())


def test_inspect_bad_files(tmp_path):
    assert "no such trace file" in one_error_line(invoke("inspect", tmp_path / "none.h5"))
    (tmp_path / "text.h5").write_text("not hdf5")
    assert "not an HDF5 file" in one_error_line(invoke("inspect", tmp_path / "text.h5"))
    path = write_trace(tmp_path / "ok.h5", make_result(2))
    assert "no population 'conv9'" in one_error_line(invoke("inspect", path, "--population", "conv9"))


# --------------------------------------------------------------------------- run / eval on a real spiking graph

SNN_K, SNN_T, SNN_N = 4, 24, 12


def tiny_snn(phases: int = SNN_K, mode: str = "bsnn", seed: int = 5):
    """Input 1x6x6 -> conv 3x3 (3) -> population -> max gate 2x2 -> gemm (8) -> population -> gemm (4) -> output."""
    rng = np.random.default_rng(seed)
    g = ir.new_graph("tiny_snn")
    ir.add_node(g, "x", O.Input(shape=(1, 6, 6)))
    conv = O.Conv(
        weight=rng.normal(0, 0.5, (3, 1, 3, 3)).astype(np.float32),
        bias=np.full(3, 0.05, np.float32),
        strides=(1, 1),
        pads=(1, 1, 1, 1),
        dilations=(1, 1),
    )
    ir.add_node(g, "conv", conv, ["x"])
    ir.add_node(g, "relu1", O.Population(mode=mode, phases=phases, stage=1), ["conv"])
    gate = O.MaxGate(mode=mode, phases=phases, stage=1, kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0))
    ir.add_node(g, "pool", gate, ["relu1"])
    ir.add_node(g, "flat", O.Flatten(axis=1), ["pool"])
    fc1 = O.Gemm(weight=rng.normal(0, 0.3, (8, 27)).astype(np.float32), bias=np.zeros(8, np.float32))
    ir.add_node(g, "fc1", fc1, ["flat"])
    ir.add_node(g, "relu2", O.Population(mode=mode, phases=phases, stage=2), ["fc1"])
    fc2 = O.Gemm(weight=rng.normal(0, 0.5, (4, 8)).astype(np.float32), bias=np.zeros(4, np.float32))
    ir.add_node(g, "fc2", fc2, ["relu2"])
    ir.add_node(g, "out", O.OutputAccumulator(mode=mode, phases=phases, stage=3), ["fc2"])
    g.graph["outputs"] = ["out"]
    ir.verify(g)
    return g


@pytest.fixture
def snn(tmp_path):
    """(model path, data path, x, labels): labels are the normalised ANN's classes."""
    graph = tiny_snn()
    model = tmp_path / "tiny_snn.onnx"
    save_onnx(graph, model)
    x = np.random.default_rng(100).uniform(0, 1, (SNN_N, 1, 6, 6)).astype(np.float32)
    labels = evaluate(graph, x).argmax(axis=1)
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=labels)
    return model, data, x, labels


def test_run_with_trace_then_inspect(snn, tmp_path):
    model, data, x, labels = snn
    trace_path = tmp_path / "run.h5"
    out = invoke(
        "run", model, "--data", data, "-T", SNN_T, "--trace", trace_path, "--record", "relu1,relu2",
        "--record-samples", "0,3,10-11", "--batch-size", 5, "--threads", 1, "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert (doc["mode"], doc["phases"], doc["timesteps"], doc["samples"]) == ("bsnn", SNN_K, SNN_T, SNN_N)
    assert doc["first_output_step"] == 3 * SNN_K
    assert doc["accuracy"] == pytest.approx(np.mean(np.array(doc["predictions"]) == labels))
    assert doc["accuracy"] >= 0.75  # the SNN approximates its normalised ANN (K = 4, two periods after T_first)
    assert doc["accuracy_per_step"][SNN_T - 1] == doc["accuracy"]
    assert doc["accuracy_per_step"][3 * SNN_K - 1] == doc["accuracy_first_output"]
    assert doc["trace"] == str(trace_path) and doc["seconds_per_sample"] > 0

    reference = runtime.simulate(
        runtime.load(model), x, SNN_T, record=["relu1", "relu2"], record_samples=[0, 3, 10, 11], per_neuron_counts=True
    )
    assert doc["predictions"] == reference.predictions[-1].tolist()
    with open_trace(trace_path) as trace:
        assert trace.complete and trace.samples == SNN_N
        assert trace.attrs["model_file"] == "tiny_snn.onnx" and trace.attrs["input_file"] == "data.npz"
        np.testing.assert_array_equal(trace.predictions, reference.predictions.T)
        np.testing.assert_array_equal(trace.logits, reference.logits.transpose(1, 0, 2))
        np.testing.assert_array_equal(trace.labels, labels)
        np.testing.assert_array_equal(trace.sops, reference.sops)
        assert [p.name for p in trace.populations] == ["relu1", "pool", "relu2"]
        for pop in trace.populations:
            np.testing.assert_array_equal(pop.spike_counts, reference.spike_counts[pop.name].reshape(SNN_N, -1))
            np.testing.assert_array_equal(pop.sops, reference.sops_per_population[pop.name])
        np.testing.assert_array_equal(trace.population("relu1").events, reference.events["relu1"])
        assert set(trace.population("relu2").events[:, 0]) <= {0, 3, 10, 11}
        assert trace.population("pool").events is None

    inspected = json.loads(invoke("inspect", trace_path, "--json").stdout)
    for key in ("samples", "mode", "phases", "timesteps", "first_output_step", "accuracy", "accuracy_first_output"):
        assert inspected[key] == doc[key], key
    assert inspected["sops_per_sample"] == pytest.approx(doc["sops_per_sample"])
    assert inspected["energy"] == pytest.approx(doc["energy"])
    assert inspected["energy"]["ann_macs_per_sample"] == reference.ann_macs > 0
    spikes = {name: counts.sum() / SNN_N for name, counts in reference.spike_counts.items()}
    for summary in inspected["populations"]:
        assert summary["spikes_per_sample"] == pytest.approx(spikes[summary["name"]])

    png = tmp_path / "relu2.png"
    plotted = json.loads(invoke("inspect", trace_path, "--plot", png, "--population", "relu2", "--json").stdout)
    assert plotted["plot"]["raster_population"] == "relu2" and plotted["plot"]["raster_sample"] == 0
    assert plotted["plot"]["raster_spikes"] == int(np.sum(reference.events["relu2"][:, 0] == 0))
    assert png.stat().st_size > 1000


def test_run_table(snn):
    model, data, _, _ = snn
    out = invoke("run", model, "--data", data, "-T", SNN_T, "--limit", 4)
    assert out.exit_code == 0, out.output
    assert "4 samples" in out.stdout and f"at the first full output (T = {3 * SNN_K})" in out.stdout
    assert "ms per sample" in out.stdout and "estimate: E_AC" in out.stdout


def test_run_never_clobbers_a_trace(snn, tmp_path):
    model, data, _, _ = snn
    trace_path = tmp_path / "old.h5"
    trace_path.write_bytes(b"an earlier run")
    line = one_error_line(invoke("run", model, "--data", data, "-T", 8, "--trace", trace_path))
    assert "old.h5: file exists (use --overwrite" in line
    assert trace_path.read_bytes() == b"an earlier run"
    out = invoke(
        "run", model, "--data", data, "-T", 8, "--trace", trace_path, "--overwrite", "--record", "all",
        "--record-samples", 2, "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    with open_trace(trace_path) as trace:
        assert trace.complete and trace.timesteps == 8
        assert all(p.recorded for p in trace.populations)
        assert all(set(p.events[:, 0]) <= {0, 1} for p in trace.populations)
        np.testing.assert_array_equal(trace.population("pool").recorded_samples, [0, 1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "old.h5", "tiny_snn.onnx"]


def test_interrupted_run_leaves_a_partial_trace(snn, tmp_path, monkeypatch):
    import runtime.evaluate

    model, data, _, labels = snn
    real_simulate = runtime.simulate

    def interrupted_after_two_batches(graph, x, timesteps, on_batch=None, **kwargs):
        calls = []

        def hook(start, stop, partial):
            on_batch(start, stop, partial)
            calls.append(stop)
            if len(calls) == 2:
                raise KeyboardInterrupt  # what Ctrl-C does between two batches

        return real_simulate(graph, x, timesteps, on_batch=hook, **kwargs)

    monkeypatch.setattr(runtime.evaluate, "simulate", interrupted_after_two_batches)  # what bsnn run calls
    trace_path = tmp_path / "partial.h5"
    out = invoke("run", model, "--data", data, "-T", SNN_T, "--batch-size", 5, "--trace", trace_path)
    assert out.exit_code == 130
    assert "interrupted after 10 of 12 samples; partial trace in" in out.stderr
    with open_trace(trace_path) as trace:
        assert (trace.samples, trace.samples_total, trace.complete) == (10, 12, False)
        np.testing.assert_array_equal(trace.labels, labels[:10])
    doc = json.loads(invoke("inspect", trace_path, "--json").stdout)
    assert (doc["samples"], doc["complete"]) == (10, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "partial.h5", "tiny_snn.onnx"]


def test_run_bad_inputs(snn, tmp_path):
    model, data, _, _ = snn
    assert "no such data file" in one_error_line(invoke("run", model, "--data", tmp_path / "none.npz", "-T", 4))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((3, 5, 5), np.float32))
    assert "do not fit the model input (1, 6, 6)" in one_error_line(invoke("run", model, "--data", wrong, "-T", 4))
    assert "no such model file" in one_error_line(invoke("run", tmp_path / "none.onnx", "--data", data, "-T", 4))
    line = one_error_line(invoke("run", model, "--data", data, "-T", 4, "--trace", tmp_path / "t.h5", "--record", "x9"))
    assert "'x9': no such population (have relu1, pool, relu2)" in line
    line = one_error_line(invoke("run", model, "--data", data, "-T", 4, "--trace", tmp_path / "no" / "t.h5"))
    assert "does not exist" in line
    ann = tmp_path / "ann.onnx"
    graph = tiny_snn()
    ann_graph = ir.new_graph("ann")
    ir.add_node(ann_graph, "x", O.Input(shape=(1, 6, 6)))
    ir.add_node(ann_graph, "conv", ir.op_of(graph, "conv"), ["x"])
    ir.add_node(ann_graph, "relu", O.Relu(), ["conv"])
    ann_graph.graph["outputs"] = ["relu"]
    save_onnx(ann_graph, ann)
    assert "not a converted spiking graph" in one_error_line(invoke("run", ann, "--data", data, "-T", 4))
    line = one_error_line(invoke("run", model, "--data", data, "-T", 4, "--trace", tmp_path / "t.h5", "--threads", 999))
    assert "threads must be between 1 and" in line
    assert not (tmp_path / "t.h5").exists()


def test_eval_on_a_converted_model(snn):
    model, data, x, labels = snn
    out = invoke("eval", model, "--data", data, "-T", "8,12,24", "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["ann_accuracy"] == 1.0  # labels are the normalised ANN's own classes
    assert doc["reference"].startswith("normalised ANN") and doc["timesteps"] == [8, 12, 24]
    bsnn = doc["modes"]["bsnn"]
    reference = runtime.simulate(runtime.load(model), x, 24).accuracy(labels)
    assert bsnn["accuracy"] == pytest.approx([reference[7], reference[11], reference[23]])
    assert bsnn["accuracy_per_step"] == pytest.approx(reference.tolist())
    within = [t + 1 for t, a in enumerate(reference) if a >= 0.99]
    assert bsnn["first_step_within_1_point"] == (within[0] if within else None)
    assert bsnn["first_output_step"] == 12
    table = invoke("eval", model, "--data", data, "-T", "8,12,24")
    assert "first T within 1 pt" in table.stdout and "bsnn (K=4)" in table.stdout
    line = one_error_line(invoke("eval", model, "--data", data, "--modes", "if-rate"))
    assert "already converted (mode bsnn)" in line


def test_eval_converts_an_ann(tmp_path, data_dir):
    samples = np.load(data_dir / "vgg_tiny.npz")
    data = tmp_path / "vgg.npz"
    np.savez(data, x=samples["x"], y=samples["y"].argmax(axis=1))
    model = data_dir / "vgg_tiny_legacy.onnx"
    line = one_error_line(invoke("eval", model, "--data", data))
    assert "needs calibration data (--calib DATA)" in line
    out = invoke(
        "eval", model, "--data", data, "--calib", data, "--modes", "bsnn,if-rate", "-T", "8,32", "--phases", 4, "--json"
    )
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["reference"] == "ANN" and doc["ann_accuracy"] == 1.0 and doc["samples"] == 5
    assert set(doc["modes"]) == {"bsnn", "if-rate"}
    assert doc["modes"]["bsnn"]["phases"] == 4 and doc["modes"]["if-rate"]["first_output_step"] is None
    for result in doc["modes"].values():
        assert len(result["accuracy"]) == 2 and len(result["accuracy_per_step"]) == 32
        assert result["accuracy"][1] == result["accuracy_per_step"][31]
        energy = result["energy"]  # an estimate of this mode's own SOPs (and the analog input layer's MACs)
        assert energy["estimate"] and energy["sops_per_sample"] == result["sops_per_sample"] > 0
        assert energy["snn_energy_pj_per_sample"] == pytest.approx(
            energy["e_ac_pj"] * result["sops_per_sample"] + energy["e_mac_pj"] * energy["input_macs_per_sample"])
    table = invoke("eval", model, "--data", data, "--calib", data, "--modes", "bsnn,if-rate", "-T", "8,32", "--phases", 4)
    assert "energy uJ/sample (estimate)" in table.output and "estimate" in table.output.splitlines()[-1]
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=samples["x"])
    assert "eval needs labels" in one_error_line(invoke("eval", model, "--data", unlabelled, "--calib", data))


def test_eval_passes_the_normalisation_options_to_the_conversion(tmp_path, data_dir):
    """--channelwise and --input-lambda reach passes.convert: eval reports what runtime.simulate gives for them."""
    import passes
    from bsnn_graph import load_onnx

    samples = np.load(data_dir / "vgg_tiny.npz")
    data = tmp_path / "vgg.npz"
    labels = samples["y"].argmax(axis=1)
    np.savez(data, x=samples["x"], y=labels)
    model = data_dir / "vgg_tiny_legacy.onnx"
    args = ["eval", model, "--data", data, "--calib", data, "-T", "6,24", "--phases", 3, "--percentile", 99, "--json"]
    plain = json.loads(invoke(*args).stdout)["modes"]["bsnn"]
    options = json.loads(invoke(*args, "--channelwise", "--input-lambda", 3).stdout)["modes"]["bsnn"]
    x = samples["x"].astype(np.float32)
    snn = passes.convert(load_onnx(model), x, phases=3, percentile=99, channelwise=True, input_lambda=3.0)
    expected = runtime.simulate(snn, x, 24).accuracy(labels)
    assert options["accuracy_per_step"] == pytest.approx(expected.tolist())
    assert options["sops_per_sample"] == pytest.approx(runtime.simulate(snn, x, 24).sops.mean())
    assert options["sops_per_sample"] != plain["sops_per_sample"]  # the options changed the network


def test_eval_passes_calibrate_search_to_the_conversion(tmp_path, data_dir):
    import passes
    from bsnn_graph import load_onnx

    samples = np.load(data_dir / "vgg_tiny.npz")
    data = tmp_path / "vgg.npz"
    labels = samples["y"].argmax(axis=1)
    np.savez(data, x=samples["x"], y=labels)
    model = data_dir / "vgg_tiny_legacy.onnx"
    args = ["eval", model, "--data", data, "--calib", data, "-T", "6,24", "--phases", 3, "--json"]
    plain = json.loads(invoke(*args, "--calibrate", "percentile").stdout)["modes"]["bsnn"]
    searched = json.loads(invoke(*args, "--calibrate", "search").stdout)["modes"]["bsnn"]
    default = json.loads(invoke(*args).stdout)["modes"]["bsnn"]
    assert default["sops_per_sample"] == searched["sops_per_sample"]  # search is bsnn's default
    x = samples["x"].astype(np.float32)
    snn = passes.convert(load_onnx(model), x, phases=3, calibrate="search")
    assert searched["sops_per_sample"] == pytest.approx(runtime.simulate(snn, x, 24).sops.mean())
    assert searched["sops_per_sample"] != plain["sops_per_sample"]  # the search changed the lambdas


def test_eval_refuses_normalisation_options_for_a_converted_model(snn):
    model, data, _, _ = snn
    for flag in (["--channelwise"], ["--input-lambda", "2"], ["--calibrate", "search"], ["--percentile", "99"]):
        line = one_error_line(invoke("eval", model, "--data", data, *flag))
        assert f"already converted; {flag[0]} applies to ANN models only" in line
