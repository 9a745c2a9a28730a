"""Convert the ONNX model zoo graphs bundled in the onnx wheel at 224 x 224: calibration time and peak RSS.

The "light" zoo graphs (``onnx/backend/test/data/light/*.onnx``: VGG-19,
ResNet-50, SqueezeNet, DenseNet-121, Inception-v1/v2, ShuffleNet, AlexNet,
ZFNet) carry constant weights, so each is given seeded random weights
(their weights are ``ConstantOfShape`` nodes: each becomes an initializer,
rank >= 2 He-normal ``N(0, 2 / fan_in)``, rank 1 uniform in [0.5, 1.5],
which keeps BatchNormalization variances positive; so do float initializers)
and converted (``passes.convert``, default batch size: chosen from the
memory budget) on uniform random images. Each graph runs in a fresh child
process, which reports its calibration (conversion) seconds and its peak
resident set size (``ru_maxrss``). A graph the converter refuses prints its
one-line error (the three with LRN: AlexNet, ZFNet, Inception-v1).

Usage::

    python benchmarks/zoo_convert.py --images 512 --models resnet50
    python benchmarks/zoo_convert.py --images 16          # every zoo graph
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["zoo_models"]

_CHILD = r"""
import json, resource, sys, time
import numpy as np
import onnx
from onnx import numpy_helper
import bsnn_graph, passes
from bsnn_graph.errors import BsnnError

path, images, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(seed)
model = onnx.load(path)


def random_weight(shape):
    if len(shape) >= 2:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / int(np.prod(shape[1:])))).astype(np.float32)
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)


# the light graphs build their weights with ConstantOfShape from int64 shape initializers
shapes = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT64}
kept = []
for node in model.graph.node:
    if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
        shape = tuple(int(d) for d in shapes[node.input[0]])
        model.graph.initializer.append(numpy_helper.from_array(random_weight(shape), node.output[0]))
    else:
        kept.append(node)
del model.graph.node[:]
model.graph.node.extend(kept)
for init in model.graph.initializer:
    if init.data_type == onnx.TensorProto.FLOAT and init.name not in {n.output[0] for n in kept}:
        init.CopyFrom(numpy_helper.from_array(random_weight(tuple(init.dims)), init.name))
random_path = out + ".random.onnx"
onnx.save(model, random_path)
row = {"model": path.rsplit("/", 1)[-1].removeprefix("light_").removesuffix(".onnx"), "images": images}
try:
    graph = bsnn_graph.load_onnx(random_path)
    (name,) = graph.graph["inputs"]
    shape = graph.nodes[name]["shape"]
    x = rng.random((images,) + tuple(shape), dtype=np.float32)
    started = time.perf_counter()
    spiking = passes.convert(graph, x)
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["input_shape"] = list(shape)
    row["populations"] = sum(1 for n in spiking.nodes if spiking.nodes[n]["op"].op_type == "Population")
    row["synchronous_neurons"] = int(spiking.graph["metadata"].get("bsnn.synchronous_neurons", 0))
except BsnnError as exc:
    row["refused"] = str(exc).replace(random_path, row["model"])
row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
json.dump(row, open(out, "w"))
"""


def zoo_models() -> list[Path]:
    """The bundled light zoo graphs, sorted by name."""
    import onnx

    folder = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
    return sorted(folder.glob("*.onnx"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="calibration images per graph")
    parser.add_argument("--models", nargs="*", default=None, help="names (e.g. resnet50 squeezenet); default all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args()
    rows = []
    for path in zoo_models():
        name = path.stem.removeprefix("light_")
        if args.models and name not in args.models:
            continue
        out = Path(os.environ.get("TMPDIR", "/tmp")) / f"zoo_{name}_{os.getpid()}.json"
        subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), str(args.images), str(args.seed), str(out)], check=True
        )
        row = json.loads(out.read_text())
        for leftover in (out, Path(str(out) + ".random.onnx")):
            leftover.unlink(missing_ok=True)
        rows.append(row)
        if "refused" in row:
            print(f"{name:>14}: refused: {row['refused']}", flush=True)
        else:
            print(
                f"{name:>14}: {row['images']} images {row['input_shape']}: {row['seconds']:7.1f} s, "
                f"peak RSS {row['peak_rss_mb']:7.1f} MB, {row['populations']} populations, "
                f"{row['synchronous_neurons']} SN",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
