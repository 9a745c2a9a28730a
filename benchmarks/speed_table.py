"""Markdown table of ``bench_runtime.py`` results (the speed figures of docs/benchmarks.md).

Usage::

    python benchmarks/speed_table.py benchmarks/results/speed_*.json [--doc docs/benchmarks.md]

With ``--doc`` the table also replaces the ``speed`` section of that file
(between ``<!-- speed:start -->`` and ``<!-- speed:end -->``).
"""

from __future__ import annotations

import argparse
import json
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--doc", type=Path)
    args = parser.parse_args()
    first = json.loads(args.results[0].read_text())
    lines = [
        f"Machine: {first.get('machine', '?')}. Batch 256 for images/s; batch-1 latency: one image, best of repeats.",
        "",
        (
            "| model | mode | T | images/s, 1 thread | images/s, 2 threads | speed-up | batch-1 ms, 1 thread | "
            "batch-1 ms, 2 threads | threading layer | SOPs/image | G SOPs/s, 1 thread | load before |"
        ),
        "|---" * 12 + "|",
    ]
    for path in args.results:
        lines += rows(path)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.doc is not None:
        from headline import insert_section  # beside this script

        insert_section(args.doc, text, "speed")


if __name__ == "__main__":
    main()
