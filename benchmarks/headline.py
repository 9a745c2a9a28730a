"""The headline benchmark: accuracy, time steps and work of every mode on every reference model.

For each reference model in data/models.json, on the test set (``--data``; the
full Fashion-MNIST test set in docs/benchmarks.md) it measures:

- the ANN accuracy (bsnn_graph.evaluate);
- **the K sweep**: bsnn at K = 3..8 under every calibration (``percentile``,
  ``search``: lambda by search, passes.lambda_search) and initial potential
  (``half``: rounding, ``zero``: truncation), accuracy at every step up to
  (L + ``--sweep-periods``) K (K = 8: (L + ``--bsnn-periods``) 8): the
  first full output (L + 1) K, and the smallest K whose first full output is
  within 1 point of the ANN;
- **the rate baselines** ``if-rate`` and ``phase`` (K = 8) under the same four
  settings on the first ``--select-images`` test images, and the stronger
  setting (the higher mean accuracy over T) on every image, to
  T_max = max(``--timesteps``, 2 (L + 1) 8, bsnn's T_max); ``bsnn-nosn`` with
  bsnn's K = 8 setting (the ablation of SN);
- the first T from which each run stays within 1 point (and 0.1 point) of the
  ANN up to its T_max;
- **cost at matched accuracy**: each mode at its own first T within 1 point
  (bsnn at K = 8 and at its smallest K within 1 point): SOPs per image, the
  energy **estimate** (0.9 pJ per SOP, 4.6 pJ per ANN MAC, Horowitz 2014,
  45 nm; an estimate, not a measurement) and runtime ms per image at batch
  ``--batch-size`` (``--threads`` threads) and at batch 1 (one thread), on the
  first ``--cost-images`` / ``--latency-images`` images, one mode after the
  other in this process (ratios are what to read: the machine is shared);
  every cost is that of the light-cone schedule (runtime.simulate's default);
- accuracy against SOPs per image: the rate modes' SOPs from their runs (SOPs
  of each period's spikes; the light cone prunes nothing there), bsnn's from
  light-cone runs ending at each of its outputs (L + 1 + j) K, j = 0..5.

It writes docs/headline.json, per model docs/acc_vs_T_<model>.png and
docs/acc_vs_sops_<model>.png, and its tables into docs/benchmarks.md between the
lines ``<!-- headline:start -->`` and ``<!-- headline:end -->``.

Usage (as reported in docs/benchmarks.md)::

    python benchmarks/headline.py --data /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz --workers 2

``--models``, ``--modes``, ``--settings`` and ``--ks`` restrict what runs; ``--limit N`` uses the first N test
images. Each run is measured in parts of ``--chunk`` images, cached in
benchmarks/results/headline/<model>/<key>.parts/ and reused when their settings match, so an interrupted run
resumes from its last finished part and a run on more images reuses the parts it covers (the selection runs are the
first parts of the full run). Converted models are cached in <model>/models/. ``--workers 2`` measures two parts
at a time on a local Dask cluster (runtime.distributed), ``--scheduler ADDRESS`` on an existing one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import passes
import runtime
from bsnn_graph import evaluate, load_onnx, save_onnx
from bsnn_graph.data import load_dataset
from bsnn_graph.executor import macs
from runtime.evaluate import evaluate_snn
from runtime.schedule import INITIAL_POTENTIALS, MODES, first_output_step

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("if-rate", "phase")
CALIBRATIONS = ("percentile", "search")
POTENTIALS = INITIAL_POTENTIALS  # "half" (rounding), "zero" (truncation)
SETTINGS = tuple(f"{c}.{p}" for c in CALIBRATIONS for p in POTENTIALS)
K_SWEEP = (3, 4, 5, 6, 7, 8)
MODELS = json.loads((ROOT / "data" / "models.json").read_text())


@dataclass(frozen=True)
class Run:
    """One measured run: a conversion (mode, K, calibration, initial potential) of a model on the first ``images``
    test images (None: all)."""

    model: str
    mode: str
    k: int
    setting: str = "percentile.half"
    images: int | None = None

    @property
    def key(self) -> str:
        return f"{self.mode}@K{self.k}.{self.setting}"

    @property
    def name(self) -> str:
        return self.key if self.images is None else f"{self.key}.n{self.images}"

    @property
    def calibrate(self) -> str:
        return self.setting.split(".")[0]

    @property
    def potential(self) -> str:
        return self.setting.split(".")[1]


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


#: accuracies are percentages of whole images, rounded to 3 decimals: "within 1 point" includes a difference of
#: exactly 1.00 point (100 of 10,000 images), which float subtraction may put an ulp either side of the bound
_TIE = 1e-6


def first_within(acc: np.ndarray, target: float, points: float, readouts: np.ndarray | None = None) -> int | None:
    """First T (1-based) from which accuracy stays within ``points`` of ``target`` (inclusive) up to T_max.

    ``readouts``: the steps (1-based) at which the output is read, ascending (default every step); bsnn's are
    the ends of its periods from the first full output on, (L + 1 + j) K, and the last step.
    """
    acc = np.asarray(acc)
    steps = np.arange(1, len(acc) + 1) if readouts is None else np.asarray(readouts)
    outside = np.nonzero(acc[steps - 1] < target - points - _TIE)[0]
    if len(outside) == 0:
        return int(steps[0])
    if outside[-1] == len(steps) - 1:
        return None
    return int(steps[outside[-1] + 1])


def readouts(entry: dict) -> np.ndarray | None:
    """The steps at which a run's output is read: bsnn's period ends from its first full output on, the others'
    every step (None)."""
    if not entry["mode"].startswith("bsnn"):
        return None
    t_max = entry["timesteps"]
    ends = list(range(entry["t_first_output"], t_max + 1, entry["phases"]))
    return np.array(ends if ends and ends[-1] == t_max else [*ends, t_max])


def deepest_stage(graph) -> int:
    from bsnn_graph import ops as O

    return max(
        (graph.nodes[n]["op"].stage for n in graph.nodes if isinstance(graph.nodes[n]["op"], O.Population)),
        default=0,
    )


def timesteps(run: Run, depth: int, args) -> int:
    """T_max of a run: bsnn to (L + periods) K; the others to max(--timesteps, 2 (L + 1) 8, bsnn's T_max at K = 8)."""
    if run.mode == "bsnn":
        return (depth + (args.bsnn_periods if run.k == 8 else args.sweep_periods)) * run.k
    return max(args.timesteps, 2 * (depth + 1) * 8, (depth + args.bsnn_periods) * 8)


# --------------------------------------------------------------------------- caches


def _write_json(path: Path, data: dict) -> None:
    """Write through a temporary name, so an interrupted run never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _cached(path: Path, settings: dict) -> dict | None:
    if not path.exists():
        return None
    entry = json.loads(path.read_text())
    return entry if entry.get("settings") == settings else None


def _folder(args, model: str) -> Path:
    return Path(args.cache) / model


_DATA: dict = {}


def _inputs(args):
    """The test and calibration sets, loaded once per process."""
    if not _DATA:
        _DATA["x"], _DATA["y"] = load_dataset(args.data, limit=args.limit)
        _DATA["calib"], _ = load_dataset(args.calib)
    return _DATA["x"], _DATA["y"], _DATA["calib"]


def _conversion_settings(args, run: Run) -> dict:
    return {"onnx": _onnx_file(MODELS[run.model]), "calib": Path(args.calib).name, "percentile": args.percentile,
            "calibrate": run.calibrate, "initial_potential": run.potential, "mode": run.mode, "phases": run.k}


def _model_path(args, run: Run) -> Path:
    """Where ``run``'s converted model is cached (<model>/models/<key>.onnx; its record beside it, .json)."""
    return _folder(args, run.model) / "models" / f"{run.key}.onnx"


def converted(args, run: Run):
    """(spiking graph, L, calibration seconds) of ``run``'s conversion, cached as <model>/models/<key>.onnx."""
    path = _model_path(args, run)
    info_path = path.with_suffix(".json")
    settings = _conversion_settings(args, run)
    info = _cached(info_path, settings)
    if info is not None and path.exists():
        return load_onnx(path), info["deepest_stage"], info["calibration_seconds"]
    _, _, calib = _inputs(args)
    ann = load_onnx(ROOT / "data" / _onnx_file(MODELS[run.model]))
    started = time.perf_counter()
    snn = passes.convert(ann, calib, mode=run.mode, phases=run.k, percentile=args.percentile,
                         initial_potential=run.potential, calibrate=run.calibrate)
    seconds = time.perf_counter() - started
    depth = deepest_stage(snn)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.onnx")
    save_onnx(snn, tmp)
    tmp.replace(path)
    if info is not None and info["deepest_stage"] == depth:
        # Only the .onnx was missing (it is not in git): the record keeps the calibration time it measured.
        return snn, depth, info["calibration_seconds"]
    _write_json(info_path, {"settings": settings, "deepest_stage": depth, "calibration_seconds": seconds,
                            "commit": _commit()})
    return snn, depth, seconds


def conversion_info(args, run: Run) -> tuple[int, float]:
    """(L, calibration seconds) of ``run``'s conversion: from its record when that matches ``run``'s settings (the
    .onnx, not in git, is not needed: a report from the cache converts nothing), else by converting."""
    info = _cached(_model_path(args, run).with_suffix(".json"), _conversion_settings(args, run))
    if info is not None:
        return info["deepest_stage"], info["calibration_seconds"]
    _, depth, seconds = converted(args, run)
    return depth, seconds


def run_settings(args, run: Run, depth: int) -> dict:
    """What a cached result of ``run`` must have been measured with to be reused."""
    x, _, _ = _inputs(args)
    images = len(x) if run.images is None else min(run.images, len(x))
    return {**_conversion_settings(args, run), "data": Path(args.data).name, "timesteps": timesteps(run, depth, args),
            "images": images}


def parts(images: int, chunk: int) -> list[tuple[int, int]]:
    """The image ranges a run of ``images`` images is measured in: chunks of ``chunk``, from 0."""
    return [(first, min(first + chunk, images)) for first in range(0, images, chunk)]


def _part_path(args, run: Run, first: int, last: int) -> Path:
    return _folder(args, run.model) / f"{run.key}.parts" / f"{first}-{last}.json"


def _part_settings(settings: dict, first: int, last: int) -> dict:
    """A part's settings: its run's, with the image range in place of the image count (a part is reused by any
    run that covers its range)."""
    return {**{k: v for k, v in settings.items() if k != "images"}, "first": first, "last": last}


# --------------------------------------------------------------------------- measuring


def part_job(job: tuple[Run, int, int], args) -> dict:
    """Test images [first, last) of one run: correct predictions per step and SOPs (in all and per period), as
    runtime.evaluate.evaluate_snn gives them, cached as <model>/<key>.parts/<first>-<last>.json."""
    run, first, last = job
    x, y, _ = _inputs(args)
    depth, _ = conversion_info(args, run)
    settings = _part_settings(run_settings(args, run, depth), first, last)
    path = _part_path(args, run, first, last)
    cached = _cached(path, settings)
    if cached is not None:
        return cached
    snn, _, _ = converted(args, run)
    evaluation = evaluate_snn(snn, x[first:last], y[first:last], settings["timesteps"], batch_size=args.batch_size,
                              threads=args.threads)
    correct, seconds = evaluation.correct_per_step, evaluation.seconds
    entry = {
        "settings": settings,
        "deepest_stage": depth,
        "correct": [int(c) for c in correct],
        "sops_sum": float(evaluation.sops_total),
        "sops_per_period_sum": [float(s) for s in evaluation.sops_per_period_total],
        "seconds": seconds,
        "threads": args.threads,
        "commit": _commit(),
    }
    _write_json(path, entry)
    print(f"  {run.model} {run.key:30s} L={depth:2d} images {first:5d}-{last:5d} T_max={settings['timesteps']:4d} "
          f"final {100.0 * correct[-1] / (last - first):6.2f}%  {seconds:7.1f} s", flush=True)
    return entry


def pending_parts(run: Run, args) -> list[tuple[Run, int, int]]:
    """The parts of ``run`` still to measure (none if the merged run is cached)."""
    depth, _ = conversion_info(args, run)
    settings = run_settings(args, run, depth)
    if _cached(_folder(args, run.model) / f"{run.name}.json", settings) is not None:
        return []
    return [(run, a, b) for a, b in parts(settings["images"], args.chunk)
            if _cached(_part_path(args, run, a, b), _part_settings(settings, a, b)) is None]


def merged(run: Run, args) -> dict:
    """``run`` merged from its parts (measuring any that are missing), cached as <model>/<name>.json."""
    for part in pending_parts(run, args):
        part_job(part, args)
    depth, calibration_seconds = conversion_info(args, run)
    settings = run_settings(args, run, depth)
    path = _folder(args, run.model) / f"{run.name}.json"
    cached = _cached(path, settings)
    if cached is not None:
        return cached
    pieces = [json.loads(_part_path(args, run, a, b).read_text()) for a, b in parts(settings["images"], args.chunk)]
    n = settings["images"]
    acc = 100.0 * np.sum([p["correct"] for p in pieces], axis=0) / n
    entry = {
        "settings": settings,
        "mode": run.mode,
        "phases": run.k,
        "setting": run.setting,
        "deepest_stage": depth,
        "t_first_output": first_output_step(depth, run.k) if run.mode.startswith("bsnn") else 1,
        "timesteps": settings["timesteps"],
        "images": n,
        "accuracy": [round(float(a), 3) for a in acc],
        "final_accuracy": float(acc[-1]),
        "sops_per_image_at_t_max": sum(p["sops_sum"] for p in pieces) / n,
        "sops_per_image_per_period": list(np.sum([p["sops_per_period_sum"] for p in pieces], axis=0) / n),
        "calibration_seconds": calibration_seconds,
        "seconds": sum(p["seconds"] for p in pieces),
        "parts": [{"first": p["settings"]["first"], "last": p["settings"]["last"], "seconds": p["seconds"],
                   "threads": p["threads"], "commit": p["commit"]} for p in pieces],
    }
    _write_json(path, entry)
    print(f"  {run.model} {run.name:36s} L={depth:2d} N={n:5d} T_max={settings['timesteps']:4d} "
          f"final {acc[-1]:6.2f}%  {entry['seconds']:7.1f} s in {len(pieces)} parts", flush=True)
    return entry


def _worker(job, args, models: dict) -> dict:
    """``part_job`` on a Dask worker; the model table travels with the job (the worker imports this module afresh,
    so a table replaced in the client, as the tests do, would not be seen)."""
    MODELS.clear()
    MODELS.update(models)
    return part_job(job, args)


#: runs that --cached-only left out of this report (not fully measured yet)
LEFT_OUT: list[str] = []


def measure(runs: list[Run], args) -> dict[Run, dict]:
    """Every run merged, its missing parts measured first (on Dask with ``--workers`` > 1 or ``--scheduler``).

    With ``--cached-only`` a run with a part still to measure is left out (and listed in ``LEFT_OUT``, which the
    report prints) instead of measured."""
    pending = [p for run in runs for p in pending_parts(run, args)]
    if args.cached_only:
        incomplete = sorted({p[0] for p in pending}, key=lambda r: (r.model, r.name))
        LEFT_OUT.extend(f"{r.model} {r.name} ({sum(p[0] == r for p in pending)} parts to measure)" for r in incomplete)
        runs, pending = [r for r in runs if r not in incomplete], []
    workers = max(1, min(args.workers, len(pending)))
    threads = args.threads
    if pending and (workers > 1 or args.scheduler):
        from distributed import as_completed

        from runtime.distributed import Cluster

        args.threads = None if args.scheduler else max(1, (os.cpu_count() or 1) // workers)
        loaded = dict(_DATA)
        _DATA.clear()  # run as a script, this module travels by value: the workers load the data themselves
        with Cluster(workers=None if args.scheduler else workers, scheduler=args.scheduler) as cluster:
            futures = [cluster.client.submit(_worker, p, args, dict(MODELS), pure=False) for p in pending]
            for future in as_completed(futures):
                future.result()  # a failed part stops the run with its error
        _DATA.update(loaded)
        args.threads = threads
    return {run: merged(run, args) for run in runs}


# --------------------------------------------------------------------------- what runs


def _rank(entry: dict, ann: float) -> tuple:
    """Order of the settings of a mode: the mean accuracy over T = 1..T_max (the area under the accuracy curve:
    on 1,000 images far steadier than the first T within 1 point, which a 0.1-point wobble moves by tens of
    steps), then the first T within 1 point."""
    within = first_within(np.array(entry["accuracy"]), ann, 1.0, readouts(entry))
    return (-round(float(np.mean(entry["accuracy"])), 6), within is None, within or 0)


def sweep_runs(model: str, args) -> list[Run]:
    return [Run(model, "bsnn", k, s) for s in args.settings for k in args.ks]


def selection_runs(model: str, args) -> list[Run]:
    images = args.select_images if args.select_images and args.select_images < len(_inputs(args)[0]) else None
    return [Run(model, mode, 8, s, images) for mode in BASELINES if mode in args.modes for s in args.settings]


def best_setting(entries: dict[Run, dict], mode: str, k: int, ann_of) -> str | None:
    """The stronger setting of ``mode`` at K = ``k`` among the measured ones (None if none was)."""
    candidates = [(run, e) for run, e in entries.items() if run.mode == mode and run.k == k]
    if not candidates:
        return None
    return min(candidates, key=lambda c: _rank(c[1], ann_of(c[1]["images"])))[0].setting


def plan_and_measure(model: str, args, ann_of) -> dict[Run, dict]:
    """The K sweep and the selection runs, then the stronger settings on every image and bsnn-nosn."""
    first = sweep_runs(model, args) if "bsnn" in args.modes else []
    first += selection_runs(model, args)
    done = measure(first, args)
    second = []
    for mode in BASELINES:
        setting = best_setting(done, mode, 8, ann_of)
        if setting is not None:
            second.append(Run(model, mode, 8, setting))
    if "bsnn-nosn" in args.modes:
        setting = best_setting(done, "bsnn", 8, ann_of) or "percentile.half"
        second.append(Run(model, "bsnn-nosn", 8, setting))
    done.update(measure([r for r in second if r not in done], args))
    return done


# --------------------------------------------------------------------------- cost at matched accuracy


def cost(args, run: Run, t: int) -> dict:
    """SOPs per image, energy estimate and ms per image (batch and batch 1) of ``run``'s conversion at T = ``t``
    (light cone), on the first ``--cost-images`` (``--latency-images``) test images; cached with its settings.

    Each figure is runtime.evaluate.evaluate_snn's: its seconds are those of the simulation call alone (batch 1:
    summed over the images)."""
    x, y, _ = _inputs(args)
    n, n1 = min(len(x), args.cost_images), min(len(x), args.latency_images)
    settings = {**_conversion_settings(args, run), "data": Path(args.data).name, "timesteps": t, "images": n,
                "latency_images": n1, "batch_size": args.batch_size, "threads": args.threads}
    path = _folder(args, run.model) / "cost" / f"{run.key}.T{t}.json"
    cached = _cached(path, settings)
    if cached is not None:
        return cached
    snn, _, _ = converted(args, run)
    lowered = runtime.lower(snn)
    runtime.simulate(lowered, x[:2], t, batch_size=2, threads=1)  # compiled and warm
    batch = evaluate_snn(lowered, x[:n], y[:n], t, batch_size=args.batch_size, threads=args.threads)
    seconds1 = sum(evaluate_snn(lowered, x[i : i + 1], y[i : i + 1], t, batch_size=1, threads=1).seconds
                   for i in range(n1))
    entry = {
        "settings": settings,
        "timesteps": t,
        "accuracy": float(100.0 * batch.accuracy),
        "sops_per_image": batch.sops_per_sample,
        "input_layer_macs": batch.input_macs,
        "energy_uJ_estimate": batch.energy["snn_energy_pj_per_sample"] * 1e-6,
        "ms_per_image_batch": 1000.0 * batch.seconds / n,
        "ms_per_image_batch1": 1000.0 * seconds1 / n1,
        "schedule": batch.schedule,
        "load_average": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": _commit(),
    }
    _write_json(path, entry)
    return entry


def matched_rows(model: str, runs: dict[str, dict]) -> list[tuple[str, str, int]]:
    """(label, key of the run, T) of every mode at its own first T within 1 point of the ANN."""
    rows = []
    bsnn8 = _best_of(runs, "bsnn", 8)
    if bsnn8:
        rows.append(("bsnn K=8", bsnn8, runs[bsnn8]["t_within_1"]))
    small = _smallest_k(runs)
    if small and small != bsnn8:
        rows.append((f"bsnn K={runs[small]['phases']}", small, runs[small]["t_within_1"]))
    for mode in ("bsnn-nosn", *BASELINES):
        key = next((k for k, r in runs.items() if r["mode"] == mode and r["images_all"]), None)
        if key:
            rows.append((mode, key, runs[key]["t_within_1"]))
    return [r for r in rows if r[2] is not None]


def _best_of(runs: dict[str, dict], mode: str, k: int) -> str | None:
    keys = [key for key, r in runs.items() if r["mode"] == mode and r["phases"] == k and r["images_all"]]
    return min(keys, key=lambda key: _rank(runs[key], runs[key]["ann_accuracy_same_images"]), default=None)


def _smallest_k(runs: dict[str, dict]) -> str | None:
    """The bsnn run of the smallest K whose first full output is within 1 point (ties: the more accurate)."""
    good = [key for key, r in runs.items() if r["mode"] == "bsnn" and r["images_all"] and r["first_output_within_1"]]
    return min(good, key=lambda key: (runs[key]["phases"], -runs[key]["first_output_accuracy"]), default=None)


def sops_curve(args, model: str, runs: dict[str, dict]) -> dict[str, dict]:
    """Points (SOPs per image, accuracy) per mode: bsnn from light-cone runs at each output, the rate modes from
    the SOPs of each period of their runs."""
    curves = {}
    for key in dict.fromkeys(k for k in (_best_of(runs, "bsnn", 8), _smallest_k(runs)) if k):
        run, r = _run_of(model, runs[key]), runs[key]
        k, points = r["phases"], []
        for j in range(min(6, (r["timesteps"] // k) - r["deepest_stage"])):
            t = (r["deepest_stage"] + 1 + j) * k
            c = cost(args, run, t)
            points.append((c["sops_per_image"], r["accuracy"][t - 1], t))
        curves[f"bsnn K={k} ({r['setting']}, light cone at each T)"] = points
    for mode in BASELINES:
        key = next((k for k, r in runs.items() if r["mode"] == mode and r["images_all"]), None)
        if key:
            r = runs[key]
            cumulative = np.cumsum(r["sops_per_image_per_period"])
            points = [(float(cumulative[p]), r["accuracy"][min(8 * (p + 1), r["timesteps"]) - 1],
                       min(8 * (p + 1), r["timesteps"])) for p in range(len(cumulative))]
            curves[f"{mode} ({r['setting']})"] = points
    return curves


def _run_of(model: str, entry: dict) -> Run:
    return Run(model, entry["mode"], entry["phases"], entry["setting"])


# --------------------------------------------------------------------------- summary


def summarise(model: str, done: dict[Run, dict], args) -> dict:
    """ANN accuracy, per run the first T within 1 / 0.1 point, the matched-accuracy costs: one model's entry of
    docs/headline.json."""
    x, y, _ = _inputs(args)
    ann = load_onnx(ROOT / "data" / _onnx_file(MODELS[model]))
    ann_of = _ann_accuracies(ann, x, y)
    out = {"model": model, "ann_accuracy": ann_of(len(x)), "ann_macs": int(sum(macs(ann, n) for n in ann.nodes)),
           "runs": {}}
    for run, entry in done.items():
        acc = np.array(entry["accuracy"])
        ref = ann_of(entry["images"])
        first = entry["t_first_output"]
        e = {k: v for k, v in entry.items() if k != "settings"}
        e.update(ann_accuracy_same_images=ref, t_within_1=first_within(acc, ref, 1.0, readouts(entry)),
                 t_within_0_1=first_within(acc, ref, 0.1, readouts(entry)), images_all=entry["images"] == len(x),
                 first_output_accuracy=float(acc[first - 1]) if first <= len(acc) else None)
        e["first_output_within_1"] = e["first_output_accuracy"] is not None and e["first_output_accuracy"] >= ref - 1 - _TIE
        out["runs"][run.name] = e
    out["matched"] = []
    for label, key, t in matched_rows(model, out["runs"]):
        c = cost(args, _run_of(model, out["runs"][key]), t)
        out["matched"].append({"label": label, "key": key, **{k: v for k, v in c.items() if k != "settings"}})
    out["ann_energy_uJ_estimate"] = out["ann_macs"] * runtime.E_MAC_PJ * 1e-6
    out["sops_curves"] = sops_curve(args, model, out["runs"])
    return out


def _ann_accuracies(ann, x, y):
    cache: dict[int, float] = {}

    def of(images: int) -> float:
        if images not in cache:
            cache[images] = ann_accuracy(ann, x[:images], y[:images])
        return cache[images]

    return of


# --------------------------------------------------------------------------- report


def plot(results: list[dict], folder: Path) -> dict[str, list[str]]:
    """Per model: accuracy against T, and accuracy against SOPs per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, list[str]] = {}
    for res in results:
        ann, model = res["ann_accuracy"], res["model"]
        shown = [r for r in res["runs"].values() if r["images_all"] and (r["mode"] != "bsnn" or r["phases"] == 8
                                                                          or r["setting"] == _sweep_setting(res))]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
        for ax, low, high in ((axes[0], max(0.0, ann - 40), min(100.0, ann + 3)), (axes[1], ann - 2.5, ann + 1)):
            for run in shown:
                acc = np.array(run["accuracy"])
                style = "-" if run["phases"] == 8 else ":"
                ax.plot(np.arange(1, len(acc) + 1), acc, style, linewidth=1.1,
                        label=f"{run['mode']} K={run['phases']} {run['setting']}")
            ax.axhline(ann, color="black", linewidth=0.8, label="ANN")
            ax.axhline(ann - 1, color="gray", linewidth=0.6, linestyle="--", label="ANN - 1 pt")
            ax.set_ylim(low, high)
            ax.set_xlim(0, max((r["timesteps"] for r in shown), default=1))
            ax.set_xlabel("time steps T")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy (%)")
        axes[0].set_title(f"{model}: accuracy versus T")
        axes[1].set_title("near the ANN")
        axes[0].legend(fontsize=6, ncol=2, loc="lower right")
        fig.tight_layout()
        names = [f"acc_vs_T_{model}.png", f"acc_vs_sops_{model}.png"]
        fig.savefig(folder / names[0], dpi=100)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for label, points in res["sops_curves"].items():
            if points:
                sops, acc, _ = zip(*points)
                ax.plot(sops, acc, "o-" if label.startswith("bsnn") else "-", markersize=3, linewidth=1.1, label=label)
        ax.axhline(ann, color="black", linewidth=0.8, label="ANN")
        ax.axhline(ann - 1, color="gray", linewidth=0.6, linestyle="--", label="ANN - 1 pt")
        ax.set_xscale("log")
        ax.set_ylim(max(0.0, ann - 10), min(100.0, ann + 1.5))
        ax.set_xlabel("SOPs per image")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model}: accuracy versus work")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(folder / names[1], dpi=100)
        plt.close(fig)
        files[model] = names
    return files


def _sweep_setting(res: dict) -> str:
    """The setting whose K sweep the accuracy plot shows: that of bsnn's best K = 8 run."""
    key = _best_of(res["runs"], "bsnn", 8)
    return res["runs"][key]["setting"] if key else "percentile.half"


def _t(value) -> str:
    return "-" if value is None else str(value)


def _f(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _sweep_table(res: dict, settings: list[str]) -> list[str]:
    runs = [r for r in res["runs"].values() if r["mode"] == "bsnn" and r["images_all"]]
    ks = sorted({r["phases"] for r in runs})
    lines = ["| K | " + " | ".join(f"{s} first output" for s in settings) + " |", "|---" * (len(settings) + 1) + "|"]
    for k in ks:
        cells = []
        for s in settings:
            r = next((r for r in runs if r["phases"] == k and r["setting"] == s), None)
            cells.append("-" if r is None or r["first_output_accuracy"] is None else
                         f"T={r['t_first_output']}: {r['first_output_accuracy']:.2f} "
                         f"({r['first_output_accuracy'] - r['ann_accuracy_same_images']:+.2f})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    smallest = []
    for s in settings:
        good = [r["phases"] for r in runs if r["setting"] == s and r["first_output_within_1"]]
        smallest.append(str(min(good)) if good else "-")
    lines.append("| smallest K within 1 pt | " + " | ".join(smallest) + " |")
    return lines


def _runs_table(res: dict) -> list[str]:
    lines = [("| run | images | ANN % | first output | T within 1 pt | T within 0.1 pt | T_max: acc. | "
             "SOPs/image at T_max | calibration s |"), "|---|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(res["runs"].items(), key=lambda kv: (MODES.index(kv[1]["mode"]), kv[1]["phases"], kv[0])):
        first = (f"T={r['t_first_output']}: {r['first_output_accuracy']:.2f}"
                 if r["mode"].startswith("bsnn") and r["first_output_accuracy"] is not None else "-")
        lines.append(f"| {name} | {r['images']} | {r['ann_accuracy_same_images']:.2f} | {first} | "
                     f"{_t(r['t_within_1'])} | {_t(r['t_within_0_1'])} | {r['timesteps']}: {r['final_accuracy']:.2f} | "
                     f"{r['sops_per_image_at_t_max'] / 1e6:.1f} M | {r['calibration_seconds']:.1f} |")
    return lines


def _strongest_rate(res: dict) -> dict | None:
    """The rate baseline that needs the fewest SOPs at its matched accuracy."""
    rates = [m for m in res["matched"] if m["label"] in BASELINES]
    return min(rates, key=lambda m: m["sops_per_image"], default=None)


def _matched_table(res: dict) -> list[str]:
    strongest = _strongest_rate(res)
    lines = [("| mode | setting | T | accuracy (cost images) | SOPs/image | energy uJ (estimate) | / ANN | ms/image batch | "
             "ms/image batch 1 | SOPs / strongest rate | ms batch / strongest | ms batch 1 / strongest |"),
             "|---" * 12 + "|"]
    for m in res["matched"]:
        ratios = ["-"] * 3
        if strongest:
            ratios = [f"{m[k] / strongest[k]:.3f}" for k in ("sops_per_image", "ms_per_image_batch",
                                                              "ms_per_image_batch1")]
        setting = res["runs"][m["key"]]["setting"]
        lines.append(f"| {m['label']} | {setting} | {m['timesteps']} | {m['accuracy']:.2f} | {m['sops_per_image']:,.0f} | "
                     f"{m['energy_uJ_estimate']:.2f} | {m['energy_uJ_estimate'] / res['ann_energy_uJ_estimate']:.2f} | "
                     f"{m['ms_per_image_batch']:.2f} | {m['ms_per_image_batch1']:.2f} | " + " | ".join(ratios) + " |")
    return lines


def _selection_table(res: dict) -> list[str]:
    runs = [r for r in res["runs"].values() if r["mode"] in BASELINES and not r["images_all"]]
    if not runs:
        return []
    lines = [(f"Rate baselines, the settings on the first {runs[0]['images']} test images (the stronger one, the "
              "higher mean accuracy over T, is run on every image):"), "",
             "| mode | setting | ANN % | T within 1 pt | T within 0.1 pt | mean accuracy over T | T_max: acc. |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["mode"], r["setting"])):
        lines.append(f"| {r['mode']} | {r['setting']} | {r['ann_accuracy_same_images']:.2f} | {_t(r['t_within_1'])} | "
                     f"{_t(r['t_within_0_1'])} | {np.mean(r['accuracy']):.2f} | {r['timesteps']}: {r['final_accuracy']:.2f} |")
    return lines


def _summary_table(results: list[dict]) -> list[str]:
    lines = [("| model | L | ANN % | smallest K within 1 pt at first output | bsnn K=8 first output (vs ANN) | "
             "T within 1 pt: bsnn K=8 / if-rate / phase / bsnn-nosn | T within 0.1 pt: bsnn K=8 / if-rate / phase | "
             "SOPs bsnn / strongest rate (matched) | ms batch; batch 1 bsnn / strongest rate |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        runs = res["runs"]
        b8, small = _best_of(runs, "bsnn", 8), _smallest_k(runs)
        depth = runs[b8]["deepest_stage"] if b8 else "-"
        pick = {m: next((k for k, r in runs.items() if r["mode"] == m and r["images_all"]), None)
                for m in ("bsnn-nosn", *BASELINES)}
        w1 = [runs[k]["t_within_1"] if k else None for k in (b8, pick["if-rate"], pick["phase"], pick["bsnn-nosn"])]
        w01 = [runs[k]["t_within_0_1"] if k else None for k in (b8, pick["if-rate"], pick["phase"])]
        strongest = _strongest_rate(res)
        bsnn = next((m for m in res["matched"] if m["label"] == "bsnn K=8"), None)
        bsnn_small = next((m for m in res["matched"] if m["key"] == small), bsnn)
        ratio = runtime_ratio = "-"
        if strongest and bsnn_small:
            ratio = f"{bsnn_small['sops_per_image'] / strongest['sops_per_image']:.3f} ({bsnn_small['label']} / {strongest['label']})"
            runtime_ratio = (f"{bsnn_small['ms_per_image_batch'] / strongest['ms_per_image_batch']:.3f}; "
                             f"{bsnn_small['ms_per_image_batch1'] / strongest['ms_per_image_batch1']:.3f}")
        first8 = (f"{runs[b8]['first_output_accuracy']:.2f} ({runs[b8]['first_output_accuracy'] - runs[b8]['ann_accuracy_same_images']:+.2f}, "
                  f"{runs[b8]['setting']})" if b8 else "-")
        small_text = f"{runs[small]['phases']} ({runs[small]['setting']})" if small else "-"
        lines.append(f"| {res['model']} | {depth} | {res['ann_accuracy']:.2f} | {small_text} | {first8} | "
                     + " / ".join(map(_t, w1)) + " | " + " / ".join(map(_t, w01)) + f" | {ratio} | {runtime_ratio} |")
    return lines


def markdown(results: list[dict], meta: dict) -> str:
    """The headline section of docs/benchmarks.md."""
    lines = [
        (f"Measured by `{meta['command']}` on {meta['machine']}, {meta['date']} (commit {meta['commit']}), test images: "
         f"{meta['images']} (fewer where a table says so), percentile {meta['percentile']}, calibration on "
         f"{meta['calibration_images']} training images. A setting is calibration.initial-potential: `percentile` "
         "(lambda = the percentile of the ANN activation) or `search` (lambda by search), `half` (rounding) or "
         "`zero` (truncation). \"T within 1 pt\" is the first T from which accuracy stays within 1 point of the ANN "
         "(on the same images) up to the run's T_max, read where the mode is read: every step for the rate modes, "
         "the end of every period from the first full output on for bsnn; \"-\" if it never does. L is the deepest population stage: "
         "bsnn gives its first full output at T = (L + 1) K. Energy figures are **estimates** (0.9 pJ per SOP, "
         "4.6 pJ per MAC, Horowitz 2014, 45 nm; the analog input layer counted as MACs) and, like the SOPs and ms "
         "at matched accuracy, are those of the light-cone schedule."),
        "",
        "### Summary",
        "",
        *_summary_table(results),
        "",
    ]
    if meta.get("left_out"):
        lines += ["Not measured yet, so not in this report (`--cached-only`; their cached parts are kept): "
                  + "; ".join(meta["left_out"]) + ".", ""]
    for res in results:
        plots = meta["plots"].get(res["model"], [])
        settings = [s for s in SETTINGS if any(r["setting"] == s and r["mode"] == "bsnn" for r in res["runs"].values())]
        lines += [(f"### {res['model']} (ANN {res['ann_accuracy']:.2f} %, {res['ann_macs'] / 1e6:.2f} M MACs, "
                  f"{res['ann_energy_uJ_estimate']:.2f} uJ estimate)"), ""]
        lines += [f"![{what}, {res['model']}]({p})" for what, p in zip(("accuracy versus T", "accuracy versus SOPs"),
                                                                        plots)] + [""]
        lines += ["bsnn, the K sweep: accuracy at the first full output (L + 1) K, and its difference to the ANN:", ""]
        lines += _sweep_table(res, settings) + [""]
        lines += ["Each mode at its own first T within 1 point of the ANN (light cone), side by side in one process:",
                  ""]
        lines += _matched_table(res) + [""]
        lines += _selection_table(res) + [""]
        lines += ["Every run:", ""] + _runs_table(res) + [""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "fmnist_test.npz"))
    parser.add_argument("--calib", default=str(ROOT / "data" / "fmnist_calib.npz"))
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--ks", nargs="*", type=int, default=list(K_SWEEP), help="bsnn's K sweep")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--timesteps", type=int, default=256, help="T_max of the other modes (at least 2 (L + 1) 8)")
    parser.add_argument("--bsnn-periods", type=int, default=12, help="bsnn at K = 8 runs to T = (L + this) K")
    parser.add_argument("--sweep-periods", type=int, default=2, help="bsnn at K != 8 runs to T = (L + this) K")
    parser.add_argument("--select-images", type=int, default=1000,
                        help="the rate baselines' settings are compared on this many images (0: all)")
    parser.add_argument("--percentile", type=float, default=99.9)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cost-images", type=int, default=1000)
    parser.add_argument("--latency-images", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="parts in parallel, each on cores / workers threads")
    parser.add_argument("--scheduler", default=None, help="measure the parts on this Dask cluster (its workers' cores)")
    parser.add_argument("--chunk", type=int, default=1000,
                        help="a run is measured (and cached) in parts of this many images, so it resumes where it stopped")
    parser.add_argument("--measure-only", action="store_true", help="measure the runs, write no report")
    parser.add_argument("--cached-only", action="store_true",
                        help="measure no run: report those whose parts are all cached and list the others (the costs at "
                             "matched accuracy are still measured)")
    parser.add_argument("--cache", default=str(ROOT / "benchmarks" / "results" / "headline"),
                        help="finished runs are kept here and reused when their settings match")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    names = args.models or list(MODELS)
    x, y, calib = _inputs(args)
    results = []
    for name in names:
        ann = load_onnx(ROOT / "data" / _onnx_file(MODELS[name]))
        done = plan_and_measure(name, args, _ann_accuracies(ann, x, y))
        if not args.measure_only:
            results.append(summarise(name, done, args))
    if args.measure_only:
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/headline.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
        "images": len(x),
        "calibration_images": len(calib),
        "percentile": args.percentile,
        "left_out": list(LEFT_OUT),
    }
    _write_json(out / "headline.json", {"meta": meta, "results": results})
    meta["plots"] = plot(results, out)
    text = markdown(results, meta)
    insert_section(out / "benchmarks.md", text, "headline")
    print(text)


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
