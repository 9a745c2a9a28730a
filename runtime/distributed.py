"""Simulation over a Dask cluster: the samples in shards, one task per shard, results in sample order.

Dask (``dask.distributed``) is an optional dependency (``pip install -e
'.[distributed]'``); it is imported only when a :class:`Cluster` is entered,
and its absence is a one-line :class:`ClusterError`.

How a run goes (:class:`ShardedRun`):

- The samples are cut into shards of ``shard_size`` consecutive samples
  (``[0, s), [s, 2s), ...``; the cut depends only on the data, the shard
  size and the batch size, never on the number of workers, so a rerun on
  another cluster finds the same shards). The shard size is rounded up to a
  multiple of the batch size, so the shards cut the single-process run's
  batches exactly (no longer needed for bit-identity: the runtime sums the
  input layer in a fixed order per sample, so results do not depend on the
  batch; kept so a shard is whole batches of the local run).
- The model (a spiking graph) is put on the cluster once, as the result of
  one task that every shard depends on: each worker fetches it once and
  lowers it once (:func:`lowered_on_worker` keeps the lowered graph in a
  module-level dict keyed by the model's digest), not once per shard. A
  worker that replaces a dead one fetches it again.
- Each shard is one task holding its samples: ``runtime.simulate`` on them
  with the run's options (its events shifted to the run's global sample
  indices). Results are bit-identical for any batch size and thread count,
  so the gathered shards are the single-process run exactly.
- With a trace, each task also streams its shard into its own part file
  (:mod:`runtime.trace_parts`); the client writes the target as one file of
  virtual datasets over the parts. A part already on disk that was computed
  from the same model, samples, labels and options is reused, not computed
  again: a rerun after an interruption computes only the missing shards.
- Faults: a worker that dies (its process killed, the machine lost) is
  replaced by its nanny and the scheduler runs its shards again elsewhere
  (Dask retries lost tasks up to ``distributed.scheduler.allowed-failures``
  times, 3 by default; then :class:`ClusterError`). A shard that raises (bad
  data) is not retried: the run stops and the shard's own error (a
  :class:`~bsnn_graph.errors.BsnnError`, the local path's one-line message)
  is raised on the client.

:meth:`Cluster.simulate` returns the run's :class:`~runtime.simulate.SimulationResult`;
:meth:`Cluster.evaluate` (:func:`runtime.evaluate.evaluate_snn` with this
cluster) its :class:`~runtime.evaluate.Evaluation`, as ``bsnn eval --workers``
reports it.

Workers must import the same ``bsnn_graph`` and ``runtime`` (the same
version); with a trace they must see the target's folder at the same path
(a shared file system). Local workers get the client's BLAS thread
settings (:func:`_blas_env`); the simulation no longer depends on them (the
input layer is summed in a fixed order per sample in Numba).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bsnn_graph.errors import BsnnError

from .lowering import LoweredGraph, lower
from .simulate import SimulationResult, concatenate_results, simulate

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "Cluster",
    "ClusterError",
    "ShardedRun",
    "TracePlan",
    "lowered_on_worker",
    "shards_of",
]

#: samples per shard unless told otherwise (a few seconds of work per shard on the reference models)
DEFAULT_SHARD_SIZE = 1024

_INSTALL_HINT = "pip install -e '.[distributed]' (or pip install 'dask[distributed]')"


class ClusterError(BsnnError):
    """Dask is missing, a scheduler cannot be reached, or the cluster lost a shard too often."""


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError(f"--workers / --scheduler need Dask, which is not installed: {_INSTALL_HINT}") from None
    return distributed


_BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _blas_env() -> dict[str, str]:
    """The BLAS thread settings of this process, for local workers (Dask's nanny would set them to 1).

    The input layer was once a BLAS product whose float sums depended on the
    BLAS thread count (VGG-max: 3 samples in 2,000 spiked differently); it is
    now summed in a fixed order per sample, so this only keeps the workers'
    numpy like the client's. Unset here means the BLAS default, one thread
    per core.
    """
    return {name: os.environ.get(name, str(os.cpu_count() or 1)) for name in _BLAS_THREADS}


def shards_of(samples: int, shard_size: int) -> list[tuple[int, int]]:
    """The shards ``(first, last)`` of ``samples`` samples: consecutive runs of ``shard_size``, from 0."""
    if shard_size < 1:
        raise BsnnError(f"shard size must be >= 1, got {shard_size}")
    return [(first, min(first + shard_size, samples)) for first in range(0, samples, shard_size)]


class Cluster:
    """A Dask client on a new local cluster (``workers``) or on an existing one (``scheduler``).

    Use as a context manager; entering it imports Dask and starts or
    connects to the cluster.

    Parameters
    ----------
    workers : start a ``LocalCluster`` of this many worker processes on this machine.
    scheduler : address of the scheduler of an existing cluster (``tcp://host:8786``).
    threads_per_worker : threads of each local worker (one shard at a time per thread).
    timeout : seconds to wait for the scheduler.
    """

    def __init__(
        self,
        workers: int | None = None,
        scheduler: str | None = None,
        threads_per_worker: int = 1,
        timeout: float = 30.0,
    ) -> None:
        if (workers is None) == (scheduler is None):
            raise ClusterError("give either --workers N (a local cluster) or --scheduler ADDRESS, not both")
        if workers is not None and workers < 1:
            raise ClusterError(f"--workers must be >= 1, got {workers}")
        self.requested_workers = workers
        self.scheduler = scheduler
        self.threads_per_worker = int(threads_per_worker)
        self.timeout = float(timeout)
        self.client = None
        self._local = None

    def __enter__(self) -> Self:
        distributed = _distributed()
        import logging

        try:
            if self.scheduler is not None:
                self.client = distributed.Client(self.scheduler, timeout=self.timeout)
            else:
                import dask

                with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in _blas_env().items()}):
                    self._local = distributed.LocalCluster(
                        n_workers=self.requested_workers,
                        threads_per_worker=self.threads_per_worker,
                        processes=True,
                        dashboard_address=None,
                        silence_logs=logging.ERROR,
                    )
                self.client = distributed.Client(self._local)
        except (OSError, TimeoutError) as exc:
            self.close()
            where = self.scheduler or "a local cluster"
            raise ClusterError(f"cannot reach {where}: {exc}".splitlines()[0]) from None
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the client (and the local cluster, if this started one)."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._local is not None:
            self._local.close()
            self._local = None

    @property
    def workers(self) -> int:
        """Number of workers the scheduler knows now."""
        return len(self.client.scheduler_info()["workers"])

    def simulate(self, graph, x: np.ndarray, timesteps: int, **kwargs: Any) -> SimulationResult:
        """:class:`ShardedRun` of ``graph`` on ``x`` run to the end (keyword arguments are its own)."""
        on_shard = kwargs.pop("on_shard", None)
        return ShardedRun(self, graph, x, timesteps, **kwargs).run(on_shard)

    def evaluate(self, graph, x: np.ndarray, labels: np.ndarray | None, timesteps: int, **kwargs: Any):
        """:func:`runtime.evaluate.evaluate_snn` of ``graph`` on ``x`` sharded over this cluster.

        Keyword arguments are ``evaluate_snn``'s (``shard_size``, ``on_shard``,
        ``batch_size``, ``threads`` ...); returns its :class:`~runtime.evaluate.Evaluation`.
        """
        from .evaluate import evaluate_snn

        return evaluate_snn(graph, x, labels, timesteps, cluster=self, **kwargs)


@dataclass
class TracePlan:
    """Where and how a sharded run writes its trace (the :class:`runtime.trace.TraceWriter` settings)."""

    path: Path  # the combined trace; parts go to path.name + ".parts" beside it
    labels: np.ndarray | None = None  # labels of all samples
    model_path: str | os.PathLike | None = None  # its name and sha256 are stored
    input_path: str | os.PathLike | None = None  # its name is stored
    output_stage: int | None = None
    attributes: dict = field(default_factory=dict)  # extra root attributes
    overwrite: bool = False


# ---------------------------------------------------------------------- worker side

#: lowered graphs of this worker process, by model digest (one lowering per worker and model)
_LOWERED: dict[str, LoweredGraph] = {}


def lowered_on_worker(graph, digest: str) -> tuple[LoweredGraph, bool]:
    """The lowered ``graph`` of this process, lowered on first use; (lowered, True if lowered now)."""
    cached = _LOWERED.get(digest)
    if cached is not None:
        return cached, False
    _LOWERED[digest] = lower(graph)
    return _LOWERED[digest], True


def _model(graph):
    """The task whose result is the model on the cluster (workers fetch it once and keep it)."""
    return graph


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1


def _shift_events(events: dict, offset: int) -> dict:
    shifted = {}
    for name, rows in events.items():
        rows = np.array(rows, dtype=np.int32, copy=True).reshape(-1, 3)
        rows[:, 0] += offset
        shifted[name] = rows
    return shifted


def _part_writer(part: dict, partial: SimulationResult, first: int, samples: int, record: list[str],
                 record_samples: list[int] | None):
    """The :class:`runtime.trace.TraceWriter` of a shard's part file, opened at its first batch ``partial``."""
    from .trace import TraceWriter

    return TraceWriter(
        part["path"],
        populations=partial.populations,
        timesteps=int(partial.timesteps),
        phases=int(partial.phases),
        mode=str(partial.mode),
        classes=int(np.asarray(partial.logits).shape[2]),
        samples_total=samples,
        labels=part["labels"],
        ann_macs=int(partial.ann_macs),
        input_macs=int(partial.input_macs),
        output_stage=part["output_stage"],
        record=record,
        record_samples=record_samples,
        overwrite=True,  # a part there is stale (its key did not match) or a lost shard's
        attributes={
            **part["attributes"],
            "schedule": str(partial.schedule),
            "initial_potential": str(partial.initial_potential),
            "shard_first": first,
            "shard_last": first + samples,
            "shard_key": part["key"],
        },
    )


def _simulate_shard(graph, digest: str, x: np.ndarray, first: int, options: dict, part: dict | None) -> dict:
    """One shard: simulate samples ``first : first + len(x)`` (and write their part file); runs on a worker."""
    started = time.perf_counter()
    lowered, loaded = lowered_on_worker(graph, digest)
    last = first + len(x)
    record = list(options["record"])
    wanted = options["record_samples"]
    held = None if wanted is None else [s for s in wanted if first <= s < last]  # global sample indices
    threads = options["threads"] or min(_worker_threads(), int(os.cpu_count() or 1))
    writer = []

    def stream(start: int, stop: int, partial: SimulationResult) -> None:
        partial.events = _shift_events(partial.events, first)
        if not writer:
            writer.append(_part_writer(part, partial, first, len(x), record, held))
        # the part holds samples 0.. of the shard; events carry global indices (shifted above)
        writer[0].append(start, stop, partial)

    try:
        result = simulate(
            lowered,
            x,
            options["timesteps"],
            batch_size=options["batch_size"],
            threads=threads,
            record=record,
            record_samples=[s - first for s in held] if record and held is not None else None,
            on_batch=stream if part is not None else None,
            per_neuron_counts="batches" if part is not None else False,
            full_dynamics=options["full_dynamics"],
        )
    except BaseException:
        if writer:
            writer[0].close(interrupted=True)  # complete = false: a rerun computes this shard again
        raise
    if writer:
        writer[0].close()
    if part is None:
        result.events = _shift_events(result.events, first)
    # with a trace, the batches' events were shifted in place and concatenated into result.events
    return {"first": first, "last": last, "result": result, "lowered_now": loaded, "pid": os.getpid(),
            "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------- client side


def _digest(*pieces: bytes) -> str:
    h = hashlib.sha256()
    for piece in pieces:
        h.update(hashlib.sha256(piece).digest())
    return h.hexdigest()


class ShardedRun:
    """One simulation of ``graph`` on ``x`` over a :class:`Cluster`, shard by shard.

    Parameters
    ----------
    cluster : an entered :class:`Cluster`.
    graph : the spiking graph (as ``runtime.load`` gives it).
    x : float32 (N, *input_shape) samples.
    timesteps, batch_size, threads, record, record_samples, full_dynamics :
        as in :func:`runtime.simulate` (``threads`` per worker; None: the
        worker's threads); ``record_samples`` are indices into ``x``.
    shard_size : samples per shard, rounded up to a multiple of ``batch_size``
        (see the module docstring).
    trace : write a trace in parts and a combined file (:class:`TracePlan`), or None.
    model_digest : a digest of the model, to recognise parts of an earlier
        run of the same model (default: the sha256 of ``trace.model_path``,
        else a digest of the pickled graph).

    Attributes
    ----------
    shards : (first, last) of every shard.
    pending : indices of the shards to compute (the others' parts are reused).
    done : shard index -> result dict, as shards finish.
    """

    def __init__(
        self,
        cluster: Cluster,
        graph,
        x: np.ndarray,
        timesteps: int,
        *,
        shard_size: int = DEFAULT_SHARD_SIZE,
        batch_size: int = 64,
        threads: int | None = None,
        record: Iterable[str] = (),
        record_samples: Sequence[int] | None = None,
        full_dynamics: bool = False,
        trace: TracePlan | None = None,
        model_digest: str | None = None,
    ) -> None:
        from .trace import file_sha256
        from .trace_parts import finished_part, part_path

        self.cluster = cluster
        self.graph = graph
        self.x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        self.samples = len(self.x)
        self.trace = trace
        record = list(record)
        self.record_samples = None if record_samples is None else sorted(int(s) for s in record_samples)
        self.options = {
            "timesteps": int(timesteps),
            "batch_size": int(batch_size),
            "threads": threads,
            "record": record,
            "record_samples": self.record_samples if record else None,
            "full_dynamics": bool(full_dynamics),
        }
        self.shard_size = -(-int(shard_size) // int(batch_size)) * int(batch_size)
        self.shards = shards_of(self.samples, self.shard_size)
        self.digest = _digest(pickle.dumps(graph, protocol=5))
        self.model_sha = file_sha256(trace.model_path) if trace is not None and trace.model_path is not None else ""
        self.model_digest = model_digest or self.model_sha or self.digest
        self.done: dict[int, dict] = {}
        self.pending = list(range(len(self.shards)))
        self._keys: list[str] = []
        self._combined: Path | None = None
        if trace is not None:
            parts_dir = part_path(trace.path, 0, 0).parent
            parts_dir.mkdir(exist_ok=True)
            self._keys = [self._key(i) for i in range(len(self.shards))]
            self.pending = [
                i for i, (a, b) in enumerate(self.shards) if not finished_part(part_path(trace.path, a, b), self._keys[i])
            ]

    def _key(self, index: int) -> str:
        """What shard ``index`` is computed from: model, samples, labels, options (not batch size or threads)."""
        first, last = self.shards[index]
        labels = self.trace.labels
        settings = {k: v for k, v in self.options.items() if k not in ("batch_size", "threads")}
        settings["record_samples"] = (
            None if settings["record_samples"] is None else [s for s in settings["record_samples"] if first <= s < last]
        )
        settings.update(first=first, last=last, model=self.model_digest, output_stage=self.trace.output_stage)
        return _digest(
            json.dumps(settings, sort_keys=True).encode(),
            self.x[first:last].tobytes(),
            b"" if labels is None else np.asarray(labels[first:last], np.int64).tobytes(),
        )

    @property
    def samples_done(self) -> int:
        """Samples of the finished shards (computed now or reused)."""
        reused = set(range(len(self.shards))) - set(self.pending)
        return sum(self.shards[i][1] - self.shards[i][0] for i in set(self.done) | reused)

    def run(self, on_shard: Callable[[int, int], None] | None = None) -> SimulationResult:
        """Compute the pending shards on the cluster; return the whole run's result, in sample order.

        ``on_shard(first, last)`` is called on the client for every shard as
        it is finished (reused parts first).
        """
        from .trace_parts import part_path, read_part

        distributed = _distributed()
        client = self.cluster.client
        results: dict[int, SimulationResult] = {}
        for i, (a, b) in enumerate(self.shards):
            if i not in self.pending:
                results[i] = read_part(part_path(self.trace.path, a, b))
                if on_shard is not None:
                    on_shard(a, b)
        futures = {}
        if self.pending:
            model = client.submit(_model, self.graph, key=f"bsnn-model-{self.digest[:16]}", pure=False)
            for i in self.pending:
                a, b = self.shards[i]
                part = None
                if self.trace is not None:
                    part = {
                        "path": str(part_path(self.trace.path, a, b)),
                        "labels": None if self.trace.labels is None else np.asarray(self.trace.labels[a:b]),
                        "output_stage": self.trace.output_stage,
                        "attributes": dict(self.trace.attributes),
                        "key": self._keys[i],
                    }
                future = client.submit(
                    _simulate_shard, model, self.digest, self.x[a:b], a, self.options, part,
                    key=f"bsnn-shard-{a}-{b}-{self.digest[:8]}-{time.monotonic_ns()}", pure=False,
                )
                futures[future] = i
        try:
            for future in distributed.as_completed(list(futures)):
                i = futures[future]
                try:
                    out = future.result()
                except distributed.KilledWorker as exc:
                    a, b = self.shards[i]
                    raise ClusterError(f"shard {a}-{b}: workers died running it too often ({exc})") from None
                self.done[i] = out
                results[i] = out["result"]
                if on_shard is not None:
                    on_shard(out["first"], out["last"])
        finally:
            unfinished = [f for f in futures if not f.done()]
            if unfinished:
                client.cancel(unfinished)
        result = _concatenate([results[i] for i in range(len(self.shards))])
        if "bytes_per_sample" not in result.extra:  # every shard was reused: nothing lowered it yet
            result.extra["bytes_per_sample"] = lower(self.graph).bytes_per_sample(self.options["timesteps"])
        return result

    def close(self, interrupted: bool = False) -> Path | None:
        """Write the combined trace over the finished parts (like :meth:`runtime.trace.TraceWriter.close`).

        Returns the path written, or None without a trace or when no shard
        from sample 0 is finished. ``complete`` is True only if every shard
        is there and the run was not interrupted.
        """
        if self.trace is None or self._combined is not None:
            return self._combined
        from .trace_parts import combine_parts, finished_part, part_path

        plan = self.trace
        finished = [
            (a, b, part_path(plan.path, a, b))
            for i, (a, b) in enumerate(self.shards)
            if finished_part(part_path(plan.path, a, b), self._keys[i])
        ]
        if not any(a == 0 for a, _, _ in finished):
            return None
        attributes = {
            "model_file": Path(plan.model_path).name if plan.model_path is not None else "",
            "model_sha256": self.model_sha,
            "input_file": Path(plan.input_path).name if plan.input_path is not None else "",
        }
        if interrupted:
            attributes["complete"] = False
        self._combined = combine_parts(
            plan.path,
            finished,
            samples_total=self.samples,
            labels=plan.labels,
            record_samples=self.options["record_samples"],
            attributes=attributes,
            overwrite=plan.overwrite,
        )
        return self._combined


def _concatenate(parts: list[SimulationResult]) -> SimulationResult:
    """The shards' results as one, in sample order (what one ``simulate`` call on all samples returns)."""
    result = concatenate_results(parts)
    computed = [p for p in parts if "bytes_per_sample" in p.extra]
    if computed:
        result.extra["bytes_per_sample"] = computed[0].extra["bytes_per_sample"]
    return result
