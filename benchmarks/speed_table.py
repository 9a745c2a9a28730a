"""Markdown table of ``bench_runtime.py`` results (the speed figures of docs/benchmarks.md).

Usage::

    python benchmarks/speed_table.py benchmarks/results/speed_*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(path: Path) -> list[str]:
    doc = json.loads(path.read_text())
    out = []
    for run in doc["runs"]:
        one, two = run["images_per_second_batch256_threads1"], run["images_per_second_batch256_threads2"]
        out.append(
            f"| {Path(doc['model']).stem} | {doc.get('mode', '?')} | {run['timesteps']} | {one} | {two} | "
            f"{two / one:.2f}x | {run['latency_ms_batch1_threads1']} | {run['latency_ms_batch1_threads2']} | "
            f"{doc.get('threading_layer', '?')} | {run['sops_per_image'] / 1e6:.1f} M | "
            f"{run['sops_per_image'] * one / 1e9:.2f} | {doc['load_average_before'][0]} |"
        )
    return out


def main() -> None:
    print(
        "| model | mode | T | images/s, 1 thread | images/s, 2 threads | speed-up | batch-1 ms, 1 thread | "
        "batch-1 ms, 2 threads | threading layer | SOPs/image | G SOPs/s, 1 thread | load before |"
    )
    print("|---" * 12 + "|")
    for name in sys.argv[1:]:
        for row in rows(Path(name)):
            print(row)


if __name__ == "__main__":
    main()
