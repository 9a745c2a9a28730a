"""Event-driven runtime vs clock-driven dense PyTorch, side by side at the same T and batch (a measurement).

Usage::

    python benchmarks/compare_runtime.py data/vgg_max.onnx --json-out compare.json
    python benchmarks/compare_runtime.py data/vgg_max.onnx --quick          # a small, fast check

``MODEL`` is either an ANN ONNX file (converted here with ``passes.convert``
and ``--calib`` for every mode asked for) or a spiking graph written by
``bsnn convert`` (run in its own mode; another mode re-labels its spiking ops,
which keeps its SN populations). For every mode and every thread count
(``--threads``, default 1 and 2) it times, with the first call of each
simulator excluded (its compile / warm-up time is reported separately):

- ``runtime.simulate`` (event-driven, Numba): images/s at batch ``--batch``
  over ``--images`` images, and latency per image at batch 1 over
  ``--latency-images`` images; SOPs/s from the run's synaptic operations;
- :class:`dense_torch.DenseSimulator` (every neuron every step, torch
  float32, ``torch.inference_mode``): the same two figures; with
  ``--scheduled`` also its schedule-aware variant (``skip_silent``).

Each figure is the best of ``--repeats`` runs. The table also shows the
accuracy at T of both and the fraction of images whose prediction at T is
the same in both. Times on a shared or loaded machine are not meaningful;
run it alone.

JSON (``--json-out``): ``command``, ``model``, ``timesteps``, ``phases``,
``batch``, ``images``, ``latency_images``, ``repeats``, ``machine``
(``cpu``, ``cores``, ``torch``, ``numba``, ``python``), ``modes``: a list
of ``{mode, largest_stage, t_first_output, compile_s (runtime: batch and
one-sample kernels), warmup_s (dense), accuracy_runtime, accuracy_dense,
agreement, sops_per_image, runs}``; ``runs`` a list of ``{simulator
(runtime | dense | dense-scheduled), threads, images_per_s, latency_ms,
sops_per_s}`` (``sops_per_s`` only for the runtime). ``compile_s`` is the
time of the runtime's first calls in that mode: the kernels compile (or load
from Numba's cache) once per process, so modes after the first show only the
dispatch cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bsnn_graph
from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.data import fit_to_input, load_dataset
from bsnn_graph.errors import BsnnError
from bsnn_graph.fileutil import atomic_output

__all__ = ["compare", "main", "spiking_graphs", "with_mode"]

SPIKING_OPS = (O.Population, O.MaxGate, O.OutputAccumulator)


def with_mode(graph, mode: str):
    """A copy of a spiking graph whose spiking ops (and metadata) carry ``mode``."""
    out = graph.copy()
    out.graph = dict(graph.graph)
    out.graph["metadata"] = dict(graph.graph.get("metadata", {}), **{"bsnn.mode": mode})
    for name in out.nodes:
        op = out.nodes[name]["op"]
        if isinstance(op, SPIKING_OPS):
            out.nodes[name]["op"] = dataclasses.replace(op, mode=mode)  # the copy's attribute dict is its own
    return out


def _is_spiking(graph) -> bool:
    return any(isinstance(ir.op_of(graph, n), O.OutputAccumulator) for n in graph.nodes)


def spiking_graphs(model: Path, modes: list[str] | None, calib: Path | None, phases: int, percentile: float):
    """``{mode: spiking graph}`` for ``model`` (converted here if it is an ANN) and the modes asked for."""
    graph = bsnn_graph.load_onnx(model)
    if _is_spiking(graph):
        own = {ir.op_of(graph, n).mode for n in graph.nodes if isinstance(ir.op_of(graph, n), SPIKING_OPS)}
        own_mode = own.pop() if len(own) == 1 else None
        modes = modes or [own_mode]
        return {m: graph if m == own_mode else with_mode(graph, m) for m in modes}
    import passes

    if calib is None:
        raise BsnnError(f"{model}: an ANN model needs --calib to be converted")
    x, _ = load_dataset(calib)
    x = fit_to_input(x, ir.shape_of(graph, graph.graph["inputs"][0]), source=str(calib))
    return {m: passes.convert(graph, x, mode=m, phases=phases, percentile=percentile,
                                 calibrate="percentile") for m in modes or ["bsnn"]}


def _best(repeats: int, fn):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _largest_stage(graph) -> int:
    return max(int(ir.op_of(graph, n).stage) for n in graph.nodes if isinstance(ir.op_of(graph, n), O.Population))


def compare(graph, mode: str, x, y, timesteps: int, batch: int, latency_images: int, threads: list[int],
            repeats: int, scheduled: bool, log=print) -> dict:  # fmt: skip
    """Time the runtime and the dense simulation on one spiking graph; return the JSON record of one mode."""
    from dense_torch import DenseSimulator

    import runtime
    from runtime.schedule import first_output_step

    largest = _largest_stage(graph)
    phases = int(next(ir.op_of(graph, n).phases for n in graph.nodes if isinstance(ir.op_of(graph, n), SPIKING_OPS)))
    record = {"mode": mode, "largest_stage": largest, "t_first_output": first_output_step(largest, phases), "runs": []}
    lowered = runtime.lower(graph)
    xl = x[:latency_images]

    # first calls: kernel compile (or cache load) of the batch and the one-sample paths, then torch warm-up
    start = time.perf_counter()
    runtime.simulate(lowered, x[:2], timesteps, batch_size=2, threads=threads[0])
    batch_compile = time.perf_counter() - start
    start = time.perf_counter()
    runtime.simulate(lowered, x[:1], timesteps, batch_size=1, threads=threads[0])
    record["compile_s"] = {"batch": batch_compile, "one_sample": time.perf_counter() - start}
    dense = {"dense": DenseSimulator(graph, mode=mode)}
    if scheduled and mode in O.BISTABLE_MODES:
        dense["dense-scheduled"] = DenseSimulator(graph, mode=mode, skip_silent=True)
    start = time.perf_counter()
    dense["dense"].simulate(x[:2], timesteps, batch_size=2, threads=threads[0])
    record["warmup_s"] = time.perf_counter() - start

    predictions = {}
    for th in threads:
        seconds, result = _best(repeats, lambda th=th: runtime.simulate(lowered, x, timesteps, batch_size=batch,
                                                                        threads=th, per_neuron_counts=False))  # fmt: skip
        lat, _ = _best(repeats, lambda th=th: runtime.simulate(lowered, xl, timesteps, batch_size=1, threads=th,
                                                               per_neuron_counts=False))  # fmt: skip
        sops = float(result.sops.sum())
        record["sops_per_image"] = sops / len(x)
        predictions["runtime"] = result.predictions[-1]
        record["runs"].append({"simulator": "runtime", "threads": th, "images_per_s": len(x) / seconds,
                               "latency_ms": 1e3 * lat / len(xl), "sops_per_s": sops / seconds})  # fmt: skip
        log(f"  {mode} runtime threads={th}: {len(x) / seconds:.1f} images/s, {1e3 * lat / len(xl):.2f} ms/image")
        for name, sim in dense.items():
            seconds, out = _best(repeats, lambda sim=sim, th=th: sim.simulate(x, timesteps, batch_size=batch,
                                                                              threads=th))  # fmt: skip
            lat, _ = _best(repeats, lambda sim=sim, th=th: sim.simulate(xl, timesteps, batch_size=1, threads=th))
            predictions[name] = out.predictions[-1]
            record["runs"].append({"simulator": name, "threads": th, "images_per_s": len(x) / seconds,
                                   "latency_ms": 1e3 * lat / len(xl), "sops_per_s": None})  # fmt: skip
            log(f"  {mode} {name} threads={th}: {len(x) / seconds:.1f} images/s, {1e3 * lat / len(xl):.2f} ms/image")
    record["agreement"] = float((predictions["runtime"] == predictions["dense"]).mean())
    if y is not None:
        record["accuracy_runtime"] = float((predictions["runtime"] == y).mean())
        record["accuracy_dense"] = float((predictions["dense"] == y).mean())
    return record


def _machine() -> dict:
    import numba
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "numba": numba.__version__,
            "python": platform.python_version()}  # fmt: skip


def markdown(report: dict) -> str:
    """The report as a markdown table (one row per mode, simulator and thread count)."""
    lines = [
        (
            f"T = {report['timesteps']}, K = {report['phases']}, batch {report['batch']} over {report['images']} "
            f"images, latency at batch 1 over {report['latency_images']} images, best of {report['repeats']}; "
            f"{report['machine']['cpu']} ({report['machine']['cores']} cores)."
        ),
        "",
        "| mode | simulator | threads | images/s | ms/image (batch 1) | SOPs/s | speed-up vs dense |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in report["modes"]:
        base = {r["threads"]: r for r in rec["runs"] if r["simulator"] == "dense"}
        for r in rec["runs"]:
            sops = f"{r['sops_per_s']:.3g}" if r["sops_per_s"] is not None else "-"
            ref = base[r["threads"]]
            speed = f"{r['images_per_s'] / ref['images_per_s']:.2f}x / {ref['latency_ms'] / r['latency_ms']:.2f}x"
            lines.append(f"| {rec['mode']} | {r['simulator']} | {r['threads']} | {r['images_per_s']:.1f} | "
                         f"{r['latency_ms']:.2f} | {sops} | {speed} |")  # fmt: skip
    lines.append("")
    lines.append("| mode | L | first output T | runtime compile s (batch / one) | dense warm-up s | SOPs/image | "
                 "acc. runtime | acc. dense | same prediction |")  # fmt: skip
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for rec in report["modes"]:
        acc_r = f"{100 * rec['accuracy_runtime']:.2f}%" if "accuracy_runtime" in rec else "-"
        acc_d = f"{100 * rec['accuracy_dense']:.2f}%" if "accuracy_dense" in rec else "-"
        c = rec["compile_s"]
        lines.append(f"| {rec['mode']} | {rec['largest_stage']} | {rec['t_first_output']} | {c['batch']:.2f} / "
                     f"{c['one_sample']:.2f} | {rec['warmup_s']:.2f} | {rec['sops_per_image']:.4g} | {acc_r} | "
                     f"{acc_d} | {100 * rec['agreement']:.1f}% |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Parse the command line, run the comparison, print the table, write the JSON."""
    from runtime.schedule import first_output_step

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="ANN ONNX (converted here) or a spiking graph from bsnn convert")
    parser.add_argument("--data", type=Path, default=ROOT / "data/fmnist_test.npz", help="test images (npz or IDX)")
    parser.add_argument("--calib", type=Path, default=ROOT / "data/fmnist_calib.npz", help="calibration (ANN only)")
    parser.add_argument("--modes", default=None, help="comma-separated, e.g. bsnn,if-rate (default: bsnn, or the "
                        "converted model's own mode)")  # fmt: skip
    parser.add_argument("--phases", type=int, default=8, help="K when converting an ANN")
    parser.add_argument("--percentile", type=float, default=99.9, help="when converting an ANN")
    parser.add_argument("--timesteps", type=int, help="T (default: first full output of bsnn, (L + 1) K)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--images", type=int, default=256, help="images for the throughput figure")
    parser.add_argument("--latency-images", type=int, default=16, help="images for the batch-1 latency figure")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scheduled", action="store_true", help="also time the schedule-aware dense variant")
    parser.add_argument("--quick", action="store_true", help="32 images, batch 32, 2 latency images, 1 repeat")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.batch, args.latency_images, args.repeats = 32, 32, 2, 1

    try:
        modes = args.modes.split(",") if args.modes else None
        threads = [int(t) for t in args.threads.split(",")]
        graphs = spiking_graphs(args.model, modes, args.calib, args.phases, args.percentile)
        first = next(iter(graphs.values()))
        x, y = load_dataset(args.data, limit=max(args.images, args.latency_images))
        x = fit_to_input(x, ir.shape_of(first, first.graph["inputs"][0]), source=str(args.data))
        phases = int(next(ir.op_of(first, n).phases for n in first.nodes
                          if isinstance(ir.op_of(first, n), SPIKING_OPS)))  # fmt: skip
        timesteps = args.timesteps or first_output_step(_largest_stage(graphs.get("bsnn", first)), phases)
        report = {
            "command": "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
            "model": str(args.model),
            "timesteps": timesteps,
            "phases": phases,
            "batch": args.batch,
            "images": min(args.images, len(x)),
            "latency_images": min(args.latency_images, len(x)),
            "repeats": args.repeats,
            "machine": _machine(),
            "modes": [],
        }
        xt, yt = x[: args.images], (y[: args.images] if y is not None else None)
        for mode, graph in graphs.items():
            print(f"{mode}: timing at T = {timesteps} ...", file=sys.stderr)
            report["modes"].append(compare(graph, mode, xt, yt, timesteps, args.batch, args.latency_images, threads,
                                           args.repeats, args.scheduled,
                                           log=lambda s: print(s, file=sys.stderr)))  # fmt: skip
    except BsnnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(markdown(report))
    if args.json_out:
        with atomic_output(args.json_out) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
