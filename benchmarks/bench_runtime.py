"""Throughput and latency of the event-driven runtime (a measurement, not a test).

Usage::

    python benchmarks/bench_runtime.py [--model converted.onnx] [--timesteps 56 128] [--samples 512]

Without ``--model`` it converts ``data/vgg_max.onnx`` (Fashion-MNIST VGG, 6
populations, K = 8) with ``bsnn convert`` into a temporary folder. For each T
(default: the first full output, T = (L+1) K) it reports:

- images/s at batch 256 with 1 and 2 threads, and the CPU time per image
  (all threads; on a shared machine the wall time depends on the other load,
  the CPU time much less: equal CPU time per image with 2 threads means the
  second core does useful work);
- latency of one image (batch 1) with 1 and 2 threads (channel-split path);
- accuracy at T against the ANN, SOPs per image (spikes x synapses, the
  spec's count) and row scatters per image (what the kernels actually do:
  in mode bsnn one per active neuron and period, not one per spike).

Also: compile time of the kernels (a fresh Numba cache folder, so a cold
compile), the time of the dense analog input layer, the energy estimate and
the load average before and after. Each time is the best of ``--repeats``.
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
         "-o", str(out), "--percentile", "99.9", "--calibrate", "percentile"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def _best_of(repeats: int, fn) -> tuple[float, float]:
    """Best wall time and best CPU time (all threads of the process) of ``repeats`` calls."""
    best = best_cpu = float("inf")
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--timesteps", type=int, nargs="*", help="one or more T (default: (L + 1) K)")
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
    timesteps_list = args.timesteps or [(largest + 1) * lowered.phases]

    start = time.perf_counter()
    runtime.simulate(lowered, x[:2], 8, batch_size=2)
    compile_batch = time.perf_counter() - start
    start = time.perf_counter()
    runtime.simulate(lowered, x[:1], 8, batch_size=1)
    compile_one = time.perf_counter() - start

    figures = {
        "model": str(model),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "populations": len(lowered.spiking),
        "neurons": int(lowered.spike_size),
        "lower_seconds": round(lower_s, 3),
        "compile_seconds_batch_kernel": round(compile_batch, 2),
        "compile_seconds_one_sample_kernel": round(compile_one, 2),
        "runs": [],
    }
    batch = x[: min(256, len(x))]
    drive, _ = _best_of(args.repeats, lambda: lowered.input_drive(batch))
    figures["input_layer_ms_per_image"] = round(1000 * drive / len(batch), 3)
    ann = bsnn_graph.evaluate(graph, x).argmax(axis=1)
    figures["accuracy_ann"] = float((ann == y).mean())
    for timesteps in timesteps_list:
        run = {"timesteps": timesteps}
        for threads in (1, 2):
            seconds, cpu = _best_of(args.repeats, lambda t=threads, ts=timesteps: runtime.simulate(
                lowered, batch, ts, batch_size=256, threads=t))
            run[f"images_per_second_batch256_threads{threads}"] = round(len(batch) / seconds, 1)
            run[f"cpu_ms_per_image_batch256_threads{threads}"] = round(1000 * cpu / len(batch), 2)
            latency, latency_cpu = _best_of(args.repeats * 3, lambda t=threads, ts=timesteps: runtime.simulate(
                lowered, x[:1], ts, batch_size=1, threads=t))
            run[f"latency_ms_batch1_threads{threads}"] = round(1000 * latency, 2)
            run[f"latency_cpu_ms_batch1_threads{threads}"] = round(1000 * latency_cpu, 2)
        result = runtime.simulate(lowered, x, timesteps, batch_size=256)
        run["accuracy_snn"] = float(result.accuracy(y)[-1])
        run["sops_per_image"] = float(result.sops.mean())
        run["row_scatters_per_image"] = float(result.extra["deliveries"].mean())
        run["energy_estimate"] = result.energy_estimate()
        figures["runs"].append(run)
    import numba

    figures["threading_layer"] = numba.threading_layer()
    figures["mode"] = lowered.mode
    from headline import machine  # beside this script

    figures["machine"] = machine()
    figures["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    json.dump(figures, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
