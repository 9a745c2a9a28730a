"""canonicalise: each rewrite on a 1-5 node graph, equivalence with the reference executor, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_graphs import Builder, assert_same_outputs, op_types, random_input, vgg

from bsnn_graph import evaluate, ir
from bsnn_graph import ops as O
from passes import PassError, canonicalise, convert, copy_graph


def test_drops_dropout_identity_and_output_softmax():
    b = Builder()
    x = b.input("x", (6,))
    h = b.op("id", O.Identity(), b.op("drop", O.Dropout(), b.gemm("fc", x, 4)))
    graph = b.output(b.op("sm", O.Softmax(axis=1), h))
    result = canonicalise(copy_graph(graph))
    assert result.modified
    assert op_types(result.graph) == ["Input", "Gemm"]
    assert result.graph.graph["outputs"] == ["fc"]
    assert result.graph.graph["metadata"]["bsnn.removed_output_op"] == "Softmax"
    xs = random_input(graph, positive=False)
    np.testing.assert_array_equal(evaluate(result.graph, xs).argmax(1), evaluate(graph, xs).argmax(1))


def test_softmax_inside_the_network_is_left_and_the_pass_works_in_place():
    b = Builder()
    x = b.input("x", (6,))
    h = b.op("sm", O.LogSoftmax(axis=1), b.gemm("fc", x, 4))
    graph = b.output(b.gemm("fc2", h, 3))
    before = op_types(graph)
    result = canonicalise(graph)
    assert not result.modified
    assert op_types(result.graph) == before == ["Input", "Gemm", "LogSoftmax", "Gemm"]
    assert result.graph is graph  # passes change the graph they are given; convert copies once at its entry


def test_a_pass_changes_the_graph_it_is_given_and_convert_leaves_the_callers_graph_alone():
    b = Builder()
    x = b.input("x", (6,))
    graph = b.output(b.op("drop", O.Dropout(), b.gemm("fc", x, 4)))
    original = copy_graph(graph)
    converted = convert(graph, random_input(graph))
    assert ir.graphs_equal(graph, original) and graph.graph == original.graph
    assert "drop" not in converted
    result = canonicalise(graph)
    assert result.modified and result.graph is graph and "drop" not in graph
    assert graph.graph["metadata"]["bsnn.passes"] == "canonicalise"


def test_matmul_plus_constant_becomes_gemm():
    b = Builder()
    x = b.input("x", (6,))
    w = b.rng.standard_normal((6, 4)).astype(np.float32)
    c = b.rng.standard_normal((1, 4)).astype(np.float32)
    graph = b.output(b.op("bias", O.Add(constant=c), b.op("mm", O.MatMul(weight=w), x)))
    result = canonicalise(copy_graph(graph))
    assert result.modified and op_types(result.graph) == ["Input", "Gemm"]
    gemm = ir.op_of(result.graph, "mm")
    np.testing.assert_array_equal(gemm.weight, w.T)
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


def test_matmul_on_a_matrix_per_sample_is_left():
    b = Builder()
    x = b.input("x", (3, 6))
    graph = b.output(b.op("mm", O.MatMul(weight=np.ones((6, 2), np.float32)), x))
    result = canonicalise(copy_graph(graph))
    assert not result.modified and op_types(result.graph) == ["Input", "MatMul"]


def test_conv_plus_per_channel_constant_joins_the_bias():
    b = Builder()
    x = b.input("x", (2, 5, 5))
    c = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1)
    graph = b.output(b.op("add", O.Add(constant=c), b.conv("conv", x, 3, bias=False)))
    result = canonicalise(copy_graph(graph))
    assert op_types(result.graph) == ["Input", "Conv"]
    assert_same_outputs(graph, result.graph, random_input(graph))


def test_reshape_to_vector_becomes_flatten_and_sum_becomes_add():
    b = Builder()
    x = b.input("x", (2, 3, 3))
    r1 = b.relu("r1", b.conv("c1", x, 2))
    r2 = b.relu("r2", b.conv("c2", x, 2))
    r3 = b.relu("r3", b.conv("c3", x, 2))
    s = b.op("sum", O.Sum(), r1, r2, r3)
    graph = b.output(b.gemm("fc", b.op("reshape", O.Reshape(shape=(18,)), s), 3))
    result = canonicalise(copy_graph(graph))
    types = op_types(result.graph)
    assert "Sum" not in types and "Reshape" not in types
    assert types.count("Add") == 2 and types.count("Flatten") == 1
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


def test_clip_zero_none_becomes_relu_and_relu6_is_kept():
    b = Builder()
    x = b.input("x", (4,))
    h = b.op("clip", O.Clip(min=0.0, max=None), b.gemm("fc1", x, 4))
    graph = b.output(b.gemm("fc3", b.op("relu6", O.Clip(min=0.0, max=6.0), b.gemm("fc2", h, 4)), 2))
    result = canonicalise(copy_graph(graph))
    assert isinstance(ir.op_of(result.graph, "clip"), O.Relu)
    assert isinstance(ir.op_of(result.graph, "relu6"), O.Clip)
    assert_same_outputs(graph, result.graph, 10 * random_input(graph, positive=False))


def test_relu_moves_before_maxpool():
    b = Builder()
    x = b.input("x", (2, 6, 6))
    pool = b.op("pool", O.MaxPool(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), b.conv("conv", x, 3))
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), b.relu("relu", pool)), 2))
    result = canonicalise(copy_graph(graph))
    assert result.modified
    assert op_types(result.graph) == ["Input", "Conv", "Relu", "MaxPool", "Flatten", "Gemm"]
    assert ir.inputs_of(result.graph, "pool") == ["relu"]
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


def test_maxpool_with_two_readers_is_not_commuted():
    b = Builder()
    x = b.input("x", (2, 6, 6))
    pool = b.op("pool", O.MaxPool(kernel_shape=(2, 2), strides=(2, 2), pads=(0,) * 4), b.conv("conv", x, 3))
    a = b.op("flat1", O.Flatten(), b.relu("relu", pool))
    graph = b.output(b.op("add", O.Add(), a, b.op("flat2", O.Flatten(), pool)))
    result = canonicalise(copy_graph(graph))
    assert not result.modified
    assert ir.inputs_of(result.graph, "relu") == ["pool"]


def _normalised_input(padding: int, kernel: int = 3):
    b = Builder(3)
    x = b.input("x", (3, 6, 6))
    mean = np.array([0.5, 0.2, -0.1], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.3, 0.5, 2.0], np.float32).reshape(3, 1, 1)
    h = b.op("div", O.Div(constant=std), b.op("sub", O.Sub(constant=mean), x))
    return b.output(b.relu("relu", b.conv("conv", h, 4, kernel=kernel, pad=padding)))


def test_input_normalisation_folds_into_unpadded_conv_bias():
    graph = _normalised_input(padding=0)
    result = canonicalise(copy_graph(graph))
    assert result.modified
    assert op_types(result.graph) == ["Input", "Conv", "Relu"]
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


def test_input_normalisation_into_padded_conv_is_exact_at_the_borders():
    graph = _normalised_input(padding=1)
    result = canonicalise(copy_graph(graph))
    assert op_types(result.graph) == ["Input", "Conv", "Add", "Relu"]
    border = ir.op_of(result.graph, "conv_border_bias").constant
    assert border.shape == (1, 4, 6, 6)
    # the corner sees padding where the interior does not: the correction differs there
    assert not np.allclose(border[0, :, 0, 0], border[0, :, 3, 3])
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


def test_input_normalisation_through_flatten_into_gemm():
    b = Builder(4)
    x = b.input("x", (1, 4, 4))
    h = b.op("mul", O.Mul(constant=np.float32(2.0)), b.op("sub", O.Sub(constant=np.float32(0.5)), x))
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), h), 3))
    result = canonicalise(copy_graph(graph))
    assert op_types(result.graph) == ["Input", "Flatten", "Gemm"]
    assert_same_outputs(graph, result.graph, random_input(graph))


def test_input_normalisation_varying_within_a_channel_is_left_and_refused_later():
    b = Builder(5)
    x = b.input("x", (1, 4, 4))
    ramp = np.linspace(0.5, 2.0, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    h = b.op("sub", O.Sub(constant=np.float32(0.1)), b.op("scale", O.Mul(constant=ramp), x))
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), b.relu("relu", b.conv("conv", h, 2))), 3))
    result = canonicalise(copy_graph(graph))
    assert not result.modified
    with pytest.raises(PassError, match=r"to_spiking.*'sub' \(Sub\)"):
        convert(graph, random_input(graph))


def test_canonical_vgg_is_equivalent():
    graph = vgg("max")
    result = canonicalise(copy_graph(graph))
    types = op_types(result.graph)
    assert "Dropout" not in types and "Softmax" not in types
    x = random_input(graph)
    np.testing.assert_array_equal(evaluate(result.graph, x).argmax(1), evaluate(graph, x).argmax(1))
    assert not canonicalise(result.graph).modified


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((3, 2, 1, False), (3, 2, 1, False)),  # Inception: a stage pool, then the pool branch
        ((3, 1, 1, False), (3, 1, 1, False)),  # two 3 x 3 stride-1 pools: one 5 x 5
        ((3, 2, 0, False), (2, 2, 0, True)),  # ceil mode in the second (its last window is half virtual)
    ],
)
def test_maxpool_after_maxpool_becomes_one_maxpool_with_the_union_windows(first, second):
    b = Builder(3)
    x = b.input("x", (2, 11, 11))
    inner = b.op("p1", O.MaxPool(kernel_shape=(first[0],) * 2, strides=(first[1],) * 2, pads=(first[2],) * 4,
                                  ceil_mode=first[3]), b.conv("conv", x, 3))
    outer = b.op("p2", O.MaxPool(kernel_shape=(second[0],) * 2, strides=(second[1],) * 2, pads=(second[2],) * 4,
                                  ceil_mode=second[3]), inner)
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), outer), 4))
    result = canonicalise(copy_graph(graph))
    assert op_types(result.graph).count("MaxPool") == 1
    pool = ir.op_of(result.graph, "p2")
    assert pool.kernel_shape[0] == first[0] + (second[0] - 1) * first[1] and pool.strides[0] == first[1] * second[1]
    xs = random_input(graph, positive=False)
    np.testing.assert_array_equal(evaluate(result.graph, xs), evaluate(graph, xs))


def test_maxpool_after_maxpool_whose_union_is_no_window_is_left_and_refused_by_name():
    # 5 rows in windows of 2 (row 4 is in none), then a window reaching past the end: its union {2, 3} is not
    # a window of any single pooling of stride 4 that also gives {0, 1, 2, 3}
    b = Builder(3)
    x = b.input("x", (2, 5, 5))
    inner = b.op("p1", O.MaxPool(kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0)), b.conv("conv", x, 3))
    outer = b.op("p2", O.MaxPool(kernel_shape=(2, 2), strides=(1, 1), pads=(0, 0, 1, 1)), inner)
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), outer), 4))
    assert op_types(canonicalise(copy_graph(graph)).graph).count("MaxPool") == 2
    with pytest.raises(PassError, match=r"MaxPool must read a ReLU population, reads 'p1' \(MaxPool\)"):
        convert(graph, random_input(graph))
