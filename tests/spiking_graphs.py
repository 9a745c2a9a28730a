"""Hand-built spiking graphs for the runtime tests (no conversion passes needed).

Weights are random, then normalised layer by layer on calibration inputs
(each population's pre-activation divided by its 99th percentile), so the
populations are active but rarely saturated; stages are set by hand per the
spiking graph contract.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.executor import evaluate

__all__ = ["Builder", "chain_graph", "resnet_graph", "vgg_graph", "with_mode"]


class Builder:
    """Adds ops to a graph one at a time; populations normalise their inputs as they are added."""

    def __init__(self, input_shape, mode="bsnn", phases=8, seed=0, calibration=64, initial_potential="half"):
        self.rng = np.random.default_rng(seed)
        self.graph = ir.new_graph("test")
        self.mode, self.phases = mode, phases
        self.initial_potential = initial_potential
        ir.add_node(self.graph, "x", O.Input(shape=tuple(input_shape)))
        self.calibration = self.rng.random((calibration,) + tuple(input_shape)).astype(np.float32)
        self._count = 0

    def _name(self, base):
        self._count += 1
        return f"{base}{self._count}"

    def conv(self, src, cout, k=3, stride=1, pad=1, bias=True):
        """A k x k conv; ``pad`` is one padding for all sides or ONNX's (top, left, bottom, right)."""
        cin = ir.shape_of(self.graph, src)[0]
        w = (self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32) if bias else None
        pads = tuple(pad) if isinstance(pad, tuple) else (pad,) * 4
        op = O.Conv(weight=w, bias=b, strides=(stride, stride), pads=pads, dilations=(1, 1))
        return ir.add_node(self.graph, self._name("conv"), op, [src])

    def gemm(self, src, out):
        n = ir.shape_of(self.graph, src)[0]
        w = (self.rng.standard_normal((out, n)) * np.sqrt(2.0 / n)).astype(np.float32)
        b = (self.rng.standard_normal(out) * 0.05).astype(np.float32)
        return ir.add_node(self.graph, self._name("fc"), O.Gemm(weight=w, bias=b), [src])

    def op(self, base, op, inputs):
        return ir.add_node(self.graph, self._name(base), op, list(inputs))

    def _scale_input(self, name, factor):
        op = ir.op_of(self.graph, name)
        if isinstance(op, (O.Conv, O.Gemm)):
            op.weight = (op.weight * factor).astype(np.float32)
            if op.bias is not None:
                op.bias = (op.bias * factor).astype(np.float32)
        elif isinstance(op, O.Mul):
            op.constant = (op.constant * factor).astype(np.float32)
        elif isinstance(op, (O.Concat, O.Sum, O.AveragePool)):  # linear: scale what it reads
            for src in ir.inputs_of(self.graph, name):
                self._scale_input(src, factor)
        else:
            raise TypeError(f"cannot rescale {op.op_type}")

    def population(self, inputs, stage, percentile=99.0):
        pre = evaluate(self.graph, self.calibration, outputs=list(inputs))
        pre = sum(pre.values()) if isinstance(pre, dict) else pre
        positive = pre[pre > 0]
        scale = float(np.percentile(positive, percentile)) if positive.size else 1.0
        for name in inputs:
            self._scale_input(name, 1.0 / scale)
        op = O.Population(mode=self.mode, phases=self.phases, stage=stage, scale=np.array(scale, np.float32),
                          initial_potential=self.initial_potential)
        return ir.add_node(self.graph, self._name("pop"), op, list(inputs))

    def synchronous(self, src, stage):
        """A synchronous neuron on ``src`` (a population, or a max gate: it carries its population's lambda)."""
        pop = src if isinstance(ir.op_of(self.graph, src), O.Population) else ir.inputs_of(self.graph, src)[0]
        scale = np.asarray(ir.op_of(self.graph, pop).scale, np.float32)
        op = O.SynchronousNeuron(mode=self.mode, phases=self.phases, stage=stage, scale=scale,
                                 initial_potential=self.initial_potential)
        return ir.add_node(self.graph, self._name("sn"), op, [src])

    def maxgate(self, src, k=2, stride=2, pad=0, ceil_mode=False):
        stage = ir.op_of(self.graph, src).stage
        op = O.MaxGate(mode=self.mode, phases=self.phases, stage=stage, kernel_shape=(k, k), strides=(stride, stride),
                       pads=(pad,) * 4, dilations=(1, 1), ceil_mode=ceil_mode)
        return ir.add_node(self.graph, self._name("gate"), op, [src])

    def output(self, src, stage):
        op = O.OutputAccumulator(mode=self.mode, phases=self.phases, stage=stage)
        name = ir.add_node(self.graph, "out", op, [src])
        self.graph.graph["outputs"] = [name]
        ir.verify(self.graph)
        return self.graph


def vgg_graph(mode="bsnn", phases=8, seed=0, size=12, width=4, initial_potential="half"):
    """conv-pop, conv-pop, max gate, conv-pop, average pool, conv-pop, flatten, fc-pop, fc-output (L = 5)."""
    b = Builder((1, size, size), mode, phases, seed, initial_potential=initial_potential)
    p1 = b.population([b.conv("x", width)], 1)
    p2 = b.population([b.conv(p1, width + 2)], 2)
    g = b.maxgate(p2)
    p3 = b.population([b.conv(g, width * 2)], 3)
    a = b.op("avg", O.AveragePool(kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0)), [p3])
    p4 = b.population([b.conv(a, width * 2)], 4)
    f = b.op("flat", O.Flatten(axis=1), [p4])
    p5 = b.population([b.gemm(f, 16)], 5)
    return b.output(b.gemm(p5, 10), 6)


def resnet_graph(mode="bsnn", phases=8, seed=1, size=12, width=4, initial_potential="half"):
    """stem conv-pop + max gate, an identity block and a projection (stride 2) block, GAP, fc (L = 5).

    With ``mode="bsnn"`` the shortcuts get synchronous neurons (SN before the
    shortcut's Mul / 1x1 conv); with ``"bsnn-nosn"`` they read the early
    population directly and stages follow the largest source.
    """
    b = Builder((1, size, size), mode, phases, seed, initial_potential=initial_potential)
    sync = mode != "bsnn-nosn"
    p1 = b.population([b.conv("x", width)], 1)
    g = b.maxgate(p1)  # stage 1
    p2 = b.population([b.conv(g, width)], 2)
    branch = b.conv(p2, width)
    short = b.synchronous(g, 2) if sync else g
    ident = b.op("mul", O.Mul(constant=np.ones((1, width, 1, 1), np.float32)), [short])
    p3 = b.population([branch, ident], 3)  # residual merge
    p4 = b.population([b.conv(p3, 2 * width, stride=2)], 4)
    branch = b.conv(p4, 2 * width)
    short = b.synchronous(p3, 4) if sync else p3
    proj = b.conv(short, 2 * width, k=1, stride=2, pad=0)
    p5 = b.population([branch, proj], 5)
    gap = b.op("gap", O.GlobalAveragePool(), [p5])
    flat = b.op("flat", O.Flatten(axis=1), [gap])
    return b.output(b.gemm(flat, 10), 6)


def chain_graph(weights, biases, mode="bsnn", phases=8, stages=None, threshold=1.0, initial_potential="zero"):
    """A chain of one-neuron populations: x (1,) -> fc -> pop -> fc -> pop ... -> fc -> output.

    ``weights[i]`` and ``biases[i]`` are the scalars of layer i (the last
    one feeds the output accumulator). The populations start at
    ``initial_potential`` ("zero" here: the hand-worked spike times of the
    schedule tests are easiest to read with truncation).
    """
    graph = ir.new_graph("chain")
    ir.add_node(graph, "x", O.Input(shape=(1,)))
    src = "x"
    layers = len(weights)
    stages = stages or list(range(1, layers + 1))
    for i in range(layers):
        w = np.array([[weights[i]]], np.float32)
        bias = np.array([biases[i]], np.float32)
        fc = ir.add_node(graph, f"fc{i}", O.Gemm(weight=w, bias=bias), [src])
        if i < layers - 1:
            op = O.Population(mode=mode, phases=phases, stage=stages[i], threshold=threshold,
                              initial_potential=initial_potential)
            src = ir.add_node(graph, f"pop{i}", op, [fc])
        else:
            ir.add_node(graph, "out", O.OutputAccumulator(mode=mode, phases=phases, stage=stages[i]), [fc])
    graph.graph["outputs"] = ["out"]
    ir.verify(graph)
    return graph


def with_mode(graph, mode):
    """A copy of ``graph`` whose spiking ops carry ``mode``."""
    out = graph.copy()
    for name in out.nodes:
        op = out.nodes[name]["op"]
        if isinstance(op, (O.Population, O.MaxGate, O.OutputAccumulator)):
            out.nodes[name]["op"] = dataclasses.replace(op, mode=mode)
    return out
