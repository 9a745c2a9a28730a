"""Calibration seconds of lambda by search against the percentile, per reference model (optionally of two checkouts).

For each model it converts ``data/<model>.onnx`` on ``data/fmnist_calib.npz``
(percentile 99.9, K = ``--phases``, rounding) with ``--calibrate percentile``
and ``--calibrate search``, each in a fresh process of the checkout's own code,
and prints the seconds the conversion reports (``calibration_seconds``) and
the lambdas' digest. With ``--before DIR`` every conversion is also run with the
checkout at DIR, alternating, so both see the same machine load; the digests
must agree (the search's result does not depend on how it is computed).

Usage::

    git worktree add --detach /tmp/before <commit>
    python benchmarks/search_speed.py --models vgg_max vgg_avg resnet14 resnet32 --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import hashlib, json, sys, time
import numpy as np
import passes
from bsnn_graph import ir, load_onnx
from bsnn_graph.data import load_dataset
from bsnn_graph import ops as O
model, calibrate, phases = sys.argv[1], sys.argv[2], int(sys.argv[3])
calib, _ = load_dataset("data/fmnist_calib.npz")
graph = load_onnx(f"data/{model}.onnx")
snn = passes.convert(graph, calib, mode="bsnn", phases=phases, percentile=99.9, calibrate=calibrate)
digest = hashlib.sha256()
for name in sorted(snn.nodes):
    op = ir.op_of(snn, name)
    if isinstance(op, O.Population):
        digest.update(np.asarray(op.scale, np.float64).tobytes())
meta = snn.graph["metadata"]
print(json.dumps({"seconds": float(meta["bsnn.calibration_seconds"]), "digest": digest.hexdigest()[:16]}))
"""


def convert_seconds(root: Path, model: str, calibrate: str, phases: int) -> dict:
    """One conversion in a fresh process of the checkout at ``root``: its calibration seconds and lambda digest."""
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", _CHILD, model, calibrate, str(phases)], cwd=root, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg_max", "vgg_avg", "resnet14", "resnet32"])
    parser.add_argument("--phases", type=int, default=4)
    parser.add_argument("--before", type=Path, default=None, help="another checkout to time side by side")
    args = parser.parse_args(argv)
    rows = []
    for model in args.models:
        row = {"model": model}
        for calibrate in ("percentile", "search"):
            row[calibrate] = convert_seconds(ROOT, model, calibrate, args.phases)
            if args.before is not None and calibrate == "search":
                row["search_before"] = convert_seconds(args.before, model, calibrate, args.phases)
                if row["search_before"]["digest"] != row["search"]["digest"]:
                    raise SystemExit(f"{model}: the two checkouts' searches chose different lambdas")
        row["search_over_percentile"] = row["search"]["seconds"] / row["percentile"]["seconds"]
        if "search_before" in row:
            row["before_over_after"] = row["search_before"]["seconds"] / row["search"]["seconds"]
        print(json.dumps(row), flush=True)
        rows.append(row)


if __name__ == "__main__":
    main()
