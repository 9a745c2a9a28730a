"""bsnn CLI commands ``run``, ``eval`` and ``inspect`` (see :mod:`bsnn_graph.cli`).

- ``bsnn run SNN.onnx --data DATA -T N [--trace OUT.h5]``: simulate a
  converted network, print predictions, accuracy and timing, and stream a
  spike trace (``docs/trace-format.md``).
- ``bsnn eval MODEL.onnx --data DATA``: accuracy versus T per neuron mode
  against the ANN (converting an ANN first with ``--calib``).
- ``bsnn inspect TRACE.h5``: per-population firing statistics, SOPs and the
  energy estimate of a trace; ``--plot`` draws a raster and firing rates.

Every command takes ``--json`` and then prints one JSON document on stdout
(the keys are listed in ``docs/trace-format.md``); progress bars and notes
go to stderr. The commands parse, call the library, print: ``run`` and
``eval`` simulate and evaluate with :func:`runtime.evaluate.evaluate_snn`
(in this process, or sharded over a Dask cluster with ``--workers``). The
CLI is the top layer: it may import ``passes`` and ``runtime``, inside the
functions that need them (``runtime`` loads Numba).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click
import networkx as nx
import numpy as np

from . import ops as O
from .cli_cluster import cluster_options, evaluate_on_cluster, open_cluster
from .cli_options import (
    calibrate_option,
    calibration_label,
    channelwise_option,
    full_dynamics_option,
    initial_potential_option,
    input_lambda_option,
    input_scale_option,
    json_option,
    threads_option,
)
from .data import fit_to_input, iterate_batches, load_dataset
from .errors import BsnnError, DataError, ModelError, TraceError
from .executor import evaluate
from .fileutil import check_output_path
from .ir import op_of

__all__ = ["COMMANDS", "eval_command", "inspect_command", "run_command"]

_SPIKING = (O.Population, O.SynchronousNeuron, O.MaxGate)


# --------------------------------------------------------------------------- helpers


def _finite(value):
    """``value`` with NaN and infinities (from a damaged trace, say) replaced by None, so the JSON is valid."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _echo_json(document: dict) -> None:
    click.echo(json.dumps(_finite(document), indent=2, allow_nan=False))


def _stderr():
    return sys.stderr  # read at call time: CliRunner and pytest replace it


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = "  ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, widths)))
    click.echo(line)
    click.echo("  ".join("-" * w for w in widths))
    for row in rows:
        click.echo("  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths))))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _parse_int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter(f"expected positive integers, got {text!r}", param_hint=option)
    return values


def parse_record_samples(text: str | None, samples: int) -> list[int]:
    """Sample indices from ``--record-samples``.

    ``N`` (a bare integer) means the first N samples; a comma-separated list
    of indices and ranges ``a-b`` (inclusive) names them, e.g. ``0,5,10-19``
    (``5,`` is sample 5 alone). Default (None): the first 10 samples.
    """
    if text is None:
        return list(range(min(samples, 10)))
    text = text.strip()
    try:
        if text.isdigit():
            return list(range(min(int(text), samples)))
        chosen: set[int] = set()
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            if "-" in item:
                first, last = (int(v) for v in item.split("-", 1))
                chosen.update(range(first, last + 1))
            else:
                chosen.add(int(item))
    except ValueError:
        raise click.BadParameter(
            f"expected N (first N samples) or a list like 0,5,10-19, got {text!r}", param_hint="--record-samples"
        ) from None
    outside = sorted(i for i in chosen if i < 0 or i >= samples)
    if outside:
        raise DataError(f"--record-samples: sample {outside[0]} is outside the data (0..{samples - 1})")
    return sorted(chosen)


def _text(value) -> str | None:
    """An HDF5 string attribute as str (None if absent; traces written before it existed have none)."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _with_sources(graph, populations) -> list[dict]:
    """The simulator's population list, each MaxGate with the ``source`` population it reads."""
    out = []
    for pop in populations:
        pop = dict(pop)
        if pop.get("op_type") == "MaxGate" and pop["name"] in graph:
            sources = list(graph.predecessors(pop["name"]))
            if len(sources) == 1:
                pop["source"] = sources[0]
        out.append(pop)
    return out


def _spiking_nodes(graph) -> list[str]:
    return [n for n in graph.nodes if isinstance(op_of(graph, n), _SPIKING)]


def _is_spiking(graph) -> bool:
    return any(op_of(graph, n).domain == O.BSNN_DOMAIN for n in graph.nodes)


def _output_accumulator(graph) -> O.OutputAccumulator | None:
    found = [op_of(graph, n) for n in graph.nodes if isinstance(op_of(graph, n), O.OutputAccumulator)]
    return found[0] if len(found) == 1 else None


def runtime_energy(sops_per_sample, ann_macs, input_macs) -> dict:
    """``runtime.energy.energy_estimate``, imported when first needed (runtime loads Numba)."""
    from runtime.energy import energy_estimate

    return energy_estimate(sops_per_sample, ann_macs, input_macs)


def _energy_line(energy: dict) -> str:
    line = f"energy     SNN {energy['snn_energy_pj_per_sample'] / 1e6:.4f} uJ per sample"
    if energy["ann_energy_pj_per_sample"] is not None:
        line += f", ANN {energy['ann_energy_pj_per_sample'] / 1e6:.4f} uJ"
    if energy["snn_over_ann"] is not None:
        line += f", SNN/ANN {energy['snn_over_ann']:.3f}"
    return line + f" ({energy['label']})"


def _input_shape(graph) -> tuple[int, ...]:
    inputs = graph.graph["inputs"]
    if len(inputs) != 1:
        raise ModelError(f"{graph.graph.get('name', 'model')}: expected one input, found {len(inputs)}")
    return tuple(graph.nodes[inputs[0]]["shape"])


def _one_output(graph, model: str) -> None:
    outputs = graph.graph["outputs"]
    if len(outputs) != 1:
        raise ModelError(f"{model}: expected one graph output (the class scores), found {len(outputs)}")


def _load_data(path: str, graph, input_scale: float | None, limit: int | None):
    x, y = load_dataset(path, input_scale=input_scale, limit=limit)
    x = fit_to_input(x, _input_shape(graph), source=str(path))
    if len(x) == 0:
        raise DataError(f"{path}: no samples")
    return x, y


def _check_model_file(path: str) -> None:
    if not Path(path).exists():
        raise ModelError(f"{path}: no such model file")


def _first_step_within(accuracy_per_step: np.ndarray, reference: float, points: float = 1.0) -> int | None:
    hits = np.flatnonzero(accuracy_per_step >= reference - points / 100.0)
    return int(hits[0]) + 1 if len(hits) else None


def _ann_accuracy(graph, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    correct = 0
    for part in iterate_batches(len(x), batch_size):
        out = np.asarray(evaluate(graph, x[part]))
        correct += int(np.sum(out.reshape(len(out), -1).argmax(axis=1) == y[part]))
    return correct / len(x)


def _evaluate(graph, x, labels, timesteps, label, cluster, shard_size, on_batch=None, **options):
    """:func:`runtime.evaluate.evaluate_snn` with a progress bar, in this process or over ``cluster``."""
    if cluster is not None:
        return evaluate_on_cluster(cluster, graph, x, labels, timesteps, label, shard_size, **options)
    from runtime.evaluate import evaluate_snn

    with click.progressbar(length=len(x), label=label, file=_stderr()) as bar:

        def progress(start, stop, partial):
            if on_batch is not None:
                on_batch(start, stop, partial)
            bar.update(stop - start)

        return evaluate_snn(graph, x, labels, timesteps, on_batch=progress, **options)


# --------------------------------------------------------------------------- run


def _recorded_populations(graph, model: str, record: tuple[str, ...], trace_path: str | None) -> list[str]:
    """The populations ``--record`` names (``all``: every spiking node), checked against the graph."""
    names = _spiking_nodes(graph)
    chosen = [r.strip() for item in record for r in item.split(",") if r.strip()]
    if "all" in chosen and "all" not in names:
        chosen = list(names)
    unknown = [r for r in chosen if r not in names]
    if unknown:
        raise BsnnError(f"{model}: --record {unknown[0]!r}: no such population (have {', '.join(names)})")
    if chosen and trace_path is None:
        raise click.UsageError("--record needs --trace (events are stored in the trace file)")
    return chosen


@dataclass
class _RunTrace:
    """The spike trace of ``bsnn run`` (none if ``path`` is None): streamed batch by batch here, or written in
    parts on a cluster."""

    path: str | None
    model: str
    data_path: str
    graph: nx.DiGraph
    samples: int
    labels: np.ndarray | None
    timesteps: int
    record: list[str]
    record_samples: list[int] | None
    attributes: dict  # extra root attributes of the trace
    overwrite: bool
    writer: list = field(default_factory=list)  # the TraceWriter (or the ShardedRun) once it exists
    written: list = field(default_factory=lambda: [0])  # written[0]: samples finished

    @property
    def output_stage(self) -> int | None:
        accumulator = _output_accumulator(self.graph)
        return int(accumulator.stage) if accumulator is not None else None

    def stream(self, start: int, stop: int, partial) -> None:
        """``on_batch`` of a local run: append the batch to the trace (opened at the first batch)."""
        if self.path is not None:
            if not self.writer:
                from runtime.trace import TraceWriter

                self.writer.append(TraceWriter(
                    self.path, populations=_with_sources(self.graph, partial.populations), timesteps=self.timesteps,
                    phases=int(partial.phases), mode=str(partial.mode),
                    classes=int(np.asarray(partial.logits).shape[2]), samples_total=self.samples,
                    model_path=self.model, input_path=self.data_path, labels=self.labels,
                    ann_macs=int(partial.ann_macs), input_macs=int(partial.input_macs),
                    output_stage=self.output_stage, record=self.record, record_samples=self.record_samples,
                    overwrite=self.overwrite,
                    attributes={**self.attributes, "schedule": str(partial.schedule),
                                "initial_potential": str(partial.initial_potential)},
                ))
            self.writer[0].append(start, stop, partial)
        self.written[0] = stop

    def plan(self):
        """The :class:`runtime.distributed.TracePlan` of a sharded run (None without ``--trace``)."""
        if self.path is None:
            return None
        from runtime.distributed import TracePlan

        return TracePlan(path=Path(self.path), labels=self.labels, model_path=self.model, input_path=self.data_path,
                         output_stage=self.output_stage, attributes=dict(self.attributes), overwrite=self.overwrite)

    def close(self, interrupted: bool = False):
        """Close the trace; the path written, or None (no trace, or nothing written yet)."""
        return self.writer[0].close(interrupted=interrupted) if self.writer else None

    def report_failure(self, exc: BaseException) -> None:
        """Close a run that failed with ``exc`` and say what is left; Ctrl-C exits with status 130."""
        where = self.close(interrupted=True)
        note = f"partial trace in {where} (complete = false)" if where else "no trace written"
        if isinstance(exc, KeyboardInterrupt):
            click.echo(f"interrupted after {self.written[0]} of {self.samples} samples; {note}", err=True)
            sys.exit(130)
        if where is not None:
            click.echo(f"run failed after {self.written[0]} of {self.samples} samples; {note}", err=True)


def _run_document(model, data_path, evaluation, trace_written, batch_size, threads) -> dict:
    """The JSON document of ``bsnn run`` (keys in docs/trace-format.md)."""
    ev = evaluation
    return {
        "model": str(model),
        "data": str(data_path),
        "mode": ev.mode,
        "phases": ev.phases,
        "timesteps": ev.timesteps,
        "samples": ev.samples,
        "first_output_step": ev.first_output_step,
        "schedule": ev.schedule,
        "initial_potential": ev.initial_potential,
        "bytes_per_sample": ev.bytes_per_sample,
        "accuracy": ev.accuracy,
        "accuracy_first_output": ev.accuracy_first_output,
        "accuracy_per_step": ev.accuracy_per_step.tolist() if ev.accuracy_per_step is not None else None,
        "predictions": ev.predictions[-1].astype(int).tolist(),
        "labels": ev.labels.astype(int).tolist() if ev.labels is not None else None,
        "sops_per_sample": ev.sops_per_sample,
        "energy": ev.energy,
        "seconds": ev.seconds,
        "seconds_per_sample": ev.seconds / ev.samples,
        "batch_size": batch_size,
        "threads": threads,
        "trace": str(trace_written) if trace_written is not None else None,
    }


def _print_run(document: dict, evaluation) -> None:
    """The report of ``bsnn run`` as text."""
    ev, first_output, timesteps = evaluation, document["first_output_step"], document["timesteps"]
    click.echo(f"model      {document['model']} (mode {ev.mode}, K = {ev.phases})")
    click.echo(f"data       {document['data']}: {ev.samples} samples" + ("" if ev.labels is not None else " (no labels)"))
    shown = f"T = {timesteps}" + (f" (first full output at T = {first_output})" if first_output else "")
    click.echo(f"steps      {shown}, schedule {ev.schedule}, initial potential {ev.initial_potential}")
    if ev.accuracy is not None:
        line = f"accuracy   {_percent(ev.accuracy)} at T = {timesteps}"
        if ev.accuracy_first_output is not None:
            line += f", {_percent(ev.accuracy_first_output)} at the first full output (T = {first_output})"
        click.echo(line)
    click.echo(f"predicted  per class: {' '.join(str(int(c)) for c in ev.predicted_per_class)}")
    click.echo(f"SOPs       {ev.sops_per_sample:,.0f} per sample")
    click.echo(_energy_line(document["energy"]))
    click.echo(f"time       {ev.seconds:.2f} s ({1000 * ev.seconds / ev.samples:.2f} ms per sample)")
    if document["trace"] is not None:
        click.echo(f"trace      {document['trace']}")


@click.command("run")
@click.argument("model", metavar="SNN.onnx", type=click.Path(dir_okay=False))
@click.option(
    "--data", "data_path", required=True, type=click.Path(dir_okay=False), help="Input samples (.npz or IDX)."
)
@click.option("-T", "--timesteps", required=True, type=click.IntRange(min=1), help="Time steps to simulate.")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False), help="Write a spike trace (HDF5) here.")
@click.option("--overwrite", is_flag=True, help="Replace an existing trace file.")
@click.option(
    "--record",
    multiple=True,
    metavar="POP",
    help="Store the spike events of population POP in the trace (repeat, or comma-separate; 'all' for every one).",
)
@click.option(
    "--record-samples",
    metavar="N|LIST",
    help="Samples whose events are stored: N = the first N, or a list like 0,5,10-19 (default: first 10).",
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Samples per batch.")
@threads_option
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples.")
@input_scale_option
@full_dynamics_option
@cluster_options
@json_option()
def run_command(
    model: str,
    data_path: str,
    timesteps: int,
    trace_path: str | None,
    overwrite: bool,
    record: tuple[str, ...],
    record_samples: str | None,
    batch_size: int,
    threads: int | None,
    limit: int | None,
    input_scale: float | None,
    full_dynamics: bool,
    workers: int | None,
    scheduler: str | None,
    shard_size: int,
    as_json: bool,
) -> None:
    """Simulate the converted network SNN.onnx on DATA for T time steps."""
    import runtime

    _check_model_file(model)
    graph = runtime.load(model)
    x, y = _load_data(data_path, graph, input_scale, limit)
    chosen = _recorded_populations(graph, model, record, trace_path)
    sample_indices = parse_record_samples(record_samples, len(x)) if chosen else None
    if trace_path is not None:
        from runtime.trace_parts import is_resumable

        sharded = workers is not None or scheduler is not None  # an interrupted sharded run resumes
        check_output_path(trace_path, overwrite or (sharded and is_resumable(Path(trace_path))), TraceError)
    attributes = {"batch_size": batch_size, "input_scale": -1.0 if input_scale is None else input_scale}
    trace = _RunTrace(trace_path, model, data_path, graph, samples=len(x), labels=y, timesteps=timesteps,
                      record=chosen, record_samples=sample_indices, attributes=attributes, overwrite=overwrite)
    options = {"batch_size": batch_size, "threads": threads, "record": chosen, "record_samples": sample_indices,
               "full_dynamics": full_dynamics}
    cluster = open_cluster(workers, scheduler)
    if cluster is not None:
        options.update(trace=trace.plan(), writer=trace.writer, written=trace.written)
    else:  # the trace streams the per-neuron counts of every batch
        options.update(on_batch=trace.stream, per_neuron_counts="batches" if trace_path is not None else False)
    try:
        label = f"simulating {len(x)} samples, T = {timesteps}"
        evaluation = _evaluate(graph, x, y, timesteps, label, cluster, shard_size, **options)
    except BaseException as exc:
        trace.report_failure(exc)
        raise
    document = _run_document(model, data_path, evaluation, trace.close(), batch_size, threads)
    if as_json:
        _echo_json(document)
        return
    _print_run(document, evaluation)


# --------------------------------------------------------------------------- eval


def _parse_modes(modes: str | None) -> list[str]:
    wanted = [m.strip() for m in (modes or "bsnn").split(",") if m.strip()]
    bad = [m for m in wanted if m not in O.MODES]
    if bad or not wanted:
        raise click.BadParameter(
            f"unknown mode {bad[0] if bad else modes!r} (use {', '.join(O.MODES)})", param_hint="--modes"
        )
    return wanted


def _already_converted(model: str, wanted: list[str], modes: str | None, conversion: dict,
                       calib_path: str | None) -> dict:
    """``{mode: graph}`` of an SNN given to ``bsnn eval``: refuses the options that convert an ANN."""
    import runtime

    graph = runtime.load(model)
    accumulator = _output_accumulator(graph)
    own_mode = accumulator.mode if accumulator is not None else "bsnn"
    own_phases = int(accumulator.phases) if accumulator is not None else None
    if modes is not None and wanted != [own_mode]:
        raise BsnnError(f"{model}: already converted (mode {own_mode}); --modes applies to ANN models only")
    if conversion["phases"] is not None and conversion["phases"] != own_phases:
        raise BsnnError(f"{model}: already converted with K = {own_phases}; --phases applies to ANN models only")
    for key, flag in (("channelwise", "--channelwise"), ("input_lambda", "--input-lambda"),
                      ("initial_potential", "--initial-potential"), ("calibrate", "--calibrate"),
                      ("percentile", "--percentile")):
        if conversion[key] is not None and conversion[key] is not False:
            raise BsnnError(f"{model}: already converted; {flag} applies to ANN models only")
    if calib_path is not None:
        click.echo(f"note: {model} is already converted; --calib is not used", err=True)
    return {own_mode: graph}


def _converted(graph, model: str, wanted: list[str], conversion: dict, calib_path: str | None,
               input_scale: float | None, batch_size: int) -> dict:
    """``{mode: graph}``: the ANN ``graph`` converted once per mode with the calibration data ``calib_path``."""
    if calib_path is None:
        raise BsnnError(f"{model}: is an ANN; converting it needs calibration data (--calib DATA)")
    import passes

    calib, _ = _load_data(calib_path, graph, input_scale, None)
    options = {"channelwise": conversion["channelwise"], "input_lambda": conversion["input_lambda"],
               "initial_potential": conversion["initial_potential"] or "half"}
    for key in ("phases", "percentile"):
        if conversion[key] is not None:
            options[key] = conversion[key]
    snns = {}
    for mode in wanted:
        calibrate = conversion["calibrate"] or passes.default_calibration(mode)
        reads = passes.calibration_passes(graph, calibrate)
        label = calibration_label(calibrate, reads, mode)
        with click.progressbar(length=len(calib) * reads, label=label, file=_stderr()) as bar:
            snns[mode] = passes.convert(graph, calib, mode=mode, batch_size=batch_size, progress=bar.update,
                                        calibrate=calibrate, **options)
    return snns


def _mode_report(evaluation, steps: list[int], ann_accuracy: float) -> dict:
    """One mode's entry of the ``bsnn eval`` document."""
    per_step = evaluation.accuracy_per_step
    return {
        "phases": evaluation.phases,
        "first_output_step": evaluation.first_output_step,
        "accuracy": [float(per_step[t - 1]) for t in steps],
        "accuracy_per_step": per_step.tolist(),
        "first_step_within_1_point": _first_step_within(per_step, ann_accuracy),
        "sops_per_sample": evaluation.sops_per_sample,
        "energy": evaluation.energy,
        "schedule": evaluation.schedule,
        "initial_potential": evaluation.initial_potential,
        "bytes_per_sample": evaluation.bytes_per_sample,
        "seconds": evaluation.seconds,
    }


def _print_eval(document: dict) -> None:
    """The report of ``bsnn eval`` as a table: accuracy at every T asked for, per mode."""
    results, steps = document["modes"], document["timesteps"]
    click.echo(f"reference  {document['reference']}: {_percent(document['ann_accuracy'])} on "
               f"{document['samples']} samples of {document['data']}")
    header = ["T"] + [m if m == "if-rate" else f"{m} (K={r['phases']})" for m, r in results.items()]
    rows = [[str(t)] + [_percent(r["accuracy"][i]) for r in results.values()] for i, t in enumerate(steps)]
    rows.append(["first full output"] + [str(r["first_output_step"] or "-") for r in results.values()])
    rows.append(["first T within 1 pt"] + [str(r["first_step_within_1_point"] or "-") for r in results.values()])
    rows.append([f"SOPs/sample (T={steps[-1]})"] + [f"{r['sops_per_sample']:,.0f}" for r in results.values()])
    rows.append(["energy uJ/sample (estimate)"]
                + [f"{r['energy']['snn_energy_pj_per_sample'] / 1e6:.4f}" for r in results.values()])
    rows.append(["schedule"] + [r["schedule"] for r in results.values()])
    _print_table(header, rows)
    if results:
        click.echo(f"energy: {next(iter(results.values()))['energy']['label']}")


@click.command("eval")
@click.argument("model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help="Labelled test samples.")
@click.option("--calib", "calib_path", type=click.Path(dir_okay=False), help="Calibration samples (ANN models).")
@click.option(
    "--modes", help="Neuron modes to compare, comma-separated: bsnn, bsnn-nosn, phase, if-rate (default bsnn)."
)
@click.option("-T", "--timesteps", "timesteps_text", default="16,32,64,128", show_default=True, help="Steps to report.")
@click.option("-K", "--phases", type=click.IntRange(1, 16), help="K, phases per period (ANN models; default 8).")
@click.option(
    "--percentile",
    type=click.FloatRange(0, 100, min_open=True),
    help="Normalisation percentile (ANN models; default 99.99).",
)
@channelwise_option
@calibrate_option()
@input_lambda_option
@initial_potential_option(default=None)
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N test samples.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Samples per batch.")
@threads_option
@input_scale_option
@full_dynamics_option
@cluster_options
@json_option()
def eval_command(
    model: str,
    data_path: str,
    calib_path: str | None,
    modes: str | None,
    timesteps_text: str,
    phases: int | None,
    percentile: float | None,
    channelwise: bool,
    calibrate: str | None,
    input_lambda: float | None,
    initial_potential: str | None,
    limit: int | None,
    batch_size: int,
    threads: int | None,
    input_scale: float | None,
    full_dynamics: bool,
    workers: int | None,
    scheduler: str | None,
    shard_size: int,
    as_json: bool,
) -> None:
    """Accuracy versus time steps per neuron mode, against the ANN.

    MODEL.onnx may be an ANN (it is converted once per mode with the calibration
    data --calib) or an already converted SNN (evaluated in its own mode,
    against the normalised ANN it encodes).
    """
    from . import load_onnx

    steps = sorted(set(_parse_int_list(timesteps_text, "-T")))
    wanted = _parse_modes(modes)
    _check_model_file(model)
    graph = load_onnx(model)
    _one_output(graph, model)
    x, y = _load_data(data_path, graph, input_scale, limit)
    if y is None:
        raise DataError(f"{data_path}: eval needs labels (npz array 'y' or an IDX labels file beside the images)")
    conversion = {"phases": phases, "percentile": percentile, "channelwise": channelwise, "calibrate": calibrate,
                  "input_lambda": input_lambda, "initial_potential": initial_potential}
    if _is_spiking(graph):
        snns = _already_converted(model, wanted, modes, conversion, calib_path)
        reference = "normalised ANN encoded by the SNN"
    else:
        snns = _converted(graph, model, wanted, conversion, calib_path, input_scale, batch_size)
        reference = "ANN"
    ann_accuracy = _ann_accuracy(graph, x, y, batch_size)
    results, ann_macs_per_sample = {}, None
    cluster = open_cluster(workers, scheduler)
    for mode, snn in snns.items():
        label = f"{mode}: {len(x)} samples, T = {steps[-1]}"
        evaluation = _evaluate(snn, x, y, steps[-1], label, cluster, shard_size, batch_size=batch_size,
                               threads=threads, full_dynamics=full_dynamics)
        results[mode] = _mode_report(evaluation, steps, ann_accuracy)
        ann_macs_per_sample = evaluation.ann_macs
    document = {"model": str(model), "data": str(data_path), "calib": str(calib_path) if calib_path is not None else None,
                "samples": len(x), "reference": reference, "ann_accuracy": ann_accuracy,
                "ann_macs_per_sample": ann_macs_per_sample, "timesteps": steps, "modes": results}
    if as_json:
        _echo_json(document)
        return
    _print_eval(document)


# --------------------------------------------------------------------------- inspect


def _population_summary(trace, pop) -> dict:
    samples, steps, periods = trace.samples, trace.timesteps, trace.periods
    total = 0
    silent = 0.0
    for block in pop.iterate_spike_counts():
        total += int(block.sum(dtype=np.int64))
        silent += float((block == 0).mean(axis=1).sum()) if pop.neurons else 0.0
    neurons = pop.neurons
    denominator = max(samples * neurons, 1)
    sops = pop.sops
    gates = [g.name for g in trace.populations if g.op_type == "MaxGate" and g.source == pop.name]
    return {
        "name": pop.name,
        "op_type": pop.op_type,
        "stage": pop.stage,
        "neurons": neurons,
        "spikes_per_sample": total / max(samples, 1),
        "firing_rate": total / denominator / steps,
        "spikes_per_neuron_per_period": total / denominator / periods,
        "sops_per_sample": float(sops.mean()) if sops is not None and samples else None,
        "silent_share": silent / max(samples, 1),
        "recorded": pop.recorded,
        # a population read by a max gate delivers its spikes through the gate: its SOPs are counted there
        "delivers_through": gates,
        "source": pop.source,
    }


def _sops_cell(row: dict) -> str:
    if row["sops_per_sample"] is None:
        return "-"
    if row["delivers_through"] and not row["sops_per_sample"]:
        return f"via {', '.join(row['delivers_through'])}"
    return f"{row['sops_per_sample']:,.0f}"


def _totals(rows: list[dict], timesteps: int) -> dict:
    """Neurons, spikes, firing rate and SOPs per sample summed over ``rows`` (the populations shown)."""
    neurons = sum(r["neurons"] for r in rows)
    spikes = sum(r["spikes_per_sample"] for r in rows)
    known = [r["sops_per_sample"] for r in rows]
    return {
        "populations": [r["name"] for r in rows],
        "neurons": neurons,
        "spikes_per_sample": spikes,
        "firing_rate": spikes / max(neurons, 1) / timesteps,
        "sops_per_sample": None if any(v is None for v in known) else float(sum(known)),
    }


def inspect_trace(trace) -> dict:
    """The summary ``bsnn inspect`` prints, as a dict (the JSON document without ``plot``)."""
    populations = [_population_summary(trace, pop) for pop in trace.populations]
    samples = trace.samples
    sops_per_sample = float(trace.sops.mean()) if samples else None
    first = trace.first_output_step
    labels = trace.labels
    energy = runtime_energy(sops_per_sample, trace.ann_macs, trace.input_macs)
    neurons = sum(p["neurons"] for p in populations)
    spikes = sum(p["spikes_per_sample"] for p in populations)
    attrs = trace.attrs
    return {
        "trace": str(trace.path),
        "format_version": int(attrs["format_version"]),
        "generated_by": attrs.get("generated_by"),
        "created": attrs.get("created"),
        "model_file": attrs.get("model_file"),
        "model_sha256": attrs.get("model_sha256"),
        "input_file": attrs.get("input_file"),
        "mode": trace.mode,
        "phases": trace.phases,
        "timesteps": trace.timesteps,
        "schedule": _text(attrs.get("schedule")),
        "initial_potential": _text(attrs.get("initial_potential")),
        "samples": samples,
        "samples_total": trace.samples_total,
        "complete": trace.complete,
        "first_output_step": first,
        "accuracy": trace.accuracy() if labels is not None and samples else None,
        "accuracy_first_output": (
            trace.accuracy(first)
            if labels is not None and samples and first is not None and first <= trace.timesteps
            else None
        ),
        "neurons": neurons,
        "spikes_per_sample": spikes,
        "firing_rate": spikes / max(neurons, 1) / trace.timesteps,
        "sops_per_sample": sops_per_sample,
        "energy": energy,
        "populations": populations,
    }


def _inspect_rows(document: dict, shown: list[dict], population: str | None) -> list[list[str]]:
    """The population table of ``bsnn inspect``: one row per population shown, then the total."""
    rows = [
        [
            p["name"],
            p["op_type"],
            str(p["stage"]),
            f"{p['neurons']:,}",
            f"{p['firing_rate']:.4f}",
            f"{p['spikes_per_neuron_per_period']:.3f}",
            _sops_cell(p),
            f"{100 * p['silent_share']:.1f} %",
        ]
        for p in shown
    ]
    totals, name = (document, "total") if population is None else (document["shown_totals"], "total (shown)")
    total = [name, "", "", f"{totals['neurons']:,}", f"{totals['firing_rate']:.4f}", ""]
    total += ["-" if totals["sops_per_sample"] is None else f"{totals['sops_per_sample']:,.0f}", ""]
    return [*rows, total]


def _print_inspect(document: dict, trace_path: str, shown: list[dict], population: str | None) -> None:
    """The report of ``bsnn inspect`` as text."""
    status = "complete" if document["complete"] else "INCOMPLETE (interrupted run)"
    click.echo(f"trace      {trace_path}: {document['samples']} of {document['samples_total']} samples, {status}")
    click.echo(f"model      {document['model_file']} (sha256 {str(document['model_sha256'])[:12]}...)")
    schedule = f", schedule {document['schedule']}" if document["schedule"] else ""
    start = f", initial potential {document['initial_potential']}" if document["initial_potential"] else ""
    click.echo(f"run        mode {document['mode']}, K = {document['phases']}, T = {document['timesteps']}{schedule}{start}")
    if document["accuracy"] is not None:
        line = f"accuracy   {_percent(document['accuracy'])} at T = {document['timesteps']}"
        if document["accuracy_first_output"] is not None:
            line += f", {_percent(document['accuracy_first_output'])} at T = {document['first_output_step']}"
        click.echo(line)
    click.echo("")
    header = ["population", "op", "stage", "neurons", "rate/step", "spikes/period", "SOPs/sample", "silent"]
    gates = sum(p["op_type"] == "MaxGate" for p in document["populations"])
    kinds = f"{len(document['populations'])} spiking nodes"
    if gates:
        kinds += f" ({len(document['populations']) - gates} populations and {gates} max gates)"
    click.echo(kinds)
    _print_table(header, _inspect_rows(document, shown, population))
    if any(p["delivers_through"] for p in shown):
        click.echo("(via G: this population's spikes reach its targets through max gate G, whose row counts the SOPs)")
    if document["energy"]["snn_energy_pj_per_sample"] is not None:
        click.echo("")
        click.echo(_energy_line(document["energy"]))
    if document["plot"] is not None:
        click.echo(f"plot       {document['plot']['path']}")


@click.command("inspect")
@click.argument("trace_path", metavar="TRACE.h5", type=click.Path(dir_okay=False))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Draw a raster and firing rates here.")
@click.option("--population", help="Only this population in the table; its events form the raster.")
@click.option("--sample", type=click.IntRange(min=0), help="Sample shown in the raster (default: first recorded).")
@click.option("--overwrite", is_flag=True, help="Replace an existing plot file.")
@json_option()
def inspect_command(
    trace_path: str,
    plot_path: str | None,
    population: str | None,
    sample: int | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Firing statistics, SOPs and the energy estimate of a spike trace."""
    from runtime.trace import open_trace

    if plot_path is not None:
        check_output_path(plot_path, overwrite)  # before reading the trace
    with open_trace(trace_path) as trace:
        if population is not None:
            trace.population(population)  # a clear error if there is none
        document = inspect_trace(trace)
        plot = None
        if plot_path is not None:
            from .plot import plot_trace

            rates = [(p["name"], p["firing_rate"]) for p in document["populations"]]
            plot = plot_trace(trace, plot_path, rates, population=population, sample=sample, overwrite=overwrite)
    document["plot"] = plot
    shown = [p for p in document["populations"] if population is None or p["name"] == population]
    if population is not None:
        document["shown_totals"] = _totals(shown, document["timesteps"])
    if as_json:
        _echo_json(document)
        return
    _print_inspect(document, trace_path, shown, population)


COMMANDS = [run_command, eval_command, inspect_command]
