"""Long fuzz runs of every input format and command (issue 12); the CI share is tests/test_fuzz.py.

    python benchmarks/fuzz.py --cases 5000 [--seed 0] [--first 0] [-v]

Prints one line per failing case (what was mutated, the command, the
problem) and a summary per input format; exit status 1 if any case failed.
A failing case ``i`` is replayed with ``--first i --cases 1 -v``; its files
are kept in the scratch folder printed at the start.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fuzzing import KINDS, Fuzzer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000, help="number of cases (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the case sequence")
    parser.add_argument("--first", type=int, default=0, help="index of the first case")
    parser.add_argument("--hang-seconds", type=int, default=120, help="a case running longer counts as a hang")
    parser.add_argument("--folder", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case and failing tracebacks")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="bsnn-fuzz-"))
    print(f"scratch folder {folder}", flush=True)
    warnings.simplefilter("ignore")
    fuzzer = Fuzzer(folder, seed=args.seed, hang_seconds=args.hang_seconds)
    runs, failures = collections.Counter(), collections.Counter()
    started = time.perf_counter()
    for index in range(args.first, args.first + args.cases):
        case = fuzzer.run(index)
        runs[case.kind] += 1
        if args.verbose:
            print(f"case {index} {case.kind}: {case.mutation}; {' '.join(case.command)} -> exit {case.exit_code}")
        if case.problem is not None:
            failures[(case.kind, case.problem)] += 1
            print(f"FAIL case {index} ({case.kind}: {case.mutation}; {' '.join(case.command)}): {case.problem}")
            detail = case.detail.strip()
            print(detail if args.verbose else (detail.splitlines() or [""])[-1][:400], flush=True)
    seconds = time.perf_counter() - started
    print(f"{args.cases} cases (seed {args.seed}, from {args.first}) in {seconds:.0f} s")
    for kind in KINDS:
        broken = sum(n for (k, _), n in failures.items() if k == kind)
        print(f"  {kind:<15} {runs[kind]:>6} cases, {broken} failed")
    for (kind, problem), count in sorted(failures.items()):
        print(f"  failures: {kind}: {problem}: {count}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
