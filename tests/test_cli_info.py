"""``bsnn info``: the table, the JSON document, spiking fields and one-line errors (click's CliRunner)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import DATA
from test_onnx_io import _spiking_graph

from bsnn_graph import load_onnx, save_onnx
from bsnn_graph.cli import main
from bsnn_graph.executor import macs


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def models(tmp_path):
    for name in ("resnet_tiny_legacy", "vgg_tiny_legacy", "vgg_tiny_dynamo"):
        shutil.copy(DATA / f"{name}.onnx", tmp_path / f"{name}.onnx")
    return tmp_path


def test_info_table_resnet_projection_shortcut(runner, models):
    result = runner.invoke(main, ["info", str(models / "resnet_tiny_legacy.onnx")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"model:   {models / 'resnet_tiny_legacy.onnx'}")
    header = next(line for line in lines if line.startswith("name"))
    assert header.split() == ["name", "op", "output", "shape", "params", "MACs/sample"]
    shortcut = next(line for line in lines if line.startswith("/layer2/shortcut/shortcut.0/Conv"))
    # 1x1 conv, 4 -> 8 channels, stride 2 on 12x12: 32 weights, 8*6*6*4 MACs
    assert shortcut.split() == ["/layer2/shortcut/shortcut.0/Conv", "Conv", "(8,", "6,", "6)", "32", "1,152"]
    graph = load_onnx(models / "resnet_tiny_legacy.onnx")
    total_macs = sum(macs(graph, n) for n in graph.nodes)
    total_params = sum(graph.nodes[n]["op"].parameter_count() for n in graph.nodes)
    assert lines[-1].split() == ["total", str(len(graph)), "nodes", f"{total_params:,}", f"{total_macs:,}"]
    assert "mode" not in header  # not a converted graph


def test_info_json_vgg_max_pool(runner, models):
    path = models / "vgg_tiny_legacy.onnx"
    result = runner.invoke(main, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc) == {"file", "name", "opset", "batch", "inputs", "outputs", "metadata", "spiking", "nodes", "totals"}
    assert doc["file"] == str(path) and doc["opset"] == 11 and doc["batch"] == "batch"
    assert doc["inputs"] == [{"name": "x", "shape": [1, 12, 12]}]
    assert doc["outputs"][0]["shape"] == [10]
    assert doc["spiking"] is False
    pools = [n for n in doc["nodes"] if n["op"] == "MaxPool"]
    assert [p["shape"] for p in pools] == [[4, 6, 6], [8, 3, 3]]
    assert all(p["parameters"] == 0 and p["macs"] == 0 for p in pools)
    gemms = [n for n in doc["nodes"] if n["op"] == "Gemm"]
    assert [(g["parameters"], g["macs"]) for g in gemms] == [(72 * 16 + 16, 72 * 16), (16 * 10 + 10, 160)]
    assert doc["totals"]["nodes"] == len(doc["nodes"])
    assert doc["totals"]["macs"] == sum(n["macs"] for n in doc["nodes"])
    assert doc["totals"]["parameters"] == sum(n["parameters"] for n in doc["nodes"])
    first_conv = next(n for n in doc["nodes"] if n["op"] == "Conv")
    assert first_conv["macs"] == 4 * 12 * 12 * 9 and first_conv["inputs"] == ["x"]


def test_info_spiking_fields(runner, tmp_path):
    path = tmp_path / "snn.onnx"
    save_onnx(_spiking_graph(), path)
    result = runner.invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("name"))
    assert header.split()[-4:] == ["mode", "K", "stage", "lambda"]
    pop1 = next(line for line in lines if line.startswith("pop1 "))
    assert pop1.split()[-6:] == ["bsnn", "6", "1", "0.5..2", "(3", "ch)"]
    out = next(line for line in lines if line.startswith("out "))
    assert out.split()[-4:] == ["bsnn", "6", "4", "0.25"]
    assert "meta:    bsnn.phases = 6" in lines
    doc = json.loads(runner.invoke(main, ["info", str(path), "--json"]).output)
    assert doc["spiking"] is True
    by_name = {n["name"]: n for n in doc["nodes"]}
    assert by_name["pop1"]["scale"] == [0.5, 1.5, 2.0]
    assert (by_name["gate"]["mode"], by_name["gate"]["phases"], by_name["gate"]["stage"]) == ("bsnn", 6, 1)
    assert by_name["gate"]["scale"] is None
    assert by_name["x"]["scale"] == 0.5
    assert by_name["sync"]["domain"] == "ai.bsnn" and by_name["sync"]["op"] == "SynchronousNeuron"


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), (b"not a model", "not an ONNX model"), ("cut", "truncated")],
)
def test_info_errors_one_line(runner, tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    if content == "cut":
        path.write_bytes((DATA / "vgg_tiny_legacy.onnx").read_bytes()[:3000])
    elif content is not None:
        path.write_bytes(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(main, ["info", str(path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(f"error: {path}: ") and message in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_info_unsupported_ops(runner, make_model, tmp_path):
    from conftest import tensor_info
    from onnx import helper

    nodes = [helper.make_node("Sigmoid", ["x"], ["a"], name="s1"), helper.make_node("Tanh", ["a"], ["y"], name="t")]
    path = make_model(nodes, [tensor_info("x", ["N", 3])], [tensor_info("y", None)])
    result = runner.invoke(main, ["info", str(path), "--json"])
    assert result.exit_code == 1
    assert result.output == f"error: {path}: unsupported ops: Sigmoid (node s1), Tanh (node t)\n"
