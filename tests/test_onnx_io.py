"""load_onnx / save_onnx: real exported models, round trips, node naming,
the ai.bsnn spiking ops, and every error path."""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest
from conftest import DATA, initializer, run_onnxruntime, tensor_info
from onnx import helper

from bsnn_graph import ModelError, evaluate, ir, load_onnx, save_onnx
from bsnn_graph import ops as O

RTOL, ATOL = 1e-4, 1e-5
REAL_MODELS = ["vgg_tiny_legacy", "vgg_tiny_dynamo", "resnet_tiny_legacy", "resnet_tiny_dynamo"]


def _sample(name: str):
    data = np.load(DATA / f"{name.rsplit('_', 1)[0]}.npz")
    return data["x"], data["y"]


def _op_types(graph) -> list[str]:
    return [ir.op_of(graph, n).op_type for n in ir.topological_order(graph)]


# --------------------------------------------------------------------------- real exported models


@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_matches_torch_and_onnxruntime(name):
    path = DATA / f"{name}.onnx"
    graph = load_onnx(path)
    x, y_torch = _sample(name)
    got = evaluate(graph, x)
    np.testing.assert_allclose(got, y_torch, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got, run_onnxruntime(path, {"x": x})[0], rtol=RTOL, atol=ATOL)
    assert graph.graph["batch"] == "batch"
    assert ir.shape_of(graph, graph.graph["outputs"][0]) == (10,)


def test_real_model_structure():
    vgg = _op_types(load_onnx(DATA / "vgg_tiny_legacy.onnx"))
    assert vgg.count("BatchNormalization") == 3 and vgg.count("MaxPool") == 2 and vgg.count("Gemm") == 2
    resnet = load_onnx(DATA / "resnet_tiny_legacy.onnx")
    adds = [n for n in resnet.nodes if isinstance(ir.op_of(resnet, n), O.Add)]
    assert len(adds) == 2 and all(ir.op_of(resnet, n).constant is None for n in adds)
    # the projection shortcut: one Add has a Conv -> BatchNormalization input branch of a 1x1 conv
    convs = [ir.op_of(resnet, n) for n in resnet.nodes if isinstance(ir.op_of(resnet, n), O.Conv)]
    assert any(c.kernel_shape == (1, 1) and c.strides == (2, 2) for c in convs)
    dynamo = _op_types(load_onnx(DATA / "resnet_tiny_dynamo.onnx"))
    assert "GlobalAveragePool" in dynamo  # from ReduceMean over the spatial axes
    # node names: the ONNX node names of the legacy exporter
    assert "/stem/stem.0/Conv" in resnet


@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_round_trip(name, tmp_path):
    graph = load_onnx(DATA / f"{name}.onnx")
    graph.graph["metadata"] = {"note": "round trip", "bsnn.mode": "bsnn"}
    out = tmp_path / "copy.onnx"
    save_onnx(graph, out)
    again = load_onnx(out)
    assert ir.graphs_equal(graph, again)
    assert again.graph["metadata"] == graph.graph["metadata"]
    assert again.graph["batch"] == "batch"
    x, _ = _sample(name)
    np.testing.assert_array_equal(evaluate(again, x), evaluate(graph, x))
    np.testing.assert_allclose(run_onnxruntime(out, {"x": x})[0], evaluate(graph, x), rtol=RTOL, atol=ATOL)
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # saving the reloaded graph gives the same file content
    out2 = tmp_path / "copy2.onnx"
    save_onnx(again, out2)
    assert out2.read_bytes() == out.read_bytes()


def test_reshape_target_written_as_zero_then_shape(tmp_path):
    graph = load_onnx(DATA / "vgg_tiny_dynamo.onnx")
    reshape = next(n for n in graph.nodes if isinstance(ir.op_of(graph, n), O.Reshape))
    assert ir.op_of(graph, reshape).shape == (72,)
    save_onnx(graph, tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    node = next(n for n in model.graph.node if n.op_type == "Reshape")
    target = next(t for t in model.graph.initializer if t.name == node.input[1])
    assert onnx.numpy_helper.to_array(target).tolist() == [0, 72]


def test_fixed_batch_round_trip(make_model, tmp_path):
    path = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", [4, 3])], [tensor_info("y", [4, 3])])
    graph = load_onnx(path)
    assert graph.graph["batch"] == 4
    save_onnx(graph, tmp_path / "out.onnx")
    model = onnx.load(tmp_path / "out.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert load_onnx(tmp_path / "out.onnx").graph["batch"] == 4


# --------------------------------------------------------------------------- naming


def test_node_keys(make_model):
    nodes = [
        helper.make_node("Relu", ["x"], ["t1"], name="first"),
        helper.make_node("Relu", ["t1"], ["t2"], name=""),  # no name -> output tensor name
        helper.make_node("Relu", ["t2"], ["t3"], name="dup"),
        helper.make_node("Relu", ["t3"], ["y"], name="dup"),  # name not unique -> output names
    ]
    graph = load_onnx(make_model(nodes, [tensor_info("x", ["N", 2])], [tensor_info("y", None)]))
    assert set(graph.nodes) == {"x", "first", "t2", "t3", "y"}
    assert graph.graph["inputs"] == ["x"] and graph.graph["outputs"] == ["y"]
    assert ir.inputs_of(graph, "t2") == ["first"]


def test_graph_name_and_metadata(make_model):
    path = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [tensor_info("x", ["N", 2])],
        [tensor_info("y", None)],
        metadata={"author": "tests"},
    )
    graph = load_onnx(path)
    assert graph.graph["metadata"] == {"author": "tests"}
    assert graph.graph["opset"] == 17


# --------------------------------------------------------------------------- spiking ops (ai.bsnn)


def _spiking_graph():
    rng = np.random.default_rng(3)
    g = ir.new_graph(name="spiking", batch="batch")
    ir.add_node(g, "x", O.Input(shape=(1, 6, 6), scale=0.5))
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    ir.add_node(
        g,
        "conv",
        O.Conv(
            weight=w,
            bias=rng.standard_normal(3).astype(np.float32),
            strides=(1, 1),
            pads=(1, 1, 1, 1),
            dilations=(1, 1),
            group=1,
        ),
        ["x"],
    )
    scale = np.array([0.5, 1.5, 2.0], np.float32)
    ir.add_node(g, "pop1", O.Population(mode="bsnn", phases=6, stage=1, scale=scale), ["conv"])
    ir.add_node(
        g,
        "gate",
        O.MaxGate(
            mode="bsnn",
            phases=6,
            stage=1,
            kernel_shape=(2, 2),
            strides=(2, 2),
            pads=(0, 0, 0, 0),
            dilations=(1, 1),
            ceil_mode=False,
        ),
        ["pop1"],
    )
    ir.add_node(g, "sync", O.SynchronousNeuron(mode="bsnn", phases=6, stage=2, scale=scale), ["gate"])
    ir.add_node(g, "flat", O.Flatten(axis=1), ["sync"])
    ir.add_node(g, "fc1", O.Gemm(weight=rng.standard_normal((4, 27)).astype(np.float32), bias=None), ["flat"])
    ir.add_node(g, "pop2", O.Population(mode="bsnn", phases=6, stage=3, scale=np.ones((), np.float32)), ["fc1"])
    fc2 = O.Gemm(weight=rng.standard_normal((2, 4)).astype(np.float32), bias=np.zeros(2, np.float32))
    ir.add_node(g, "fc2", fc2, ["pop2"])
    ir.add_node(
        g, "out", O.OutputAccumulator(mode="bsnn", phases=6, stage=4, scale=np.float32(0.25) * np.ones(())), ["fc2"]
    )
    ir.op_of(g, "out").scale = ir.op_of(g, "out").scale.astype(np.float32)
    g.graph["outputs"] = ["out"]
    g.graph["metadata"] = {"bsnn.mode": "bsnn", "bsnn.phases": "6"}
    ir.verify(g)
    return g


def test_spiking_round_trip(tmp_path):
    graph = _spiking_graph()
    path = tmp_path / "spiking.onnx"
    save_onnx(graph, path)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=False)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17), ("ai.bsnn", 1)}
    spiking = {n.name: n for n in model.graph.node if n.domain == "ai.bsnn"}
    assert set(spiking) == {"pop1", "gate", "sync", "pop2", "out"}
    attrs = {a.name: helper.get_attribute_value(a) for a in spiking["gate"].attribute}
    assert attrs["kernel_shape"] == [2, 2] and attrs["ceil_mode"] == 0 and attrs["mode"] == b"bsnn"
    assert attrs["phases"] == 6 and attrs["stage"] == 1
    again = load_onnx(path)
    assert ir.graphs_equal(graph, again)
    assert ir.op_of(again, "x").scale == 0.5
    assert again.graph["metadata"] == graph.graph["metadata"]
    x = np.random.default_rng(0).standard_normal((3, 1, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(evaluate(again, x), evaluate(graph, x))
    # load -> save -> load is stable
    save_onnx(again, tmp_path / "again.onnx")
    assert ir.graphs_equal(again, load_onnx(tmp_path / "again.onnx"))


def test_checker_needs_the_bsnn_opset_import(tmp_path):
    # what save_onnx relies on: the checker accepts custom-domain nodes only with an opset import
    save_onnx(_spiking_graph(), tmp_path / "s.onnx")
    model = onnx.load(tmp_path / "s.onnx")
    del model.opset_import[1]
    with pytest.raises(onnx.checker.ValidationError, match="ai.bsnn"):
        onnx.checker.check_model(model, full_check=False)


def test_unknown_bsnn_op_is_unsupported(make_model):
    path = make_model(
        [helper.make_node("Teleport", ["x"], ["y"], domain="ai.bsnn")],
        [tensor_info("x", ["N", 2])],
        [tensor_info("y", None)],
        domains=[("ai.bsnn", 1)],
    )
    with pytest.raises(ModelError, match=r"unsupported ops: ai\.bsnn:Teleport \(node y\)"):
        load_onnx(path)


# --------------------------------------------------------------------------- errors


def _assert_nothing_written(folder, before):
    assert sorted(os.listdir(folder)) == before


def test_unsupported_ops_listed_in_one_message(make_model, tmp_path):
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["a"], name="sig1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Sigmoid", ["x"], ["c"], name="sig2"),
        helper.make_node("Tanh", ["x"], ["d"], name="t0"),
        helper.make_node("Sum", ["b", "c", "d"], ["y"], name="sum"),
    ]
    path = make_model(nodes, [tensor_info("x", ["N", 3])], [tensor_info("y", None)], name="model")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ModelError) as info:
        load_onnx(path)
    assert str(info.value) == f"{path}: unsupported ops: Sigmoid (nodes sig1, sig2), Tanh (node t0)"
    _assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize(
    "nodes, inits, message",
    [
        (
            [helper.make_node("Gemm", ["x", "w"], ["y"], name="g", transA=1)],
            [initializer("w", np.ones((3, 3)))],
            "Gemm with transA=1 (node g)",
        ),
        ([helper.make_node("Flatten", ["x"], ["y"], name="f", axis=0)], [], "Flatten with axis=0"),
        ([helper.make_node("Mul", ["x", "x"], ["y"], name="m")], [], "Mul of two tensors (node m)"),
        (
            [
                helper.make_node("MaxPool", ["x"], ["y", "i"], name="p", kernel_shape=[1]),
                helper.make_node("Identity", ["i"], ["z"], name="z"),
            ],
            [],
            "MaxPool with the Indices output",
        ),
        ([helper.make_node("Concat", ["x", "x"], ["y"], name="c", axis=0)], [], "Concat along the batch axis"),
        (
            [helper.make_node("Reshape", ["x", "s"], ["y"], name="r")],
            [initializer("s", np.array([-1], np.int64))],
            "it changes the batch axis",
        ),
        ([helper.make_node("Softmax", ["x"], ["y"], name="s", axis=1)], [], "normalising over several axes"),
    ],
)
def test_unsupported_variants(make_model, nodes, inits, message):
    opset = 11 if nodes[0].op_type == "Softmax" else 17
    shape = ["N", 3, 2] if nodes[0].op_type in ("MaxPool", "Softmax") else ["N", 3]
    outputs = [tensor_info(n.output[0], None) for n in nodes if n.output[0] in ("y", "z")][-1:]
    path = make_model(nodes, [tensor_info("x", shape)], outputs, inits, opset=opset)
    with pytest.raises(ModelError, match="unsupported") as info:
        load_onnx(path)
    assert message in str(info.value)


def test_not_onnx(tmp_path):
    for content in (b"hello, this is a text file\n", bytes(range(256)) * 4, b""):
        path = tmp_path / "junk.onnx"
        path.write_bytes(content)
        with pytest.raises(ModelError, match="not an ONNX model") as info:
            load_onnx(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("fraction", [0.9, 0.5, 0.1])
def test_truncated_file(tmp_path, fraction):
    data = (DATA / "resnet_tiny_legacy.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelError, match="truncated") as info:
        load_onnx(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such file") as info:
        load_onnx(tmp_path / "absent.onnx")
    assert "absent.onnx" in str(info.value)


def test_dangling_edge(make_model, tmp_path):
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="add")]
    path = make_model(nodes, [tensor_info("x", ["N", 3])], [tensor_info("y", None)])
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ModelError, match="dangling edge: input 'ghost' of node 'add'") as info:
        load_onnx(path)
    assert str(path) in str(info.value)
    _assert_nothing_written(tmp_path, before)


def test_dangling_graph_output(make_model):
    path = make_model(
        [helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", ["N", 3])], [tensor_info("nowhere", None)]
    )
    with pytest.raises(ModelError, match="dangling edge: graph output 'nowhere'"):
        load_onnx(path)


def test_shape_disagreement_with_onnx_inference(make_model):
    # the declared output shape contradicts the model: onnx inference keeps it, the IR disagrees
    path = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="r")], [tensor_info("x", ["N", 3])], [tensor_info("y", ["N", 5])]
    )
    with pytest.raises(ModelError, match=r"node 'r' \(Relu\): shape \(3,\)"):
        load_onnx(path)


def test_symbolic_non_batch_axis_rejected(make_model):
    path = make_model(
        [helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", ["N", "C"])], [tensor_info("y", None)]
    )
    with pytest.raises(ModelError, match="axis 1 is symbolic"):
        load_onnx(path)


def test_save_leaves_nothing_on_failure(tmp_path):
    graph = _spiking_graph()
    target = tmp_path / "existing.onnx"
    target.write_bytes(b"keep me")
    graph.graph["outputs"] = ["missing"]  # invalid graph: verify fails before anything is written
    with pytest.raises(ir.GraphError):
        save_onnx(graph, target)
    assert target.read_bytes() == b"keep me"
    assert os.listdir(tmp_path) == ["existing.onnx"]
    with pytest.raises(Exception, match="does not exist"):
        save_onnx(_spiking_graph(), tmp_path / "no" / "folder.onnx")
    assert os.listdir(tmp_path) == ["existing.onnx"]


def test_newest_opset_loads(make_model, rng):
    newest = onnx.defs.onnx_opset_version()
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Softmax", ["f"], ["y"]),
    ]
    w = initializer("w", rng.standard_normal((2, 1, 3, 3)).astype(np.float32))
    graphs = [
        load_onnx(make_model(nodes, [tensor_info("x", ["N", 1, 4, 4])], [tensor_info("y", None)], [w], opset=opset))
        for opset in (17, newest)
    ]
    assert graphs[1].graph["opset"] == newest
    assert ir.graphs_equal(*graphs)
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(evaluate(graphs[0], x), evaluate(graphs[1], x))


@pytest.mark.parametrize("opset, message", [(5, "unsupported opset 5"), (None, "newer than onnx")])
def test_opset_out_of_range(make_model, opset, message):
    opset = opset or onnx.defs.onnx_opset_version() + 1
    path = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [tensor_info("x", ["N", 2])],
        [tensor_info("y", None)],
        opset=min(opset, onnx.defs.onnx_opset_version()),
    )
    model = onnx.load(path)
    model.opset_import[0].version = opset
    onnx.save(model, path)
    with pytest.raises(ModelError, match=message):
        load_onnx(path)


def test_weights_converted_to_float32(make_model, rng):
    w64 = rng.standard_normal((3, 2))
    path = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [tensor_info("x", ["N", 3])],
        [tensor_info("y", None)],
        [initializer("w", w64.astype(np.float16))],
    )
    op = ir.op_of(load_onnx(path), "mm")
    assert op.weight.dtype == np.float32
    np.testing.assert_array_equal(op.weight, w64.astype(np.float16).astype(np.float32))


# --------------------------------------------------------------------------- the registries of the onnx_io package


def test_public_names_of_onnx_io():
    from bsnn_graph import onnx_io

    assert sorted(onnx_io.__all__) == sorted(
        ["EXPORT_OPSET", "EXTERNAL_DATA_BYTES", "MIN_OPSET", "SUPPORTED_OPS", "load_onnx", "save_onnx"]
    )
    assert (onnx_io.MIN_OPSET, onnx_io.EXPORT_OPSET, onnx_io.EXTERNAL_DATA_BYTES) == (6, 17, 1 << 30)
    assert onnx_io.SUPPORTED_OPS == (
        "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "Div", "Dropout", "Flatten", "Gemm",
        "GlobalAveragePool", "Identity", "LeakyRelu", "LogSoftmax", "MatMul", "MaxPool", "Mul", "PRelu", "Pad",
        "ReduceMean", "Relu", "Reshape", "Softmax", "Squeeze", "Sub", "Sum", "Transpose", "Unsqueeze",
    )  # fmt: skip


def test_every_op_class_has_an_importer_and_an_exporter():
    from bsnn_graph.onnx_io.exporters import EXPORTERS
    from bsnn_graph.onnx_io.importers import IMPORTERS, SUPPORTED_OPS

    standard = {cls for (domain, _), cls in O.OP_CLASSES.items() if domain == "" and cls is not O.Input}
    assert set(EXPORTERS) == standard
    assert SUPPORTED_OPS == tuple(sorted(IMPORTERS))
    assert {cls.op_type for cls in standard} <= set(IMPORTERS)
    for function in list(EXPORTERS.values()) + list(IMPORTERS.values()):
        assert function.__doc__, f"{function.__name__} has no docstring"


def test_a_registry_refuses_a_second_function_for_one_key():
    from bsnn_graph.onnx_io.registry import registrar

    table = {}
    register = registrar(table, "importer")

    @register("Conv", "Gemm")
    def first():
        pass

    assert table == {"Conv": first, "Gemm": first}
    with pytest.raises(ValueError, match="two importers for 'Gemm': first and second"):

        @register("Gemm")
        def second():
            pass


def test_fold_rules():
    from bsnn_graph.onnx_io.fold import FOLDABLE, fold
    from bsnn_graph.onnx_io.values import BATCH, Unsupported

    assert FOLDABLE == {
        "Constant", "ConstantOfShape", "Shape", "Size", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice",
        "Reshape", "Flatten", "Identity", "Dropout", "Transpose", "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Sqrt",
        "Reciprocal", "Exp", "Range",
    }  # fmt: skip
    # a Reshape target built from Shape(x)[0] keeps the symbolic batch size
    target = fold("Concat", {"axis": 0}, [np.array([BATCH], dtype=object), np.array([-1], np.int64)], 17)
    assert list(target) == [BATCH, -1]
    assert fold("Cast", {"to": onnx.TensorProto.INT64}, [target], 17) is target
    with pytest.raises(TypeError, match="symbolic batch size"):
        fold("Mul", {}, [target, np.array([2], np.int64)], 17)
    # integer Div truncates towards zero; Slice clamps INT64_MAX
    np.testing.assert_array_equal(fold("Div", {}, [np.array([-7, 7]), np.array([2, 2])], 17), [-3, 3])
    ends = np.array([2**63 - 1], np.int64)
    np.testing.assert_array_equal(fold("Slice", {}, [np.arange(5), np.array([1]), ends], 17), [1, 2, 3, 4])
    with pytest.raises(Unsupported, match="Sigmoid on constants"):
        fold("Sigmoid", {}, [np.zeros(2)], 17)


def test_unreadable_initializer_quotes_the_reason(make_model):
    tensor = initializer("w", np.ones((3, 2), np.float32))
    tensor.raw_data = tensor.raw_data[:-2]
    path = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [tensor_info("x", ["N", 3])],
        [tensor_info("y", None)],
        [tensor],
    )
    with pytest.raises(ModelError) as info:
        load_onnx(path)
    assert str(info.value).startswith(
        f"{path}: initializer 'w' (FLOAT, dims (3, 2)): 22 bytes of raw data cannot be read as FLOAT of these dims ("
    )
    assert re.search(r" \((ValueError|TypeError): '[^']+'\)$", str(info.value)), str(info.value)
