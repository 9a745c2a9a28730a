"""Every bad input a user reported gets one clear ``error:`` line (issue 12), one test per class.

Data layout, damaged ONNX files (external data, initializers, op types,
unsupported ops behind unsupported ops, exporter metadata), output paths
checked before any work, and the Python API agreeing with the CLI.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import build_model, initializer, tensor_info
from onnx import helper

import bsnn_graph
from bsnn_graph import DataError, ModelError, load_onnx
from bsnn_graph.cli import main
from bsnn_graph.data import fit_to_input, load_dataset, read_idx


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result) -> str:
    """Exit 1 and exactly one ``error:`` line as the last line of stderr; no traceback, nothing on stdout."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    return errors[0]


def _images(tmp_path, name, array, labels=None):
    path = tmp_path / name
    if labels is None:
        np.savez(path, x=array)
    else:
        np.savez(path, x=array, y=labels)
    return path


# --------------------------------------------------------------------------- data layout


def test_channels_last_data_is_refused_not_reshaped():
    x = np.zeros((4, 32, 32, 3), np.float32)
    with pytest.raises(DataError, match=r"expected \(N, C=3, H=32, W=32\).*channels-last.*transpose\(0, 3, 1, 2\)"):
        fit_to_input(x, (3, 32, 32), "cifar.npz")


def test_flat_data_is_refused_with_the_reshape_to_use():
    with pytest.raises(DataError, match=r"expected \(N, C=1, H=28, W=28\).*flat.*reshape\(-1, 1, 28, 28\)"):
        fit_to_input(np.zeros((4, 784), np.float32), (1, 28, 28))


def test_exact_fit_and_a_missing_unit_channel_axis_are_accepted():
    x = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28)
    fitted = fit_to_input(x, (1, 28, 28))
    assert fitted.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(fitted[:, 0], x)
    assert fit_to_input(fitted, (1, 28, 28)) is fitted
    with pytest.raises(DataError):
        fit_to_input(np.zeros((2, 28, 28), np.float32), (3, 28, 28))  # only a *unit* axis is added


def test_cli_refuses_channels_last_data_for_run_eval_and_calib(tmp_path, data_dir):
    model = data_dir / "vgg_tiny_legacy.onnx"  # input (1, 12, 12)
    wrong = _images(tmp_path, "hwc.npz", np.zeros((5, 12, 12, 1), np.uint8), np.zeros(5, np.int64))
    out = tmp_path / "snn.onnx"
    line = one_error_line(invoke("convert", model, "--calib", wrong, "-o", out))
    assert "hwc.npz" in line and "expected (N, C=1, H=12, W=12)" in line
    assert not out.exists()
    line = one_error_line(invoke("eval", model, "--calib", wrong, "--data", wrong))
    assert "channels-last" in line


def test_evaluate_api_checks_shapes_like_the_cli(data_dir):
    graph = load_onnx(data_dir / "vgg_tiny_legacy.onnx")
    x = np.random.default_rng(0).uniform(0, 1, (3, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(bsnn_graph.evaluate(graph, x), bsnn_graph.evaluate(graph, x[:, None]))
    with pytest.raises(DataError, match="do not fit the model input"):  # the CLI's class, not a bare ValueError
        bsnn_graph.evaluate(graph, x.reshape(3, -1))


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((3, 4, 4), np.complex64), None, "dtype complex64"),
        (np.array([["a", "b"]]), None, "dtype <U1"),
        (np.zeros(3, np.float32), None, "need at least"),
        (np.array(1.0), None, "need at least"),
        (np.full((3, 4, 4), np.nan, np.float32), None, "sample 0 holds NaN"),
        (np.array([[0.0, np.inf]], np.float32), None, "holds NaN or infinite"),
        (np.zeros((3, 4, 4), np.float32), np.array([0.5, 1, 2]), "label 0 is 0.5"),
        (np.zeros((3, 4, 4), np.float32), np.array([0, -1, 2]), "label 1 is -1"),
        (np.zeros((3, 4, 4), np.float32), np.array([0, 1]), "3 images but 2 labels"),
        (np.zeros((3, 4, 4), np.float32), np.zeros((3, 2)), "labels of shape"),
    ],
)
def test_bad_npz_contents(tmp_path, images, labels, message):
    path = _images(tmp_path, "bad.npz", images, labels)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        load_dataset(path)


def test_idx_is_memory_mapped_and_limited(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 4), dtype=np.uint8)
    path = tmp_path / "t-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape) + images.tobytes())
    (tmp_path / "t-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (6).to_bytes(4, "big") + bytes(range(6)))
    assert isinstance(read_idx(path), np.memmap)
    x, y = load_dataset(path, limit=2)
    np.testing.assert_allclose(x[:, 0], images[:2] / 255.0, rtol=1e-6)
    assert y.tolist() == [0, 1]
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated IDX data"):
        load_dataset(path)
    path.write_bytes(bytes([0, 0, 8, 200]) + bytes(800))
    with pytest.raises(DataError, match="IDX header says 200 dimensions"):
        load_dataset(path)


# --------------------------------------------------------------------------- damaged ONNX files


def test_dynamo_export_without_its_data_file(tmp_path, data_dir):
    model = onnx.load(data_dir / "vgg_tiny_dynamo.onnx")
    path = tmp_path / "vgg.onnx"
    onnx.save(model, path, save_as_external_data=True, location="vgg.onnx.data", size_threshold=0)
    assert load_onnx(path).number_of_nodes() > 5  # with its data file it loads
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(path, moved / "vgg.onnx")
    for command in (["info"], ["convert", "--calib", data_dir / "vgg_tiny.npz", "-o", tmp_path / "o.onnx"]):
        line = one_error_line(invoke(command[0], moved / "vgg.onnx", *command[1:]))
        assert "external file 'vgg.onnx.data', which is not beside the model" in line


def test_initializer_whose_data_does_not_match_its_dims(tmp_path, data_dir):
    model = onnx.load(data_dir / "vgg_tiny_legacy.onnx")
    tensor = model.graph.initializer[0]
    tensor.raw_data = tensor.raw_data[:-4]
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(
        ModelError,
        match=rf"initializer {tensor.name!r} \(FLOAT, dims .*bytes of raw data cannot be read as FLOAT of these dims",
    ):
        load_onnx(path)
    for command in ("info", "run", "eval"):
        args = (
            [] if command == "info" else ["--data", data_dir / "vgg_tiny.npz"] + (["-T", 4] if command == "run" else [])
        )
        assert "cannot be read as FLOAT of these dims" in one_error_line(invoke(command, path, *args))


@pytest.mark.parametrize("new_type", ["Add", "Relu", "Conv", "MaxPool", "Gemm", "Concat", "Reshape", "Sum"])
def test_a_node_whose_op_type_was_changed(tmp_path, data_dir, new_type):
    model = onnx.load(data_dir / "vgg_tiny_dynamo.onnx")
    lines = []
    for i in range(len(model.graph.node)):
        changed = onnx.load(data_dir / "vgg_tiny_dynamo.onnx")
        changed.graph.node[i].op_type = new_type
        path = tmp_path / f"op{i}.onnx"
        onnx.save(changed, path)
        result = invoke("info", path)
        if result.exit_code != 0:
            lines.append(one_error_line(result))
    assert lines  # some changes cannot load; each says so in one line


def test_add_given_one_input_names_the_node_and_arity(tmp_path):
    path = build_model(
        tmp_path / "m.onnx",
        [helper.make_node("Relu", ["x"], ["r"], name="n4"), helper.make_node("Add", ["r"], ["y"], name="n5")],
        [tensor_info("x", ["N", 3])],
        [tensor_info("y", ["N", 3])],
    )
    with pytest.raises(ModelError, match=r"node 'n5' \(Add, inputs \? -> \?\): 1 inputs, Add takes 2..2"):
        load_onnx(path)


def _silu_model(tmp_path, metadata: bool):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="n1"),
        helper.make_node("Sigmoid", ["c"], ["s"], name="n2"),
        helper.make_node("Mul", ["c", "s"], ["m"], name="n3"),
        helper.make_node("Tanh", ["m"], ["t"], name="n4"),
        helper.make_node("Flatten", ["t"], ["y"], name="n5"),
    ]
    if metadata:
        for node, scope, cls in ((nodes[1], "act", "SiLU"), (nodes[2], "act", "SiLU")):
            helper.set_metadata_props(
                node,
                {
                    "pkg.torch.onnx.name_scopes": repr(["", "features", f"features.{scope}", "sigmoid"]),
                    "pkg.torch.onnx.class_hierarchy": repr(
                        ["m.Net", "torch.nn.Sequential", f"torch.nn.modules.activation.{cls}", "aten.sigmoid.default"]
                    ),
                },
            )
    w = initializer("w", np.ones((2, 1, 3, 3), np.float32))
    return build_model(
        tmp_path / "silu.onnx", nodes, [tensor_info("x", ["N", 1, 5, 5])], [tensor_info("y", ["N", 18])], [w]
    )


def test_unsupported_ops_behind_an_unsupported_op_are_listed_too(tmp_path):
    path = _silu_model(tmp_path, metadata=False)
    line = one_error_line(invoke("info", path))
    assert "Sigmoid (node n2)" in line and "Mul of two tensors (node n3)" in line and "Tanh (node n4)" in line


def test_unsupported_op_names_the_module_the_exporter_recorded(tmp_path):
    line = one_error_line(invoke("info", _silu_model(tmp_path, metadata=True)))
    assert "Sigmoid (node n2 in features.act (SiLU))" in line


def test_damaged_node_error_names_op_shapes_and_module(tmp_path, data_dir):
    model = onnx.load(data_dir / "vgg_tiny_dynamo.onnx")
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.op_type = "Add"
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    line = one_error_line(invoke("info", path))
    assert f"node {conv.name!r} (Add, inputs (N, 1, 12, 12) x constant" in line
    assert "module features.1 (BatchNorm2d)" in line  # where the dynamo exporter recorded it


# --------------------------------------------------------------------------- outputs checked first


@pytest.mark.parametrize("target", ["missing/dir/x.onnx", "missing.onnx/x.onnx"])
def test_convert_checks_the_output_before_calibrating(tmp_path, data_dir, target, monkeypatch):
    import passes

    called = []
    monkeypatch.setattr(passes, "convert", lambda *a, **k: called.append(1))
    model = data_dir / "vgg_tiny_legacy.onnx"
    line = one_error_line(invoke("convert", model, "--calib", data_dir / "vgg_tiny.npz", "-o", tmp_path / target))
    assert "does not exist" in line
    assert not called


def test_inspect_checks_the_plot_path_first(tmp_path):
    from test_trace import make_result

    from runtime.trace import write_trace

    trace = write_trace(tmp_path / "t.h5", make_result(3, seed=1))
    line = one_error_line(invoke("inspect", trace, "--plot", tmp_path / "no" / "p.png"))
    assert "does not exist" in line


def test_energy_keys_of_the_api_and_of_inspect_agree(tmp_path):
    from test_cli_run import tiny_snn

    import runtime
    from bsnn_graph import save_onnx

    graph = tiny_snn()
    model = tmp_path / "snn.onnx"
    save_onnx(graph, model)
    x = np.random.default_rng(0).uniform(0, 1, (6, 1, 6, 6)).astype(np.float32)
    data = tmp_path / "d.npz"
    np.savez(data, x=x)
    api = runtime.simulate(runtime.load(model), x, 12).energy_estimate()
    assert invoke("run", model, "--data", data, "-T", 12, "--trace", tmp_path / "t.h5").exit_code == 0
    for document in (
        json.loads(invoke("inspect", tmp_path / "t.h5", "--json").stdout)["energy"],
        json.loads(invoke("run", model, "--data", data, "-T", 12, "--json").stdout)["energy"],
    ):
        assert set(api) <= set(document)
        for key in ("snn_energy_pj_per_sample", "ann_energy_pj_per_sample", "sops_per_sample", "snn_over_ann"):
            assert document[key] == pytest.approx(api[key])


# --------------------------------------------------------------------------- inspect and convert output


@pytest.fixture
def traced_snn(tmp_path):
    from test_cli_run import tiny_snn

    from bsnn_graph import save_onnx

    model = tmp_path / "snn.onnx"
    save_onnx(tiny_snn(), model)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(1).uniform(0, 1, (6, 1, 6, 6)).astype(np.float32))
    trace = tmp_path / "t.h5"
    assert invoke("run", model, "--data", data, "-T", 12, "--trace", trace).exit_code == 0
    return trace


def test_inspect_says_sops_of_a_population_are_counted_at_its_max_gate(traced_snn):
    document = json.loads(invoke("inspect", traced_snn, "--json").stdout)
    rows = {p["name"]: p for p in document["populations"]}
    assert rows["relu1"]["delivers_through"] == ["pool"] and rows["pool"]["source"] == "relu1"
    assert rows["relu1"]["sops_per_sample"] == 0 and rows["pool"]["sops_per_sample"] > 0
    table = invoke("inspect", traced_snn).stdout
    relu1 = next(line for line in table.splitlines() if line.startswith("relu1 "))
    assert "via pool" in relu1 and " 0 " not in relu1
    assert "3 spiking nodes (2 populations and 1 max gates)" in table


def test_inspect_total_row_follows_population(traced_snn):
    document = json.loads(invoke("inspect", traced_snn, "--json", "--population", "relu2").stdout)
    relu2 = next(p for p in document["populations"] if p["name"] == "relu2")
    shown = document["shown_totals"]
    assert shown["neurons"] == relu2["neurons"] == 8 and shown["sops_per_sample"] == relu2["sops_per_sample"]
    table = invoke("inspect", traced_snn, "--population", "relu2").stdout
    total = next(line for line in table.splitlines() if line.startswith("total (shown)"))
    assert total.split()[2] == "8"  # the neurons of relu2, not of every population


def test_convert_counts_the_max_gates(tmp_path, data_dir):
    calib = _images(tmp_path, "c.npz", np.random.default_rng(0).integers(0, 256, (8, 1, 12, 12), dtype=np.uint8))
    out = invoke("convert", data_dir / "vgg_tiny_legacy.onnx", "--calib", calib, "-o", tmp_path / "o.onnx")
    assert out.exit_code == 0 and "4 populations (0 synchronous) and 2 max gates" in out.stdout


def test_inspect_json_of_a_trace_with_nan_values_is_valid_json(traced_snn):
    import h5py

    with h5py.File(traced_snn, "r+") as f:
        f["populations/000"].attrs["scale"] = np.float32(np.nan)
        f["logits"][...] = np.nan
        f.attrs["e_ac_pj"] = np.nan
    result = invoke("inspect", traced_snn, "--json")
    assert result.exit_code == 0
    json.loads(result.stdout)  # allow_nan=False would have raised: NaN became null


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f.__delitem__("populations/001/spike_counts"), "dataset 'populations/001/spike_counts' is missing"),
        (lambda f: f.__setitem__("populations/003", np.dtype("f4")), "populations/003 is a Datatype, not a group"),
        (lambda f: f.attrs.__setitem__("timesteps", np.nan), "root attribute 'timesteps' is nan"),
        (lambda f: f.attrs.__setitem__("samples_written", 99), "99 samples written of samples_total = 6"),
    ],
)
def test_damaged_traces(traced_snn, damage, message):
    import h5py

    with h5py.File(traced_snn, "r+") as f:
        damage(f)
    for command in (["inspect"], ["inspect", "--json"]):
        assert message in one_error_line(invoke(*command, traced_snn))


def test_corrupted_chunk_is_one_error_line(traced_snn):
    import h5py

    with h5py.File(traced_snn, "r") as f:
        offset = f["populations/000/spike_counts"].id.get_chunk_info(0).byte_offset
    raw = bytearray(traced_snn.read_bytes())
    raw[offset : offset + 16] = b"\xff" * 16  # the gzip stream of the first chunk
    traced_snn.write_bytes(bytes(raw))
    line = one_error_line(invoke("inspect", traced_snn))
    assert "damaged trace: cannot read dataset '/populations/000/spike_counts'" in line


def test_plot_labels_keep_both_ends_of_long_names():
    from bsnn_graph.plot import _short

    name = "/features/features.10/block.3/conv2/Relu_output_0"
    short = _short(name, 30)
    assert len(short) == 30 and short.startswith("/features/f") and short.endswith("Relu_output_0")
    assert _short("relu1") == "relu1"


@pytest.mark.parametrize(("attribute", "value"), [("dilations", [0, 0]), ("strides", [1]), ("pads", [0, 0, -1, 0])])
def test_window_attributes_out_of_range(tmp_path, attribute, value):
    pool = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], **{attribute: value})
    path = build_model(tmp_path / "m.onnx", [pool], [tensor_info("x", ["N", 1, 4, 4])], [tensor_info("y", None)])
    line = one_error_line(invoke("info", path))
    assert f"node 'pool' (MaxPool): {attribute} {value} (expected" in line


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("mode", "fast", "is 'fast', expected one of bsnn"),
        ("stage", 2**31, "expected a stage in 0..65535"),
        ("phases", 0, "expected K in 1..16"),
        ("scale", helper.make_graph([], "g", [], []), "is of ONNX type GraphProto"),
    ],
)
def test_spiking_op_attributes_of_the_wrong_type_or_range(tmp_path, name, value, message):
    from test_cli_run import tiny_snn

    from bsnn_graph import save_onnx

    path = tmp_path / "snn.onnx"
    save_onnx(tiny_snn(), path)
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.op_type == "Population")
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])
    onnx.save(model, path)
    line = one_error_line(invoke("info", path))
    assert f"node {node.name!r} (Population): attribute {name!r}" in line and message in line
