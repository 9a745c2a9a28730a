"""bsnn CLI commands ``convert`` and ``passes`` (see :mod:`bsnn_graph.cli`).

- ``bsnn convert MODEL.onnx --calib DATA -o OUT.onnx``: load an ANN, run the
  conversion passes (:func:`passes.convert`) with a progress bar over the
  calibration batches (stderr), and write the spiking network atomically.
  On any error nothing is written and an existing OUT is left untouched; an
  existing OUT is replaced only with ``--overwrite``. ``--explain`` first
  prints why each rewrite rule did or did not match each candidate node,
  one line each (``pass: rule at node: applied`` or the reason; one line
  for a pass without rules), as :func:`passes.convert` reports them.
- ``bsnn passes``: the conversion pipeline, one pass per line.

``--json`` prints one JSON document on stdout (keys in :func:`conversion_summary`;
with ``--explain`` also ``explain``, the list of those lines).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import networkx as nx
import numpy as np

from . import ops as O
from .cli_options import (
    calibrate_option,
    calibration_label,
    channelwise_option,
    initial_potential_option,
    input_lambda_option,
    input_scale_option,
    json_option,
)
from .data import fit_to_input, load_dataset
from .errors import DataError, ModelError
from .fileutil import check_output_path
from .ir import inputs_of, op_of, shape_of, topological_order

__all__ = ["COMMANDS", "conversion_summary", "convert_command", "passes_command"]


def _scale_value(scale) -> float | list[float]:
    scale = np.asarray(scale, dtype=np.float64)
    return float(scale) if scale.ndim == 0 else [float(v) for v in scale.reshape(-1)]


def conversion_summary(graph: nx.DiGraph, model: str, output: str, seconds: float) -> dict:
    """The ``bsnn convert --json`` document.

    Keys: ``model`` and ``output`` (paths), ``passes`` (names applied, in
    order), ``mode`` / ``phases`` (null before to_spiking), ``percentile``,
    ``channelwise``, ``input_lambda``, ``calibration_samples``,
    ``calibrate`` ("percentile" or "search") and ``calibration_seconds``
    (wall-clock time of the calibration; all null before normalise), ``initial_potential`` ("half" or "zero"; null before
    to_spiking), ``removed_output_op`` (e.g. "Softmax" or null),
    ``synchronise`` ("applied", "skipped" or null), ``synchronous_neurons``
    (int), ``populations`` (spiking nodes in topological order, each
    ``name``, ``op`` (Population, SynchronousNeuron, MaxGate), ``inputs``,
    ``shape``, ``stage``, ``scale`` (lambda: number, per-channel list, or
    null for a max gate)), ``max_stage`` (L), ``output_stage`` (L + 1),
    ``first_output_step`` ((L + 1) K in bsnn modes, else null), ``nodes``
    (count) and ``seconds`` (wall-clock time of the conversion).
    """
    meta = graph.graph.get("metadata", {})
    populations = []
    output_stage = None
    for name in topological_order(graph):
        op = op_of(graph, name)
        if isinstance(op, (O.Population, O.MaxGate)):
            populations.append(
                {
                    "name": name,
                    "op": op.op_type,
                    "inputs": inputs_of(graph, name),
                    "shape": list(shape_of(graph, name)),
                    "stage": int(op.stage),
                    "scale": _scale_value(op.scale) if isinstance(op, O.Population) else None,
                }
            )
        elif isinstance(op, O.OutputAccumulator):
            output_stage = int(op.stage)
    stages = [p["stage"] for p in populations if p["op"] != "MaxGate"]
    max_stage = max(stages, default=0) if output_stage is not None else None
    mode = meta.get("bsnn.mode")
    phases = int(meta["bsnn.phases"]) if "bsnn.phases" in meta else None
    from runtime.schedule import BISTABLE_MODES, first_output_step

    first = first_output_step(max_stage, phases) if mode in BISTABLE_MODES and max_stage is not None else None
    return {
        "model": model,
        "output": output,
        "passes": [p for p in meta.get("bsnn.passes", "").split(",") if p],
        "mode": mode,
        "phases": phases,
        "percentile": float(meta["bsnn.percentile"]) if "bsnn.percentile" in meta else None,
        "channelwise": meta["bsnn.channelwise"] == "true" if "bsnn.channelwise" in meta else None,
        "input_lambda": float(meta["bsnn.input_scale"]) if "bsnn.input_scale" in meta else None,
        "calibration_samples": int(meta["bsnn.calibration_samples"]) if "bsnn.calibration_samples" in meta else None,
        "calibrate": meta.get("bsnn.calibrate"),
        "calibration_seconds": (
            float(meta["bsnn.calibration_seconds"]) if "bsnn.calibration_seconds" in meta else None
        ),
        "initial_potential": meta.get("bsnn.initial_potential"),
        "removed_output_op": meta.get("bsnn.removed_output_op"),
        "synchronise": meta.get("bsnn.synchronise"),
        "synchronous_neurons": int(meta.get("bsnn.synchronous_neurons", 0)),
        "populations": populations,
        "max_stage": max_stage,
        "output_stage": output_stage,
        "first_output_step": first,
        "nodes": graph.number_of_nodes(),
        "seconds": round(seconds, 3),
    }


def _pass_names() -> list[str]:
    import passes

    return passes.pass_names()


@click.command("convert")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", "calib_path", required=True, type=click.Path(dir_okay=False), help="Calibration data.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The converted .onnx file.")
@click.option(
    "--mode",
    default="bsnn",
    show_default=True,
    type=click.Choice(list(O.MODES)),
    help="Neuron model written on every spiking op.",
)
@click.option("--phases", "-K", default=8, show_default=True, type=click.IntRange(1, 16), help="Phases per period.")
@click.option(
    "--percentile",
    default=99.99,
    show_default=True,
    type=click.FloatRange(0, 100, min_open=True),
    help="Percentile of the positive activations taken as each lambda.",
)
@channelwise_option
@calibrate_option()
@initial_potential_option()
@click.option("--until", type=click.Choice(_pass_names()), help="Stop after this pass (writes an intermediate graph).")
@input_scale_option
@input_lambda_option
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Calibration batch (default: as many samples as fit a 1 GiB activation budget).",
)
@click.option("--calib-limit", type=click.IntRange(min=1), help="Calibrate on the first N samples only.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option(
    "--explain",
    is_flag=True,
    help="Print why each rewrite rule did or did not match each candidate node, one line each (pass: rule at "
    "node: applied or the reason), before the summary (with --json: its key 'explain').",
)
@json_option("the summary")
def convert_command(
    model: str,
    calib_path: str,
    output: str,
    mode: str,
    phases: int,
    percentile: float,
    channelwise: bool,
    calibrate: str | None,
    initial_potential: str,
    until: str | None,
    input_scale: float | None,
    input_lambda: float | None,
    batch_size: int | None,
    calib_limit: int | None,
    overwrite: bool,
    explain: bool,
    as_json: bool,
) -> None:
    """Convert the ANN MODEL.onnx into a BSNN spiking network written to OUT."""
    import passes

    from .onnx_io import load_onnx, save_onnx

    check_output_path(output, overwrite)
    if not Path(model).exists():
        raise ModelError(f"{model}: no such model file")
    graph = load_onnx(model)
    if len(graph.graph["inputs"]) != 1:
        raise ModelError(f"{model}: expected one input, found {len(graph.graph['inputs'])}")
    x, _ = load_dataset(calib_path, input_scale=input_scale, limit=calib_limit)
    x = fit_to_input(x, shape_of(graph, graph.graph["inputs"][0]), source=str(calib_path))
    if len(x) == 0:
        raise DataError(f"{calib_path}: no samples")
    calibrate = calibrate or passes.default_calibration(mode)
    reads = passes.calibration_passes(graph, calibrate)
    explanations: list[passes.Explanation] = []
    started = time.perf_counter()
    with click.progressbar(length=len(x) * reads, label=calibration_label(calibrate, reads), file=sys.stderr) as bar:
        converted = passes.convert(
            graph,
            x,
            mode=mode,
            phases=phases,
            percentile=percentile,
            channelwise=channelwise,
            until=until,
            progress=bar.update,
            batch_size=batch_size,
            input_lambda=input_lambda,
            initial_potential=initial_potential,
            calibrate=calibrate,
            explain=explanations.append if explain else None,
        )
    seconds = time.perf_counter() - started
    check_output_path(output, overwrite)  # again: a file may have appeared during the calibration
    save_onnx(converted, output)
    summary = conversion_summary(converted, model, output, seconds)
    if explain:
        summary["explain"] = [str(e) for e in explanations]
    if as_json:
        click.echo(json.dumps(summary, indent=2, allow_nan=False))
        return
    for line in summary.get("explain", []):
        click.echo(line)
    _print_summary(summary, output)


def _print_summary(summary: dict, output: str) -> None:
    """The lines ``bsnn convert`` prints without ``--json``."""
    spiking = [p for p in summary["populations"] if p["op"] != "MaxGate"]
    count = len(summary["populations"]) - len(spiking)
    gates = f" and {count} max gate{'s' if count != 1 else ''}" if count else ""
    sns = summary["synchronous_neurons"]
    click.echo(f"wrote {output} after passes: {', '.join(summary['passes'])}")
    if summary["mode"] is not None:
        click.echo(
            f"mode {summary['mode']}, K = {summary['phases']}, {len(spiking)} populations ({sns} synchronous)"
            f"{gates}, "
            f"L = {summary['max_stage']}, output stage {summary['output_stage']}, "
            f"initial potential {summary['initial_potential']}"
        )
    if summary["calibration_seconds"] is not None:
        click.echo(
            f"lambda by {summary['calibrate']} on {summary['calibration_samples']} calibration samples in "
            f"{summary['calibration_seconds']:.2f} s"
        )
    if summary["first_output_step"] is not None:
        click.echo(f"first full output at T = {summary['first_output_step']}")
    if summary["removed_output_op"]:
        click.echo(f"removed output {summary['removed_output_op']} (argmax unchanged)")


@click.command("passes")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, description}.")
def passes_command(as_json: bool) -> None:
    """List the conversion passes in the order they run."""
    import passes

    rows = [{"name": p.name, "description": p.description} for p in passes.PIPELINE]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for i, row in enumerate(rows, 1):
        click.echo(f"{i}. {row['name']:<{width}}  {row['description']}")


COMMANDS = [convert_command, passes_command]
