"""Measure cached parts of the headline benchmark again and compare them with the cache.

The headline's cached parts may come from earlier commits (each part file records its commit); the
runtime is exact, so measuring a part again at the current commit, with the conversion settings the part
records (mode, K, calibration, initial potential, percentile), must give the same correct predictions at
every step, the same SOPs and the same SOPs per period::

    python benchmarks/recheck_part.py resnet14 bsnn@K8.percentile.half 0-1000 \
        --data /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

Several ``KEY:PART`` pairs may follow the model (``if-rate@K8.percentile.half:2000-3000``); the last
positional argument without a colon is the part of the key before it. Exits non-zero when any differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from headline import ROOT, _commit

import passes
from bsnn_graph import load_onnx
from bsnn_graph.data import load_dataset
from runtime.evaluate import evaluate_snn


def recheck(model: str, key: str, part: str, args) -> bool:
    """Whether part ``part`` of run ``key`` measures the same now as in the cache; prints one line."""
    path = Path(args.cache) / model / f"{key}.parts" / f"{part}.json"
    if not path.exists():
        raise SystemExit(f"error: no cached part {path}")
    cached = json.loads(path.read_text())
    s = cached["settings"]
    x, y = load_dataset(args.data, limit=s["last"])
    calib, _ = load_dataset(args.calib)
    options = {"calibrate": s.get("calibrate", "percentile")}
    snn = passes.convert(load_onnx(ROOT / "data" / s["onnx"]), calib, mode=s["mode"], phases=s["phases"],
                         percentile=s["percentile"], initial_potential=s.get("initial_potential", "zero"), **options)
    evaluation = evaluate_snn(snn, x[s["first"]:], y[s["first"]:], s["timesteps"], threads=args.threads)
    same_correct = [int(c) for c in evaluation.correct_per_step] == cached["correct"]
    same_sops = np.isclose(float(evaluation.sops_total), cached["sops_sum"], rtol=1e-12, atol=0)
    per_period = cached.get("sops_per_period_sum")
    same_periods = per_period is None or np.allclose(evaluation.sops_per_period_total, per_period, rtol=1e-12, atol=0)
    same = bool(same_correct and same_sops and same_periods)
    print(f"{model} {key} images {part}, T_max {s['timesteps']}: cached at {cached['commit']}, measured at "
          f"{_commit()} in {evaluation.seconds:.0f} s: "
          + ("identical (correct per step, SOPs, SOPs per period)" if same else
             f"DIFFERENT (correct {same_correct}, SOPs {same_sops}, per period {same_periods})"), flush=True)
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("runs", nargs="+", help="KEY PART, or KEY:PART ... (e.g. phase@K8.percentile.half:0-1000)")
    parser.add_argument("--data", required=True, help="the test set the part was measured on")
    parser.add_argument("--calib", default=str(ROOT / "data" / "fmnist_calib.npz"))
    parser.add_argument("--cache", default=str(ROOT / "benchmarks" / "results" / "headline"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    pairs = [r.split(":", 1) for r in args.runs] if all(":" in r for r in args.runs) else [args.runs]
    if any(len(p) != 2 for p in pairs):
        parser.error("give KEY PART, or KEY:PART pairs")
    results = [recheck(args.model, key, part, args) for key, part in pairs]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
