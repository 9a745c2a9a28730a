"""The runtime of two commits, alternating: is a change faster, slower, or within the noise?

On a noisy shared machine one before-and-after pair says little; this script checks out ``--before`` into a
temporary git worktree and runs the same measurement ``--rounds`` times in fresh processes, alternating the
before commit and the working tree, each process taking the best of ``--repeats`` runs of
``runtime.simulate`` (one mode, K = 8, T = (L + 1) K, ``--images`` test images, batch 256) at 1 and at 2
threads. It prints every round and the best and median per side, and checks the two sides give the same
predictions and SOPs::

    python benchmarks/runtime_ab.py --before 2a6214c --models vgg_avg resnet14 --rounds 3

(The worktree's first process compiles the kernels; compile time is not measured.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: what one process measures (run with PYTHONPATH set to the tree under test)
_MEASURE = r"""
import hashlib, json, sys, time
import numpy as np
import passes, runtime
from bsnn_graph import load_onnx, ops
from bsnn_graph.data import load_dataset
root, model, mode, images, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
x, _ = load_dataset(f"{root}/data/fmnist_test.npz", limit=images)
calib, _ = load_dataset(f"{root}/data/fmnist_calib.npz")
snn = passes.convert(load_onnx(f"{root}/data/{model}.onnx"), calib, mode=mode, phases=8, percentile=99.9,
                     calibrate="percentile")
depth = max(snn.nodes[n]["op"].stage for n in snn.nodes if isinstance(snn.nodes[n]["op"], ops.Population))
t = (depth + 1) * 8
lowered = runtime.lower(snn)
result = runtime.simulate(lowered, x[:16], t, threads=2)
out = {"T": t}
for threads in (1, 2):
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = runtime.simulate(lowered, x, t, batch_size=256, threads=threads)
        best = min(best, time.perf_counter() - started)
    out[f"ms_{threads}t"] = 1000.0 * best / len(x)
digest = hashlib.sha256(result.predictions.tobytes() + result.sops.tobytes()).hexdigest()
print(json.dumps({**out, "digest": digest}))
"""


def measure(tree: Path, model: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(ROOT), model, args.mode, str(args.images),
                          str(args.repeats)], env=env, capture_output=True, text=True, check=False, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise SystemExit(f"error: the measurement in {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(model: str, before_tree: Path, args) -> dict:
    """Alternating rounds of ``model`` on the before tree and this one; the summary per side."""
    rounds: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(args.rounds):
        for side, tree in (("before", before_tree), ("after", ROOT)):
            row = measure(tree, model, args)
            rounds[side].append(row)
            print(f"{model} round {i + 1} {side:6s} T={row['T']:4d} 1 thread {row['ms_1t']:7.3f}  "
                  f"2 threads {row['ms_2t']:7.3f} ms/image", flush=True)
    same = len({r["digest"] for side in rounds.values() for r in side}) == 1
    summary = {"model": model, "mode": args.mode, "rounds": rounds, "same_predictions_and_sops": same}
    for key in ("ms_1t", "ms_2t"):
        for side, rows in rounds.items():
            values = [r[key] for r in rows]
            summary[f"{side}_{key}_best"], summary[f"{side}_{key}_median"] = min(values), statistics.median(values)
        summary[f"after_over_before_{key}_best"] = summary[f"after_{key}_best"] / summary[f"before_{key}_best"]
    print(f"{model}: after / before, best of rounds: 1 thread {summary['after_over_before_ms_1t_best']:.3f}, "
          f"2 threads {summary['after_over_before_ms_2t_best']:.3f}; same predictions and SOPs: {same}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the commit to compare the working tree with")
    parser.add_argument("--models", nargs="+", default=["vgg_max", "vgg_avg", "resnet14"])
    parser.add_argument("--mode", default="bsnn")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rounds and the summary here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "before"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), args.before], cwd=ROOT, check=True)
        try:
            results = [compare(model, tree, args) for model in args.models]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    if args.json:
        Path(args.json).write_text(json.dumps({"before": args.before, "load_before": os.getloadavg()[0],
                                               "results": results}, indent=1))
    return 0 if all(r["same_predictions_and_sops"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
