"""The schedule and initial potential through the CLI: ``convert --initial-potential``, ``run/eval --full-dynamics``.

``--json`` says which schedule ran, the initial potential of the graph and
the bytes per sample of the run; the figures are those of runtime.simulate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import runtime
from bsnn_graph.cli import main

DATA = Path(__file__).parent / "data"


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schedule")
    rng = np.random.default_rng(0)
    x = rng.random((24, 1, 12, 12)).astype(np.float32)
    np.savez(tmp / "data.npz", x=x, y=rng.integers(0, 10, 24))
    for start in ("half", "zero"):
        _invoke("convert", DATA / "vgg_tiny_legacy.onnx", "--calib", tmp / "data.npz", "-K", "4",
                "--initial-potential", start, "-o", tmp / f"{start}.onnx")
    return tmp


def test_convert_writes_the_initial_potential_into_the_graph(folder):
    for start in ("half", "zero"):
        graph = runtime.load(folder / f"{start}.onnx")
        ops = [graph.nodes[n]["op"] for n in graph.nodes if graph.nodes[n]["op"].op_type == "Population"]
        assert ops and {op.initial_potential for op in ops} == {start}
        assert graph.graph["metadata"]["bsnn.initial_potential"] == start
    refused = CliRunner().invoke(main, ["convert", str(DATA / "vgg_tiny_legacy.onnx"), "--calib",
                                        str(folder / "data.npz"), "--initial-potential", "third", "-o",
                                        str(folder / "x.onnx")])  # fmt: skip
    assert refused.exit_code != 0 and "third" in refused.output


@pytest.mark.parametrize("start", ["half", "zero"])
def test_run_json_says_which_schedule_ran(folder, start):
    model = folder / f"{start}.onnx"
    x = np.load(folder / "data.npz")["x"]
    cone = json.loads(_invoke("run", model, "--data", folder / "data.npz", "-T", 24, "--json").stdout)
    full = json.loads(_invoke("run", model, "--data", folder / "data.npz", "-T", 24, "--full-dynamics",
                              "--json").stdout)  # fmt: skip
    assert (cone["schedule"], full["schedule"]) == ("light-cone", "full")
    assert cone["initial_potential"] == full["initial_potential"] == start
    assert cone["predictions"] == full["predictions"] and cone["accuracy_per_step"] == full["accuracy_per_step"]
    graph = runtime.load(model)
    expected = runtime.simulate(graph, x, 24)
    assert cone["sops_per_sample"] == pytest.approx(expected.sops.mean())
    assert full["sops_per_sample"] == pytest.approx(runtime.simulate(graph, x, 24, full_dynamics=True).sops.mean())
    assert cone["sops_per_sample"] < full["sops_per_sample"]
    assert cone["bytes_per_sample"] == expected.extra["bytes_per_sample"]


def test_eval_json_reports_schedule_and_memory(folder):
    doc = json.loads(_invoke("eval", DATA / "vgg_tiny_legacy.onnx", "--calib", folder / "data.npz", "--data",
                             folder / "data.npz", "-K", "4", "-T", "8,16,24", "--initial-potential", "zero",
                             "--json").stdout)  # fmt: skip
    bsnn = doc["modes"]["bsnn"]
    assert bsnn["schedule"] == "light-cone" and bsnn["initial_potential"] == "zero"
    assert set(bsnn["bytes_per_sample"]) == {"result", "batch", "thread"}
    full = json.loads(_invoke("eval", folder / "zero.onnx", "--data", folder / "data.npz", "-T", "8,16,24",
                              "--full-dynamics", "--json").stdout)  # fmt: skip
    assert full["modes"]["bsnn"]["schedule"] == "full"
    assert full["modes"]["bsnn"]["accuracy"] == bsnn["accuracy"]


def test_eval_refuses_initial_potential_for_a_converted_model(folder):
    result = CliRunner().invoke(main, ["eval", str(folder / "zero.onnx"), "--data", str(folder / "data.npz"), "-T",
                                       "8", "--initial-potential", "half"])  # fmt: skip
    assert result.exit_code == 1 and "--initial-potential applies to ANN models only" in result.output


def test_inspect_says_which_schedule_the_trace_holds(folder):
    for extra, schedule in (((), "light-cone"), (("--full-dynamics",), "full")):
        trace = folder / f"{schedule}.h5"
        _invoke("run", folder / "half.onnx", "--data", folder / "data.npz", "-T", 24, "--trace", trace,
                "--overwrite", *extra)  # fmt: skip
        doc = json.loads(_invoke("inspect", trace, "--json").stdout)
        assert (doc["schedule"], doc["initial_potential"]) == (schedule, "half")
        assert f"schedule {schedule}, initial potential half" in _invoke("inspect", trace).stdout


@pytest.mark.parametrize("attribute", ["scale", "initial_potential"])
def test_a_damaged_spiking_attribute_is_one_error_line(folder, tmp_path, attribute):
    """Found by the 5,000-case fuzz run: an empty lambda list reached `bsnn info` as a traceback."""
    import onnx
    from onnx import helper

    model = onnx.load(folder / "half.onnx")
    node = next(n for n in model.graph.node if n.op_type == "Population")
    kept = [a for a in node.attribute if a.name != attribute]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.append(helper.make_attribute(attribute, [] if attribute == "scale" else "third",
                                                attr_type=onnx.AttributeProto.FLOATS if attribute == "scale"
                                                else None))  # fmt: skip
    path = tmp_path / "damaged.onnx"
    onnx.save(model, path)
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and attribute in result.output
