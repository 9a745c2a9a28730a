"""The headline benchmark: accuracy versus time steps for every mode on every reference model.

For each reference model in data/models.json it measures, on the test set:
- the ANN accuracy (bsnn_graph.evaluate);
- accuracy at every step T = 1..T_max for ``bsnn``, ``bsnn-nosn``, ``phase``
  and ``if-rate`` at K = 8, and for ``bsnn`` at K = 4, 6, 10 (the K sweep);
- the first T from which accuracy stays within 1 point (and 0.1 point) of the
  ANN up to T_max, per mode, and
  the ratio bsnn / if-rate;
- SOPs per image and the energy estimate (0.9 pJ per SOP vs 4.6 pJ per ANN
  MAC, Horowitz 2014, 45 nm; an estimate, not a measurement) at the first T
  where bsnn is within 1 point of the ANN;
and writes docs/headline.json, one accuracy-versus-T plot per model
(docs/acc_vs_T_<model>.png) and its tables into docs/benchmarks.md, between the lines
``<!-- headline:start -->`` and ``<!-- headline:end -->``.

Usage (full Fashion-MNIST test set, as reported in docs/benchmarks.md)::

    python benchmarks/headline.py --data /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

``--limit N`` uses the first N test images; ``--models`` picks models; ``--images phase=2000``
runs one mode on fewer images. Each run is measured in parts of ``--chunk`` images (2,000), cached in
benchmarks/results/headline/<model>/<key>.parts/ and reused when their settings match, so an interrupted
run resumes from its last finished part, a run on more images reuses the parts it covers, and
``--workers 2`` measures two parts at a time (on a local Dask cluster, runtime.distributed;
``--scheduler ADDRESS`` on an existing one). The merged run is cached as <model>/<key>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import passes
import runtime
from bsnn_graph import evaluate, load_onnx
from bsnn_graph.data import load_dataset
from bsnn_graph.executor import macs

ROOT = Path(__file__).resolve().parents[1]
MODES = ("bsnn", "bsnn-nosn", "phase", "if-rate")
K_SWEEP = (4, 6, 10)
MODELS = json.loads((ROOT / "data" / "models.json").read_text())


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu or platform.processor()}, Python {platform.python_version()}"


def ann_accuracy(graph, x, y, batch=500) -> float:
    correct = 0
    for start in range(0, len(x), batch):
        logits = evaluate(graph, x[start : start + batch])
        correct += int((logits.argmax(axis=1) == y[start : start + batch]).sum())
    return 100.0 * correct / len(x)


def first_within(acc: np.ndarray, target: float, points: float) -> int | None:
    """First T (1-based) from which accuracy stays within ``points`` of ``target`` up to T_max."""
    outside = np.nonzero(acc < target - points)[0]
    if len(outside) == 0:
        return 1
    if outside[-1] == len(acc) - 1:
        return None
    return int(outside[-1]) + 2


def deepest_stage(graph) -> int:
    from bsnn_graph import ops as O

    return max(
        (graph.nodes[n]["op"].stage for n in graph.nodes if isinstance(graph.nodes[n]["op"], O.Population)),
        default=0,
    )


def _config(mode: str, k: int, depth: int, args, n_images: int) -> tuple[int, int]:
    """(T_max, images) of one run.

    bsnn at K = 8 runs to (L + bsnn_periods) K, the K sweep to (L + sweep_periods) K (it settles within a few
    periods of its first output, (L + 1) K), the baselines to max(--timesteps, bsnn's T_max at K = 8); every run
    on all images unless ``--images MODE=N`` limits its mode.
    """
    t_bsnn = (depth + args.bsnn_periods) * 8
    images = min(n_images, args.images.get(f"{mode}@K{k}", args.images.get(mode, n_images)))
    if mode == "bsnn":
        return ((depth + (args.bsnn_periods if k == 8 else args.sweep_periods)) * k), images
    return max(args.timesteps, t_bsnn), images


def _cache_file(args, model: str, key: str) -> Path:
    return Path(args.cache) / model / f"{key}.json"


def _write_json(path: Path, data: dict) -> None:
    """Write through a temporary name, so an interrupted run never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _cached(path: Path, settings: dict) -> dict | None:
    if not path.exists():
        return None
    entry = json.loads(path.read_text())
    return entry if entry.get("settings") == settings else None


_DATA: dict = {}


def _inputs(args):
    """The test and calibration sets, loaded once per process."""
    if not _DATA:
        _DATA["x"], _DATA["y"] = load_dataset(args.data, limit=args.limit)
        _DATA["calib"], _ = load_dataset(args.calib)
    return _DATA["x"], _DATA["y"], _DATA["calib"]


def _settings(args, model: str, mode: str, k: int, t_max: int, images: int) -> dict:
    """What a cached result must have been measured with to be reused."""
    return {
        "onnx": _onnx_file(MODELS[model]),
        "data": str(Path(args.data).name),
        "calib": str(Path(args.calib).name),
        "percentile": args.percentile,
        "initial_potential": args.initial_potential,
        "mode": mode,
        "phases": k,
        "timesteps": t_max,
        "images": images,
    }


def _parts_dir(args, model: str, key: str) -> Path:
    return Path(args.cache) / model / f"{key}.parts"


def _part_settings(settings: dict, first: int, last: int) -> dict:
    """A part's settings: its run's, with the image range in place of the image count (a part is reused by any
    run that covers its range)."""
    return {**{k: v for k, v in settings.items() if k != "images"}, "first": first, "last": last}


def parts(images: int, chunk: int) -> list[tuple[int, int]]:
    """The image ranges a run of ``images`` images is measured in: chunks of ``chunk``, from 0."""
    return [(first, min(first + chunk, images)) for first in range(0, images, chunk)]


def _cached_depth(args, model: str, key: str) -> int | None:
    """L of an earlier conversion (from the run's or a part's cache), so a cached result is checked without
    converting again."""
    for path in (_cache_file(args, model, key), *sorted(_parts_dir(args, model, key).glob("*.json"))):
        if path.exists():
            return json.loads(path.read_text())["deepest_stage"]
    return None


def _run_settings(args, model: str, mode: str, k: int, depth: int, n_images: int) -> dict:
    return _settings(args, model, mode, k, *_config(mode, k, depth, args, n_images))


def part_job(job: tuple[str, str, int, int, int], args) -> dict:
    """One (model, mode, K) run over test images [first, last): correct predictions per step and SOPs, cached
    under ``--cache`` as ``<model>/<key>.parts/<first>-<last>.json``."""
    model, mode, k, first, last = job
    key = f"{mode}@K{k}"
    x, y, calib = _inputs(args)
    path = _parts_dir(args, model, key) / f"{first}-{last}.json"
    depth = _cached_depth(args, model, key)
    if depth is not None:
        cached = _cached(path, _part_settings(_run_settings(args, model, mode, k, depth, len(x)), first, last))
        if cached is not None:
            return cached
    ann = load_onnx(ROOT / "data" / _onnx_file(MODELS[model]))
    snn = passes.convert(ann, calib, mode=mode, phases=k, percentile=args.percentile,
                         initial_potential=args.initial_potential)
    depth = deepest_stage(snn)
    settings = _part_settings(_run_settings(args, model, mode, k, depth, len(x)), first, last)
    started = time.perf_counter()
    result = runtime.simulate(
        snn, x[first:last], settings["timesteps"], batch_size=args.batch_size, threads=args.threads,
        per_neuron_counts=False,
    )
    seconds = time.perf_counter() - started
    correct = (result.predictions == y[None, first:last]).sum(axis=1)
    entry = {
        "settings": settings,
        "deepest_stage": depth,
        "correct": [int(c) for c in correct],
        "sops_sum": float(result.sops.sum()),
        "seconds": seconds,
        "threads": args.threads,
        "commit": _commit(),
    }
    _write_json(path, entry)
    print(f"  {model} {key:14s} L={depth:2d} images {first:5d}-{last:5d} T_max={settings['timesteps']:4d} "
          f"final {100.0 * correct[-1] / (last - first):6.2f}%  {seconds:7.1f} s", flush=True)
    return entry


def pending_parts(job: tuple[str, str, int], args) -> list[tuple[str, str, int, int, int]]:
    """The parts of one (model, mode, K) run still to measure; none if the whole run is cached."""
    model, mode, k = job
    key = f"{mode}@K{k}"
    x, _, _ = _inputs(args)
    depth = _cached_depth(args, model, key)
    if depth is not None:
        settings = _run_settings(args, model, mode, k, depth, len(x))
        if _cached(_cache_file(args, model, key), settings) is not None:
            return []
        folder = _parts_dir(args, model, key)
        return [(model, mode, k, a, b) for a, b in parts(settings["images"], args.chunk)
                if _cached(folder / f"{a}-{b}.json", _part_settings(settings, a, b)) is None]
    images = _config(mode, k, 0, args, len(x))[1]  # the image count does not depend on the depth
    return [(model, mode, k, a, b) for a, b in parts(images, args.chunk)]


def run_job(job: tuple[str, str, int], args) -> dict:
    """One (model, mode, K) run over the test set, merged from its parts (measuring any that are missing) and
    cached under ``--cache`` as ``<model>/<key>.json``."""
    model, mode, k = job
    key = f"{mode}@K{k}"
    for part in pending_parts(job, args):  # none if the merged run is cached
        part_job(part, args)
    x, _, _ = _inputs(args)
    depth = _cached_depth(args, model, key)
    settings = _run_settings(args, model, mode, k, depth, len(x))
    path = _cache_file(args, model, key)
    cached = _cached(path, settings)
    if cached is not None:
        return cached
    folder = _parts_dir(args, model, key)
    pieces = [json.loads((folder / f"{a}-{b}.json").read_text()) for a, b in parts(settings["images"], args.chunk)]
    correct = np.sum([p["correct"] for p in pieces], axis=0)
    acc = 100.0 * correct / settings["images"]
    entry = {
        "settings": settings,
        "mode": mode,
        "phases": k,
        "deepest_stage": depth,
        "t_first_output": (depth + 1) * k if mode.startswith("bsnn") else 1,
        "timesteps": settings["timesteps"],
        "images": settings["images"],
        "accuracy": [round(float(a), 3) for a in acc],
        "final_accuracy": float(acc[-1]),
        "sops_per_image_at_t_max": sum(p["sops_sum"] for p in pieces) / settings["images"],
        "seconds": sum(p["seconds"] for p in pieces),
        "parts": [{"first": p["settings"]["first"], "last": p["settings"]["last"], "seconds": p["seconds"],
                   "threads": p["threads"], "commit": p["commit"]} for p in pieces],
    }
    _write_json(path, entry)
    print(f"  {model} {key:14s} L={depth:2d} N={settings['images']:5d} T_max={settings['timesteps']:4d} "
          f"final {acc[-1]:6.2f}%  {entry['seconds']:7.1f} s in {len(pieces)} parts", flush=True)
    return entry


def energy_job(model: str, runs: dict, args) -> dict:
    """SOPs per image of bsnn and if-rate (K = 8), each at the first T where it is within 1 point of the ANN
    (its T_max if it never is), on the first ``--energy-images`` images."""
    x, _, calib = _inputs(args)
    n_energy = min(len(x), args.energy_images)
    ann = load_onnx(ROOT / "data" / _onnx_file(MODELS[model]))
    energy = {}
    for mode in ("bsnn", "if-rate"):
        run = runs.get(f"{mode}@K8")
        if run is None:
            continue
        t_energy = run["t_within_1"] or run["timesteps"]
        settings = {**_settings(args, model, mode, 8, t_energy, n_energy),
                    "schedule": "light-cone" if args.light_cone else "full"}
        path = _cache_file(args, model, f"energy_{mode}")
        cached = _cached(path, settings)
        if cached is None:
            snn = passes.convert(ann, calib, mode=mode, phases=8, percentile=args.percentile,
                                 initial_potential=args.initial_potential)
            result = runtime.simulate(snn, x[:n_energy], t_energy, batch_size=args.batch_size, threads=args.threads,
                                      per_neuron_counts=False, full_dynamics=not args.light_cone)
            sops, input_macs = float(result.sops.mean()), int(result.input_macs)
            cached = {
                "settings": settings,
                "timesteps": t_energy,
                "sops_per_image": sops,
                "input_layer_macs": input_macs,
                "energy_uJ_estimate": (sops * runtime.E_AC_PJ + input_macs * runtime.E_MAC_PJ) * 1e-6,
            }
            _write_json(path, cached)
        energy[mode] = cached
    return energy


def _worker(job: tuple[str, str, int, int, int], args, models: dict) -> dict:
    """``part_job`` on a Dask worker; the model table travels with the job (the worker imports this module afresh,
    so a table replaced in the client, as the tests do, would not be seen)."""
    MODELS.clear()
    MODELS.update(models)
    return part_job(job, args)


def jobs_in_order(models: list[str]) -> list[tuple[str, str, int]]:
    """Cheapest and most telling first: bsnn and if-rate, then the K sweep and bsnn-nosn, phase last."""
    order = [("bsnn", 8), ("if-rate", 8)] + [("bsnn", k) for k in K_SWEEP] + [("bsnn-nosn", 8), ("phase", 8)]
    return [(m, mode, k) for mode, k in order for m in models]


def summarise(model: str, runs: dict, x, y, args) -> dict:
    """ANN accuracy, first T within 1 / 0.1 point, energy: one model's entry of docs/headline.json."""
    ann = load_onnx(ROOT / "data" / _onnx_file(MODELS[model]))
    ann_acc = ann_accuracy(ann, x, y)
    out = {"model": model, "ann_accuracy": ann_acc, "ann_macs": int(sum(macs(ann, n) for n in ann.nodes)), "runs": {}}
    refs = {len(x): ann_acc}
    for key, run in runs.items():
        images = run["images"]
        if images not in refs:
            refs[images] = ann_accuracy(ann, x[:images], y[:images])
        ref = refs[images]
        acc = np.array(run["accuracy"])
        run = {k: v for k, v in run.items() if k != "settings"}
        run.update(ann_accuracy_same_images=ref, t_within_1=first_within(acc, ref, 1.0),
                   t_within_0_1=first_within(acc, ref, 0.1))
        out["runs"][key] = run
    if "bsnn@K8" in out["runs"] and "if-rate@K8" in out["runs"]:
        out["energy"] = {"ann_energy_uJ_estimate": out["ann_macs"] * runtime.E_MAC_PJ * 1e-6,
                         **energy_job(model, out["runs"], args)}
    return out


def plot(results: list[dict], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for res in results:
        ann = res["ann_accuracy"]
        len_x = max(run["images"] for run in res["runs"].values())
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
        for ax, low, high in ((axes[0], max(0.0, ann - 40), min(100.0, ann + 3)), (axes[1], ann - 2.5, ann + 1)):
            for run in res["runs"].values():
                acc = np.array(run["accuracy"])
                style = "-" if run["phases"] == 8 else ":"
                fewer = f", {run['images']} images" if run["images"] < len_x else ""
                ax.plot(np.arange(1, len(acc) + 1), acc, style, label=f"{run['mode']} K={run['phases']}{fewer}",
                        linewidth=1.2)
            ax.axhline(ann, color="black", linewidth=0.8, label=f"ANN ({len_x} images)")
            ax.axhline(ann - 1, color="gray", linewidth=0.6, linestyle="--", label="ANN - 1 pt")
            ax.set_ylim(low, high)
            ax.set_xlim(0, max(r["timesteps"] for r in res["runs"].values()))
            ax.set_xlabel("time steps T")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy (%)")
        axes[0].set_title(f"{res['model']}: accuracy versus T")
        axes[1].set_title("near the ANN")
        axes[0].legend(fontsize=7, ncol=2, loc="lower right")
        fig.tight_layout()
        path = folder / f"acc_vs_T_{res['model']}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path.name)
    return files


#: accuracy columns of the per-model tables (with the bsnn first output (L + 1) 8 and (L + 3) 8)
_COLUMNS = (16, 32, 64, 128, 256)


def _t(value) -> str:
    return "-" if value is None else str(value)


def markdown(results: list[dict], meta: dict) -> str:
    """The headline tables of docs/benchmarks.md: per model (plot, accuracy at chosen T, T within 1 / 0.1 point), the ratio
    bsnn / if-rate per depth, and the energy estimate."""
    lines = [
        (
            f"Measured by `{meta['command']}` on {meta['machine']}, {meta['date']} (commit {meta['commit']}), "
            f"test images: {meta['images']} (fewer where the images column says so), percentile {meta['percentile']}. "
            "\"T within 1 pt\" is the first T from which accuracy stays within 1 point of the ANN (on the same "
            "images) up to the run's T_max; \"-\" if it never does. L is the deepest population stage: the bsnn "
            "modes give their first full output at T = (L + 1) K."
        ),
        "",
    ]
    for res in results:
        runs = res["runs"]
        depth = next(iter(runs.values()))["deepest_stage"] if runs else 0
        lines += [
            f"### {res['model']} (L = {depth}, ANN {res['ann_accuracy']:.2f} %, {res['ann_macs'] / 1e6:.2f} M MACs)",
            "",
            f"![accuracy versus T, {res['model']}]({meta['plots'][results.index(res)]})",
            "",
        ]
        t_max = max((r["timesteps"] for r in runs.values()), default=0)
        columns = sorted({t for t in (*_COLUMNS, (depth + 1) * 8, (depth + 3) * 8) if t <= t_max})
        lines.append(
            "| mode | K | images | ANN % | " + " | ".join(f"T={t}" for t in columns)
            + " | first output | T within 1 pt | T within 0.1 pt | T_max: acc. | SOPs/image at T_max |"
        )
        lines.append("|---" * (len(columns) + 9) + "|")
        for run in runs.values():
            acc = run["accuracy"]
            cells = [f"{acc[t - 1]:.2f}" if t <= len(acc) else "" for t in columns]
            first = f"T={run['t_first_output']}: {acc[run['t_first_output'] - 1]:.2f}" if run["mode"].startswith(
                "bsnn") and run["t_first_output"] <= len(acc) else "-"
            lines.append(
                f"| {run['mode']} | {run['phases']} | {run['images']} | {run['ann_accuracy_same_images']:.2f} | "
                + " | ".join(cells)
                + f" | {first} | {_t(run['t_within_1'])} | {_t(run['t_within_0_1'])} | "
                f"{run['timesteps']}: {run['final_accuracy']:.2f} | {run['sops_per_image_at_t_max'] / 1e6:.1f} M |"
            )
        lines.append("")
    lines += [
        "### T to come within 1 and 0.1 point of the ANN, K = 8, per depth",
        "",
        (
            "| model | L | bsnn 1 pt | if-rate 1 pt | bsnn / if-rate | bsnn-nosn 1 pt | phase 1 pt | bsnn 0.1 pt | "
            "if-rate 0.1 pt | bsnn / if-rate (0.1 pt) | bsnn-nosn 0.1 pt | phase 0.1 pt |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in sorted(results, key=lambda r: next(iter(r["runs"].values()))["deepest_stage"] if r["runs"] else 0):
        runs = res["runs"]
        cells = []
        for field in ("t_within_1", "t_within_0_1"):
            b, r, n, p = (runs[key][field] if key in runs else None for key in ("bsnn@K8", "if-rate@K8",
                                                                                "bsnn-nosn@K8", "phase@K8"))
            cells += [_t(b), _t(r), f"{b / r:.2f}" if b and r else "-", _t(n), _t(p)]
        depth = next(iter(runs.values()))["deepest_stage"] if runs else "-"
        lines.append(f"| {res['model']} | {depth} | " + " | ".join(cells) + " |")
    lines += [
        "",
        (
            "Energy **estimate** (an estimate, not a measurement: 0.9 pJ per SOP, 4.6 pJ per MAC, 45 nm, Horowitz "
            "2014; the SNN's analog input layer is counted as MACs), per image, each mode (K = 8) at the first T "
            f"from which it stays within 1 point of the ANN, on the first {meta.get('energy_images', '')} test images:"
        ),
        "",
        (
            "| model | ANN MACs | ANN uJ | bsnn T | bsnn SOPs | bsnn uJ | bsnn / ANN | if-rate T | if-rate SOPs | "
            "if-rate uJ | if-rate / ANN |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        if "energy" not in res:
            continue
        e = res["energy"]
        ann = e["ann_energy_uJ_estimate"]
        lines.append(
            f"| {res['model']} | {res['ann_macs']:,} | {ann:.1f} | "
            + " | ".join(
                f"{e[m]['timesteps']} | {e[m]['sops_per_image']:,.0f} | {e[m]['energy_uJ_estimate']:.1f} | "
                f"{e[m]['energy_uJ_estimate'] / ann:.2f}"
                for m in ("bsnn", "if-rate")
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "fmnist_test.npz"))
    parser.add_argument("--calib", default=str(ROOT / "data" / "fmnist_calib.npz"))
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--timesteps", type=int, default=256, help="T_max of the baseline modes (at least bsnn's)")
    parser.add_argument("--bsnn-periods", type=int, default=12, help="bsnn runs to T = (L + this) K")
    parser.add_argument("--sweep-periods", type=int, default=6, help="bsnn at K != 8 runs to T = (L + this) K")
    parser.add_argument("--images", nargs="*", default=[], metavar="MODE=N",
                        help="run MODE (or one run, e.g. bsnn@K4) on the first N test images only (e.g. phase=2000)")
    parser.add_argument("--percentile", type=float, default=99.9)
    parser.add_argument("--initial-potential", choices=["half", "zero"], default="zero",
                        help="of every population (zero: truncation, what the committed cache was measured with)")
    parser.add_argument("--light-cone", action="store_true",
                        help="energy runs on the light-cone schedule (default: every period, as the cache was)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--energy-images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1, help="parts in parallel, each on cores / workers threads")
    parser.add_argument("--scheduler", default=None, help="measure the parts on this Dask cluster (its workers' cores)")
    parser.add_argument("--chunk", type=int, default=2000,
                        help="a run is measured (and cached) in parts of this many images, so it resumes where it stopped")
    parser.add_argument("--only", nargs="*", default=None, help="run only these keys, e.g. bsnn@K8 if-rate@K8")
    parser.add_argument("--cache", default=str(ROOT / "benchmarks" / "results" / "headline"),
                        help="finished runs are kept here and reused when their settings match")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    try:
        args.images = {mode: int(n) for mode, n in (item.split("=") for item in args.images)}
    except ValueError:
        parser.error(f"--images takes MODE=N items, got {args.images}")
    unknown = {key for key in args.images if key.split("@K")[0] not in MODES}
    if unknown:
        parser.error(f"--images: unknown mode {min(unknown)} (use {', '.join(MODES)})")
    names = args.models or list(MODELS)
    jobs = [j for j in jobs_in_order(names) if args.only is None or f"{j[1]}@K{j[2]}" in args.only]
    pending = [p for job in jobs for p in pending_parts(job, args)]
    workers = max(1, min(args.workers, len(pending)))
    args.threads = max(1, (os.cpu_count() or 1) // workers)
    if pending and (workers > 1 or args.scheduler):  # the parts two (or more) at a time, on Dask; merged below
        from distributed import as_completed

        from runtime.distributed import Cluster

        with Cluster(workers=None if args.scheduler else workers, scheduler=args.scheduler) as cluster:
            if args.scheduler:
                args.threads = None  # each worker's own threads
            futures = [cluster.client.submit(_worker, p, args, dict(MODELS), pure=False) for p in pending]
            for future in as_completed(futures):
                future.result()  # a failed part stops the run with its error
    done: dict[str, dict] = {n: {} for n in names}
    for job in jobs:
        done[job[0]][f"{job[1]}@K{job[2]}"] = run_job(job, args)
    x, y, _ = _inputs(args)
    args.threads = os.cpu_count() or 1  # the energy runs below, one at a time
    results = [summarise(n, done[n], x, y, args) for n in names]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/headline.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
        "images": len(x),
        "percentile": args.percentile,
        "energy_images": min(len(x), args.energy_images),
    }
    _write_json(out / "headline.json", {"meta": meta, "results": results})
    meta["plots"] = plot(results, out)
    insert_section(out / "benchmarks.md", markdown(results, meta), "headline")
    print(markdown(results, meta))


def insert_section(doc: Path, text: str, tag: str) -> None:
    """Put ``text`` between the lines ``<!-- tag:start -->`` and ``<!-- tag:end -->`` of ``doc``
    (appended with them if it has none), through a temporary file."""
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    old = doc.read_text() if doc.exists() else ""
    if start in old and end in old:
        new = old[: old.index(start) + len(start)] + "\n" + text + old[old.index(end) :]
    else:
        new = old + f"\n{start}\n{text}{end}\n"
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(doc)


def _commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()


def _onnx_file(entry: dict) -> str:
    """The legacy-exporter ONNX file of a data/models.json entry."""
    return entry["exports"]["legacy"]["file"]


if __name__ == "__main__":
    main()
