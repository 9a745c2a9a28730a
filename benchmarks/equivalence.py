"""Same results before and after a refactoring: predictions, SOPs and spike counts of every reference model.

Converts each reference model of data/models.json in every mode (bsnn under both initial potentials, the
other modes with rounding; K = 8 unless ``--phases``), runs the first ``--images`` images of ``--data`` to
T = (L + 3) K (bsnn modes) or ``--rate-timesteps`` (phase, if-rate), under the light-cone schedule and the full
one, and stores everything the run reports per sample in one ``.npz``: predictions at every step, logits per
period, SOPs per sample and per population, spike counts per population, SOPs per period, and a digest of the
converted graph's parameters. ``--compare OTHER.npz`` then lists every array that differs (exit 1 if any).

Usage (how the architecture issue's "behaviour unchanged" was checked)::

    python benchmarks/equivalence.py --out /tmp/before.npz          # on the commit before the change
    python benchmarks/equivalence.py --out /tmp/after.npz --compare /tmp/before.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

import passes
import runtime
from bsnn_graph import load_onnx, ops
from bsnn_graph.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def graph_digest(graph) -> str:
    """SHA-256 over every node's name, op type and float parameters, in sorted node order."""
    digest = hashlib.sha256()
    for name in sorted(graph.nodes):
        op = graph.nodes[name]["op"]
        digest.update(f"{name}:{type(op).__name__}".encode())
        for field, value in sorted(vars(op).items()):
            if isinstance(value, np.ndarray):
                digest.update(field.encode())
                digest.update(np.ascontiguousarray(value).tobytes())
            elif isinstance(value, (int, float, str, tuple)):
                digest.update(f"{field}={value!r}".encode())
    return digest.hexdigest()


def runs(args):
    """(label, mode, initial potential) of every conversion measured."""
    yield "bsnn.half", "bsnn", "half"
    yield "bsnn.zero", "bsnn", "zero"
    for mode in ("bsnn-nosn", "phase", "if-rate"):
        yield f"{mode}.half", mode, "half"


def measure(args) -> dict[str, np.ndarray]:
    x, _ = load_dataset(args.data, limit=args.images)
    calib, _ = load_dataset(args.calib)
    models = json.loads((ROOT / "data" / "models.json").read_text())
    arrays: dict[str, np.ndarray] = {}
    for model in args.models or list(models):
        ann = load_onnx(ROOT / "data" / models[model]["exports"]["legacy"]["file"])
        for label, mode, potential in runs(args):
            started = time.perf_counter()
            snn = passes.convert(ann, calib, mode=mode, phases=args.phases, initial_potential=potential,
                                 calibrate="percentile")
            depth = max(snn.nodes[n]["op"].stage for n in snn.nodes
                        if isinstance(snn.nodes[n]["op"], ops.Population))
            t = (depth + 3) * args.phases if mode.startswith("bsnn") else args.rate_timesteps
            key = f"{model}/{label}"
            arrays[f"{key}/digest"] = np.array(graph_digest(snn))
            for schedule, full in (("light-cone", False), ("full", True)):
                result = runtime.simulate(snn, x, t, batch_size=args.batch_size, full_dynamics=full)
                out = f"{key}/{schedule}"
                arrays[f"{out}/predictions"] = result.predictions
                arrays[f"{out}/logits"] = result.logits
                arrays[f"{out}/sops"] = result.sops
                arrays[f"{out}/sops_per_period"] = np.asarray(result.extra["sops_per_period"])
                for name, value in sorted(result.sops_per_population.items()):
                    arrays[f"{out}/sops_of/{name}"] = value
                for name, value in sorted(result.spike_counts.items()):
                    arrays[f"{out}/spikes_of/{name}"] = value
            print(f"{key:28s} L={depth:2d} T={t:4d} {time.perf_counter() - started:6.1f} s", flush=True)
    return arrays


def compare(arrays: dict[str, np.ndarray], other_path: Path) -> int:
    """Print every array that differs from (or is missing in) the other file; the number of differences."""
    with np.load(other_path) as other:
        keys = set(other.files) | set(arrays)
        differ = []
        for key in sorted(keys):
            if key not in arrays or key not in other.files:
                differ.append(f"{key}: only in {'this run' if key in arrays else other_path}")
            elif not np.array_equal(arrays[key], other[key]):
                differ.append(f"{key}: differs")
    for line in differ:
        print(line)
    print(f"{len(keys)} arrays compared, {len(differ)} differ")
    return len(differ)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "fmnist_test.npz"))
    parser.add_argument("--calib", default=str(ROOT / "data" / "fmnist_calib.npz"))
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--phases", type=int, default=8)
    parser.add_argument("--rate-timesteps", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare", default=None, help="an earlier run's .npz to compare with")
    args = parser.parse_args(argv)
    arrays = measure(args)
    out = Path(args.out)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    return int(compare(arrays, Path(args.compare)) > 0) if args.compare else 0


if __name__ == "__main__":
    sys.exit(main())
