"""Batch-1 latency of the bsnn runtime on the reference VGG and ResNet-14, 1 and 2 threads.

Usage (the threading layer decides whether one image is split over the threads)::

    python benchmarks/latency.py
    NUMBA_THREADING_LAYER=omp python benchmarks/latency.py

Each figure is the mean over 40 different test images, best of 3 passes,
at the first full output T = (L + 1) K (K = 8, percentile 99.9).
"""

from __future__ import annotations

import time
from pathlib import Path

import numba

import passes
import runtime
from bsnn_graph import load_onnx
from bsnn_graph.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 40


def main() -> None:
    calib, _ = load_dataset(ROOT / "data" / "fmnist_calib.npz")
    x, _ = load_dataset(ROOT / "data" / "fmnist_test.npz", limit=IMAGES)
    for model, timesteps in (("vgg_max", 56), ("resnet14", 112)):
        snn = passes.convert(load_onnx(ROOT / "data" / f"{model}.onnx"), calib, phases=8, percentile=99.9,
                             calibrate="percentile")
        lowered = runtime.lower(snn)
        cells = []
        for threads in (1, 2):
            runtime.simulate(lowered, x[:1], timesteps, batch_size=1, threads=threads)  # compile
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for i in range(IMAGES):
                    runtime.simulate(lowered, x[i : i + 1], timesteps, batch_size=1, threads=threads)
                best = min(best, (time.perf_counter() - start) / IMAGES)
            cells.append(f"{threads} thread{'s' * (threads > 1)}: {1000 * best:.2f} ms")
        print(f"{model} T = {timesteps}, layer {numba.threading_layer()}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
