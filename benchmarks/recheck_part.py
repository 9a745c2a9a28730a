"""Measure one cached part of the headline benchmark again and compare it with the cache.

The headline's cached parts may come from earlier commits (each part file records its commit); the
runtime is exact, so measuring a part again at the current commit must give the same correct predictions
at every step and the same SOPs::

    python benchmarks/recheck_part.py resnet14 bsnn-nosn@K8 0-2000 \
        --data /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

Exits non-zero when they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from headline import ROOT, _commit

import passes
import runtime
from bsnn_graph import load_onnx
from bsnn_graph.data import load_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("key", help="mode@K, e.g. phase@K8")
    parser.add_argument("part", help="first-last image range of a cached part, e.g. 0-2000")
    parser.add_argument("--data", required=True, help="the test set the part was measured on")
    parser.add_argument("--calib", default=str(ROOT / "data" / "fmnist_calib.npz"))
    parser.add_argument("--cache", default=str(ROOT / "benchmarks" / "results" / "headline"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    path = ROOT / args.cache / args.model / f"{args.key}.parts" / f"{args.part}.json"
    if not path.exists():
        parser.error(f"no cached part {path}")
    part = json.loads(path.read_text())
    s = part["settings"]
    x, y = load_dataset(args.data, limit=s["last"])
    calib, _ = load_dataset(args.calib)
    snn = passes.convert(load_onnx(ROOT / "data" / s["onnx"]), calib, mode=s["mode"], phases=s["phases"],
                         percentile=s["percentile"])
    started = time.perf_counter()
    result = runtime.simulate(snn, x[s["first"]:], s["timesteps"], threads=args.threads, per_neuron_counts=False)
    correct = (result.predictions == y[None, s["first"]:]).sum(axis=1)
    same = correct.tolist() == part["correct"] and np.isclose(result.sops.sum(), part["sops_sum"], rtol=1e-9, atol=0)
    print(f"{args.model} {args.key} images {args.part}, T_max {s['timesteps']}: cached at {part['commit']}, "
          f"measured at {_commit()} in {time.perf_counter() - started:.0f} s: "
          + ("identical (correct per step and SOPs)" if same else "DIFFERENT"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
