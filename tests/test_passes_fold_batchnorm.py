"""fold_batchnorm: into the preceding Conv/Gemm (bias or not, grouped), into the next one, else Mul + Add."""

from __future__ import annotations

import pytest
from test_passes_graphs import (
    Builder,
    assert_same_outputs,
    op_types,
    random_input,
    resnet,
    vgg,
)

from bsnn_graph import ir
from bsnn_graph import ops as O
from passes import canonicalise, copy_graph, fold_batchnorm


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_conv_bn_folds_into_conv(bias, group):
    b = Builder(group)
    x = b.input("x", (4, 6, 6))
    graph = b.output(b.relu("relu", b.bn("bn", b.conv("conv", x, 8, bias=bias, group=group))))
    result = fold_batchnorm(copy_graph(graph))
    assert result.modified
    assert op_types(result.graph) == ["Input", "Conv", "Relu"]
    assert ir.op_of(result.graph, "conv").bias is not None
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


def test_gemm_bn_folds_into_gemm():
    b = Builder()
    x = b.input("x", (5,))
    graph = b.output(b.bn("bn", b.gemm("fc", x, 3, bias=False)))
    result = fold_batchnorm(copy_graph(graph))
    assert op_types(result.graph) == ["Input", "Gemm"]
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


def test_nothing_to_fold_is_not_modified():
    b = Builder()
    graph = b.output(b.relu("relu", b.gemm("fc", b.input("x", (5,)), 3)))
    assert not fold_batchnorm(graph).modified


def _bn_after_add(pad: int):
    b = Builder(7)
    x = b.input("x", (3, 6, 6))
    s = b.op("add", O.Add(), b.conv("c1", x, 3), b.conv("c2", x, 3))
    h = b.conv("c3", b.bn("bn", s), 4, pad=pad)
    return b.output(b.relu("relu", h))


def test_bn_after_add_folds_into_next_unpadded_conv():
    graph = _bn_after_add(pad=0)
    result = fold_batchnorm(copy_graph(graph))
    assert "BatchNormalization" not in op_types(result.graph)
    assert op_types(result.graph).count("Add") == 1  # only the merge; the shift went into the bias
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


def test_bn_after_add_folds_into_next_padded_conv_exactly():
    graph = _bn_after_add(pad=1)
    result = fold_batchnorm(copy_graph(graph))
    assert "BatchNormalization" not in op_types(result.graph)
    assert isinstance(ir.op_of(result.graph, "c3_border_bias"), O.Add)
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


def test_bn_through_flatten_into_gemm():
    b = Builder(8)
    x = b.input("x", (2, 3, 3))
    s = b.op("add", O.Add(), b.conv("c1", x, 2), b.conv("c2", x, 2))
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), b.bn("bn", s)), 4))
    result = fold_batchnorm(copy_graph(graph))
    assert op_types(result.graph).count("BatchNormalization") == 0
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


def test_conv_with_another_reader_becomes_an_affine_projection():
    b = Builder(9)
    x = b.input("x", (2, 4, 4))
    conv = b.conv("conv", x, 2)
    bn = b.bn("bn", conv)
    h = b.op("add", O.Add(), b.relu("relu", bn), conv)
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), h), 3))
    result = fold_batchnorm(copy_graph(graph))
    assert result.modified
    assert isinstance(ir.op_of(result.graph, "bn"), O.Add)
    assert ir.inputs_of(result.graph, "bn") == ["bn_scale"]
    assert ir.op_of(result.graph, "bn_scale").constant.shape == (1, 2, 1, 1)
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


def test_preactivation_bn_becomes_mul_and_add_by_constants():
    b = Builder(10)
    x = b.input("x", (2, 4, 4))
    s = b.op("add", O.Add(), b.conv("c1", x, 2), b.conv("c2", x, 2))
    graph = b.output(b.relu("relu", b.bn("bn_pre", s)))
    canonical = canonicalise(copy_graph(graph)).graph
    result = fold_batchnorm(canonical)
    assert op_types(result.graph).count("BatchNormalization") == 0
    assert ir.inputs_of(result.graph, "relu") == ["bn_pre"]
    assert isinstance(ir.op_of(result.graph, "bn_pre_scale"), O.Mul)
    assert ir.inputs_of(result.graph, "bn_pre_scale") == ["add"]
    assert_same_outputs(graph, result.graph, random_input(graph, positive=False))


@pytest.mark.parametrize("make", [lambda: vgg("max"), lambda: vgg("avg"), resnet])
def test_whole_networks_fold(make):
    graph = canonicalise(make()).graph
    result = fold_batchnorm(copy_graph(graph))
    assert "BatchNormalization" not in op_types(result.graph)
    assert_same_outputs(graph, result.graph, random_input(graph, n=8, positive=False))
