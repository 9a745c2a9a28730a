"""Spike traces: HDF5 files written while a simulation runs, and their reader.

The schema is documented in ``docs/trace-format.md``. In short: root
attributes describe the run (``format``, ``format_version``, model, mode,
K, T, how many samples the file holds and whether the run completed); root
datasets hold per-sample results (``predictions``, ``logits``, ``labels``,
``sops``); ``populations/NNN`` groups hold, per spiking population, the
spike count of every neuron for every sample, the SOPs its spikes caused
and, for recorded populations, the spike events.

Writing (:class:`TraceWriter`) streams: every dataset is chunked,
gzip + shuffle compressed and resizable along the sample (or event) axis;
each :meth:`TraceWriter.append` grows the datasets by one batch, then
updates the ``samples_written`` attribute and flushes. The file is written
under a temporary name beside the target (``.NAME.XXXX.tmp``) and renamed
to the target when the writer is closed:

- run completed: the file (``complete = True``) is renamed to the target;
- run interrupted (an exception or ``KeyboardInterrupt`` inside the
  ``with`` block) after at least one batch: the partial file
  (``complete = False``, ``samples_written`` = samples it holds) is renamed
  to the target all the same, so the user has it;
- interrupted before any batch was written: the temporary file is deleted
  and the target is not touched;
- an existing target is an error when the writer is created unless
  ``overwrite=True``; without ``overwrite`` the final rename never replaces
  a file (one that appeared during the run makes the writer keep its
  temporary file and say so).

Reading: :func:`open_trace` returns a :class:`Trace` whose arrays are read
on access and cut to the ``samples_written`` samples the file holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bsnn_graph.errors import TraceError

from .schedule import BISTABLE_MODES, first_output_step
from .simulate import E_AC_PJ, E_MAC_PJ

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "E_AC_PJ",
    "E_MAC_PJ",
    "FORMAT",
    "FORMAT_VERSION",
    "PopulationTrace",
    "Trace",
    "TraceWriter",
    "file_sha256",
    "open_trace",
    "utc_now",
    "write_trace",
]

FORMAT = "bsnn-trace"
FORMAT_VERSION = 1

_COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
_CHUNK_BYTES = 1 << 18  # target chunk size, 256 KiB
_EVENT_CHUNK_ROWS = 16384


def _h5py():
    import h5py  # deferred: h5py is only needed by traces

    return h5py


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bsnn-graph")
    except PackageNotFoundError:  # running from a source tree that is not installed
        import bsnn_graph

        return bsnn_graph.__version__


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second (the ``created`` attribute of a trace)."""
    # datetime.UTC needs Python 3.11; the package supports 3.10
    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: UP017


def _new_file_mode() -> int:
    """Permissions an ordinary new file gets (0666 minus the umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _text(value: str) -> np.bytes_:
    """A string attribute as fixed-length UTF-8 bytes.

    h5py writes ``str`` as variable-length strings, which live in the file's
    global heap; HDF5 can loop forever reading a damaged global heap, so a
    trace keeps its strings inline (readers decode the bytes).
    """
    return np.bytes_(value.encode("utf-8"))


def _texts(values: Sequence[str]) -> np.ndarray:
    """A list of strings as a fixed-length bytes array (see :func:`_text`)."""
    encoded = [str(v).encode("utf-8") for v in values]
    return np.array(encoded, dtype=f"S{max([len(e) for e in encoded] + [1])}")


def _rows_per_chunk(row_shape: tuple[int, ...], itemsize: int) -> int:
    row_bytes = max(1, math.prod(row_shape) * itemsize)
    return int(min(1024, max(1, _CHUNK_BYTES // row_bytes)))


def _growing(group, name: str, row_shape: tuple[int, ...], dtype, rows: int | None = None):
    """A dataset of shape (0, *row_shape) resizable along axis 0, chunked and compressed."""
    dtype = np.dtype(dtype)
    rows = rows or _rows_per_chunk(row_shape, dtype.itemsize)
    return group.create_dataset(
        name,
        shape=(0,) + row_shape,
        maxshape=(None,) + row_shape,
        dtype=dtype,
        chunks=(rows,) + tuple(max(1, d) for d in row_shape),
        **_COMPRESSION,
    )


def _extend(dataset, values: np.ndarray) -> None:
    old = dataset.shape[0]
    if len(values) == 0:
        return
    dataset.resize(old + len(values), axis=0)
    dataset[old:] = values


def _spike_count_dtype(timesteps: int) -> np.dtype:
    # a neuron emits at most one spike per step, so T bounds every count
    return np.dtype(np.uint16) if timesteps <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def _prediction_dtype(classes: int) -> np.dtype:
    return np.dtype(np.int16) if classes <= np.iinfo(np.int16).max else np.dtype(np.int32)


class TraceWriter:
    """Stream a simulation into an HDF5 trace file.

    Use as a context manager; call :meth:`append` once per batch, in sample
    order (``runtime.simulate``'s ``on_batch`` callback fits it directly).
    What happens to the file on success, interruption and name clashes is
    described in the module docstring.

    Parameters
    ----------
    path : the trace file to produce.
    populations : ordered list of dicts with keys ``name``, ``op_type``,
        ``shape``, ``stage``, ``scale`` (``SimulationResult.populations``).
    timesteps, phases, mode : T, K and the neuron mode of the run.
    classes : number of output classes (logits per sample).
    samples_total : how many samples the run will simulate.
    model_path : the model file (its name and sha256 are stored).
    input_path : the data file (its name is stored).
    labels : int labels of all ``samples_total`` samples, or None.
    ann_macs : multiply-accumulates per sample of the ANN the SNN encodes
        (for the energy estimate), or None if unknown.
    input_macs : MACs per sample of the analog input layer, which the SNN
        computes densely too (for the energy estimate), or None if unknown.
    output_stage : stage L + 1 of the output accumulator, or None if unknown
        (the first full output of the ``bsnn`` modes is at step (L + 1) K).
    record : names of populations whose spike events are stored.
    record_samples : indices of the samples whose events are stored
        (None: all samples).
    overwrite : replace an existing ``path``.
    attributes : extra root attributes (str -> str, int, float or bool).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        populations: Sequence[Mapping[str, Any]],
        timesteps: int,
        phases: int,
        mode: str,
        classes: int,
        samples_total: int,
        model_path: str | os.PathLike | None = None,
        input_path: str | os.PathLike | None = None,
        labels: np.ndarray | None = None,
        ann_macs: int | None = None,
        input_macs: int | None = None,
        output_stage: int | None = None,
        record: Iterable[str] = (),
        record_samples: Iterable[int] | None = None,
        overwrite: bool = False,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.final_path: Path | None = None
        self.samples_total = int(samples_total)
        self.samples_written = 0
        self._file = None
        self._publish_early = not self.path.exists()
        self._closed = False
        folder = self._check_target()
        self.record = self._check_record(populations, record)
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if len(labels) != self.samples_total:
                raise TraceError(f"{self.path}: {len(labels)} labels for {self.samples_total} samples")
        model_sha = file_sha256(model_path) if model_path is not None else ""
        self._open_temporary(folder)
        try:
            self._create(
                populations=populations,
                timesteps=int(timesteps),
                phases=int(phases),
                mode=str(mode),
                classes=int(classes),
                model_path=model_path,
                model_sha=model_sha,
                input_path=input_path,
                labels=labels,
                ann_macs=ann_macs,
                input_macs=input_macs,
                output_stage=output_stage,
                record_samples=record_samples,
                attributes=attributes or {},
            )
        except BaseException:
            self._discard()
            raise

    def _check_target(self) -> Path:
        """Refuse a target that is a folder, exists (without ``overwrite``) or has no folder; returns the folder."""
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if self.path.is_dir():
            raise TraceError(f"{self.path}: is a folder, not a trace file name")
        if self.path.exists() and not self.overwrite:
            raise TraceError(f"{self.path}: file exists (use --overwrite to replace it)")
        if not folder.is_dir():
            raise TraceError(f"{self.path}: folder {folder} does not exist")
        return folder

    def _check_record(self, populations: Sequence[Mapping[str, Any]], record: Iterable[str]) -> list[str]:
        """The recorded population names, checked: population names unique, every recorded one known."""
        names = [str(p["name"]) for p in populations]
        if len(set(names)) != len(names):
            raise TraceError(f"{self.path}: population names are not unique: {names}")
        chosen = [str(r) for r in record]
        unknown = [r for r in chosen if r not in names]
        if unknown:
            raise TraceError(
                f"cannot record {', '.join(unknown)}: no such population (have {', '.join(names) or 'none'})"
            )
        return chosen

    def _open_temporary(self, folder: Path) -> None:
        """The temporary file beside the target (``.NAME.XXXX.tmp``) with an ordinary new file's permissions."""
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        self._tmp = Path(tmp)
        self._live = self._tmp  # where the file being written is: the target once named
        os.chmod(self._tmp, _new_file_mode())  # mkstemp makes 0600; give the usual rw-r--r-- (umask)

    # ------------------------------------------------------------------ layout

    def _create(
        self,
        *,
        populations,
        timesteps,
        phases,
        mode,
        classes,
        model_path,
        model_sha,
        input_path,
        labels,
        ann_macs,
        input_macs,
        output_stage,
        record_samples,
        attributes,
    ) -> None:
        """Lay out the file: root attributes, per-sample datasets, what is recorded, one group per population."""
        h5py = _h5py()
        # libver "latest" allows SWMR: a file whose writer is killed stays readable
        f = self._file = h5py.File(self._tmp, "w", libver="latest")
        periods = -(-timesteps // phases)
        root = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "generated_by": f"bsnn-graph {_version()}",
            "created": utc_now(),
            "model_sha256": model_sha,
            "model_file": Path(model_path).name if model_path is not None else "",
            "input_file": Path(input_path).name if input_path is not None else "",
            "mode": mode,
            "phases": phases,
            "timesteps": timesteps,
            "periods": periods,
            "classes": classes,
            "samples_total": self.samples_total,
            "samples_written": 0,
            "complete": False,
            "ann_macs": int(ann_macs) if ann_macs is not None else -1,
            "input_macs": int(input_macs) if input_macs is not None else -1,
            "output_stage": int(output_stage) if output_stage is not None else -1,
            "e_ac_pj": E_AC_PJ,
            "e_mac_pj": E_MAC_PJ,
        }
        for key, value in attributes.items():
            if key in root:
                raise TraceError(f"{self.path}: extra attribute {key!r} clashes with a format attribute")
            root[key] = value
        f.attrs.update({key: _text(value) if isinstance(value, str) else value for key, value in root.items()})
        self._create_sample_datasets(f, timesteps, periods, classes, labels)
        self._write_record_selection(f, record_samples)
        self._create_populations(f, populations, timesteps)
        self._progress = f.create_dataset("samples_written", data=np.zeros(1, np.int64), maxshape=(1,), chunks=(1,))
        self._progress.attrs["description"] = _text("samples the file holds, written after each batch's data")
        f.flush()
        f.swmr_mode = True  # from here on the file on disk is consistent after every flush

    def _create_sample_datasets(self, f, timesteps: int, periods: int, classes: int, labels) -> None:
        """The root datasets with one row per sample: predictions, logits, SOPs (growing) and the labels."""
        self._predictions = _growing(f, "predictions", (timesteps,), _prediction_dtype(classes))
        self._predictions.attrs["description"] = _text("argmax of the output potential after every step")
        self._logits = _growing(f, "logits", (periods, classes), np.float32)
        self._logits.attrs["description"] = _text("output potential at the end of every period")
        self._sops = _growing(f, "sops", (), np.int64, rows=4096)
        self._sops.attrs["description"] = _text("synaptic operations per sample")
        if labels is not None:
            dset = f.create_dataset("labels", data=labels.astype(np.int32), chunks=True, **_COMPRESSION)
            dset.attrs["description"] = _text("true class of every sample (all samples_total of them)")

    def _write_record_selection(self, f, record_samples) -> None:
        """Which populations and samples have their events stored (root attributes, ``recorded_samples``)."""
        if record_samples is None:
            self._record_filter = None
        else:
            self._record_filter = np.unique(np.asarray(list(record_samples), dtype=np.int64))
        f.attrs["record_populations"] = _texts(self.record)
        if self.record:
            if self._record_filter is None:
                f.attrs["record_all_samples"] = True
            else:
                f.attrs["record_all_samples"] = False
                f.create_dataset("recorded_samples", data=self._record_filter.astype(np.int32))

    def _create_populations(self, f, populations, timesteps: int) -> None:
        """A group ``populations/NNN`` per population: its attributes, spike counts, SOPs and events (recorded)."""
        groups = f.create_group("populations")
        self._groups = {}
        count_dtype = _spike_count_dtype(timesteps)
        for index, pop in enumerate(populations):
            name = str(pop["name"])
            shape = tuple(int(d) for d in pop["shape"])
            group = groups.create_group(f"{index:03d}")
            group.attrs.update(
                name=_text(name),
                index=index,
                op_type=_text(str(pop.get("op_type", ""))),
                shape=np.asarray(shape, dtype=np.int64),
                stage=int(pop.get("stage", -1)),
                scale=np.asarray(pop.get("scale", 1.0), dtype=np.float32),
            )
            if pop.get("source"):
                group.attrs["source"] = _text(str(pop["source"]))  # a MaxGate's input population
            counts = _growing(group, "spike_counts", (math.prod(shape),), count_dtype)
            counts.attrs["description"] = _text("spikes of every neuron (flat C-order index) per sample")
            sops = _growing(group, "sops", (), np.int64, rows=4096)
            sops.attrs["description"] = _text("synaptic operations caused by this population's spikes, per sample")
            entry = {"shape": shape, "counts": counts, "sops": sops, "events": None}
            if name in self.record:
                events = _growing(group, "events", (3,), np.int32, rows=_EVENT_CHUNK_ROWS)
                events.attrs["columns"] = _texts(["sample", "step", "neuron"])
                entry["events"] = events
            self._groups[name] = entry

    # ------------------------------------------------------------------ streaming

    def append(self, start: int, stop: int, result: Any) -> None:
        """Add the samples ``start:stop`` of a run.

        ``result`` holds that batch only, with the fields of
        ``runtime.SimulationResult``: ``predictions`` (T, n), ``logits``
        (P, n, classes), ``spike_counts`` (name -> (n, *shape)), ``sops`` (n,),
        ``sops_per_population`` (name -> (n,)) and ``events`` (name -> (E, 3)
        rows of global sample index, step, flat neuron index).
        """
        if self._file is None:
            raise TraceError(f"{self.path}: trace writer is closed")
        if start != self.samples_written or stop < start or stop > self.samples_total:
            raise TraceError(
                f"{self.path}: batch {start}:{stop} does not follow the {self.samples_written} samples written "
                f"(of {self.samples_total})"
            )
        n = stop - start
        predictions = np.asarray(result.predictions)
        logits = np.asarray(result.logits)
        if predictions.shape != (self._predictions.shape[1], n):
            raise TraceError(f"{self.path}: predictions of shape {predictions.shape} for a batch of {n}")
        if logits.shape != (self._logits.shape[1], n, self._logits.shape[2]):
            raise TraceError(f"{self.path}: logits of shape {logits.shape} for a batch of {n}")
        _extend(self._predictions, predictions.T)
        _extend(self._logits, np.ascontiguousarray(logits.transpose(1, 0, 2), dtype=np.float32))
        _extend(self._sops, np.asarray(result.sops, dtype=np.int64).reshape(n))
        sops_per_population = getattr(result, "sops_per_population", None) or {}
        events = getattr(result, "events", None) or {}
        for name, entry in self._groups.items():
            counts = result.spike_counts.get(name) if result.spike_counts is not None else None
            if counts is None:
                raise TraceError(f"{self.path}: batch {start}:{stop} has no spike counts for population {name!r}")
            counts = np.asarray(counts).reshape(n, -1)
            _extend(entry["counts"], counts.astype(entry["counts"].dtype))
            sops = sops_per_population.get(name)
            _extend(entry["sops"], np.full(n, -1, np.int64) if sops is None else np.asarray(sops, np.int64))
            if entry["events"] is not None:
                rows = np.asarray(events.get(name, np.zeros((0, 3), np.int32)), dtype=np.int32).reshape(-1, 3)
                if self._record_filter is not None and len(rows):
                    rows = rows[np.isin(rows[:, 0], self._record_filter)]
                _extend(entry["events"], rows)
        self._file.flush()  # the batch's data first, then the count that makes it visible
        self._progress[0] = stop
        self._file.flush()
        self.samples_written = stop
        if self.final_path is None and self._publish_early:
            self._link_early()

    def _link_early(self) -> None:
        """Give the partial file its real name after the first batch, so a killed run leaves it there.

        Only when the target does not exist (an existing file, replaced with
        ``overwrite``, is replaced only when the run completes).
        """
        try:
            os.link(self._tmp, self.path)
        except OSError:  # the target appeared, or no hard links on this file system
            self._publish_early = False
            return
        os.unlink(self._tmp)  # the open file lives on under its real name only
        self._live = self.path
        self.final_path = self.path

    def on_batch(self, start: int, stop: int, result: Any) -> None:
        """Alias of :meth:`append` with ``runtime.simulate``'s ``on_batch`` signature."""
        self.append(start, stop, result)

    # ------------------------------------------------------------------ closing

    def close(self, interrupted: bool = False) -> Path | None:
        """Finish the file and move it into place; return where it is (None if discarded).

        ``complete`` is True when every sample was written and the run was
        not interrupted.
        """
        if self._file is None:
            return self.final_path if self._closed else None
        if self.samples_written == 0 and interrupted:
            self._discard()
            return None
        complete = (not interrupted) and self.samples_written == self.samples_total
        self._file.close()  # leaves SWMR mode; attributes can be written again
        self._file = None
        h5py = _h5py()
        with h5py.File(self._live, "r+", libver="latest") as f:
            f.attrs["complete"] = complete
            f.attrs["samples_written"] = self.samples_written
        self._closed = True
        if self.final_path is not None:  # named after the first batch
            return self.final_path
        if interrupted and self.path.exists():
            # never replace an existing file by a partial one, even with overwrite
            self.final_path = self._tmp
            return self.final_path
        self.final_path = self._publish(raise_on_clash=not interrupted)
        return self.final_path

    def _publish(self, raise_on_clash: bool) -> Path:
        if self.overwrite:
            os.replace(self._tmp, self.path)
            return self.path
        try:
            os.link(self._tmp, self.path)  # fails if the target exists: never clobbers
        except FileExistsError:
            if raise_on_clash:
                raise TraceError(f"{self.path}: a file appeared there during the run; trace kept as {self._tmp}")
            return self._tmp
        except OSError:  # no hard links on this file system
            if self.path.exists():
                if raise_on_clash:
                    raise TraceError(f"{self.path}: a file appeared there during the run; trace kept as {self._tmp}")
                return self._tmp
            os.replace(self._tmp, self.path)
            return self.path
        os.unlink(self._tmp)
        return self.path

    def _discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(interrupted=exc_type is not None)


def write_trace(path: str | os.PathLike, result: Any, **kwargs: Any) -> Path:
    """Write a whole :class:`runtime.SimulationResult` to ``path`` in one go.

    ``kwargs`` are those of :class:`TraceWriter` except ``populations``,
    ``timesteps``, ``phases``, ``mode``, ``classes`` and ``samples_total``,
    which are taken from ``result`` (as are ``ann_macs`` and ``input_macs``
    unless given). Returns the path written.
    """
    logits = np.asarray(result.logits)
    for key in ("ann_macs", "input_macs"):
        if key not in kwargs and getattr(result, key, None) is not None:
            kwargs[key] = int(getattr(result, key))
    writer = TraceWriter(
        path,
        populations=result.populations,
        timesteps=int(result.timesteps),
        phases=int(result.phases),
        mode=str(result.mode),
        classes=int(logits.shape[2]),
        samples_total=int(logits.shape[1]),
        **kwargs,
    )
    with writer:
        writer.append(0, int(logits.shape[1]), result)
    return writer.final_path


# ====================================================================== reading


def _read(path: Path, dataset, selection=slice(None)) -> np.ndarray:
    """Read ``dataset[selection]``; a damaged chunk or filter failure is a TraceError naming the dataset."""
    try:
        return dataset[selection]
    except Exception as exc:  # OSError (filter returned failure, bad chunk), ValueError, TypeError  # noqa: BLE001
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"{path}: damaged trace: cannot read dataset {dataset.name!r} ({detail})") from None


def _dataset(path: Path, group, key: str, rank: int, dtype_kinds: str, required: bool = True):
    """``group[key]`` checked to be a dataset of ``rank`` and one of ``dtype_kinds``; None if absent and optional."""
    h5py = _h5py()
    try:
        present = key in group
        item = group[key] if present else None
    except Exception as exc:  # a damaged object header  # noqa: BLE001
        raise TraceError(f"{path}: damaged trace: cannot open {group.name.strip('/')}/{key} ({exc})") from None
    where = f"{group.name.strip('/')}/{key}".lstrip("/")
    if item is None:
        if required:
            raise TraceError(f"{path}: malformed trace: dataset {where!r} is missing")
        return None
    if not isinstance(item, h5py.Dataset):
        raise TraceError(f"{path}: malformed trace: {where!r} is a {type(item).__name__}, expected a dataset")
    if item.ndim != rank or item.dtype.kind not in dtype_kinds:
        raise TraceError(
            f"{path}: malformed trace: dataset {where!r} has shape {item.shape} and dtype {item.dtype} "
            f"(expected rank {rank}, {'integers' if dtype_kinds == 'iu' else 'numbers'})"
        )
    return item


def _int_attr(path: Path, attrs: Mapping[str, Any], key: str, minimum: int, default: int | None = None) -> int:
    value = attrs.get(key, default)
    if value is None:
        raise TraceError(f"{path}: malformed trace: root attribute {key!r} is missing")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        if (
            isinstance(value, (float, np.floating))
            and math.isfinite(value)
            and value == int(value)
            and value >= minimum
        ):
            return int(value)
        raise TraceError(
            f"{path}: malformed trace: root attribute {key!r} is {value!r} (expected an integer >= {minimum})"
        )
    return int(value)


def _optional_count(value: Any) -> int | None:
    """A non-negative integer attribute, or None (``-1``, absent, or not an integer)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 0:
        return int(value)
    return None


@dataclass
class PopulationTrace:
    """One population of a trace; arrays are read from the file on access."""

    name: str
    index: int
    op_type: str
    shape: tuple[int, ...]
    stage: int
    scale: np.ndarray  # lambda: () or (C,)
    _group: Any
    _samples: int
    _recorded_samples: np.ndarray | None
    _path: Path = Path()
    source: str | None = None  # for a MaxGate: the population it reads (None if unknown)

    @property
    def neurons(self) -> int:
        """Number of neurons."""
        return int(math.prod(self.shape))

    @property
    def spike_counts(self) -> np.ndarray:
        """int32 (N, neurons): spikes of every neuron in every sample."""
        return _read(self._path, self._group["spike_counts"], slice(0, self._samples)).astype(np.int32)

    def iterate_spike_counts(self, block: int = 256):
        """Yield int32 blocks (n, neurons) of :attr:`spike_counts`, in bounded memory."""
        dset = self._group["spike_counts"]
        for start in range(0, self._samples, block):
            yield _read(self._path, dset, slice(start, min(start + block, self._samples))).astype(np.int32)

    @property
    def sops(self) -> np.ndarray | None:
        """int64 (N,) SOPs caused by this population's spikes, or None if the run did not report them."""
        values = _read(self._path, self._group["sops"], slice(0, self._samples)).astype(np.int64)
        return None if len(values) and (values < 0).any() else values

    @property
    def recorded(self) -> bool:
        """True if spike events were recorded for this population."""
        return "events" in self._group

    @property
    def events(self) -> np.ndarray | None:
        """int32 (E, 3) rows (sample, step, neuron) of the recorded samples held, or None."""
        if not self.recorded:
            return None
        rows = _read(self._path, self._group["events"]).astype(np.int32)
        rows = rows[(rows[:, 0] >= 0) & (rows[:, 0] < self._samples)]
        return rows

    @property
    def recorded_samples(self) -> np.ndarray | None:
        """Indices of the samples whose events are stored (None if not recorded)."""
        if not self.recorded:
            return None
        if self._recorded_samples is None:
            return np.arange(self._samples)
        return self._recorded_samples[self._recorded_samples < self._samples]


class Trace:
    """An open trace file (see :func:`open_trace`). Use as a context manager or call :meth:`close`.

    Opening checks the whole layout (attributes, dataset ranks, dtypes and
    lengths); reading a damaged chunk later is a :class:`TraceError` too.
    ``samples`` is what the file holds: after a killed run it comes from the
    ``samples_written`` dataset (written after each batch's data), as the
    root attribute is only set when the writer closes.
    """

    def __init__(self, path: Path, file: Any) -> None:
        self.path = path
        self._file = file
        self._read_root_attributes()
        _check_virtual_sources(path, file)
        lengths, written = self._check_sample_datasets()
        recorded = None
        if "recorded_samples" in file:
            recorded = _read(path, _dataset(path, file, "recorded_samples", 1, "iu")).astype(np.int64)
        self.populations: list[PopulationTrace] = []
        for key, group in _population_groups(path, file):
            pop = _population_of(path, key, group, recorded)
            lengths += _check_population_datasets(path, group, pop)
            self.populations.append(pop)
        if written > self.samples_total:
            raise TraceError(
                f"{path}: malformed trace: {written} samples written of samples_total = {self.samples_total}"
            )
        held = min(lengths)
        if self.complete and written > held:
            raise TraceError(f"{path}: malformed trace: says {written} samples but holds {held}")
        # a run killed mid-batch may leave datasets of different lengths: use what all of them hold
        self.samples = min(written, held)
        for pop in self.populations:
            pop._samples = self.samples

    def _read_root_attributes(self) -> None:
        """``attrs`` and the run's T, K, P, mode and ``complete``, checked."""
        path, file = self.path, self._file
        try:
            self.attrs: dict[str, Any] = {k: _plain(file.attrs[k]) for k in file.attrs}
        except Exception as exc:  # an attribute of a type h5py cannot read  # noqa: BLE001
            raise TraceError(f"{path}: damaged trace: cannot read the root attributes ({exc})") from None
        for key in ("samples_written", "samples_total", "timesteps", "phases", "mode", "complete"):
            if key not in self.attrs:
                raise TraceError(f"{path}: malformed trace: root attribute {key!r} is missing")
        self.samples_total = _int_attr(path, self.attrs, "samples_total", 0)
        self.timesteps = _int_attr(path, self.attrs, "timesteps", 1)
        self.phases = _int_attr(path, self.attrs, "phases", 1)
        self.periods = _int_attr(path, self.attrs, "periods", 1, -(-self.timesteps // self.phases))
        if not isinstance(self.attrs["mode"], str):
            raise TraceError(f"{path}: malformed trace: root attribute 'mode' is {self.attrs['mode']!r}")
        self.mode = self.attrs["mode"]
        if not isinstance(self.attrs["complete"], (bool, np.bool_, int, np.integer)):
            raise TraceError(f"{path}: malformed trace: root attribute 'complete' is {self.attrs['complete']!r}")
        self.complete = bool(self.attrs["complete"])

    def _check_sample_datasets(self) -> tuple[list[int], int]:
        """Check the per-sample root datasets; returns (their lengths, samples written).

        Also sets ``classes`` and the optional counts (``ann_macs``,
        ``input_macs``, ``output_stage``). The samples written come from the
        ``samples_written`` dataset when it is there (written after each
        batch's data: right even if the writer was killed).
        """
        path, file = self.path, self._file
        predictions = _dataset(path, file, "predictions", 2, "iu")
        logits = _dataset(path, file, "logits", 3, "f")
        sops = _dataset(path, file, "sops", 1, "iu")
        labels = _dataset(path, file, "labels", 1, "iu", required=False)
        self.classes = _int_attr(path, self.attrs, "classes", 1, logits.shape[2] or 1)
        if predictions.shape[1] != self.timesteps or logits.shape[1:] != (self.periods, self.classes):
            raise TraceError(
                f"{path}: malformed trace: predictions {predictions.shape} / logits {logits.shape} do not match "
                f"T = {self.timesteps}, P = {self.periods}, C = {self.classes}"
            )
        self.ann_macs = _optional_count(self.attrs.get("ann_macs"))
        self.input_macs = _optional_count(self.attrs.get("input_macs"))
        self.output_stage = _optional_count(self.attrs.get("output_stage"))
        written = _int_attr(path, self.attrs, "samples_written", 0)
        progress = _dataset(path, file, "samples_written", 1, "iu", required=False)
        if progress is not None and len(progress) == 1:
            written = max(written, int(_read(path, progress)[0]))
        lengths = [predictions.shape[0], logits.shape[0], sops.shape[0]]
        if labels is not None:
            lengths.append(labels.shape[0])
        return lengths, written

    @property
    def first_output_step(self) -> int | None:
        """Step (L + 1) K of the first full output in the ``bsnn`` modes; None for other modes or if unknown."""
        if self.output_stage is None or self.mode not in BISTABLE_MODES:
            return None
        return first_output_step(self.output_stage - 1, self.phases)

    @property
    def predictions(self) -> np.ndarray:
        """int32 (N, T): predicted class after every step."""
        return _read(self.path, self._file["predictions"], slice(0, self.samples)).astype(np.int32)

    @property
    def logits(self) -> np.ndarray:
        """float32 (N, P, classes): output potential at the end of every period."""
        return _read(self.path, self._file["logits"], slice(0, self.samples)).astype(np.float32)

    @property
    def labels(self) -> np.ndarray | None:
        """int32 (N,) labels of the samples held, or None if the data had none."""
        if "labels" not in self._file:
            return None
        return _read(self.path, self._file["labels"], slice(0, self.samples)).astype(np.int32)

    @property
    def sops(self) -> np.ndarray:
        """int64 (N,): synaptic operations per sample."""
        return _read(self.path, self._file["sops"], slice(0, self.samples)).astype(np.int64)

    def population(self, name: str) -> PopulationTrace:
        """The population called ``name``; TraceError naming the known ones if there is none."""
        for pop in self.populations:
            if pop.name == name:
                return pop
        names = ", ".join(p.name for p in self.populations) or "none"
        raise TraceError(f"{self.path}: no population {name!r} (has {names})")

    def accuracy(self, step: int | None = None) -> float | None:
        """Share of samples whose prediction after ``step`` steps (default T) is the label; None without labels."""
        labels = self.labels
        if labels is None or self.samples == 0:
            return None
        step = self.timesteps if step is None else int(step)
        if not 1 <= step <= self.timesteps:
            raise TraceError(f"{self.path}: step {step} is outside 1..{self.timesteps}")
        column = _read(self.path, self._file["predictions"], (slice(0, self.samples), step - 1)).astype(np.int64)
        return float(np.mean(column == labels))

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _population_groups(path: Path, file: Any) -> list[tuple[str, Any]]:
    """The groups under ``populations``, in key order, each checked to be a group."""
    h5py = _h5py()
    try:
        groups = file["populations"]
    except KeyError:
        raise TraceError(f"{path}: malformed trace: 'populations' is missing") from None
    except Exception as exc:  # noqa: BLE001
        raise TraceError(f"{path}: damaged trace: cannot open 'populations' ({exc})") from None
    if not isinstance(groups, h5py.Group):
        raise TraceError(f"{path}: malformed trace: 'populations' is a {type(groups).__name__}, expected a group")
    out = []
    for key in sorted(groups):
        try:
            group = groups[key]
        except Exception as exc:  # noqa: BLE001
            raise TraceError(f"{path}: damaged trace: cannot open population group {key} ({exc})") from None
        if not isinstance(group, h5py.Group):
            raise TraceError(f"{path}: malformed trace: populations/{key} is a {type(group).__name__}, not a group")
        out.append((key, group))
    return out


def _population_of(path: Path, key: str, group: Any, recorded: np.ndarray | None) -> PopulationTrace:
    """The :class:`PopulationTrace` of group ``populations/key`` from its attributes (no samples yet)."""
    try:
        attrs = {k: _plain(group.attrs[k]) for k in group.attrs}
        name = attrs["name"]
        shape = tuple(int(d) for d in np.asarray(attrs["shape"]).reshape(-1))
        pop = PopulationTrace(
            name=str(name),
            index=int(attrs["index"]),
            op_type=str(attrs["op_type"]),
            shape=shape,
            stage=int(attrs["stage"]),
            scale=np.asarray(attrs["scale"], dtype=np.float32),
            _group=group,
            _samples=0,
            _recorded_samples=recorded,
            _path=path,
            source=str(attrs["source"]) if attrs.get("source") else None,
        )
    except KeyError as exc:
        raise TraceError(f"{path}: malformed trace: population group {key} lacks {exc}") from None
    except Exception as exc:  # attributes of the wrong type  # noqa: BLE001
        raise TraceError(f"{path}: malformed trace: population group {key} ({type(exc).__name__}: {exc})") from None
    if any(d < 0 for d in shape):
        raise TraceError(f"{path}: malformed trace: population {pop.name!r} has shape {shape}")
    return pop


def _check_population_datasets(path: Path, group: Any, pop: PopulationTrace) -> list[int]:
    """Check a population's datasets (spike counts per neuron, SOPs, events); returns their per-sample lengths."""
    counts = _dataset(path, group, "spike_counts", 2, "iu")
    pop_sops = _dataset(path, group, "sops", 1, "iu")
    events = _dataset(path, group, "events", 2, "iu", required=False)
    if counts.shape[1] != pop.neurons:
        raise TraceError(
            f"{path}: malformed trace: population {pop.name!r}: spike_counts {counts.shape} for {pop.neurons} neurons"
        )
    if events is not None and events.shape[1] != 3:
        raise TraceError(f"{path}: malformed trace: population {pop.name!r}: events of shape {events.shape}")
    return [counts.shape[0], pop_sops.shape[0]]


def _check_virtual_sources(path: Path, file: Any) -> None:
    """Raise TraceError if a virtual dataset of ``file`` reads a part file that is not there.

    HDF5 reads the rows of a missing source as fill values (zeros), which
    would pass for a real, silent run; the combined trace of a sharded run
    (``runtime.trace_parts``) names its parts relative to its own folder.
    """
    h5py = _h5py()
    datasets: list = []
    try:
        file.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) and obj.is_virtual else None)
        sources = [(dset, source.file_name) for dset in datasets for source in dset.virtual_sources()]
    except Exception as exc:  # damaged metadata  # noqa: BLE001
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"{path}: damaged trace: cannot list its datasets ({detail})") from None
    for dset, name in sources:
        if name == ".":
            continue
        source_path = Path(name) if Path(name).is_absolute() else path.parent / name
        if not source_path.exists():
            raise TraceError(f"{path}: part file {source_path} of dataset {dset.name} is missing")


def _plain(value: Any) -> Any:
    """An attribute value as plain Python (str for stored bytes; damaged UTF-8 is replaced, not fatal)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in value.tolist()]
    return value


def open_trace(path: str | os.PathLike) -> Trace:
    """Open a trace file for reading.

    Raises
    ------
    TraceError
        The file is missing, is not HDF5, is not a bsnn trace, has a format
        version this code does not read, or lacks required parts.
    """
    path = Path(path)
    if not path.exists():
        raise TraceError(f"{path}: no such trace file")
    if path.is_dir():
        raise TraceError(f"{path}: is a folder, not a trace file")
    h5py = _h5py()
    try:
        hdf5 = h5py.is_hdf5(path)
    except Exception:  # noqa: BLE001
        hdf5 = False
    if not hdf5:
        raise TraceError(f"{path}: not an HDF5 file")
    try:
        file = h5py.File(path, "r")
    except Exception as exc:  # noqa: BLE001
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "already open for write" not in detail:
            raise TraceError(f"{path}: cannot open HDF5 file ({detail})") from None
        # still marked as open by its SWMR writer: a run that is going on, or was killed. Only then
        # read it as a SWMR reader (which retries damaged metadata, slowly, so not for every file)
        try:
            file = h5py.File(path, "r", swmr=True)
        except Exception as exc:  # noqa: BLE001
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TraceError(f"{path}: cannot open HDF5 file ({detail})") from None
    try:
        try:
            fmt = _plain(file.attrs.get("format"))
            version = _plain(file.attrs.get("format_version"))
        except Exception as exc:  # noqa: BLE001
            raise TraceError(f"{path}: damaged trace: cannot read its root attributes ({exc})") from None
        if fmt != FORMAT:
            raise TraceError(f"{path}: not a bsnn trace (format attribute is {fmt!r}, expected {FORMAT!r})")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1 or version > FORMAT_VERSION:
            raise TraceError(
                f"{path}: trace format version {version!r} is not supported (this bsnn-graph reads 1..{FORMAT_VERSION})"
            )
        return Trace(path, file)
    except BaseException:
        file.close()
        raise
