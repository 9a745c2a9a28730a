"""Hand-built ANN graphs shared by the pass tests (VGG- and ResNet-shaped), and checks of the builders."""

from __future__ import annotations

import numpy as np

from bsnn_graph import evaluate, ir
from bsnn_graph import ops as O

__all__ = ["Builder", "assert_same_outputs", "op_types", "random_input", "resnet", "vgg"]


class Builder:
    """Adds ops with random parameters to a fresh graph; names are given by the caller."""

    def __init__(self, seed: int = 0, name: str = "g"):
        self.rng = np.random.default_rng(seed)
        self.graph = ir.new_graph(name)

    def _f32(self, *shape, scale=1.0, loc=0.0):
        return (loc + scale * self.rng.standard_normal(shape)).astype(np.float32)

    def input(self, name, shape):
        return ir.add_node(self.graph, name, O.Input(shape=tuple(shape)))

    def conv(self, name, src, out_channels, kernel=3, stride=1, pad=1, bias=True, group=1):
        channels = ir.shape_of(self.graph, src)[0]
        fan_in = channels // group * kernel * kernel
        weight = self._f32(out_channels, channels // group, kernel, kernel, scale=np.sqrt(2.0 / fan_in))
        op = O.Conv(
            weight=weight,
            bias=self._f32(out_channels, scale=0.1) if bias else None,
            strides=(stride, stride),
            pads=(pad,) * 4,
            dilations=(1, 1),
            group=group,
        )
        return ir.add_node(self.graph, name, op, [src])

    def gemm(self, name, src, out_features, bias=True):
        features = ir.shape_of(self.graph, src)[0]
        op = O.Gemm(
            weight=self._f32(out_features, features, scale=np.sqrt(2.0 / features)),
            bias=self._f32(out_features, scale=0.1) if bias else None,
        )
        return ir.add_node(self.graph, name, op, [src])

    def bn(self, name, src):
        c = ir.shape_of(self.graph, src)[0]
        op = O.BatchNormalization(
            scale=self._f32(c, scale=0.3, loc=1.0),
            bias=self._f32(c, scale=0.2),
            mean=self._f32(c, scale=0.2),
            var=np.abs(self._f32(c, scale=0.3, loc=1.0)) + np.float32(0.1),
            epsilon=1e-5,
        )
        return ir.add_node(self.graph, name, op, [src])

    def op(self, name, op, *srcs):
        return ir.add_node(self.graph, name, op, list(srcs))

    def relu(self, name, src):
        return ir.add_node(self.graph, name, O.Relu(), [src])

    def output(self, *names):
        self.graph.graph["outputs"] = list(names)
        ir.verify(self.graph)
        return self.graph


def random_input(graph, n=16, seed=1, positive=True):
    shape = ir.shape_of(graph, graph.graph["inputs"][0])
    x = np.random.default_rng(seed).standard_normal((n,) + tuple(shape)).astype(np.float32)
    return np.abs(x) if positive else x


def vgg(pool: str = "max", seed: int = 0, bn: bool = True):
    """Input (1, 8, 8) -> [conv BN relu pool] x 2 -> flatten -> fc relu dropout -> fc -> softmax."""
    b = Builder(seed, f"vgg_{pool}")
    x = b.input("x", (1, 8, 8))
    pool_op = (O.MaxPool if pool == "max" else O.AveragePool)(kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0))
    h = b.conv("conv1", x, 4)
    h = b.bn("bn1", h) if bn else h
    h = b.relu("relu1", h)
    h = b.op("pool1", pool_op, h)
    h = b.conv("conv2", h, 6)
    h = b.bn("bn2", h) if bn else h
    h = b.relu("relu2", h)
    h = b.op("pool2", type(pool_op)(kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0)), h)
    h = b.op("flatten", O.Flatten(), h)
    h = b.gemm("fc1", h, 12)
    h = b.relu("relu3", h)
    h = b.op("drop", O.Dropout(), h)
    h = b.gemm("fc2", h, 5)
    h = b.op("softmax", O.Softmax(axis=-1), h)
    return b.output(h)


def resnet(seed: int = 0, blocks=("identity", "projection", "identity"), maxpool_stem: bool = True):
    """Stem conv-BN-relu (-maxpool), basic blocks (identity / projection shortcuts), GAP, fc."""
    b = Builder(seed, "resnet")
    x = b.input("x", (2, 12, 12))
    h = b.relu("stem_relu", b.bn("stem_bn", b.conv("stem_conv", x, 4)))
    if maxpool_stem:
        h = b.op("stem_pool", O.MaxPool(kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1)), h)
    channels = 4
    for i, kind in enumerate(blocks):
        out, stride = (channels, 1) if kind == "identity" else (channels * 2, 2)
        y = b.relu(f"b{i}_relu1", b.bn(f"b{i}_bn1", b.conv(f"b{i}_conv1", h, out, stride=stride, bias=False)))
        y = b.bn(f"b{i}_bn2", b.conv(f"b{i}_conv2", y, out, bias=False))
        if kind == "identity":
            shortcut = h
        else:
            shortcut = b.bn(f"b{i}_bnp", b.conv(f"b{i}_proj", h, out, kernel=1, stride=2, pad=0, bias=False))
        h = b.relu(f"b{i}_relu2", b.op(f"b{i}_add", O.Add(), y, shortcut))
        channels = out
    h = b.op("flatten", O.Flatten(), b.op("gap", O.GlobalAveragePool(), h))
    return b.output(b.gemm("fc", h, 5))


def test_builders_give_valid_graphs_with_finite_outputs():
    for graph in (vgg("max"), vgg("avg"), resnet()):
        ir.verify(graph)
        y = evaluate(graph, random_input(graph))
        assert y.shape == (16, 5) and np.all(np.isfinite(y))


def test_resnet_has_one_shortcut_per_block():
    graph = resnet(blocks=("identity", "projection", "identity", "projection"))
    adds = [n for n in graph.nodes if isinstance(ir.op_of(graph, n), O.Add)]
    assert len(adds) == 4


def assert_same_outputs(before, after, x, rtol=1e-4, atol=1e-5):
    """The two graphs give the same outputs on ``x`` (rtol 1e-4, atol 1e-5)."""
    np.testing.assert_allclose(evaluate(after, x), evaluate(before, x), rtol=rtol, atol=atol)


def op_types(graph) -> list[str]:
    """Op kinds of the graph in topological order."""
    return [ir.op_of(graph, n).op_type for n in ir.topological_order(graph)]
