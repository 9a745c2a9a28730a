"""One PyTorch model per CNN family, exported with both exporters (tests/data/make_models.py): load, rewrite, convert, run.

Each is checked against the torch output saved beside it and against
onnxruntime (the converted graph's ANN meaning, rtol 1e-4, atol 1e-5), and,
where the runtime lowers every op already, the event-driven run against
the dense oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, run_onnxruntime
from test_passes_graphs import Builder, random_input
from test_rewrites import _check_run_against_oracle

from bsnn_graph import evaluate, ir, load_onnx
from bsnn_graph import ops as O
from passes import convert

K = 8
#: family -> the runtime support its spiking run still needs (None: runs now)
FAMILIES = ("mobilenetv2_block", "preact_block", "dense_block", "shuffle_unit", "leaky_net")


def _calibration(x, n=32, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([x, rng.standard_normal((n,) + x.shape[1:]).astype(np.float32)])


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_converts_exactly_as_an_ann(family, exporter):
    path = DATA / f"{family}_{exporter}.onnx"
    sample = np.load(DATA / f"{family}.npz")
    x, y = sample["x"], sample["y"]
    graph = load_onnx(path)
    np.testing.assert_allclose(evaluate(graph, x), y, rtol=1e-4, atol=1e-4)
    (expected,) = run_onnxruntime(path, {"x": x})
    spiking = convert(graph, _calibration(x), phases=K)
    np.testing.assert_allclose(evaluate(spiking, x), expected, rtol=1e-4, atol=1e-5)
    types = {ir.op_of(spiking, n).op_type for n in spiking.nodes}
    assert "BatchNormalization" not in types and "Relu" not in types and "Clip" not in types
    if family == "mobilenetv2_block":
        populations = [ir.op_of(spiking, n) for n in spiking.nodes if ir.op_of(spiking, n).op_type == "Population"]
        ceilings = [p.ceiling for p in populations]
        assert ceilings and all(np.isfinite(c).all() for c in ceilings)
    if family == "shuffle_unit":
        assert "Transpose" in types
    if family == "leaky_net":
        assert sum(n.endswith("_negative") for n in spiking.nodes) == 2


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_spiking_run_matches_the_oracle(family, exporter):
    sample = np.load(DATA / f"{family}.npz")
    spiking = convert(load_onnx(DATA / f"{family}_{exporter}.onnx"), _calibration(sample["x"]), phases=K)
    _check_run_against_oracle(spiking, np.abs(sample["x"]))


def test_two_dense_layers_share_a_concat_that_synchronise_copies_per_target():
    """An early source on a linear path (a Concat) read by populations of different stages: the path is copied
    per target and each target reads the source's SN chain at its own delay; the run is exact."""
    b = Builder(11)
    x = b.input("x", (2, 6, 6))
    x0 = b.relu("stem", b.conv("stem_conv", x, 3))
    h1 = b.conv("l1_conv", b.relu("l1_relu", b.bn("l1_bn", x0)), 2)
    cat1 = b.op("cat1", O.Concat(axis=1), x0, h1)
    h2 = b.conv("l2_conv", b.relu("l2_relu", b.bn("l2_bn", cat1)), 2)
    cat2 = b.op("cat2", O.Concat(axis=1), cat1, h2)
    pooled = b.op("gap", O.GlobalAveragePool(), b.relu("norm", b.bn("norm_bn", cat2)))
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), pooled), 3))
    data = random_input(graph, n=16, positive=False)
    spiking = convert(graph, data)
    np.testing.assert_allclose(evaluate(spiking, data), evaluate(graph, data), rtol=1e-4, atol=1e-5)
    meta = spiking.graph["metadata"]
    assert int(meta["bsnn.copied_nodes"]) > 0
    # stem (stage 1) feeds l1_relu (stage 2), l2_relu (stage 3) and norm (stage 4): one chain of 2 SNs, of which
    # l2_relu reads the first and norm the second; l1_relu (stage 2) is delayed once for norm
    sns = {n: ir.op_of(spiking, n) for n in spiking.nodes if ir.op_of(spiking, n).op_type == "SynchronousNeuron"}
    assert sorted((n.split("_sn")[0], op.stage) for n, op in sns.items()) == [("l1_relu", 3), ("stem", 2), ("stem", 3)]
    _check_run_against_oracle(spiking, np.abs(data))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_inception_pool_branch_after_a_pool_converts_and_runs_exactly(exporter):
    """A MaxPool reading a MaxPool (Inception's pool branch after the stage pool) becomes one max pool over
    the union windows (canonicalise), so its max gate reads a population: as an ANN it equals onnxruntime,
    and the spiking run matches the oracle."""
    path = DATA / f"fire_inception_{exporter}.onnx"
    sample = np.load(DATA / "fire_inception.npz")
    graph = load_onnx(path)
    spiking = convert(graph, _calibration(sample["x"]), phases=K)
    (expected,) = run_onnxruntime(path, {"x": sample["x"]})
    np.testing.assert_allclose(evaluate(spiking, sample["x"]), expected, rtol=1e-4, atol=1e-5)
    _check_run_against_oracle(spiking, np.abs(sample["x"]))
