"""One evaluation of a spiking graph on samples: simulate, then accuracy, first output, SOPs, energy, time.

:func:`evaluate_snn` is what ``bsnn run``, ``bsnn eval`` (with or without
``--workers``) and ``benchmarks/headline.py`` call: it runs
:func:`runtime.simulate` in this process, or the same run sharded over a Dask
cluster (:class:`runtime.distributed.ShardedRun`, bit-identical results), and
names what every report reads from the run in an :class:`Evaluation`:

- accuracy and correct predictions after every step (the output is read at
  every step: ``predictions[t - 1]`` is the argmax of the output potential
  after step t);
- the first full output ``T_first = (L + 1) K`` of the bistable modes
  (:func:`runtime.schedule.first_output_step`; None in ``phase`` and
  ``if-rate``, which have no such step) and the accuracy there;
- SOPs per sample, in all and per period, and the energy *estimate* of
  :func:`runtime.energy.energy_estimate`;
- the seconds of the simulation itself (the call of the simulator, nothing
  around it) and the runtime's memory per sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from bsnn_graph import ops as O
from bsnn_graph.errors import DataError

from .distributed import DEFAULT_SHARD_SIZE, Cluster, ShardedRun
from .energy import energy_estimate
from .lowering import LoweredGraph
from .schedule import BISTABLE_MODES, first_output_step
from .simulate import SimulationResult, simulate

__all__ = ["Evaluation", "evaluate_snn", "evaluation_of", "first_output_of"]

#: the modes with a bistable schedule, whose output is first full at ``T_first``


@dataclass
class Evaluation:
    """What one evaluation of a spiking graph gives (N samples, T steps, P = ceil(T / K) periods)."""

    mode: str
    phases: int  # K
    timesteps: int  # T
    samples: int  # N
    classes: int
    schedule: str  # "light-cone" or "full" (SOPs and energy depend on it)
    initial_potential: str  # "half" (rounding) or "zero" (truncation)
    predictions: np.ndarray  # int32 (T, N): the prediction after every step
    labels: np.ndarray | None  # (N,) or None (unlabelled data: the accuracy fields are None then)
    correct_per_step: np.ndarray | None  # int64 (T,): correct predictions after every step
    accuracy_per_step: np.ndarray | None  # float64 (T,): their share
    first_output_step: int | None  # T_first = (L + 1) K in the bistable modes, else None
    accuracy_first_output: float | None  # accuracy at T_first (None without labels or if T_first > T)
    sops_total: int  # SOPs of all samples
    sops_per_sample: float  # their mean per sample
    sops_per_period_total: np.ndarray  # int64 (P,): SOPs of each period's spikes, all samples
    ann_macs: int  # MACs per sample of the ANN the graph encodes
    input_macs: int  # MACs per sample of the analog input layer
    energy: dict  # runtime.energy.energy_estimate of sops_per_sample: an estimate
    bytes_per_sample: dict  # the runtime's memory per sample (LoweredGraph.bytes_per_sample)
    seconds: float  # the simulation call alone
    result: SimulationResult = field(repr=False)  # the run itself (spike counts, events, logits ...)

    @property
    def accuracy(self) -> float | None:
        """Accuracy after the last step T (None without labels)."""
        return None if self.accuracy_per_step is None else float(self.accuracy_per_step[-1])

    @property
    def sops_per_period(self) -> np.ndarray:
        """float64 (P,): mean SOPs per sample of each period's spikes."""
        return self.sops_per_period_total / self.samples

    @property
    def predicted_per_class(self) -> np.ndarray:
        """int64 (classes,): how many samples are predicted as each class after the last step."""
        return np.bincount(self.predictions[-1].astype(np.int64), minlength=self.classes)


def first_output_of(graph: nx.DiGraph | LoweredGraph) -> int | None:
    """``T_first`` of a spiking graph: the first step whose output holds a full wave (None if it has none).

    The output accumulator sits one stage after the largest population stage L,
    so ``T_first = (L + 1) K`` (:func:`runtime.schedule.first_output_step`).
    Only the bistable modes have one; a graph without exactly one output
    accumulator has none either.
    """
    graph = graph.graph if isinstance(graph, LoweredGraph) else graph
    found = [graph.nodes[n]["op"] for n in graph.nodes if isinstance(graph.nodes[n]["op"], O.OutputAccumulator)]
    if len(found) != 1 or found[0].mode not in BISTABLE_MODES:
        return None
    return first_output_step(int(found[0].stage) - 1, int(found[0].phases))


def evaluate_snn(
    graph: nx.DiGraph | LoweredGraph,
    x: np.ndarray,
    labels: np.ndarray | None,
    timesteps: int,
    *,
    batch_size: int = 64,
    threads: int | None = None,
    full_dynamics: bool = False,
    record: Iterable[str] | str = (),
    record_samples: Sequence[int] | None = None,
    per_neuron_counts: bool | str = False,
    on_batch: Callable[[int, int, SimulationResult], None] | None = None,
    cluster: Cluster | ShardedRun | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_shard: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Simulate ``graph`` on ``x`` for ``timesteps`` steps and evaluate the run against ``labels``.

    Parameters
    ----------
    graph : a spiking graph (``runtime.load``), or one lowered with :func:`runtime.lower`
        (in this process only: a cluster gets the graph).
    x : float (N, *input_shape) samples.
    labels : int (N,) classes, or None (unlabelled: the accuracy fields are None).
    timesteps : T >= 1.
    batch_size, threads, full_dynamics, record, record_samples :
        as in :func:`runtime.simulate` (on a cluster: ``threads`` per worker).
    per_neuron_counts, on_batch : as in :func:`runtime.simulate`; in this process only.
    cluster : None: simulate in this process. A :class:`~runtime.distributed.Cluster`:
        the run sharded over it (``shard_size`` samples per shard). A
        :class:`~runtime.distributed.ShardedRun` already made (a caller that
        shows its shards or writes its trace): it is run as it is, and
        ``graph``, ``x``, ``timesteps`` and the simulation options must be
        the ones it was made with.
    on_shard : ``on_shard(first, last)`` on the client as each shard is finished (on a cluster).

    Returns
    -------
    Evaluation

    Raises
    ------
    DataError
        if there are not as many labels as samples, or a given ShardedRun
        is of other samples or another T.
    """
    if labels is not None and len(labels) != len(x):
        raise DataError(f"{len(labels)} labels for {len(x)} samples")
    job = _sharded_run(cluster, graph, x, timesteps, shard_size, batch_size, threads, full_dynamics, record,
                       record_samples)
    started = time.perf_counter()
    if job is None:
        result = simulate(graph, x, timesteps, batch_size=batch_size, threads=threads, record=record,
                          record_samples=record_samples, on_batch=on_batch, per_neuron_counts=per_neuron_counts,
                          full_dynamics=full_dynamics)
    else:
        result = job.run(on_shard)
    seconds = time.perf_counter() - started
    return evaluation_of(result, labels, first_output_of(graph), seconds)


def _sharded_run(cluster, graph, x, timesteps, shard_size, batch_size, threads, full_dynamics, record,
                 record_samples) -> ShardedRun | None:
    """The :class:`ShardedRun` that ``cluster`` stands for (None: simulate in this process)."""
    if cluster is None:
        return None
    if isinstance(cluster, ShardedRun):
        if cluster.samples != len(x) or cluster.options["timesteps"] != int(timesteps):
            raise DataError(
                f"the sharded run is of {cluster.samples} samples and T = {cluster.options['timesteps']}, "
                f"not of {len(x)} samples and T = {timesteps}"
            )
        return cluster
    return ShardedRun(cluster, graph, x, timesteps, shard_size=shard_size, batch_size=batch_size, threads=threads,
                      record=[record] if isinstance(record, str) else record, record_samples=record_samples,
                      full_dynamics=full_dynamics)


def evaluation_of(
    result: SimulationResult, labels: np.ndarray | None, first_output: int | None, seconds: float
) -> Evaluation:
    """The :class:`Evaluation` of a finished run ``result`` (``first_output``: its graph's T_first or None)."""
    predictions = np.asarray(result.predictions)
    correct = accuracy = accuracy_first = None
    if labels is not None:
        hits = predictions == np.asarray(labels)[None, :]
        correct = hits.sum(axis=1)
        accuracy = hits.mean(axis=1)
        if first_output is not None and first_output <= result.timesteps:
            accuracy_first = float(accuracy[first_output - 1])
    sops_per_sample = float(np.mean(result.sops))
    return Evaluation(
        mode=str(result.mode),
        phases=int(result.phases),
        timesteps=int(result.timesteps),
        samples=int(predictions.shape[1]),
        classes=int(np.asarray(result.logits).shape[2]),
        schedule=str(result.schedule),
        initial_potential=str(result.initial_potential),
        predictions=predictions,
        labels=None if labels is None else np.asarray(labels),
        correct_per_step=correct,
        accuracy_per_step=accuracy,
        first_output_step=first_output,
        accuracy_first_output=accuracy_first,
        sops_total=int(np.sum(result.sops)),
        sops_per_sample=sops_per_sample,
        sops_per_period_total=np.asarray(result.extra["sops_per_period"]).sum(axis=1),
        ann_macs=int(result.ann_macs),
        input_macs=int(result.input_macs),
        energy=energy_estimate(sops_per_sample, int(result.ann_macs), int(result.input_macs)),
        bytes_per_sample=result.extra["bytes_per_sample"],
        seconds=seconds,
        result=result,
    )
