"""CLI commands run, eval and inspect (click's CliRunner in a temporary folder)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from test_trace import CLASSES, POPULATIONS, K, T, batch_of, make_result

from bsnn_graph.cli import main
from runtime.trace import TraceWriter, write_trace


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


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
    assert energy["snn_pj_per_sample"] == pytest.approx(0.9 * result.sops.mean())
    assert energy["ann_pj_per_sample"] == pytest.approx(4.6 * 1000)
    assert doc["plot"] is None


def test_inspect_table_labels_the_energy_as_an_estimate(synthetic_trace):
    path, _, _ = synthetic_trace
    out = invoke("inspect", path, "--population", "pool1")
    assert out.exit_code == 0, out.output
    assert "energy (estimate, 0.9 pJ/SOP)" in out.stdout
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
