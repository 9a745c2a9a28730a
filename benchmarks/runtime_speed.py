"""The runtime against its peers at the first full output, side by side in one run (a measurement, not a test).

Usage::

    python benchmarks/runtime_speed.py                       # the four reference models and ResNet-50 224x224
    python benchmarks/runtime_speed.py --before 28282a1      # ... and the runtime of that commit, same run
    python benchmarks/runtime_speed.py --models vgg_max --quick

For each model (data/<name>.onnx, Fashion-MNIST, converted with
data/fmnist_calib.npz, percentile 99.9, K = 8; and ``resnet50``: the zoo
graph of the onnx wheel with seeded random weights, benchmarks/zoo_models.py,
calibrated on random 224x224 images) at its first full output
T = (L + 1) K it measures, each figure the best of ``--repeats``:

- bsnn (``runtime.simulate``, the light-cone schedule): ms per image at batch
  256 (``--images``; ResNet-50: ``--large-images`` at batch 4) and at batch
  1 (``--latency-images``), with 1 and 2 threads; SOPs and row scatters
  (``deliveries``) per image; the share of the full run's SOPs that the
  light cone keeps; the energy estimate against the ANN (an estimate: 0.9 pJ
  per SOP, 4.6 pJ per MAC; it depends on the schedule: light cone);
  accuracy at T against the ANN on the same images; peak resident memory of
  the process;
- the ANN in onnxruntime: ms per image at batch 1 (and at batch 256 when the
  graph's batch axis is not fixed), 1 and 2 intra-op threads;
- the dense clock-driven PyTorch simulation of the same spiking graph at the
  same T (benchmarks/dense_torch.py), which gives the same predictions:
  ``plain`` (every neuron every step, how SpikingJelly / snnTorch run a
  converted network) and ``scheduled`` (its strongest setting here: silent
  layers skipped, the light cone); ms per image at batch 256 (on
  ``min(64, --images)`` images) and batch 1, 2 threads, one run each (needs
  torch; skipped for ResNet-50, where one image takes minutes);
- with ``--before REV``: the bsnn figures of the runtime at commit REV (a
  temporary git worktree; it converts with its own passes), so before and
  after are timed on the same machine in the same run.

Every measurement runs in its own process (``--worker``), one after the
other. The JSON goes to ``--json-out`` (default
benchmarks/results/runtime_speed.json) and a table into docs/benchmarks.md
between ``<!-- runtime-speed:start -->`` and ``<!-- runtime-speed:end -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
REFERENCE = ("vgg_max", "vgg_avg", "resnet14", "resnet32")
LARGE = "resnet50"


# --------------------------------------------------------------------------- worker (runs inside one tree)


def _best(repeats: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def _data(spec: dict):
    import numpy as np

    if spec["model"] == LARGE:
        rng = np.random.default_rng(1)
        calib = rng.random((spec["calib_images"], 3, 224, 224), dtype=np.float32)
        x = rng.random((spec["images"], 3, 224, 224), dtype=np.float32)
        return calib, x, None
    calib = np.load(ROOT / "data" / "fmnist_calib.npz")["x"]
    test = np.load(ROOT / "data" / "fmnist_test.npz")
    scale = np.float32(1 / 255) if calib.dtype == np.uint8 else np.float32(1)
    calib = calib.astype(np.float32) * scale
    x = test["x"][: spec["images"]].astype(np.float32) * scale
    if calib.ndim == 3:
        calib, x = calib[:, None], x[:, None]
    return calib, x, test["y"][: spec["images"]]


def _ann_file(spec: dict, folder: Path) -> Path:
    if spec["model"] != LARGE:
        return ROOT / "data" / f"{spec['model']}.onnx"
    sys.path.insert(0, str(HERE))
    from zoo_models import random_weight_copy

    return random_weight_copy("resnet50", folder / "resnet50.onnx", seed=0)


def _onnxruntime(path: Path, x, spec: dict) -> dict:
    import numpy as np
    import onnxruntime as ort

    out = {}
    for threads in spec["threads"]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        fixed = isinstance(session.get_inputs()[0].shape[0], int)
        one = x[: spec["latency_images"]]
        session.run(None, {name: one[:1]})
        seconds, _ = _best(spec["repeats"], lambda s=session, n=name, o=one: [s.run(None, {n: o[i : i + 1]})
                                                                             for i in range(len(o))])  # fmt: skip
        out[f"batch1_ms_{threads}t"] = 1000 * seconds / len(one)
        if not fixed:
            seconds, _ = _best(spec["repeats"], lambda s=session, n=name: s.run(None, {n: x}))
            out[f"batch_ms_{threads}t"] = 1000 * seconds / len(x)
        if threads == spec["threads"][-1]:
            logits = session.run(None, {name: x})[0] if not fixed else np.concatenate(
                [session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])  # fmt: skip
            out["predictions"] = logits.reshape(len(x), -1).argmax(axis=1).tolist()
    return out


def worker(spec: dict) -> dict:
    """Convert one model with the tree on ``sys.path`` and time it; returns the measurements."""
    import inspect

    import numpy as np

    import bsnn_graph
    import passes
    import runtime

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ann_path = _ann_file(spec, folder)
        calib, x, labels = _data(spec)
        ann = bsnn_graph.load_onnx(ann_path)
        started = time.perf_counter()
        snn = passes.convert(ann, calib, mode="bsnn", phases=8, percentile=99.9, batch_size=4,
                             calibrate="percentile")
        convert_s = time.perf_counter() - started
        started = time.perf_counter()
        lowered = runtime.lower(snn)
        lower_s = time.perf_counter() - started
        stages = [snn.nodes[n]["op"].stage for n in lowered.spiking]
        timesteps = (max(stages) + 1) * 8
        out = {"model": spec["model"], "timesteps": timesteps, "largest_stage": max(stages), "images": len(x),
               "convert_s": convert_s, "lower_s": lower_s}  # fmt: skip
        started = time.perf_counter()
        runtime.simulate(lowered, x[:2], timesteps, batch_size=2)
        runtime.simulate(lowered, x[:1], timesteps, batch_size=1, threads=1)
        out["compile_s"] = time.perf_counter() - started
        batch = spec["batch"]
        for threads in spec["threads"]:
            seconds, result = _best(spec["repeats"], lambda t=threads: runtime.simulate(
                lowered, x, timesteps, batch_size=batch, threads=t))  # fmt: skip
            out[f"batch_ms_{threads}t"] = 1000 * seconds / len(x)
            one = x[: spec["latency_images"]]
            seconds, _ = _best(spec["repeats"], lambda t=threads, o=one: [runtime.simulate(
                lowered, o[i : i + 1], timesteps, batch_size=1, threads=t) for i in range(len(o))])  # fmt: skip
            out[f"batch1_ms_{threads}t"] = 1000 * seconds / len(one)
        out["sops_per_image"] = float(result.sops.mean())
        out["deliveries_per_image"] = float(result.extra["deliveries"].mean())
        energy = result.energy_estimate()
        out["energy_snn_over_ann"] = energy["snn_over_ann"]
        out["ann_macs"] = int(result.ann_macs)
        out["predictions"] = result.predictions[-1].tolist()
        if labels is not None:
            out["accuracy"] = float((result.predictions[-1] == labels).mean())
            out["ann_accuracy"] = float((np.asarray(bsnn_graph.evaluate(ann, x)).reshape(len(x), -1).argmax(1)
                                         == labels).mean())  # fmt: skip
        if "full_dynamics" in inspect.signature(runtime.simulate).parameters:
            out["schedule"] = result.schedule
            few = x[: spec["latency_images"]]
            full = runtime.simulate(lowered, few, timesteps, batch_size=len(few), full_dynamics=True)
            cone = runtime.simulate(lowered, few, timesteps, batch_size=len(few))
            out["light_cone_sop_share"] = float(cone.sops.sum() / max(full.sops.sum(), 1))
            out["full_energy_snn_over_ann"] = full.energy_estimate()["snn_over_ann"]
            out["bytes_per_sample"] = cone.extra["bytes_per_sample"]
        else:
            out["schedule"] = "full"
        if spec.get("peers"):
            out["onnxruntime"] = _onnxruntime(ann_path, x, spec)
            out["dense_torch"] = _dense(snn, x, timesteps, spec, result)
        out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _dense(snn, x, timesteps, spec: dict, result) -> dict | None:
    if spec["model"] == LARGE:
        return {"skipped": "one 224x224 image at T = 400 takes minutes in the dense simulation"}
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skipped": "torch is not installed"}
    import numpy as np

    sys.path.insert(0, str(HERE))
    from dense_torch import DenseSimulator

    out = {}
    few = x[: spec["dense_images"]]
    one = x[: spec["dense_latency_images"]]
    # the plain clock-driven simulation (every neuron every step, as SpikingJelly / snnTorch run a converted
    # network) and its strongest variant here (silent layers skipped, light cone)
    for label, sim in (("plain", DenseSimulator(snn)),
                       ("scheduled", DenseSimulator(snn, skip_silent=True, light_cone=True))):  # fmt: skip
        sim.simulate(x[:2], timesteps, batch_size=2, threads=2)
        seconds, dense = _best(1, lambda s=sim: s.simulate(few, timesteps, batch_size=spec["batch"], threads=2))
        out[f"{label}_batch_ms_2t"] = 1000 * seconds / len(few)
        seconds, _ = _best(1, lambda s=sim: [s.simulate(one[i : i + 1], timesteps, batch_size=1, threads=2)
                                              for i in range(len(one))])  # fmt: skip
        out[f"{label}_batch1_ms_2t"] = 1000 * seconds / len(one)
        out[f"{label}_agree"] = bool(np.array_equal(dense.predictions, result.predictions[:, : len(few)]))
    return out


# --------------------------------------------------------------------------- orchestration


def _machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numba": numba.__version__,
            "threading_layer": os.environ.get("NUMBA_THREADING_LAYER", "workqueue (runtime default)"),
            "load_before": os.getloadavg()[0]}  # fmt: skip


def _run_worker(tree: Path, spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", f.name], cwd=tree,
                              env=env, capture_output=True, text=True, check=False)  # fmt: skip
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise SystemExit(f"worker for {spec['model']} in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt(value, digits=2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(doc: dict) -> str:
    """The docs/benchmarks.md section: one table per question, ratios next to the times."""
    lines = [(f"Measured {doc['date']} by `{doc['command']}` on {doc['machine']['cpu']} ({doc['machine']['cores']} "
             f"cores), Python {doc['machine']['python']}, numba {doc['machine']['numba']}, threading layer "
             f"{doc['machine']['threading_layer']}; load average before the run {doc['machine']['load_before']:.2f}. "
             "bsnn at its first full output T = (L + 1) K, K = 8, light-cone schedule; every figure the best of "
             f"{doc['repeats']} runs, all in one run, one process at a time."), ""]  # fmt: skip
    lines += [("| model | L | T | bsnn ms/image batch, 1 / 2 threads | bsnn batch 1, 1 / 2 threads | ANN onnxruntime "
              "batch 1, 1 / 2 threads | dense PyTorch ms/image, batch / batch 1 (2 threads) | dense / bsnn (batch, 2 threads; "
              "scheduled) | "
              "bsnn batch 1 / ANN batch 1 (2 threads) |"), "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in doc["models"]:
        a = row["after"]
        ort = a.get("onnxruntime") or {}
        dense = a.get("dense_torch") or {}
        dense_cell = ("skipped" if "skipped" in dense else
                      f"{_fmt(dense.get('plain_batch_ms_2t'))} / {_fmt(dense.get('plain_batch1_ms_2t'))} "
                      f"(scheduled: {_fmt(dense.get('scheduled_batch_ms_2t'))} / "
                      f"{_fmt(dense.get('scheduled_batch1_ms_2t'))})")  # fmt: skip
        ratio_dense = (dense["plain_batch_ms_2t"] / a["batch_ms_2t"]) if "plain_batch_ms_2t" in dense else None
        ratio_sched = (dense["scheduled_batch_ms_2t"] / a["batch_ms_2t"]) if "scheduled_batch_ms_2t" in dense else None
        ratio_ann = a["batch1_ms_2t"] / ort["batch1_ms_2t"] if "batch1_ms_2t" in ort else None
        lines.append(f"| {row['model']} | {a['largest_stage']} | {a['timesteps']} | {_fmt(a['batch_ms_1t'])} / "
                     f"{_fmt(a['batch_ms_2t'])} | {_fmt(a['batch1_ms_1t'])} / {_fmt(a['batch1_ms_2t'])} | "
                     f"{_fmt(ort.get('batch1_ms_1t'), 3)} / {_fmt(ort.get('batch1_ms_2t'), 3)} | {dense_cell} | "
                     f"{_fmt(ratio_dense, 1)}x ({_fmt(ratio_sched, 1)}x) | {_fmt(ratio_ann, 1)}x |")  # fmt: skip
    lines += ["", ("| model | SOPs/image | row scatters/image | light cone: share of the full run's SOPs | energy "
              "estimate SNN / ANN (light cone; full run) | accuracy bsnn / ANN (same images) | peak RSS MB | "
              "bytes/sample (result, batch, thread) |"), "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in doc["models"]:
        a = row["after"]
        accuracy = (f"{100 * a['accuracy']:.2f} / {100 * a['ann_accuracy']:.2f} %" if "accuracy" in a else
                    "- (random weights)")  # fmt: skip
        memory = a.get("bytes_per_sample", {})
        lines.append(f"| {row['model']} | {a['sops_per_image']:.3g} | {a['deliveries_per_image']:.3g} | "
                     f"{100 * a.get('light_cone_sop_share', 1):.0f} % | {a['energy_snn_over_ann']:.2f}; "
                     f"{a.get('full_energy_snn_over_ann', float('nan')):.2f} | {accuracy} | {a['max_rss_mb']:,.0f} | "
                     f"{memory.get('result', 0):,} / {memory.get('batch', 0):,} / {memory.get('thread', 0):,} |")
    if any("before" in row for row in doc["models"]):
        lines += ["", f"Before and after (runtime of commit {doc['before']} vs this one, same run; ms per image):", "",
                  ("| model | before batch, 2 threads | after | before batch 1, 2 threads | after | before SOPs/image | "
                  "after |"), "|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in doc["models"]:
            if "before" not in row:
                continue
            b, a = row["before"], row["after"]
            lines.append(f"| {row['model']} | {_fmt(b['batch_ms_2t'])} | {_fmt(a['batch_ms_2t'])} | "
                         f"{_fmt(b['batch1_ms_2t'])} | {_fmt(a['batch1_ms_2t'])} | {b['sops_per_image']:.3g} | "
                         f"{a['sops_per_image']:.3g} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", default=",".join(REFERENCE + (LARGE,)))
    parser.add_argument("--before", help="Also time the runtime of this git commit (same run).")
    parser.add_argument("--images", type=int, default=256, help="Images of the batch figures (batch 256).")
    parser.add_argument("--latency-images", type=int, default=32, help="Images of the batch-1 figures.")
    parser.add_argument("--large-images", type=int, default=4, help="ResNet-50: images (batch 4, batch 1: 2).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="Few images, one repeat (a smoke run).")
    parser.add_argument("--json-out", default=str(HERE / "results" / "runtime_speed.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(Path(args.worker).read_text()))))
        return
    if args.quick:
        args.images, args.latency_images, args.large_images, args.repeats = 16, 4, 2, 1
    doc = {"command": "python benchmarks/runtime_speed.py " + shlex.join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"), "machine": _machine(), "repeats": args.repeats,
           "before": args.before, "models": []}  # fmt: skip
    before_tree = None
    try:
        if args.before:
            before_tree = Path(tempfile.mkdtemp(prefix="bsnn-before-"))
            subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), args.before], cwd=ROOT,
                           check=True, capture_output=True)  # fmt: skip
        for model in args.models.split(","):
            large = model == LARGE
            spec = {"model": model, "images": args.large_images if large else args.images,
                    "batch": 4 if large else 256, "latency_images": 2 if large else args.latency_images,
                    "dense_images": min(64, args.images), "dense_latency_images": max(2, args.latency_images // 4),
                    "calib_images": 16,
                    "threads": [1, 2], "repeats": 1 if large else args.repeats}  # fmt: skip
            row = {"model": model, "after": _run_worker(ROOT, dict(spec, peers=True))}
            print(f"{model}: {json.dumps({k: v for k, v in row['after'].items() if k != 'predictions'})}",
                  file=sys.stderr, flush=True)  # fmt: skip
            if before_tree is not None:
                row["before"] = _run_worker(before_tree, spec)
                print(f"{model} before: {row['before']['batch_ms_2t']:.2f} ms/image", file=sys.stderr, flush=True)
            doc["models"].append(row)
    finally:
        if before_tree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT, check=False,
                           capture_output=True)  # fmt: skip
    doc["machine"]["load_after"] = os.getloadavg()[0]
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.json_out + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(args.json_out)
    sys.path.insert(0, str(HERE))
    from headline import insert_section

    insert_section(Path(args.doc), markdown(doc), "runtime-speed")
    print(markdown(doc))


if __name__ == "__main__":
    main()
