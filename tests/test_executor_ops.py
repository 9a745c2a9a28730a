"""Per-op equivalence: tiny ONNX models, loaded with load_onnx, evaluated with
bsnn_graph.evaluate, against onnxruntime on random inputs (rtol 1e-4, atol 1e-5).

Every case also goes through save_onnx: the saved model must reload to an
equal graph and run in onnxruntime to the same result.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import initializer, run_onnxruntime, tensor_info
from onnx import TensorProto, helper

from bsnn_graph import evaluate, ir, load_onnx, save_onnx
from bsnn_graph import ops as O

RTOL, ATOL = 1e-4, 1e-5
_rng = np.random.default_rng(7)


def W(name, *shape, positive=False):
    value = _rng.standard_normal(shape).astype(np.float32)
    return initializer(name, np.abs(value) + 0.5 if positive else value)


def I64(name, values):
    return initializer(name, np.array(values, np.int64))


def F32(name, values):
    return initializer(name, np.array(values, np.float32))


def node(op_type, inputs, outputs=("y",), **attrs):
    return helper.make_node(op_type, list(inputs), list(outputs), name=f"{op_type.lower()}_node", **attrs)


class Case:
    """One tiny model: ``nodes`` read input ``x`` of ``shape`` (batch symbolic unless ``batch``) and write ``y``."""

    def __init__(self, nodes, shape, inits=(), opset=17, out_ops=None, batch="N", extra_inputs=()):
        self.nodes, self.shape, self.inits, self.opset = nodes, shape, inits, opset
        self.out_ops, self.batch, self.extra_inputs = out_ops, batch, extra_inputs


def _conv(**attrs):
    return [node("Conv", ["x", "w", "b"], **attrs)]


def _shape_chain_reshape():
    """Nodes, input shape and initializers of Reshape(x, Concat(Shape(x)[0], -1)) (opset 13 Unsqueeze)."""
    nodes = [
        node("Shape", ["x"], ["shape"]),
        node("Gather", ["shape", "zero"], ["n"], axis=0),
        node("Unsqueeze", ["n", "axes"], ["n1"]),
        node("Concat", ["n1", "minus1"], ["target"], axis=0),
        node("Reshape", ["x", "target"]),
    ]
    return nodes, (2, 3, 4), [I64("zero", 0), I64("axes", [0]), I64("minus1", [-1])]


CASES = {
    # Conv
    "conv_3x3_pad1": Case(_conv(pads=[1, 1, 1, 1]), (3, 8, 8), [W("w", 4, 3, 3, 3), W("b", 4)]),
    "conv_stride2": Case(_conv(strides=[2, 2], kernel_shape=[3, 3]), (3, 9, 9), [W("w", 4, 3, 3, 3), W("b", 4)]),
    "conv_dilated": Case(_conv(dilations=[2, 2], pads=[2, 1, 2, 1]), (2, 9, 8), [W("w", 3, 2, 3, 3), W("b", 3)]),
    "conv_groups": Case(_conv(group=2, pads=[1, 1, 1, 1]), (4, 6, 6), [W("w", 6, 2, 3, 3), W("b", 6)]),
    "conv_depthwise": Case(_conv(group=4, strides=[2, 1]), (4, 7, 6), [W("w", 4, 1, 3, 3), W("b", 4)]),
    "conv_asymmetric_pads": Case(_conv(pads=[0, 1, 2, 0]), (2, 5, 5), [W("w", 2, 2, 2, 3), W("b", 2)]),
    "conv_no_bias": Case([node("Conv", ["x", "w"])], (2, 5, 5), [W("w", 3, 2, 3, 3)]),
    "conv_same_upper": Case(_conv(auto_pad="SAME_UPPER", strides=[2, 2]), (2, 8, 7), [W("w", 3, 2, 4, 3), W("b", 3)]),
    "conv_same_lower": Case(_conv(auto_pad="SAME_LOWER"), (2, 6, 6), [W("w", 3, 2, 2, 2), W("b", 3)]),
    "conv_valid": Case(_conv(auto_pad="VALID", strides=[2, 2]), (2, 7, 7), [W("w", 3, 2, 3, 3), W("b", 3)]),
    "conv_1d": Case(_conv(pads=[1, 2], strides=[2]), (3, 11), [W("w", 4, 3, 3), W("b", 4)]),
    "conv_fixed_batch": Case(_conv(pads=[1, 1, 1, 1]), (2, 5, 5), [W("w", 2, 2, 3, 3), W("b", 2)], batch=3),
    "conv_opset9": Case(_conv(pads=[1, 1, 1, 1]), (2, 5, 5), [W("w", 2, 2, 3, 3), W("b", 2)], opset=9),
    # Gemm, MatMul
    "gemm_transB": Case([node("Gemm", ["x", "w", "b"], transB=1)], (6,), [W("w", 4, 6), W("b", 4)]),
    "gemm_plain": Case([node("Gemm", ["x", "w", "b"])], (6,), [W("w", 6, 4), W("b", 4)]),
    "gemm_alpha_beta": Case(
        [node("Gemm", ["x", "w", "b"], alpha=0.5, beta=2.0, transB=1)], (6,), [W("w", 4, 6), W("b", 1, 4)]
    ),
    "gemm_scalar_bias": Case([node("Gemm", ["x", "w", "b"])], (5,), [W("w", 5, 3), W("b", 1)]),
    "gemm_no_bias": Case([node("Gemm", ["x", "w"], transB=1)], (5,), [W("w", 3, 5)], opset=11),
    "gemm_opset9": Case([node("Gemm", ["x", "w", "b"], transB=1)], (5,), [W("w", 3, 5), W("b", 3)], opset=9),
    "matmul_2d": Case([node("MatMul", ["x", "w"])], (8,), [W("w", 8, 4)]),
    "matmul_3d": Case([node("MatMul", ["x", "w"])], (3, 8), [W("w", 8, 4)]),
    "matmul_transposed_weight": Case(
        [node("Transpose", ["wt"], ["w"], perm=[1, 0]), node("MatMul", ["x", "w"])], (8,), [W("wt", 4, 8)]
    ),
    # BatchNormalization
    "batchnorm": Case(
        [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
        (3, 4, 4),
        [W("s", 3), W("b", 3), W("m", 3), W("v", 3, positive=True)],
    ),
    "batchnorm_opset9": Case(
        [node("BatchNormalization", ["x", "s", "b", "m", "v"])],
        (3, 4, 4),
        [W("s", 3), W("b", 3), W("m", 3), W("v", 3, positive=True)],
        opset=9,
    ),
    "batchnorm_opset7_spatial": Case(
        [node("BatchNormalization", ["x", "s", "b", "m", "v"], spatial=1)],
        (3, 5),
        [W("s", 3), W("b", 3), W("m", 3), W("v", 3, positive=True)],
        opset=7,
    ),
    # activations
    "relu": Case([node("Relu", ["x"])], (3, 4)),
    "clip_relu6_attr": Case([node("Clip", ["x"], min=0.0, max=6.0)], (3, 4), opset=9, out_ops=["Clip"]),
    "clip_relu_attr": Case([node("Clip", ["x"], min=0.0)], (3, 4), opset=10),
    "clip_relu6_inputs": Case([node("Clip", ["x", "lo", "hi"])], (3, 4), [F32("lo", 0.0), F32("hi", 6.0)]),
    "clip_min_only": Case([node("Clip", ["x", "lo"])], (3, 4), [F32("lo", 0.0)]),
    "clip_max_only": Case([node("Clip", ["x", "", "hi"])], (3, 4), [F32("hi", 0.5)], opset=12),
    "clip_general": Case([node("Clip", ["x", "lo", "hi"])], (3, 4), [F32("lo", -0.5), F32("hi", 0.25)]),
    # pooling
    "maxpool": Case([node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], (2, 6, 6)),
    "maxpool_pads": Case([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], (2, 7, 7)),
    "maxpool_ceil": Case([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], (2, 8, 8)),
    "maxpool_ceil_pads": Case(
        [node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)], (2, 5, 5)
    ),
    "maxpool_dilated": Case([node("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 2])], (2, 6, 6)),
    "maxpool_same_upper": Case(
        [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")], (2, 6, 5)
    ),
    "maxpool_1d": Case([node("MaxPool", ["x"], kernel_shape=[3], strides=[2], pads=[1, 1])], (2, 9)),
    "maxpool_opset9": Case([node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], (2, 6, 6), opset=9),
    "maxpool_unused_indices": Case(
        [node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], strides=[2, 2])], (2, 4, 4)
    ),
    "avgpool": Case([node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], (2, 6, 6)),
    "avgpool_pads": Case([node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], (2, 5, 5)),
    "avgpool_pads_count": Case(
        [node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)], (2, 5, 5)
    ),
    "avgpool_ceil": Case([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], (2, 8, 8)),
    "avgpool_ceil_pads_count": Case(
        [
            node(
                "AveragePool",
                ["x"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                ceil_mode=1,
                count_include_pad=1,
            )
        ],
        (2, 8, 8),
    ),
    "avgpool_same_upper": Case(
        [node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")], (2, 7, 7)
    ),
    "avgpool_opset9": Case([node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], (2, 6, 6), opset=9),
    "global_avgpool": Case([node("GlobalAveragePool", ["x"])], (3, 5, 4)),
    "reducemean_keepdims": Case([node("ReduceMean", ["x"], axes=[2, 3])], (3, 5, 4), opset=13),
    "reducemean_dropdims": Case(
        [node("ReduceMean", ["x", "axes"], keepdims=0)], (3, 5, 4), [I64("axes", [-1, -2])], opset=18
    ),
    # element-wise
    "add_two_tensors": Case([node("Relu", ["x"], ["r"]), node("Add", ["x", "r"])], (3, 4)),
    "add_constant": Case([node("Add", ["x", "c"])], (3, 2, 2), [W("c", 3, 1, 1)]),
    "add_constant_first": Case([node("Add", ["c", "x"])], (3, 2, 2), [W("c", 1, 3, 2, 2)]),
    "sum_residual": Case([node("Relu", ["x"], ["r"]), node("Sum", ["x", "r"])], (3, 4)),
    "sum_three": Case(
        [node("Relu", ["x"], ["r"]), node("Neg", ["c"], ["n"]), node("Sum", ["x", "r", "n"])],
        (3, 4),
        [W("c", 3, 4)],
        out_ops=["Add"],
    ),
    "sub_constant": Case([node("Sub", ["x", "c"])], (3, 4), [W("c", 4)]),
    "sub_from_constant": Case([node("Sub", ["c", "x"])], (3, 4), [W("c", 3, 1)]),
    "mul_constant": Case([node("Mul", ["x", "c"])], (3, 4), [W("c", 1)]),
    "div_constant": Case([node("Div", ["x", "c"])], (3, 4), [W("c", 3, 4, positive=True)]),
    "div_constant_first": Case([node("Div", ["c", "x"])], (3, 4), [W("c", 4)]),
    "mul_double_constant_cast": Case(
        [node("Cast", ["c64"], ["c"], to=TensorProto.FLOAT), node("Mul", ["x", "c"])],
        (3, 4),
        [initializer("c64", np.linspace(-2, 2, 4))],
    ),
    "add_constant_of_shape": Case(
        [
            node("ConstantOfShape", ["shp"], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.75])),
            node("Add", ["x", "c"]),
        ],
        (3, 4),
        [I64("shp", [3, 4])],
    ),
    # shape ops
    "flatten": Case([node("Flatten", ["x"], axis=1)], (2, 3, 4)),
    "flatten_negative_axis": Case([node("Flatten", ["x"], axis=-3)], (2, 3, 4)),
    "flatten_opset9": Case([node("Flatten", ["x"])], (2, 3, 4), opset=9),
    "reshape_keep_batch": Case([node("Reshape", ["x", "s"])], (2, 3, 4), [I64("s", [0, -1])]),
    "reshape_minus_one_batch": Case([node("Reshape", ["x", "s"])], (2, 3, 4), [I64("s", [-1, 4, 6])]),
    "reshape_zero_copy": Case([node("Reshape", ["x", "s"])], (2, 3, 4), [I64("s", [0, 0, 2, 2, 3])], batch=2),
    "reshape_shape_chain": Case(
        *_shape_chain_reshape(),
    ),
    "reshape_shape_chain_fixed_batch": Case(
        *_shape_chain_reshape(),
        batch=2,
    ),
    "reshape_shape_chain_opset9": Case(
        [
            node("Shape", ["x"], ["shape"]),
            node("Gather", ["shape", "zero"], ["n"], axis=0),
            node("Unsqueeze", ["n"], ["n1"], axes=[0]),
            node("Cast", ["n1"], ["n1c"], to=TensorProto.INT64),
            node("Concat", ["n1c", "minus1"], ["target"], axis=0),
            node("Reshape", ["x", "target"]),
        ],
        (2, 3, 4),
        [I64("zero", 0), I64("minus1", [-1])],
        opset=9,
    ),
    "reshape_shape_slice": Case(
        [
            node("Shape", ["x"], ["shape"]),
            node("Slice", ["shape", "st", "en"], ["head"]),
            node("Concat", ["head", "rest"], ["target"], axis=0),
            node("Reshape", ["x", "target"]),
        ],
        (2, 3, 4),
        [I64("st", [0]), I64("en", [2]), I64("rest", [12])],
    ),
    "squeeze_unsqueeze": Case(
        [node("Unsqueeze", ["x", "a"], ["u"]), node("Squeeze", ["u", "b"])], (3, 4), [I64("a", [2]), I64("b", [-2])]
    ),
    "squeeze_opset11": Case([node("Squeeze", ["x"], axes=[2])], (3, 1, 4), opset=11),
    "concat": Case([node("Relu", ["x"], ["r"]), node("Concat", ["x", "r"], axis=1)], (2, 3, 3)),
    "concat_last_axis": Case([node("Relu", ["x"], ["r"]), node("Concat", ["r", "x", "r"], axis=-1)], (2, 3, 3)),
    # Pad
    "pad_constant_opset9": Case([node("Pad", ["x"], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.5)], (2, 3, 3), opset=9),
    "pad_reflect_opset9": Case([node("Pad", ["x"], pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="reflect")], (2, 4, 4), opset=9),
    "pad_edge_opset9": Case([node("Pad", ["x"], pads=[0, 0, 1, 0, 0, 0, 0, 2], mode="edge")], (2, 3, 3), opset=9),
    "pad_constant_inputs": Case(
        [node("Pad", ["x", "p", "v"])], (2, 3, 3), [I64("p", [0, 0, 1, 1, 0, 0, 1, 1]), F32("v", -1.0)]
    ),
    "pad_reflect_inputs": Case(
        [node("Pad", ["x", "p"], mode="reflect")], (2, 4, 4), [I64("p", [0, 1, 0, 2, 0, 1, 2, 0])], opset=13
    ),
    "pad_negative": Case([node("Pad", ["x", "p"])], (2, 4, 4), [I64("p", [0, 0, -1, 1, 0, 0, 1, -2])]),
    "pad_axes_opset18": Case(
        [node("Pad", ["x", "p", "", "ax"], mode="edge")],
        (2, 3, 3),
        [I64("p", [1, 2, 2, 0]), I64("ax", [2, 3])],
        opset=18,
    ),
    # Dropout, Identity
    "dropout_opset9_mask_unused": Case([node("Dropout", ["x"], ["y", "mask"], ratio=0.3)], (3, 4), opset=9),
    "dropout_opset7": Case([node("Dropout", ["x"])], (3, 4), opset=7),
    "dropout_ratio_input": Case([node("Dropout", ["x", "r"])], (3, 4), [F32("r", 0.2)]),
    "identity": Case([node("Identity", ["x"])], (3, 4)),
    # Softmax, LogSoftmax
    "softmax": Case([node("Softmax", ["x"])], (5,)),
    "softmax_axis1_4d": Case([node("Softmax", ["x"], axis=1)], (3, 2, 2)),
    "softmax_opset11_2d": Case([node("Softmax", ["x"])], (5,), opset=11),
    "softmax_opset11_trailing_ones": Case([node("Softmax", ["x"], axis=1)], (5, 1, 1), opset=11),
    "softmax_opset9_last_axis": Case([node("Softmax", ["x"], axis=2)], (3, 5), opset=9),
    "logsoftmax": Case([node("LogSoftmax", ["x"], axis=-1)], (3, 5)),
    "logsoftmax_opset11": Case([node("LogSoftmax", ["x"])], (6,), opset=11),
    # graph-level idioms
    "initializer_as_input": Case(
        [node("Conv", ["x", "w", "b"])], (2, 4, 4), [W("w", 2, 2, 3, 3), W("b", 2)], opset=9, extra_inputs=("w", "b")
    ),
    "weights_from_constant_nodes": Case(
        [
            helper.make_node("Constant", [], ["w"], value=W("wv", 3, 2, 1, 1)),
            helper.make_node("Constant", [], ["b"], value_floats=[0.1, -0.2, 0.3]),
            node("Conv", ["x", "w", "b"]),
        ],
        (2, 3, 3),
    ),
}


def _build(make_model, case: Case):
    inits = list(case.inits)
    inputs = [tensor_info("x", [case.batch, *case.shape])]
    for name in case.extra_inputs:
        tensor = next(t for t in inits if t.name == name)
        inputs.append(tensor_info(name, list(tensor.dims)))
    outputs = [tensor_info("y", None)]
    return make_model(case.nodes, inputs, outputs, inits, opset=case.opset)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_op_matches_onnxruntime(case_id, make_model, tmp_path, rng):
    case = CASES[case_id]
    path = _build(make_model, case)
    graph = load_onnx(path)
    ir.verify(graph)
    batch = case.batch if isinstance(case.batch, int) else 3
    x = rng.standard_normal((batch, *case.shape)).astype(np.float32) * 2
    feeds = {"x": x}
    for name in case.extra_inputs:
        tensor = next(t for t in case.inits if t.name == name)
        from onnx import numpy_helper

        feeds[name] = numpy_helper.to_array(tensor)
    expected = run_onnxruntime(path, feeds)[0]
    got = evaluate(graph, x)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    ops = {type(ir.op_of(graph, n)).op_type for n in graph.nodes}
    if case.out_ops:
        assert set(case.out_ops) <= ops
    assert graph.graph["batch"] == case.batch
    # parameters are float32, whatever the model stored
    for n in graph.nodes:
        assert all(v.dtype == np.float32 for v in ir.op_of(graph, n).parameters().values())
    # round trip through save_onnx
    saved = tmp_path / "saved.onnx"
    save_onnx(graph, saved)
    again = load_onnx(saved)
    assert ir.graphs_equal(graph, again)
    np.testing.assert_array_equal(evaluate(again, x), got)
    np.testing.assert_allclose(run_onnxruntime(saved, {"x": x})[0], expected, rtol=RTOL, atol=ATOL)


def test_clip_maps_to_relu_and_relu6(make_model):
    for opset, nodes, inits, expected in [
        (9, [node("Clip", ["x"], min=0.0, max=6.0)], [], (0.0, 6.0)),
        (9, [node("Clip", ["x"], min=0.0)], [], (0.0, None)),
        (13, [node("Clip", ["x", "lo", "hi"])], [F32("lo", 0.0), F32("hi", 6.0)], (0.0, 6.0)),
        (13, [node("Clip", ["x", "lo"])], [F32("lo", 0.0)], (0.0, None)),
    ]:
        path = make_model(nodes, [tensor_info("x", ["N", 4])], [tensor_info("y", None)], inits, opset=opset)
        graph = load_onnx(path)
        op = ir.op_of(graph, "clip_node")
        assert isinstance(op, O.Clip)
        assert (op.min, op.max) == expected


def test_gemm_folds_alpha_beta_transb(make_model):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([1.0, 2.0, 3.0], np.float32)
    path = make_model(
        [node("Gemm", ["x", "w", "b"], alpha=2.0, beta=0.5, transB=1)],
        [tensor_info("x", ["N", 4])],
        [tensor_info("y", None)],
        [initializer("w", w), initializer("b", b)],
    )
    op = ir.op_of(load_onnx(path), "gemm_node")
    np.testing.assert_array_equal(op.weight, 2.0 * w)
    np.testing.assert_array_equal(op.bias, 0.5 * b)


def test_auto_pad_becomes_explicit_pads(make_model):
    path = make_model(
        [node("Conv", ["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2])],
        [tensor_info("x", ["N", 1, 8, 7])],
        [tensor_info("y", None)],
        [initializer("w", np.ones((1, 1, 4, 3), np.float32))],
    )
    op = ir.op_of(load_onnx(path), "conv_node")
    # rows: out 4, total pad (4-1)*2+4-8 = 2 -> 1/1; cols: out 4, total (4-1)*2+3-7 = 2 -> 1/1
    assert op.pads == (1, 1, 1, 1)
    assert op.strides == (2, 2) and op.dilations == (1, 1)


def test_legacy_broadcast_add_opset6(make_model, rng):
    # onnxruntime has no Add-6 kernel: compare with the opset-6 rule itself
    c = np.array([1.0, -2.0, 3.0], np.float32)
    path = make_model(
        [node("Add", ["x", "c"], broadcast=1, axis=1)],
        [tensor_info("x", ["N", 3, 2, 2])],
        [tensor_info("y", None)],
        [initializer("c", c)],
        opset=6,
    )
    x = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(evaluate(load_onnx(path), x), x + c.reshape(1, 3, 1, 1))
