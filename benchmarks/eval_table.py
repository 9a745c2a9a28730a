"""Markdown tables from ``bsnn eval --json`` documents (accuracy versus T for every mode).

Usage::

    bsnn eval data/vgg_max.onnx --calib data/fmnist_calib.npz --data data/fmnist_test.npz \\
        --modes bsnn,bsnn-nosn,phase,if-rate -T 8,16,32,48,56,64,72,80,96,128,160,200,256 \\
        --percentile 99.9 --batch-size 256 --json > vgg_max.json
    python benchmarks/eval_table.py vgg_max.json [more.json ...]

For each mode it prints the accuracy at the requested T, the first T from
which accuracy stays within 1 point of the ANN (up to the largest T), and,
for ``bsnn``, whether it is within 1 point at T = (L + 3) K.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from runtime.schedule import first_output_step

__all__ = ["settles_within", "table"]


def settles_within(per_step: list[float], target: float, points: float) -> int | None:
    """First T (1-based) from which accuracy stays within ``points`` (percent) of ``target``."""
    acc = 100.0 * np.asarray(per_step)
    outside = np.nonzero(acc < 100.0 * target - points)[0]
    if len(outside) == 0:
        return 1
    if outside[-1] == len(acc) - 1:
        return None
    return int(outside[-1]) + 2


def table(doc: dict) -> str:
    steps = doc["timesteps"]
    ann = doc["ann_accuracy"]
    head = "| mode | " + " | ".join(f"T={t}" for t in steps) + " | T within 1 pt (stays) | bsnn at (L+3)K |"
    lines = [
        f"`{doc['model']}` on {doc['samples']} images of `{doc['data']}`: ANN {100 * ann:.2f} %",
        "",
        head,
        "|" + "---|" * (len(steps) + 3),
    ]
    for mode, run in doc["modes"].items():
        cells = [f"{100 * a:.2f}" for a in run["accuracy"]]
        settle = settles_within(run["accuracy_per_step"], ann, 1.0)
        check = "-"
        if mode == "bsnn" and run.get("first_output_step"):
            k = run["phases"]
            largest_stage = run["first_output_step"] // k - 1  # T_first = (L + 1) K
            t_check = first_output_step(largest_stage + 2, k)  # two periods later: (L + 3) K
            if t_check <= len(run["accuracy_per_step"]):
                acc = run["accuracy_per_step"][t_check - 1]
                ok = "yes" if 100 * (ann - acc) <= 1.0 else "NO"
                check = f"T={t_check}: {100 * acc:.2f} % ({ok})"
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {settle or '-'} | {check} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    for path in args.files:
        with open(path) as f:
            print(table(json.load(f)))


if __name__ == "__main__":
    main()
