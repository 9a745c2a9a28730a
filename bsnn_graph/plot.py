"""Figures of a spike trace (``bsnn inspect --plot``): a raster and firing rates per layer.

Needs matplotlib (the ``plot`` extra: ``pip install 'bsnn-graph[plot]'``).
The figure is drawn with matplotlib's object API (no pyplot, no global
backend state) and written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import BsnnError, TraceError
from .fileutil import atomic_output

__all__ = ["plot_trace"]

_RASTER_ROWS = 300  # about the raster's height in pixels at 120 dpi


def _figure_class():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise BsnnError("--plot needs matplotlib: pip install 'bsnn-graph[plot]'") from None
    return Figure, FigureCanvasAgg


def plot_trace(
    trace,
    path: str | os.PathLike,
    rates: Sequence[tuple[str, float]],
    population: str | None = None,
    sample: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Draw a raster of one recorded population and the firing rate of every population.

    Parameters
    ----------
    trace : an open :class:`runtime.trace.Trace`.
    path : the image file (format from its suffix: png, pdf, svg ...).
    rates : (population name, spikes per neuron per step) for the bar chart.
    population : the population whose events form the raster; default the
        first recorded one. Without recorded events only the rates are drawn.
    sample : the sample shown in the raster; default the first recorded one.
    overwrite : replace an existing ``path``.

    Returns
    -------
    dict with ``path``, ``raster_population``, ``raster_sample`` and
    ``raster_spikes`` (None for the raster keys when no raster was drawn).
    """
    Figure, FigureCanvasAgg = _figure_class()
    path = Path(path)
    raster_pop = _raster_population(trace, population)
    events = None
    if raster_pop is not None:
        sample = _raster_sample(trace, raster_pop, sample)
        rows = raster_pop.events
        events = rows[rows[:, 0] == sample]

    suffix = path.suffix.lstrip(".").lower() or "png"
    # the rates are horizontal bars, one row per population with its whole name: the figure grows with them
    bar_height = max(2.0, 0.28 * len(rates) + 1.0)
    figure = Figure(figsize=(10, bar_height + (4.5 if events is not None else 0)), layout="constrained")
    canvas = FigureCanvasAgg(figure)
    if suffix not in canvas.get_supported_filetypes():
        known = ", ".join(sorted(canvas.get_supported_filetypes()))
        raise BsnnError(f"{path}: cannot write images of type {suffix!r} (use one of {known})")
    if events is not None:
        raster, bars = figure.subplots(2, 1, height_ratios=(4.5, bar_height))
        _draw_raster(figure, raster, trace, raster_pop, sample, events)
    else:
        bars = figure.subplots(1, 1)
    _draw_rates(bars, trace, rates)
    with atomic_output(path, overwrite=overwrite) as tmp:
        figure.savefig(tmp, format=suffix, dpi=120)
    return {
        "path": str(path),
        "raster_population": raster_pop.name if events is not None else None,
        "raster_sample": sample if events is not None else None,
        "raster_spikes": len(events) if events is not None else None,
    }


def _raster_population(trace, population: str | None):
    """The population the raster shows: ``population`` (it must have recorded events), else the first recorded
    one; None if none was recorded."""
    if population is None:
        return next((p for p in trace.populations if p.recorded), None)
    chosen = trace.population(population)
    if not chosen.recorded:
        recorded = ", ".join(p.name for p in trace.populations if p.recorded) or "none"
        raise TraceError(
            f"{trace.path}: population {population!r} has no recorded events (recorded: {recorded}; "
            "use bsnn run --record POP)"
        )
    return chosen


def _raster_sample(trace, pop, sample: int | None) -> int:
    """The sample the raster shows: ``sample`` (it must be recorded), else the first recorded one."""
    held = pop.recorded_samples
    if sample is None:
        if len(held) == 0:
            raise TraceError(f"{trace.path}: population {pop.name!r} has no recorded sample in the file")
        return int(held[0])
    if sample not in {int(s) for s in held}:
        raise TraceError(
            f"{trace.path}: sample {sample} of population {pop.name!r} was not recorded "
            f"(recorded: {', '.join(str(int(s)) for s in held[:10])}{' ...' if len(held) > 10 else ''})"
        )
    return sample


def _draw_raster(figure, raster, trace, pop, sample: int, events: np.ndarray) -> None:
    """The raster of ``pop``'s spikes in ``sample`` (``events``: its (sample, step, neuron) rows) on axes ``raster``."""
    neurons = pop.neurons
    binned = ""
    if neurons <= _RASTER_ROWS:
        # one row per neuron: a tick as tall as the row (in points), within reason
        size = min(max((250.0 / max(neurons, 1)) ** 2, 1.0), 36.0)
        raster.scatter(events[:, 1], events[:, 2], s=size, marker="|", color="black", linewidths=1.0)
    else:
        # more neurons than pixel rows: show spikes per group of neurons and step
        per_row = -(-neurons // _RASTER_ROWS)
        image = np.zeros((-(-neurons // per_row), trace.timesteps), np.int32)
        np.add.at(image, (events[:, 2] // per_row, events[:, 1]), 1)
        shown = raster.imshow(
            image,
            aspect="auto",
            origin="lower",
            cmap="Greys",
            interpolation="nearest",
            extent=(-0.5, trace.timesteps - 0.5, -0.5, image.shape[0] * per_row - 0.5),
        )
        figure.colorbar(shown, ax=raster, label=f"spikes per {per_row} neurons")
        binned = f", neurons in groups of {per_row}"
    raster.set_xlim(-0.5, trace.timesteps - 0.5)
    raster.set_ylim(-0.5, neurons - 0.5)
    for boundary in range(trace.phases, trace.timesteps, trace.phases):
        raster.axvline(boundary - 0.5, color="0.85", linewidth=0.6, zorder=0)
    raster.set_xlabel("time step")
    raster.set_ylabel("neuron (flat index)")
    raster.set_title(
        f"{pop.name} ({pop.op_type}, stage {pop.stage}), sample {sample}: "
        f"{len(events)} spikes; period boundaries every K = {trace.phases} steps{binned}",
        fontsize=9,
    )


def _draw_rates(bars, trace, rates: Sequence[tuple[str, float]]) -> None:
    """The firing rate of every population as horizontal bars on axes ``bars``, first population on top."""
    names = [name for name, _ in rates]
    values = np.array([rate for _, rate in rates], dtype=np.float64)
    positions = np.arange(len(names))
    bars.barh(positions, values, color="tab:blue")
    bars.set_yticks(positions, [_short(n) for n in names], fontsize=9)
    bars.invert_yaxis()  # first population on top, as in the table of bsnn inspect
    bars.set_xlabel("spikes per neuron per step")
    bars.set_title(
        f"firing rate per population ({trace.mode}, K = {trace.phases}, T = {trace.timesteps}, "
        f"{trace.samples} samples)",
        fontsize=9,
    )


def _short(name: str, width: int = 48) -> str:
    """``name``, or its start and end around an ellipsis when longer than ``width`` (both ends tell layers apart)."""
    if len(name) <= width:
        return name
    head = (width - 3) // 2
    return name[:head] + "..." + name[-(width - 3 - head) :]
