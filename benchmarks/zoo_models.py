"""Seeded random-weight copies of the model-zoo topologies that ship inside the ``onnx`` wheel.

``onnx/backend/test/data/light/light_<name>.onnx`` holds real zoo graphs
(ResNet-50, VGG-19, SqueezeNet, DenseNet-121, Inception-v1/v2, ShuffleNet,
AlexNet, ZFNet; 224x224 inputs) whose weights are ``ConstantOfShape`` nodes
filled with one value. :func:`random_weight_copy` replaces every such node
by an initializer of seeded random values shaped for its consumer, so the
network computes something non-trivial:

- Conv / Gemm weights: He-normal (std ``sqrt(2 / fan_in)``); their biases N(0, 0.01);
- BatchNormalization: scale U(0.5, 1), bias N(0, 0.1), mean N(0, 0.1), variance U(0.5, 1.5);
- any other constant (the Mul / Add of an unfused BN): U(0.5, 1) for Mul, N(0, 0.1) otherwise.

The activity of such a network is not that of a trained one; use it for
speed, memory and exactness, not for accuracy.

Usage::

    python benchmarks/zoo_models.py resnet50 --out /tmp/resnet50.onnx [--seed 0]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["ZOO", "random_weight_copy", "zoo_path"]

#: the zoo graphs of the onnx wheel (name -> file stem)
ZOO = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
       "vgg19", "zfnet512")  # fmt: skip


def zoo_path(name: str) -> Path:
    """Path of ``light_<name>.onnx`` inside the installed onnx wheel."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo graph {name!r} (have {', '.join(ZOO)})")
    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def _values(rng: np.random.Generator, shape: tuple[int, ...], consumer: onnx.NodeProto | None, position: int):
    op = consumer.op_type if consumer is not None else ""
    if op in ("Conv", "Gemm") and position == 1:
        fan_in = int(np.prod(shape[1:])) if op == "Conv" else int(shape[-1] if len(shape) == 2 else shape[0])
        return rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
    if op in ("Conv", "Gemm") and position == 2:
        return rng.standard_normal(shape) * 0.01
    if op == "BatchNormalization":
        if position == 1:
            return rng.uniform(0.5, 1.0, shape)
        if position == 4:
            return rng.uniform(0.5, 1.5, shape)
        return rng.standard_normal(shape) * 0.1
    if op == "Mul":
        return rng.uniform(0.5, 1.0, shape)
    return rng.standard_normal(shape) * 0.1


def random_weight_copy(name: str, out: str | os.PathLike, seed: int = 0) -> Path:
    """Write ``light_<name>.onnx`` with its ``ConstantOfShape`` weights replaced by seeded random initializers."""
    model = onnx.load(str(zoo_path(name)))
    graph = model.graph
    rng = np.random.default_rng(seed)
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, tuple[onnx.NodeProto, int]] = {}
    for node in graph.node:
        for position, tensor in enumerate(node.input):
            consumers.setdefault(tensor, (node, position))
    # ConstantOfShape -> (possibly Unsqueeze ->) consumer: follow single-input shape ops to the real consumer
    keep, added, dropped = [], [], set()
    for node in graph.node:
        if node.op_type != "ConstantOfShape":
            keep.append(node)
            continue
        shape = tuple(int(v) for v in numpy_helper.to_array(initializers[node.input[0]]).reshape(-1))
        consumer, position = consumers.get(node.output[0], (None, 0))
        while consumer is not None and consumer.op_type in ("Unsqueeze", "Reshape", "Identity"):
            consumer, position = consumers.get(consumer.output[0], (None, 0))
        values = _values(rng, shape, consumer, position).astype(np.float32)
        added.append(numpy_helper.from_array(values, node.output[0]))
        dropped.add(node.input[0])
    del graph.node[:]
    graph.node.extend(keep)
    still_used = {t for node in keep for t in node.input}
    remaining = [t for t in graph.initializer if t.name not in dropped or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(remaining + added)
    inputs = [i for i in graph.input if i.name not in dropped or i.name in still_used]
    del graph.input[:]
    graph.input.extend(inputs)
    out = Path(out)
    onnx.save(model, str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=ZOO)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(random_weight_copy(args.name, args.out, args.seed))


if __name__ == "__main__":
    main()
