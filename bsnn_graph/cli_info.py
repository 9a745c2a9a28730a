"""bsnn CLI command ``info`` (see :mod:`bsnn_graph.cli`).

``bsnn info MODEL.onnx [--json]`` loads a model (an ANN or a converted
spiking network) and prints one row per node: name, op, per-sample output
shape, parameter count and multiply-accumulates per sample, then totals.
For a converted graph the spiking nodes also show their mode, K (phases),
stage and lambda (normalisation scale). ``--json`` prints one JSON document
instead (keys in :func:`model_summary`).
"""

from __future__ import annotations

import json

import click
import networkx as nx
import numpy as np

from . import ops as O
from .cli_options import json_option
from .executor import macs
from .ir import inputs_of, op_of, shape_of, topological_order

__all__ = ["COMMANDS", "info_command", "model_summary"]


def _scale_value(scale) -> float | list[float] | None:
    if scale is None:
        return None
    scale = np.asarray(scale, dtype=np.float64)
    return float(scale) if scale.ndim == 0 else [float(v) for v in scale.reshape(-1)]


def model_summary(graph: nx.DiGraph, path: str) -> dict:
    """The ``bsnn info --json`` document of ``graph`` loaded from ``path``.

    Keys: ``file``, ``name``, ``opset``, ``batch`` (int or symbol),
    ``inputs`` and ``outputs`` (lists of ``{"name", "shape"}``, shapes per
    sample), ``metadata`` (str -> str), ``spiking`` (bool: the graph has
    ``ai.bsnn`` ops), ``nodes`` (in topological order, each ``name``, ``op``,
    ``domain``, ``inputs``, ``shape``, ``parameters``, ``macs``; spiking
    nodes add ``mode``, ``phases``, ``stage`` and ``scale`` (lambda: a
    number, a per-channel list, or null for a max gate); Input nodes add
    ``scale``), and ``totals`` (``nodes``, ``parameters``, ``macs``).
    """
    nodes = []
    for name in topological_order(graph):
        op = op_of(graph, name)
        row = {
            "name": name,
            "op": op.op_type,
            "domain": op.domain,
            "inputs": inputs_of(graph, name),
            "shape": list(shape_of(graph, name)),
            "parameters": op.parameter_count(),
            "macs": macs(graph, name),
        }
        if op.domain == O.BSNN_DOMAIN:
            row.update(mode=op.mode, phases=op.phases, stage=op.stage, scale=_scale_value(getattr(op, "scale", None)))
        elif isinstance(op, O.Input):
            row["scale"] = float(op.scale)
        nodes.append(row)
    return {
        "file": str(path),
        "name": graph.graph.get("name"),
        "opset": graph.graph.get("opset"),
        "batch": graph.graph.get("batch"),
        "inputs": [{"name": n, "shape": list(shape_of(graph, n))} for n in graph.graph["inputs"]],
        "outputs": [{"name": n, "shape": list(shape_of(graph, n))} for n in graph.graph["outputs"]],
        "metadata": dict(graph.graph.get("metadata") or {}),
        "spiking": any(row["domain"] == O.BSNN_DOMAIN for row in nodes),
        "nodes": nodes,
        "totals": {
            "nodes": len(nodes),
            "parameters": sum(row["parameters"] for row in nodes),
            "macs": sum(row["macs"] for row in nodes),
        },
    }


def _shape_text(shape) -> str:
    return str(tuple(shape))


def _scale_text(scale) -> str:
    if scale is None:
        return "-"
    if isinstance(scale, list):
        return f"{min(scale):.4g}..{max(scale):.4g} ({len(scale)} ch)"
    return f"{scale:.4g}"


def _print_table(header: list[str], rows: list[list[str]], numeric: set[int]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        return "  ".join(f"{c:>{w}}" if i in numeric else f"{c:<{w}}" for i, (c, w) in enumerate(zip(cells, widths)))

    click.echo(line(header).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for row in rows:
        click.echo(line(row).rstrip())


def _print_summary(summary: dict) -> None:
    click.echo(f"model:   {summary['file']} (graph {summary['name']!r}, opset {summary['opset']})")
    for key in ("inputs", "outputs"):
        listing = ", ".join(
            f"{t['name']} (N={summary['batch']}, {', '.join(map(str, t['shape']))})" for t in summary[key]
        )
        click.echo(f"{key + ':':<8} {listing}")
    for key, value in sorted(summary["metadata"].items()):
        click.echo(f"meta:    {key} = {value}")
    click.echo("")
    spiking = summary["spiking"]
    header = ["name", "op", "output shape", "params", "MACs/sample"]
    if spiking:
        header += ["mode", "K", "stage", "lambda"]
    rows = []
    for node in summary["nodes"]:
        row = [node["name"], node["op"], _shape_text(node["shape"]), f"{node['parameters']:,}", f"{node['macs']:,}"]
        if spiking:
            if node["domain"] == O.BSNN_DOMAIN:
                row += [node["mode"], str(node["phases"]), str(node["stage"]), _scale_text(node["scale"])]
            elif node["op"] == "Input":
                row += ["-", "-", "0", _scale_text(node["scale"])]
            else:
                row += ["", "", "", ""]
        rows.append(row)
    totals = summary["totals"]
    rows.append(["total", f"{totals['nodes']} nodes", "", f"{totals['parameters']:,}", f"{totals['macs']:,}"])
    if spiking:
        rows[-1] += ["", "", "", ""]
    _print_table(header, rows, numeric={3, 4, 6, 7})


@click.command("info")
@click.argument("model", type=click.Path(dir_okay=False))
@json_option()
def info_command(model: str, as_json: bool) -> None:
    """Show the nodes of MODEL.onnx: op, output shape, parameters, MACs (and spiking fields)."""
    from .onnx_io import load_onnx  # onnx is imported only when a model is read

    summary = model_summary(load_onnx(model), model)
    if as_json:
        click.echo(json.dumps(summary, indent=2, allow_nan=False))
    else:
        _print_summary(summary)


COMMANDS = [info_command]
