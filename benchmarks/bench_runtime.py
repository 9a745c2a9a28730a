"""Throughput and latency of the event-driven runtime (a measurement, not a test).

Usage::

    python benchmarks/bench_runtime.py [--model converted.onnx] [--timesteps 56] [--samples 512]

Without ``--model`` it converts ``data/vgg_max.onnx`` (Fashion-MNIST VGG, 6
populations, K = 8) with ``bsnn convert`` into a temporary folder. It reports:

- compile time of the kernels (a fresh Numba cache folder, so a cold compile);
- images/s at batch 256 with 1 and 2 threads (first full output, T = (L+1) K);
- latency of one image (batch 1) with 1 and 2 threads (channel-split path);
- where the time goes: the dense analog input layer (numpy executor) vs the kernels;
- accuracy at T against the ANN, SOPs per image and the energy estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _convert(folder: Path) -> Path:
    out = folder / "vgg_bsnn.onnx"
    subprocess.run(
        ["bsnn", "convert", str(ROOT / "data/vgg_max.onnx"), "--calib", str(ROOT / "data/fmnist_calib.npz"),
         "-o", str(out), "--percentile", "99.9"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def _best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--timesteps", type=int)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    cache = tempfile.mkdtemp(prefix="bsnn-numba-cache-")
    os.environ["NUMBA_CACHE_DIR"] = cache  # cold compile, measured below

    import bsnn_graph
    import runtime
    from bsnn_graph.data import load_dataset
    from runtime.lowering import lower

    model = args.model or _convert(Path(tempfile.mkdtemp(prefix="bsnn-bench-")))
    graph = runtime.load(model)
    data = load_dataset(ROOT / "data/fmnist_test.npz")
    x, y = data if isinstance(data, tuple) else (data.x, data.y)
    x, y = x[: args.samples], y[: args.samples]
    start = time.perf_counter()
    lowered = lower(graph)
    lower_s = time.perf_counter() - start
    largest = max(graph.nodes[n]["op"].stage for n in lowered.spiking)
    timesteps = args.timesteps or (largest + 1) * lowered.phases

    start = time.perf_counter()
    runtime.simulate(lowered, x[:2], 8, batch_size=2)
    compile_batch = time.perf_counter() - start
    start = time.perf_counter()
    runtime.simulate(lowered, x[:1], 8, batch_size=1)
    compile_one = time.perf_counter() - start

    figures = {
        "model": str(model),
        "populations": len(lowered.spiking),
        "neurons": int(lowered.spike_size),
        "timesteps": timesteps,
        "lower_seconds": round(lower_s, 3),
        "compile_seconds_batch_kernel": round(compile_batch, 2),
        "compile_seconds_one_sample_kernel": round(compile_one, 2),
    }
    batch = x[: min(256, len(x))]
    for threads in (1, 2):
        seconds = _best_of(args.repeats, lambda t=threads: runtime.simulate(lowered, batch, timesteps, batch_size=256,
                                                                             threads=t))  # fmt: skip
        figures[f"images_per_second_batch256_threads{threads}"] = round(len(batch) / seconds, 1)
        latency = _best_of(args.repeats * 3, lambda t=threads: runtime.simulate(lowered, x[:1], timesteps,
                                                                                  batch_size=1, threads=t))  # fmt: skip
        figures[f"latency_ms_batch1_threads{threads}"] = round(1000 * latency, 2)
    drive = _best_of(args.repeats, lambda: lowered.input_drive(batch))
    figures["input_layer_seconds_batch256"] = round(drive, 4)

    result = runtime.simulate(lowered, x, timesteps, batch_size=256)
    ann = bsnn_graph.evaluate(graph, x).argmax(axis=1)
    figures["accuracy_ann"] = float((ann == y).mean())
    figures[f"accuracy_snn_T{timesteps}"] = float(result.accuracy(y)[-1])
    figures["sops_per_image"] = float(result.sops.mean())
    figures["energy_estimate"] = result.energy_estimate()
    json.dump(figures, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
