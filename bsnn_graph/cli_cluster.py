"""``--workers`` / ``--scheduler`` of ``bsnn run`` and ``bsnn eval``: the same run, sharded over a Dask cluster.

The options, the cluster's lifetime (one per command, closed with the click
context) and the progress bar over shards; the sharding itself is
:mod:`runtime.distributed`. Without the options nothing here imports Dask.
"""

from __future__ import annotations

import sys

import click

__all__ = ["cluster_options", "evaluate_on_cluster", "open_cluster"]


def cluster_options(command):
    """Add ``--workers``, ``--scheduler`` and ``--shard-size`` to a click command."""
    from runtime.distributed import DEFAULT_SHARD_SIZE

    command = click.option(
        "--shard-size",
        default=DEFAULT_SHARD_SIZE,
        show_default=True,
        type=click.IntRange(min=1),
        help="With --workers/--scheduler: samples per shard (one task each), a multiple of --batch-size (rounded up).",
    )(command)
    command = click.option(
        "--scheduler", metavar="ADDRESS", help="Run the shards on the Dask cluster of this scheduler (tcp://host:8786)."
    )(command)
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        help="Run the shards on a local Dask cluster of N worker processes (1 thread each).",
    )(command)


def open_cluster(workers: int | None, scheduler: str | None):
    """An entered :class:`runtime.distributed.Cluster`, closed when the command ends; None without the options."""
    if workers is None and scheduler is None:
        return None
    from runtime.distributed import Cluster

    cluster = Cluster(workers=workers, scheduler=scheduler).__enter__()
    click.get_current_context().call_on_close(cluster.close)
    return cluster


def evaluate_on_cluster(cluster, graph, x, labels, timesteps, label, shard_size, trace=None, writer=None,
                        written=None, **options):
    """:func:`runtime.evaluate.evaluate_snn` of ``graph`` on ``x`` over ``cluster``, with a progress bar over shards.

    ``trace`` is a :class:`runtime.distributed.TracePlan` or None. The run
    is appended to ``writer`` (a list) before it starts, so the caller
    closes it like a :class:`runtime.trace.TraceWriter`; ``written[0]``
    follows the samples finished. ``options`` are the simulation options
    (``batch_size``, ``threads``, ``record``, ``record_samples``,
    ``full_dynamics``).
    """
    from runtime.distributed import ShardedRun
    from runtime.evaluate import evaluate_snn

    job = ShardedRun(cluster, graph, x, timesteps, shard_size=shard_size, trace=trace, **options)
    if writer is not None and trace is not None:
        writer.append(job)
    shards, reused = len(job.shards), len(job.shards) - len(job.pending)
    label = f"{label} in {shards} shards on {cluster.workers} workers" + (f" ({reused} done before)" if reused else "")
    with click.progressbar(length=shards, label=label, file=sys.stderr) as bar:

        def progress(first: int, last: int) -> None:
            if written is not None:
                written[0] = job.samples_done
            bar.update(1)

        return evaluate_snn(graph, x, labels, timesteps, cluster=job, on_shard=progress, **options)
