"""save_onnx writes the weights of a large model to one external data file that load_onnx and onnxruntime read."""

from __future__ import annotations

import numpy as np
from conftest import run_onnxruntime
from test_passes_graphs import random_input, vgg

from bsnn_graph import evaluate, ir, load_onnx, onnx_io, save_onnx


def test_weights_over_the_limit_go_to_one_external_file(tmp_path, monkeypatch):
    graph = vgg("max")
    small = tmp_path / "small.onnx"
    save_onnx(graph, small)
    assert not (tmp_path / "small.onnx.data").exists()
    monkeypatch.setattr(onnx_io.write, "EXTERNAL_DATA_BYTES", 0)  # save_onnx reads it in onnx_io.write
    path = tmp_path / "big.onnx"
    save_onnx(graph, path)
    save_onnx(graph, path)  # replacing an existing pair works too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "small.onnx"]
    assert (
        path.stat().st_size < small.stat().st_size < (tmp_path / "big.onnx.data").stat().st_size + path.stat().st_size
    )
    back, inline = load_onnx(path), load_onnx(small)
    for name in graph.nodes:
        assert ir.op_of(back, name).same_as(ir.op_of(inline, name)), name
    x = random_input(graph, n=4)
    (expected,) = run_onnxruntime(path, {"x": x})
    np.testing.assert_allclose(evaluate(graph, x), expected, rtol=1e-4, atol=1e-5)
