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

Then (unless ``--no-run``) a second fresh process loads the converted graph
and runs one random image at its first full output T = (L + 1) K with the
light-cone schedule: lowering and run seconds (the run after a warm-up
one), its peak RSS, SOPs against the ANN's MACs, and the event-driven
logits against the dense oracle (runtime.oracle.dense_bsnn, one wave).

``--calibrate percentile search`` converts each graph under both, back to
back, and ``--markdown`` then writes the side-by-side table (calibration
seconds and peak RSS) between ``<!-- zoo-calibration:start -->`` and
``<!-- zoo-calibration:end -->``.

Usage::

    python benchmarks/zoo_convert.py --images 512 --models resnet50
    python benchmarks/zoo_convert.py --images 16          # every zoo graph
    python benchmarks/zoo_convert.py --images 64 --json benchmarks/results/zoo_run.json --markdown docs/benchmarks.md
    python benchmarks/zoo_convert.py --images 64 --no-run --calibrate percentile search \\
        --json benchmarks/results/zoo_calibration.json --markdown docs/benchmarks.md
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

path, images, seed, out, calibrate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
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
row = {"model": path.rsplit("/", 1)[-1].removeprefix("light_").removesuffix(".onnx"), "images": images,
       "calibrate": calibrate}
try:
    graph = bsnn_graph.load_onnx(random_path)
    (name,) = graph.graph["inputs"]
    shape = graph.nodes[name]["shape"]
    x = rng.random((images,) + tuple(shape), dtype=np.float32)
    started = time.perf_counter()
    spiking = passes.convert(graph, x, calibrate=calibrate)
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["input_shape"] = list(shape)
    row["populations"] = sum(1 for n in spiking.nodes if spiking.nodes[n]["op"].op_type == "Population")
    row["synchronous_neurons"] = int(spiking.graph["metadata"].get("bsnn.synchronous_neurons", 0))
    row["ann_macs"] = int(sum(bsnn_graph.executor.macs(graph, n) for n in graph.nodes))
    bsnn_graph.save_onnx(spiking, out + ".spiking.onnx")
except BsnnError as exc:
    row["refused"] = str(exc).replace(random_path, row["model"])
row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
json.dump(row, open(out, "w"))
"""


_RUN = r"""
import json, resource, sys, time
import numpy as np
import bsnn_graph, runtime
from runtime import oracle

path, seed, out, record_limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
graph = bsnn_graph.load_onnx(path)
(name,) = graph.graph["inputs"]
x = np.random.default_rng(seed + 1).random((1,) + tuple(graph.nodes[name]["shape"]), dtype=np.float32)
stage = max(graph.nodes[n]["op"].stage for n in graph.nodes if graph.nodes[n]["op"].op_type == "Population")
phases = next(graph.nodes[n]["op"].phases for n in graph.nodes if graph.nodes[n]["op"].op_type == "Population")
t_first = (stage + 1) * phases
started = time.perf_counter()
lowered = runtime.lower(graph)
lower_seconds = time.perf_counter() - started
runtime.simulate(lowered, x, t_first)  # compiled (cached on disk after the first graph)
started = time.perf_counter()
result = runtime.simulate(lowered, x, t_first)
seconds = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
dense = oracle.dense_bsnn(graph, x, 1)
got, want = result.logits[stage, 0], dense.logits[0, 0]
# layer by layer: every population's emitted K-bit values against Q_K of V from the run's own source values
# (it records every spike event: skipped above --record-limit spikes, where the events alone take gigabytes)
spikes = int(sum(int(np.sum(c)) for c in result.spike_counts.values()))
checks = {}
if spikes <= record_limit:
    recorded = runtime.simulate(lowered, x, t_first, record="all")
    emitted = {n: oracle.emitted_per_wave(recorded, graph, n, 1) for n in recorded.spike_counts}
    checks, _ = oracle.teacher_forced_check(graph, x, emitted)
json.dump({
    "t_first": t_first, "lower_seconds": round(lower_seconds, 2), "run_seconds": round(seconds, 3),
    "run_peak_rss_mb": round(rss, 1), "sops": int(result.sops[0]), "input_macs": int(result.input_macs),
    "oracle_same_prediction": bool(np.argmax(got) == np.argmax(want)),
    "oracle_max_abs_logit_difference": float(np.max(np.abs(got - want))),
    "oracle_max_abs_logit": float(np.max(np.abs(want))),
    "teacher_forced_neuron_waves": int(sum(c.neuron_periods for c in checks.values())) if checks else None,
    "teacher_forced_mismatches": int(sum(c.mismatches for c in checks.values())) if checks else None,
    "teacher_forced_ties": int(sum(c.ties for c in checks.values())) if checks else None,
    "spikes": spikes,
}, open(out, "w"))
"""


def zoo_models() -> list[Path]:
    """The bundled light zoo graphs, sorted by name."""
    import onnx

    folder = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
    return sorted(folder.glob("*.onnx"))


def _forced(row: dict) -> str:
    if row.get("teacher_forced_neuron_waves") is None:
        return f"not run ({row['spikes']:.3g} spikes to record)"
    return (f"{row['teacher_forced_mismatches']} of {row['teacher_forced_neuron_waves']:,} differ, "
            f"{row['teacher_forced_ties']} of them float32 ties")


def markdown(rows: list[dict], command: str) -> str:
    """The zoo table of docs/benchmarks.md."""
    import platform
    import time

    lines = [
        (f"`{command}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; the machine shared with other benchmarks, so seconds are loaded). Seeded "
        "random weights, uniform random images; conversion in one fresh process (its peak RSS), then one image "
        "at the first full output T = (L + 1) 8 with the light cone in another (its peak RSS; the run timed after "
        "a warm-up run). Oracle: the dense per-wave evaluation (same prediction, largest logit difference) and "
        "the teacher-forced check, population by population (neuron-waves whose K-bit value differs from Q_K of "
        "the V computed from the run's own inputs; each must be a float32 tie)."),
        "",
        ("| graph | conversion s | conversion peak RSS MB | populations / SN | T | lowering s | run s | run peak RSS MB "
        "| SOPs | ANN MACs | SOPs / MACs | same prediction as oracle | teacher-forced neuron-waves |"),
        "|---" * 13 + "|",
    ]
    for row in rows:
        if "refused" in row:
            lines.append(f"| {row['model']} | refused: {row['refused']} |" + " |" * 11)
            continue
        run = "run_seconds" in row
        lines.append(
            f"| {row['model']} | {row['seconds']} | {row['peak_rss_mb']:.0f} | {row['populations']} / "
            f"{row['synchronous_neurons']} | "
            + (f"{row['t_first']} | {row['lower_seconds']} | {row['run_seconds']} | {row['run_peak_rss_mb']:.0f} | "
               f"{row['sops']:.3g} | {row['ann_macs']:.3g} | {row['sops'] / row['ann_macs']:.2f} | "
               f"{row['oracle_same_prediction']} | {_forced(row)} |" if run else " |" * 9)
        )
    return "\n".join(lines) + "\n"


def _calibration(row: dict) -> str:
    """How a row's lambdas were chosen (rows measured before --calibrate existed used the percentile)."""
    return row.get("calibrate", "percentile")


def calibration_markdown(rows: list[dict], command: str) -> str:
    """The table of docs/benchmarks.md that sets each graph's conversion under the percentile and under search
    side by side."""
    import time

    from headline import machine

    by = {(row["model"], _calibration(row)): row for row in rows}
    lines = [
        (f"`{command}` ({time.strftime('%Y-%m-%d')}, {machine()}). Each graph converted under both calibrations "
         "back to back, each in a fresh process (its peak RSS): seeded random weights, uniform random images, "
         "K = 8, rounding."),
        "",
        "| graph | percentile s | search s | percentile peak RSS MB | search peak RSS MB | search / percentile seconds |",
        "|---" * 6 + "|",
    ]
    for name in sorted({row["model"] for row in rows}):
        percentile, search = by[(name, "percentile")], by[(name, "search")]
        if "refused" in percentile:
            lines.append(f"| {name} | refused: {percentile['refused']} |" + " |" * 4)
            continue
        lines.append(
            f"| {name} | {percentile['seconds']} | {search['seconds']} | {percentile['peak_rss_mb']:.0f} | "
            f"{search['peak_rss_mb']:.0f} | {search['seconds'] / percentile['seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _measure(path: Path, calibrate: str, args) -> dict:
    """Convert one zoo graph in a fresh process (and run one image in another, unless --no-run); its row."""
    name = path.stem.removeprefix("light_")
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"zoo_{name}_{os.getpid()}.json"
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(args.images), str(args.seed), str(out), calibrate], check=True
    )
    row = json.loads(out.read_text())
    spiking = Path(str(out) + ".spiking.onnx")
    if "refused" not in row and args.run:
        subprocess.run([sys.executable, "-c", _RUN, str(spiking), str(args.seed), str(out), str(args.record_limit)],
                       check=True)
        row.update(json.loads(out.read_text()))
    for leftover in (out, Path(str(out) + ".random.onnx"), spiking, Path(str(spiking) + ".data")):
        leftover.unlink(missing_ok=True)
    return row


def _report(name: str, row: dict) -> None:
    if "refused" in row:
        print(f"{name:>14}: refused: {row['refused']}", flush=True)
        return
    print(
        f"{name:>14}: {row['images']} images {row['input_shape']}, {row['calibrate']}: {row['seconds']:7.1f} s, "
        f"peak RSS {row['peak_rss_mb']:7.1f} MB, {row['populations']} populations, "
        f"{row['synchronous_neurons']} SN",
        flush=True,
    )
    if "run_seconds" in row:
        print(
            f"{'':>14}  one image at T = {row['t_first']}: lower {row['lower_seconds']:.1f} s, run "
            f"{row['run_seconds']:.3f} s, peak RSS {row['run_peak_rss_mb']:.0f} MB, SOPs {row['sops']:.3g} "
            f"vs ANN MACs {row['ann_macs']:.3g} ({row['sops'] / row['ann_macs']:.2f}x); oracle: same "
            f"prediction {row['oracle_same_prediction']}, max |logit difference| "
            f"{row['oracle_max_abs_logit_difference']:.2e} of {row['oracle_max_abs_logit']:.2e}; "
            f"teacher-forced: {_forced(row)}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="calibration images per graph")
    parser.add_argument("--models", nargs="*", default=None, help="names (e.g. resnet50 squeezenet); default all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrate", nargs="+", choices=("percentile", "search"), default=["percentile"],
                        help="how the lambdas are chosen (default percentile, as the zoo table was measured; search "
                        "is bsnn's default in passes.convert and the CLI); both: each graph under each, back to "
                        "back, and --markdown writes the side-by-side table (zoo-calibration) instead")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the table into this file between <!-- zoo:start --> and <!-- zoo:end -->")
    parser.add_argument("--record-limit", type=float, default=5e7,
                        help="the teacher-forced check records every spike: skip it above this many (default 5e7)")
    parser.add_argument("--no-run", dest="run", action="store_false",
                        help="convert only (default: also run one image at the first full output in a fresh process)")
    args = parser.parse_args()
    rows = []
    for path in zoo_models():
        name = path.stem.removeprefix("light_")
        if args.models and name not in args.models:
            continue
        for calibrate in args.calibrate:
            rows.append(_measure(path, calibrate, args))
            _report(name, rows[-1])
    if args.json is not None:
        if args.json.exists():  # rows of other graphs (or calibrations) measured before are kept
            keys = {(row["model"], _calibration(row)) for row in rows}
            before = [r for r in json.loads(args.json.read_text()) if (r["model"], _calibration(r)) not in keys]
            rows = sorted(before + rows, key=lambda r: (r["model"], _calibration(r)))
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        tmp.replace(args.json)
    if args.markdown is not None:
        from headline import insert_section

        command = "python benchmarks/zoo_convert.py " + " ".join(sys.argv[1:])
        if set(args.calibrate) == {"percentile", "search"}:
            insert_section(args.markdown, calibration_markdown(rows, command), "zoo-calibration")
        else:
            insert_section(args.markdown, markdown([r for r in rows if _calibration(r) == args.calibrate[0]], command),
                           "zoo")


if __name__ == "__main__":
    main()
