"""``bsnn convert`` and ``bsnn passes`` end to end with click's CliRunner in a temporary folder."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from test_passes_graphs import vgg
from test_passes_rules import TINY_EXPLANATION, _tiny

import passes
from bsnn_graph import evaluate, ir, load_onnx, save_onnx
from bsnn_graph import ops as O
from bsnn_graph.cli import main
from passes import PIPELINE


def _calibration(path, shape, n=40, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    np.savez(path, x=images, y=np.zeros(n, np.int64))
    return path


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_passes_lists_the_pipeline_in_order():
    result = _invoke("passes")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[1] for line in lines] == [p.name for p in PIPELINE]
    rows = json.loads(_invoke("passes", "--json").output)
    assert rows[0] == {"name": "canonicalise", "description": PIPELINE[0].description}


def test_convert_exported_vgg_with_max_pooling(tmp_path, data_dir):
    model = data_dir / "vgg_tiny_legacy.onnx"
    calib = _calibration(tmp_path / "calib.npz", (1, 12, 12))
    out = tmp_path / "snn.onnx"
    result = _invoke("convert", model, "--calib", calib, "-o", out, "--phases", "6", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["passes"] == [p.name for p in PIPELINE]
    assert (summary["mode"], summary["phases"], summary["synchronise"]) == ("bsnn", 6, "applied")
    assert summary["calibration_samples"] == 40 and summary["percentile"] == 99.99
    ops = [p["op"] for p in summary["populations"]]
    assert ops.count("Population") == 4 and ops.count("MaxGate") == 2
    assert summary["max_stage"] == 4 and summary["output_stage"] == 5 and summary["first_output_step"] == 30
    snn = load_onnx(out)
    assert any(isinstance(ir.op_of(snn, n), O.OutputAccumulator) for n in snn.nodes)
    x = np.load(calib)["x"].astype(np.float32) / 255.0
    np.testing.assert_allclose(evaluate(snn, x), evaluate(load_onnx(model), x), rtol=1e-4, atol=1e-4)


def test_convert_vgg_with_average_pooling_channelwise(tmp_path):
    model = tmp_path / "vgg_avg.onnx"
    save_onnx(vgg("avg"), model)
    calib = _calibration(tmp_path / "calib.npz", (1, 8, 8))
    out = tmp_path / "snn.onnx"
    args = ["convert", model, "--calib", calib, "-o", out, "--channelwise", "--mode", "if-rate", "--calib-limit", 25]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert "mode if-rate, K = 8, 3 populations (0 synchronous)" in result.output
    assert "removed output Softmax" in result.output
    snn = load_onnx(out)
    meta = snn.graph["metadata"]
    assert meta["bsnn.calibration_samples"] == "25" and meta["bsnn.channelwise"] == "true"
    assert "AveragePool" in {ir.op_of(snn, n).op_type for n in snn.nodes}
    assert ir.op_of(snn, "relu1").scale.shape == (4,)
    # an existing output is not replaced without --overwrite
    before = out.read_bytes()
    refused = CliRunner().invoke(main, [str(a) for a in args])
    assert refused.exit_code == 1 and "file exists (use --overwrite" in refused.output
    assert out.read_bytes() == before
    again = _invoke(*args, "--overwrite", "--phases", "3")
    assert again.exit_code == 0 and load_onnx(out).graph["metadata"]["bsnn.phases"] == "3"


def test_convert_with_lambda_by_search_reports_it(tmp_path):
    model = tmp_path / "vgg_max.onnx"
    save_onnx(vgg("max"), model)
    calib = _calibration(tmp_path / "calib.npz", (1, 8, 8), n=24)
    out = tmp_path / "snn.onnx"
    result = CliRunner().invoke(
        main, [str(a) for a in ("convert", model, "--calib", calib, "-o", out, "-K", 4, "--calibrate", "search", "--json")]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["calibrate"] == "search" and summary["calibration_seconds"] > 0
    assert "calibrating (search: 4 passes over the data)" in result.stderr  # statistics + 3 levels
    x = np.load(calib)["x"].astype(np.float32) / 255.0
    searched = passes.convert(load_onnx(str(model)), x, phases=4, calibrate="search")
    for population in summary["populations"]:
        if population["op"] == "Population":
            assert population["scale"] == pytest.approx(float(ir.op_of(searched, population["name"]).scale))
    def summary_of(*extra):
        return json.loads(_invoke("convert", model, "--calib", calib, "-o", out, "--overwrite", "--json", *extra).stdout)

    assert summary_of()["calibrate"] == "search"  # the default for bsnn
    percentile = summary_of("--calibrate", "percentile")
    assert percentile["calibrate"] == "percentile" and percentile["calibration_seconds"] >= 0
    assert summary_of("--mode", "phase")["calibrate"] == "search"  # and for phase (K-bit weighted spikes)
    assert summary_of("--mode", "if-rate")["calibrate"] == "percentile"  # the default for rate coding
    plain = _invoke("convert", model, "--calib", calib, "-o", out, "--overwrite", "-K", 4).stdout
    (line,) = [line for line in plain.splitlines() if line.startswith("lambda by ")]
    assert re.fullmatch(r"lambda by search on 24 calibration samples in \d+\.\d\d s", line), line
    refused = CliRunner().invoke(main, [str(a) for a in ("convert", model, "--calib", calib, "-o", out, "--calibrate", "grid")])
    assert refused.exit_code == 2 and "'grid' is not one of 'percentile', 'search'" in refused.output


def test_until_writes_the_intermediate_graph(tmp_path, data_dir):
    calib = _calibration(tmp_path / "calib.npz", (1, 12, 12))
    out = tmp_path / "normalised.onnx"
    result = _invoke(
        "convert", data_dir / "resnet_tiny_dynamo.onnx", "--calib", calib, "-o", out, "--until", "normalise", "--json"
    )
    summary = json.loads(result.stdout)
    assert summary["passes"] == ["canonicalise", "fold_batchnorm", "normalise"]
    assert summary["mode"] is None and summary["populations"] == []
    graph = load_onnx(out)
    assert "bsnn.scales" in graph.graph["metadata"]
    assert not any(ir.op_of(graph, n).domain for n in graph.nodes)


def test_explain_prints_each_rule_outcome_before_the_summary(tmp_path):
    model = tmp_path / "tiny.onnx"
    save_onnx(_tiny(), model)
    calib = _calibration(tmp_path / "calib.npz", (4,), n=8)
    out = tmp_path / "snn.onnx"
    result = _invoke("convert", model, "--calib", calib, "-o", out, "--explain")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[: len(TINY_EXPLANATION)] == TINY_EXPLANATION
    assert lines[len(TINY_EXPLANATION)].startswith(f"wrote {out} after passes: canonicalise,")
    summary = json.loads(_invoke("convert", model, "--calib", calib, "-o", out, "--overwrite", "--explain",
                                 "--json").stdout)
    assert summary["explain"] == TINY_EXPLANATION
    plain = _invoke("convert", model, "--calib", calib, "-o", out, "--overwrite", "--json")
    assert "explain" not in json.loads(plain.stdout)
    until = _invoke("convert", model, "--calib", calib, "-o", out, "--overwrite", "--explain", "--until",
                    "canonicalise")
    assert until.stdout.splitlines()[:7] == TINY_EXPLANATION[:6] + [f"wrote {out} after passes: canonicalise"]


def test_unconvertible_model_writes_nothing(tmp_path):
    b_graph = vgg("max")
    ir.add_node(b_graph, "relu6", O.Clip(min=-1.0, max=6.0), ["fc1"])
    ir.set_inputs(b_graph, "relu3", ["relu6"])
    ir.verify(b_graph)
    model = tmp_path / "relu6.onnx"
    save_onnx(b_graph, model)
    calib = _calibration(tmp_path / "calib.npz", (1, 8, 8))
    out = tmp_path / "snn.onnx"
    result = CliRunner().invoke(main, ["convert", str(model), "--calib", str(calib), "-o", str(out)])
    assert result.exit_code == 1
    assert "error: pass to_spiking (after: canonicalise, fold_batchnorm): node 'relu6' (Clip)" in result.output
    assert "Traceback" not in result.output
    assert sorted(tmp_path.iterdir()) == sorted([model, calib])  # no output, no temporary file left


@pytest.mark.parametrize(
    ("calib", "message"),
    [("missing.npz", "missing.npz: no such data file"), ("wrong.npz", "do not fit the model input")],
)
def test_bad_calibration_data_is_one_line_error(tmp_path, data_dir, calib, message):
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 3), np.float32))
    out = tmp_path / "snn.onnx"
    args = ["convert", str(data_dir / "vgg_tiny_dynamo.onnx"), "--calib", str(tmp_path / calib), "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()
