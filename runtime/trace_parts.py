"""A trace written in parts: one HDF5 part file per shard of samples, one combined file over them.

A sharded run (:mod:`runtime.distributed`) writes every shard of samples
``first:last`` as its own trace file (:class:`runtime.trace.TraceWriter`
layout, events already carrying the run's global sample indices) in a
folder beside the target, ``OUT.h5.parts/<first>-<last>.h5``. Each part
also carries the root attributes ``shard_first``, ``shard_last`` and
``shard_key`` (a digest of what the shard was computed from: model, samples,
labels, T and what is recorded), so a rerun reuses a part only if it was
computed from the same things (:func:`finished_part`).

:func:`combine_parts` then writes the target ``OUT.h5`` as one trace whose
per-sample datasets are HDF5 *virtual datasets* over the parts (sources are
named relative to the target's folder, so the target and its ``.parts``
folder move together). Only ``labels`` and ``recorded_samples`` are stored
in the combined file itself. Virtual datasets were chosen over copying the
parts into one file because the combined file is then written in constant
time whatever the run's size (``benchmarks/distributed_speed.py`` measures
both); the price is that the parts must stay beside the target.

The combined file follows the trace rules of :mod:`runtime.trace`: it is
written under a temporary name and renamed; it holds the shards from 0 up to
the first missing one (``samples_written``) and says ``complete = false``
unless every shard is there. It is read like any trace
(:func:`runtime.trace.open_trace`, ``bsnn inspect``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bsnn_graph.errors import TraceError
from bsnn_graph.fileutil import atomic_output

from .simulate import SimulationResult
from .trace import FORMAT, open_trace, utc_now

__all__ = [
    "PARTS_SUFFIX",
    "SHARD_ATTRIBUTES",
    "combine_parts",
    "finished_part",
    "is_resumable",
    "part_path",
    "parts_folder",
    "read_part",
]

#: the folder of a target's parts is the target's name plus this
PARTS_SUFFIX = ".parts"
#: root attributes a part has and the combined file has not
SHARD_ATTRIBUTES = ("shard_first", "shard_last", "shard_key")

_COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


def _h5py():
    import h5py

    return h5py


def parts_folder(target: str | os.PathLike) -> Path:
    """The folder beside ``target`` that holds its part files: ``OUT.h5.parts``."""
    target = Path(target)
    return target.parent / f"{target.name}{PARTS_SUFFIX}"


def part_path(target: str | os.PathLike, first: int, last: int) -> Path:
    """The part file of samples ``first:last`` of ``target``."""
    return parts_folder(target) / f"{first:08d}-{last:08d}.h5"


def _text(value, default: str = "") -> str:
    """A trace's string attribute as str (traces store strings as bytes, see docs/trace-format.md)."""
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def finished_part(path: str | os.PathLike, key: str) -> bool:
    """True if ``path`` is a complete part trace computed from ``key`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open_trace(path) as trace:
            return trace.complete and _text(trace.attrs.get("shard_key")) == key
    except (TraceError, OSError):
        return False


def is_resumable(target: str | os.PathLike) -> bool:
    """True if ``target`` is the incomplete combined trace of an interrupted sharded run.

    Such a file only indexes its parts, which are kept, so a rerun may
    replace it without ``--overwrite``.
    """
    target = Path(target)
    try:
        with open_trace(target) as trace:
            return (not trace.complete) and _text(trace.attrs.get("parts")) == parts_folder(target).name
    except (TraceError, OSError):
        return False


def read_part(path: str | os.PathLike) -> SimulationResult:
    """The results a part file holds, as the :class:`runtime.SimulationResult` of its shard.

    Spike counts are per sample (int32 (n,)), as ``simulate`` returns them
    with ``per_neuron_counts=False``; events keep their global sample indices.
    ``extra["deliveries"]`` and ``extra["sops_per_period"]`` are not stored in traces and are -1.
    """
    with open_trace(path) as trace:
        n = trace.samples
        attrs = trace.attrs
        populations, counts, sops, events = [], {}, {}, {}
        for pop in trace.populations:
            scale = np.asarray(pop.scale, np.float32)
            populations.append(
                {
                    "name": pop.name,
                    "op_type": pop.op_type,
                    "shape": tuple(pop.shape),
                    "stage": pop.stage,
                    "scale": float(scale) if scale.ndim == 0 else scale.tolist(),
                }
            )
            counts[pop.name] = np.concatenate(
                [block.sum(axis=1, dtype=np.int64).astype(np.int32) for block in pop.iterate_spike_counts()]
                or [np.zeros(0, np.int32)]
            )
            values = pop.sops
            sops[pop.name] = values if values is not None else np.full(n, -1, np.int64)
            if pop.recorded:
                events[pop.name] = np.ascontiguousarray(pop.events, dtype=np.int32)
        return SimulationResult(
            predictions=np.ascontiguousarray(trace.predictions.T),
            logits=np.ascontiguousarray(np.asarray(trace.logits, np.float32).transpose(1, 0, 2)),
            spike_counts=counts,
            sops=np.asarray(trace.sops, np.int64),
            sops_per_population=sops,
            events=events,
            timesteps=trace.timesteps,
            phases=trace.phases,
            mode=trace.mode,
            populations=populations,
            ann_macs=trace.ann_macs or 0,
            input_macs=trace.input_macs or 0,
            schedule=_text(attrs.get("schedule"), "light-cone"),
            initial_potential=_text(attrs.get("initial_potential"), "half"),
            extra={"deliveries": np.full(n, -1, np.int64),
                   "sops_per_period": np.full((trace.periods, n), -1, np.int64)},
        )


def _virtual(group, name: str, sources: list[tuple[str, object]], folder: Path) -> None:
    """Dataset ``name`` of ``group``: the rows of the same dataset in every source file, in order."""
    h5py = _h5py()
    first = sources[0][1]
    rows = sum(dset.shape[0] for _, dset in sources)
    if rows == 0:  # a virtual dataset needs a source; an empty dataset stands in
        group.create_dataset(name, shape=(0,) + first.shape[1:], maxshape=(None,) + first.shape[1:],
                             dtype=first.dtype, chunks=(1024,) + first.shape[1:] if first.ndim > 1 else (1024,),
                             **_COMPRESSION)
    else:
        layout = h5py.VirtualLayout(shape=(rows,) + first.shape[1:], dtype=first.dtype)
        offset = 0
        for relative, dset in sources:
            if dset.shape[0]:
                source = h5py.VirtualSource(relative, dset.name, shape=dset.shape)
                layout[offset : offset + dset.shape[0]] = source
                offset += dset.shape[0]
        group.create_virtual_dataset(name, layout)
    for key, value in first.attrs.items():
        group[name].attrs[key] = value


def combine_parts(
    target: str | os.PathLike,
    parts: Sequence[tuple[int, int, str | os.PathLike]],
    *,
    samples_total: int,
    labels: np.ndarray | None = None,
    record_samples: Sequence[int] | None = None,
    attributes: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``target`` as one trace over the part files ``parts``; return ``target``.

    Parameters
    ----------
    target : the combined trace to write (through a temporary name, then renamed).
    parts : (first, last, path) of the finished shards, in any order. The
        file covers the shards from sample 0 up to the first gap;
        ``complete`` is True only if they reach ``samples_total``.
    samples_total : samples of the whole run.
    labels : labels of all ``samples_total`` samples, or None.
    record_samples : global indices of the samples whose events are recorded
        (None: all samples, or nothing is recorded).
    attributes : root attributes to set over those copied from the first
        part (e.g. ``model_file``, ``model_sha256``, ``input_file``).
    overwrite : replace an existing ``target``; without it an existing
        target is replaced only if it is the incomplete trace of an
        interrupted sharded run (:func:`is_resumable`).

    Raises
    ------
    TraceError
        ``target`` exists (and may not be replaced), or there are no parts.
    """
    h5py = _h5py()
    target = Path(target)
    if target.exists() and not overwrite and not is_resumable(target):
        raise TraceError(f"{target}: file exists (use --overwrite to replace it)")
    ordered = _leading_parts(parts)
    if not ordered:
        raise TraceError(f"{target}: no finished part from sample 0 to combine")
    done = ordered[-1][1]
    folder = target.parent if str(target.parent) else Path(".")
    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(h5py.File(path, "r")) for _, _, path in ordered]
        names = [os.path.relpath(path, folder) for _, _, path in ordered]
        first_file = sources[0]
        with atomic_output(target, overwrite=True) as tmp, h5py.File(tmp, "w") as out:
            attrs = {k: v for k, v in first_file.attrs.items() if k not in SHARD_ATTRIBUTES}
            attrs.update(
                format=FORMAT,
                created=utc_now(),
                samples_total=int(samples_total),
                samples_written=int(done),
                complete=bool(done == samples_total),
                parts=parts_folder(target).name,
                shards=len(ordered),
            )
            attrs.update(attributes or {})
            out.attrs.update(attrs)
            _combine_datasets(out, names, sources, folder, labels, record_samples)
    return target


def _leading_parts(parts: Sequence[tuple[int, int, str | os.PathLike]]) -> list[tuple[int, int, Path]]:
    """The parts (first, last, path) that follow each other from sample 0, in order, up to the first gap."""
    ordered, done = [], 0
    for first, last, path in sorted((int(a), int(b), Path(p)) for a, b, p in parts):
        if first != done:
            break  # the first gap: later shards are not held
        ordered.append((first, last, path))
        done = last
    return ordered


def _combine_datasets(out, names: list[str], sources: list, folder: Path, labels, record_samples) -> None:
    """The combined file's datasets: the root ones and every population's, virtual over the parts' rows; the
    labels and the recorded samples written in full."""
    first_file = sources[0]
    for name in ("predictions", "logits", "sops"):
        _virtual(out, name, [(n, f[name]) for n, f in zip(names, sources)], folder)
    if labels is not None:
        dset = out.create_dataset("labels", data=np.asarray(labels, np.int32).reshape(-1), chunks=True,
                                  **_COMPRESSION)
        dset.attrs["description"] = "true class of every sample (all samples_total of them)"
    if "recorded_samples" in first_file and record_samples is not None:
        out.create_dataset("recorded_samples", data=np.unique(np.asarray(record_samples, np.int32)))
    groups = out.create_group("populations")
    for key in sorted(first_file["populations"]):
        group = groups.create_group(key)
        group.attrs.update(dict(first_file["populations"][key].attrs))
        for name in first_file["populations"][key]:
            members = [(n, f["populations"][key][name]) for n, f in zip(names, sources)]
            _virtual(group, name, members, folder)
