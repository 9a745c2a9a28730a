"""Images/s of one mode on one reference model (the before / after figures of docs/benchmarks.md).

Run it in two checkouts to compare two versions of the runtime::

    python benchmarks/step_modes_speed.py --mode if-rate --images 32 --timesteps 256

It converts ``data/<model>.onnx`` (calibration ``data/fmnist_calib.npz``,
percentile 99.9, K = 8) with the checkout's own code, warms the kernels up,
then times ``runtime.simulate`` on the first images of ``data/fmnist_test.npz``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, not an installed copy

import passes
import runtime
from bsnn_graph import load_onnx
from bsnn_graph.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg_max")
    parser.add_argument("--mode", default="if-rate")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--timesteps", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    calib, _ = load_dataset(ROOT / "data" / "fmnist_calib.npz")
    x, y = load_dataset(ROOT / "data" / "fmnist_test.npz", limit=args.images)
    snn = passes.convert(load_onnx(ROOT / "data" / f"{args.model}.onnx"), calib, mode=args.mode, phases=8,
                         percentile=99.9, calibrate="percentile")
    runtime.simulate(snn, x[:2], 8, per_neuron_counts=False)  # compile
    start = time.perf_counter()
    result = runtime.simulate(snn, x, args.timesteps, batch_size=256, threads=args.threads, per_neuron_counts=False)
    seconds = time.perf_counter() - start
    print(f"{args.model} {args.mode} {len(x)} images, T = {args.timesteps}: {seconds:.2f} s, "
          f"{len(x) / seconds:.2f} images/s, accuracy at T {100 * result.accuracy(y)[-1]:.2f} %, "
          f"{result.sops.mean() / 1e6:.1f} M SOPs/image")


if __name__ == "__main__":
    main()
