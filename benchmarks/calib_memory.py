"""Peak memory of ``bsnn convert`` versus the number of calibration images.

Runs ``bsnn convert MODEL --calib IDX --calib-limit N`` in a fresh process for
each N and reports its peak resident set size (``ru_maxrss`` of the child).
The calibration statistics are streamed through fixed-size histograms, so
the peak should grow only by the loaded data itself (N x 784 float32 for
Fashion-MNIST), not by the activations seen.

Usage::

    python benchmarks/calib_memory.py --model data/vgg_max.onnx \\
        --calib /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz --counts 500 10000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

__all__ = ["peak_rss_mb"]


def peak_rss_mb(args: list[str]) -> tuple[float, float]:
    """Run ``args`` in a child process; return (peak RSS in MB, wall seconds)."""
    code = (
        "import resource, subprocess, sys\n"
        "rc = subprocess.run(sys.argv[1:]).returncode\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(rc)\n"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/vgg_max.onnx")
    parser.add_argument("--calib", default="/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 10000])
    parser.add_argument("--channelwise", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for count in args.counts:
            out = os.path.join(folder, f"out{count}.onnx")
            command = [
                shutil.which("bsnn") or "bsnn", "convert", args.model, "--calib", args.calib,
                "--calib-limit", str(count), "-o", out, "--calibrate", "percentile",
            ] + (["--channelwise"] if args.channelwise else [])  # fmt: skip
            mb, seconds = peak_rss_mb(command)
            rows.append({"calibration_images": count, "peak_rss_mb": round(mb, 1), "seconds": round(seconds, 1)})
            print(f"{count:>7d} images: peak RSS {mb:7.1f} MB, {seconds:6.1f} s", flush=True)
    print(json.dumps({"model": args.model, "channelwise": args.channelwise, "runs": rows}))


if __name__ == "__main__":
    main()
