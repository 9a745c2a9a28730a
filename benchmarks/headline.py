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
(docs/acc_vs_T_<model>.png) and the markdown tables in docs/headline.md.

Usage (full Fashion-MNIST test set, as reported in docs/benchmarks.md)::

    python benchmarks/headline.py --data /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

``--limit N`` uses the first N test images; ``--models`` picks models.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
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
    import os

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


def run_model(name: str, info: dict, x, y, calib, args) -> dict:
    ann = load_onnx(ROOT / "data" / info["onnx"])
    ann_acc = ann_accuracy(ann, x, y)
    ann_macs = int(sum(macs(ann, n) for n in ann.nodes))
    out = {"model": name, "ann_accuracy": ann_acc, "ann_macs": ann_macs, "runs": {}}
    print(f"{name}: ANN accuracy {ann_acc:.2f}% on {len(x)} images, {ann_macs / 1e6:.2f} M MACs per image", flush=True)
    configs = [(mode, 8) for mode in MODES] + [("bsnn", k) for k in K_SWEEP]
    for mode, k in configs:
        snn = passes.convert(ann, calib, mode=mode, phases=k, percentile=args.percentile)
        depth = deepest_stage(snn)
        if mode == "bsnn":
            # the bistable network settles within a few periods of its first output
            t_max, images = (depth + args.bsnn_periods) * k, len(x)
        else:
            t_max, images = (
                max(args.timesteps, (depth + args.bsnn_periods) * k),
                min(len(x), args.baseline_limit or len(x)),
            )
        started = time.perf_counter()
        result = runtime.simulate(snn, x[:images], t_max, batch_size=args.batch_size, per_neuron_counts=False)
        seconds = time.perf_counter() - started
        acc = 100.0 * (result.predictions == y[None, :images]).mean(axis=1)
        ann_ref = ann_acc if images == len(x) else ann_accuracy(ann, x[:images], y[:images])
        key = f"{mode}@K{k}"
        entry = {
            "mode": mode,
            "phases": k,
            "deepest_stage": depth,
            "t_first_output": (depth + 1) * k if mode.startswith("bsnn") else 1,
            "timesteps": t_max,
            "images": images,
            "ann_accuracy_same_images": ann_ref,
            "accuracy": [round(float(a), 3) for a in acc],
            "t_within_1": first_within(acc, ann_ref, 1.0),
            "t_within_0_1": first_within(acc, ann_ref, 0.1),
            "final_accuracy": float(acc[-1]),
            "sops_per_image_at_t_max": float(result.sops.mean()),
            "seconds": seconds,
        }
        out["runs"][key] = entry
        print(
            f"  {key:14s} L={depth:2d} N={images:5d} T_max={t_max:4d} final {acc[-1]:6.2f}%  "
            f"T(1pt)={entry['t_within_1']} T(0.1pt)={entry['t_within_0_1']}  {seconds:7.1f} s",
            flush=True,
        )
    # energy at the first T where bsnn (K=8) is within 1 point of the ANN
    t_energy = out["runs"]["bsnn@K8"]["t_within_1"] or out["runs"]["bsnn@K8"]["timesteps"]
    energy = {"timesteps": t_energy, "ann_energy_uJ_estimate": ann_macs * runtime.E_MAC_PJ * 1e-6}
    n_energy = min(len(x), args.energy_images)
    for mode in ("bsnn", "if-rate"):
        snn = passes.convert(ann, calib, mode=mode, phases=8, percentile=args.percentile)
        result = runtime.simulate(snn, x[:n_energy], t_energy, batch_size=args.batch_size, per_neuron_counts=False)
        sops = float(result.sops.mean())
        input_macs = int(result.input_macs)
        energy[mode] = {
            "sops_per_image": sops,
            "input_layer_macs": input_macs,
            "energy_uJ_estimate": (sops * runtime.E_AC_PJ + input_macs * runtime.E_MAC_PJ) * 1e-6,
        }
    out["energy"] = energy
    return out


def plot(results: list[dict], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for res in results:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for run in res["runs"].values():
            acc = np.array(run["accuracy"])
            style = "-" if run["phases"] == 8 else ":"
            ax.plot(np.arange(1, len(acc) + 1), acc, style, label=f"{run['mode']} K={run['phases']}", linewidth=1.2)
        ax.axhline(res["ann_accuracy"], color="black", linewidth=0.8, label="ANN")
        ax.axhline(res["ann_accuracy"] - 1, color="gray", linewidth=0.6, linestyle="--", label="ANN - 1")
        ax.set_xscale("log", base=2)
        ax.set_ylim(max(0, res["ann_accuracy"] - 30), min(100, res["ann_accuracy"] + 3))
        ax.set_xlabel("time steps T")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{res['model']}: accuracy versus T")
        ax.legend(fontsize=7, ncol=2, loc="lower right")
        fig.tight_layout()
        path = folder / f"acc_vs_T_{res['model']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path.name)
    return files


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        (
            f"Measured by `{meta['command']}` on {meta['machine']}, {meta['date']}, "
            f"{meta['images']} test images, percentile {meta['percentile']}."
        ),
        "",
        (
            "| model | mode | K | L | images | ANN % (same images) | first output T | acc. at first output | "
            "T within 1 pt (and after) | T within 0.1 pt (and after) | final acc. (T_max) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for run in res["runs"].values():
            acc = run["accuracy"]
            t0 = run["t_first_output"]
            first = f"{t0} | {acc[t0 - 1]:.2f}" if run["mode"].startswith("bsnn") else "- | -"
            lines.append(
                f"| {res['model']} | {run['mode']} | {run['phases']} | {run['deepest_stage']} | {run['images']} | "
                f"{run['ann_accuracy_same_images']:.2f} | {first} | {run['t_within_1'] or '-'} | {run['t_within_0_1'] or '-'} | "
                f"{run['final_accuracy']:.2f} (T={run['timesteps']}) |"
            )
    lines += [
        "",
        "| model | T(1 pt) bsnn | T(1 pt) if-rate | ratio bsnn / if-rate | T(0.1 pt) bsnn | T(0.1 pt) if-rate |",
        "|---|---|---|---|---|---|",
    ]
    for res in results:
        b, r = res["runs"]["bsnn@K8"], res["runs"]["if-rate@K8"]
        ratio = f"{b['t_within_1'] / r['t_within_1']:.3f}" if b["t_within_1"] and r["t_within_1"] else "-"
        lines.append(
            f"| {res['model']} | {b['t_within_1'] or '-'} | {r['t_within_1'] or '-'} | {ratio} | "
            f"{b['t_within_0_1'] or '-'} | {r['t_within_0_1'] or '-'} |"
        )
    lines += [
        "",
        (
            "Energy **estimate** (0.9 pJ per SOP, 4.6 pJ per MAC; the SNN's analog input layer is "
            "counted as MACs), at the first T where bsnn K=8 is within 1 point of the ANN:"
        ),
        "",
        (
            "| model | T | ANN MACs/image | ANN uJ (est.) | bsnn SOPs/image | bsnn uJ (est.) | "
            "if-rate SOPs/image | if-rate uJ (est.) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        e = res["energy"]
        lines.append(
            f"| {res['model']} | {e['timesteps']} | {res['ann_macs']:,} | {e['ann_energy_uJ_estimate']:.3f} | "
            f"{e['bsnn']['sops_per_image']:,.0f} | {e['bsnn']['energy_uJ_estimate']:.3f} | "
            f"{e['if-rate']['sops_per_image']:,.0f} | {e['if-rate']['energy_uJ_estimate']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "fmnist_test.npz"))
    parser.add_argument("--calib", default=str(ROOT / "data" / "fmnist_calib.npz"))
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--timesteps", type=int, default=256, help="T_max of the baseline modes (at least bsnn's)")
    parser.add_argument("--bsnn-periods", type=int, default=12, help="bsnn runs to T = (L + this) K")
    parser.add_argument("--baseline-limit", type=int, default=None, help="images for bsnn-nosn, phase, if-rate")
    parser.add_argument("--percentile", type=float, default=99.9)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--energy-images", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()

    models = json.loads((ROOT / "data" / "models.json").read_text())
    names = args.models or list(models)
    x, y = load_dataset(args.data, limit=args.limit)
    calib, _ = load_dataset(args.calib)
    results = [run_model(n, {"onnx": _onnx_file(models[n])}, x, y, calib, args) for n in names]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
    meta = {
        "command": "python benchmarks/headline.py " + " ".join(_argv()),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "images": len(x),
        "percentile": args.percentile,
    }
    (out / "headline.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    meta["plots"] = plot(results, out)
    (out / "headline.md").write_text(markdown(results, meta))
    print(markdown(results, meta))


def _onnx_file(entry: dict) -> str:
    """The legacy-exporter ONNX file of a data/models.json entry."""
    return entry["exports"]["legacy"]["file"]


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
