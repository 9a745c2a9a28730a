"""benchmarks/headline.py: the 'within' rule, the doc sections it writes, and a tiny end-to-end run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import headline

import passes
import runtime
from bsnn_graph import evaluate, load_onnx

DATA = Path(__file__).resolve().parent / "data"


def test_first_within_means_from_then_on():
    acc = np.array([10.0, 91.5, 89.0, 91.2, 91.9, 92.0])
    assert headline.first_within(acc, 92.0, 1.0) == 4  # T = 2 is within, but T = 3 drops out again
    assert headline.first_within(acc, 92.0, 0.1) == 5
    assert headline.first_within(acc, 93.5, 1.0) is None  # the last step is outside
    assert headline.first_within(np.full(3, 92.0), 92.0, 0.1) == 1
    # exactly 1.00 point below (100 of 10,000 images) is within, whatever the float subtraction gives
    assert headline.first_within(np.array([90.0, 91.07, 91.07]), 100.0 * 9207 / 10000, 1.0) == 2
    assert headline.first_within(np.array([90.0, 91.97, 91.97]), 100.0 * 9207 / 10000, 0.1) == 2
    assert headline.first_within(np.array([90.0, 91.96, 91.97]), 100.0 * 9207 / 10000, 0.1) == 3
    # read only at some steps (bsnn: its period ends): the dip at T = 3 is not a readout
    assert headline.first_within(acc, 92.0, 1.0, readouts=np.array([2, 4, 6])) == 2
    entry = {"mode": "bsnn", "timesteps": 30, "t_first_output": 12, "phases": 4}
    assert headline.readouts(entry).tolist() == [12, 16, 20, 24, 28, 30]
    assert headline.readouts({**entry, "mode": "if-rate"}) is None


def test_insert_section_replaces_only_between_its_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\n<!-- t:start -->\nold\n<!-- t:end -->\n\nhand-written\n")
    headline.insert_section(doc, "new table\n", "t")
    assert doc.read_text() == "# Title\n\n<!-- t:start -->\nnew table\n<!-- t:end -->\n\nhand-written\n"
    headline.insert_section(doc, "other\n", "u")  # no markers yet: appended with them
    assert doc.read_text().endswith("<!-- u:start -->\nother\n<!-- u:end -->\n")
    assert not list(tmp_path.glob("*.tmp"))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """headline's model list and data set replaced by the tiny VGG of tests/data and its five samples."""
    model = DATA / "vgg_tiny_legacy.onnx"
    samples = np.load(DATA / "vgg_tiny.npz")
    x, y = samples["x"].astype(np.float32), samples["y"].argmax(axis=1)
    data = tmp_path / "tiny.npz"
    np.savez(data, x=x, y=y)
    monkeypatch.setattr(headline, "MODELS", {"tiny": {"exports": {"legacy": {"file": str(model)}}}})
    monkeypatch.setattr(headline, "_DATA", {})
    return model, x, y, data


def _argv(data, cache, out, *extra):
    return ["--data", str(data), "--calib", str(data), "--cache", str(cache), "--out", str(out), "--timesteps", "40",
            "--bsnn-periods", "2", "--sweep-periods", "2", "--cost-images", "5", "--latency-images", "2", *extra]


def test_tiny_run_measures_what_the_runtime_gives_and_resumes(tiny, tmp_path):
    model, x, y, data = tiny
    docs, cache = tmp_path / "docs", tmp_path / "cache"
    docs.mkdir()
    (docs / "benchmarks.md").write_text("intro\n<!-- headline:start -->\n<!-- headline:end -->\noutro\n")
    argv = _argv(data, cache, docs, "--modes", "bsnn", "if-rate", "--ks", "4", "8", "--settings", "percentile.half",
                 "percentile.zero", "--select-images", "3")
    headline.main(argv)
    report = json.loads((docs / "headline.json").read_text())["results"][0]
    runs = report["runs"]
    sweep = {f"bsnn@K{k}.percentile.{p}" for k in (4, 8) for p in ("half", "zero")}
    selection = {f"if-rate@K8.percentile.{p}.n3" for p in ("half", "zero")}
    (chosen,) = set(runs) - sweep - selection  # the stronger setting of the selection, on every image
    ranks = {key: headline._rank(runs[key], runs[key]["ann_accuracy_same_images"]) for key in selection}
    assert ranks[f"{chosen}.n3"] == min(ranks.values())
    # the recorded accuracy per step is the runtime's on the same conversion
    for potential in ("half", "zero"):
        snn = passes.convert(load_onnx(model), x, mode="bsnn", phases=8, percentile=99.9, initial_potential=potential,
                             calibrate="percentile")
        depth = runs["bsnn@K8.percentile.half"]["deepest_stage"]
        result = runtime.simulate(snn, x, (depth + 2) * 8)
        run = runs[f"bsnn@K8.percentile.{potential}"]
        assert run["accuracy"] == pytest.approx(result.accuracy(y) * 100, abs=1e-3)
        assert run["sops_per_image_at_t_max"] == pytest.approx(result.sops.mean())
        assert sum(run["sops_per_image_per_period"]) == pytest.approx(result.sops.mean())
    assert runs["bsnn@K4.percentile.half"]["timesteps"] == (depth + 2) * 4  # the sweep's own T_max
    rate = next(r for k, r in runs.items() if k.startswith("if-rate") and r["images_all"])
    assert rate["timesteps"] == max(40, 2 * (depth + 1) * 8)
    ann = evaluate(load_onnx(model), x).argmax(axis=1)
    assert report["ann_accuracy"] == pytest.approx(100 * np.mean(ann == y))
    assert runs["if-rate@K8.percentile.half.n3"]["ann_accuracy_same_images"] == pytest.approx(100 * np.mean(ann[:3] == y[:3]))
    # every mode at its own first T within 1 point, measured at that T
    for row in report["matched"]:
        assert row["timesteps"] == runs[row["key"]]["t_within_1"] and row["sops_per_image"] > 0
    text = (docs / "benchmarks.md").read_text()
    assert text.startswith("intro\n<!-- headline:start -->\n") and text.endswith("<!-- headline:end -->\noutro\n")
    assert "### tiny" in text and (docs / "acc_vs_T_tiny.png").exists() and (docs / "acc_vs_sops_tiny.png").exists()
    # a second run reuses every cached result (the files are not rewritten)
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.json")}
    headline.main(argv)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.json")} == stamps
    # a fresh clone has the records but not the converted .onnx files (not in git): a report from the cache
    # converts nothing (L and the calibration time come from the records, which are kept as they are)
    models = sorted(cache.rglob("models/*.onnx"))
    for path in models:
        path.unlink()
    report_again = json.loads((docs / "headline.json").read_text())
    headline.main(argv)
    assert sorted(cache.rglob("models/*.onnx")) == []
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.json")} == stamps
    assert json.loads((docs / "headline.json").read_text())["results"] == report_again["results"]
    # a part to measure again converts its model, and only that one; its record keeps its calibration time
    key = "bsnn@K4.percentile.half"
    folder = cache / "tiny"
    for path in [folder / f"{key}.json", *(folder / f"{key}.parts").glob("*.json")]:
        path.unlink()
    headline.main(argv)
    assert sorted(cache.rglob("models/*.onnx")) == [folder / "models" / f"{key}.onnx"]
    record = folder / "models" / f"{key}.json"
    assert record.stat().st_mtime_ns == stamps[record]
    assert json.loads((folder / f"{key}.json").read_text())["accuracy"] == runs[key]["accuracy"]


def test_a_run_in_parts_is_the_run_on_all_images_and_longer_runs_reuse_them(tiny, tmp_path):
    model, x, y, data = tiny
    cache = tmp_path / "cache"
    argv = _argv(data, cache, tmp_path, "--modes", "if-rate", "--settings", "percentile.half", "--chunk", "2",
                 "--measure-only")
    headline.main([*argv, "--select-images", "3"])
    parts = cache / "tiny" / "if-rate@K8.percentile.half.parts"
    # the selection run on 3 images, then the chosen (only) setting on all 5: 0-2 is reused
    assert sorted(p.name for p in parts.glob("*.json")) == ["0-2.json", "2-3.json", "2-4.json", "4-5.json"]
    first = (parts / "0-2.json").stat().st_mtime_ns
    headline.main([*argv, "--select-images", "3"])
    assert (parts / "0-2.json").stat().st_mtime_ns == first
    run = json.loads((cache / "tiny" / "if-rate@K8.percentile.half.json").read_text())
    assert run["images"] == 5 and [(p["first"], p["last"]) for p in run["parts"]] == [(0, 2), (2, 4), (4, 5)]
    snn = passes.convert(load_onnx(model), x, mode="if-rate", phases=8, percentile=99.9, initial_potential="half")
    result = runtime.simulate(snn, x, run["timesteps"])
    assert run["accuracy"] == pytest.approx(result.accuracy(y) * 100, abs=1e-3)
    assert run["sops_per_image_at_t_max"] == pytest.approx(result.sops.mean(), rel=1e-9)


def test_parts_on_a_two_worker_dask_cluster_are_the_parts_of_one_process(tiny, tmp_path):
    pytest.importorskip("distributed")
    _, _, _, data = tiny
    extra = ("--modes", "if-rate", "--settings", "percentile.half", "--chunk", "2", "--select-images", "0",
             "--measure-only")
    headline.main(_argv(data, tmp_path / "one", tmp_path, *extra))
    headline.main(_argv(data, tmp_path / "dask", tmp_path, *extra, "--workers", "2"))
    one, dask = (tmp_path / c / "tiny" / "if-rate@K8.percentile.half.parts" for c in ("one", "dask"))
    assert sorted(p.name for p in dask.glob("*.json")) == ["0-2.json", "2-4.json", "4-5.json"]
    for part in one.glob("*.json"):
        a, b = json.loads(part.read_text()), json.loads((dask / part.name).read_text())
        assert (a["settings"], a["correct"], a["sops_sum"]) == (b["settings"], b["correct"], b["sops_sum"])
    stamps = {p: p.stat().st_mtime_ns for p in dask.glob("*.json")}
    headline.main(_argv(data, tmp_path / "dask", tmp_path, *extra, "--workers", "2"))  # all cached: no rewrite
    assert {p: p.stat().st_mtime_ns for p in dask.glob("*.json")} == stamps


def test_cached_only_reports_the_finished_runs_and_lists_the_others(tiny, tmp_path, monkeypatch):
    *_, data = tiny
    docs, cache = tmp_path / "docs", tmp_path / "cache"
    docs.mkdir()
    monkeypatch.setattr(headline, "LEFT_OUT", [])
    base = _argv(data, cache, docs, "--settings", "percentile.half", "--ks", "8", "--chunk", "2")
    headline.main([*base, "--modes", "bsnn", "--measure-only"])
    parts = sorted(cache.rglob("*.parts/*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    headline.main([*base, "--modes", "bsnn", "if-rate", "--cached-only"])
    assert sorted(cache.rglob("*.parts/*.json")) == parts  # nothing was measured
    assert {p: p.stat().st_mtime_ns for p in parts} == stamps
    report = json.loads((docs / "headline.json").read_text())
    assert set(report["results"][0]["runs"]) == {"bsnn@K8.percentile.half"}
    assert report["meta"]["left_out"] == ["tiny if-rate@K8.percentile.half (3 parts to measure)"]
    assert "Not measured yet" in (docs / "benchmarks.md").read_text()
