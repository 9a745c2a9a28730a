"""Images per second of one process (2 threads) against a 2-worker Dask cluster (1 thread each), and beyond.

On the bundled VGG (max pooling, converted at K = 8, T = 56) and the first
``--images`` Fashion-MNIST test images it measures:

1. one process, ``runtime.simulate`` with ``--threads`` threads (default 2);
2. ``runtime.distributed`` on a ``LocalCluster`` of ``--workers`` worker
   processes (default 2) of one thread, shards of ``--shard-size`` images;
3. the per-shard overhead: the same run in shards of ``--small-shard``
   images; overhead per shard o = W (t_small - t_large) / (S_small - S_large)
   worker-seconds (wall = (N c + S o) / W with c the compute per image);
4. the client and scheduler's serial cost per task, s (1,000 empty tasks);
5. writing the combined trace of the parts: virtual datasets
   (``runtime.trace_parts.combine_parts``) against copying the parts into
   one file.

From c, o and s it projects a cluster of M machines with ``--workers``
workers each on a set of ``--project-images`` images in shards of
``--shard-size``: wall(M) = max(ceil(S / (W M)) (shard_size c + o), S s),
the shards being the unit of parallelism and the client the serial part.
It is a projection from the measured costs (the same machines, a network no
slower than loopback for the results), not a measurement of a cluster.

Usage::

    python benchmarks/distributed_speed.py [--images 2000] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import passes
import runtime
from bsnn_graph import load_onnx, save_onnx
from bsnn_graph.data import load_dataset
from runtime.distributed import Cluster, ShardedRun, TracePlan
from runtime.trace_parts import combine_parts, part_path

ROOT = Path(__file__).resolve().parents[1]


def _noop(i: int) -> int:
    return i


def _merge(target: Path, parts: list[Path]) -> None:
    """Copy the parts into one trace file (the alternative to virtual datasets)."""
    import h5py

    with h5py.File(target, "w") as out:
        sources = [h5py.File(p, "r") for p in parts]
        try:
            out.attrs.update(dict(sources[0].attrs))

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and name not in ("labels", "recorded_samples"):
                    data = np.concatenate([s[name][:] for s in sources])
                    out.create_dataset(name, data=data, chunks=True, compression="gzip", compression_opts=4,
                                       shuffle=True)
                elif isinstance(obj, h5py.Group):
                    out.require_group(name).attrs.update(dict(obj.attrs))

            sources[0].visititems(visit)
        finally:
            for s in sources:
                s.close()


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--timesteps", type=int, default=56)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--small-shard", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16, help="shards are multiples of it")
    parser.add_argument("--project-images", type=int, default=100_000)
    parser.add_argument("--json", default=None, help="also write the figures here")
    return parser.parse_args(argv)


def _timed(fn):
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def _sharded(cluster, snn, x, args, local, shard_size: int, trace: TracePlan | None = None):
    """(seconds, job) of one sharded run; it must give the local run's predictions and SOPs."""
    job = ShardedRun(cluster, snn, x, args.timesteps, shard_size=shard_size, batch_size=args.batch_size, trace=trace)
    seconds, result = _timed(job.run)
    if not (np.array_equal(result.predictions, local.predictions) and np.array_equal(result.sops, local.sops)):
        bad = np.nonzero((result.predictions != local.predictions).any(0) | (result.sops != local.sops))[0]
        raise AssertionError(f"sharded run differs from the local one at samples {bad[:10]} of {len(bad)}")
    return seconds, job


def _cluster_figures(cluster, snn, x, args, local) -> dict:
    """Large and small shards (the per-shard overhead, the compute per image) and the client's cost per task."""
    w, n = cluster.workers, len(x)
    _sharded(cluster, snn, x, args, local, max(1, n // (2 * w)))  # every worker fetches, lowers, compiles
    t_large, job_large = _sharded(cluster, snn, x, args, local, args.shard_size)
    t_small, job_small = _sharded(cluster, snn, x, args, local, args.small_shard)
    s_large, s_small = len(job_large.shards), len(job_small.shards)
    overhead = max(0.0, w * (t_small - t_large) / (s_small - s_large))
    futures = [cluster.client.submit(_noop, i, pure=False) for i in range(1000)]
    serial, _ = _timed(lambda: cluster.client.gather(futures))
    return {"cluster": {"workers": w, "threads_per_worker": 1, "shard_size": args.shard_size, "shards": s_large,
                        "seconds": t_large, "images_per_second": n / t_large},
            "per_shard_overhead_seconds": overhead,
            "small_shards": {"shard_size": args.small_shard, "shards": s_small, "seconds": t_small},
            "compute_seconds_per_image": (w * t_large - s_large * overhead) / n,  # worker-seconds per image
            "serial_seconds_per_task": serial / 1000}


def _trace_figures(cluster, snn, x, args, local, folder: Path) -> tuple[float, dict]:
    """(seconds of a traced sharded run, the combined trace's costs: virtual datasets against a merged copy)."""
    model = folder / "vgg.bsnn.onnx"
    save_onnx(snn, model)
    target = folder / "run.h5"
    t_traced, job = _sharded(cluster, snn, x, args, local, args.shard_size, TracePlan(path=target, model_path=model))
    t_virtual, _ = _timed(job.close)
    parts = [part_path(target, a, b) for a, b in job.shards]
    t_merge, _ = _timed(lambda: _merge(folder / "merged.h5", parts))
    t_again, _ = _timed(lambda: combine_parts(folder / "again.h5", [(a, b, p) for (a, b), p in zip(job.shards, parts)],
                                              samples_total=len(x)))
    sizes = {"parts_bytes": sum(p.stat().st_size for p in parts), "virtual_bytes": target.stat().st_size,
             "merged_bytes": (folder / "merged.h5").stat().st_size}
    return t_traced, {"virtual_seconds": min(t_virtual, t_again), "merge_seconds": t_merge, **sizes}


def _projection(figures: dict, args) -> dict:
    """Wall time for --project-images on 1..32 machines from the measured costs (not a cluster run)."""
    w = figures["cluster"]["workers"]
    compute, overhead = figures["compute_seconds_per_image"], figures["per_shard_overhead_seconds"]
    shards = math.ceil(args.project_images / args.shard_size)
    rows = []
    for machines in (1, 2, 4, 8, 16, 32):
        wall = max(math.ceil(shards / (w * machines)) * (args.shard_size * compute + overhead),
                   shards * figures["serial_seconds_per_task"])
        rows.append({"machines": machines, "workers": w * machines, "seconds": wall,
                     "images_per_second": args.project_images / wall})
    return {"images": args.project_images, "shard_size": args.shard_size, "shards": shards, "rows": rows}


def _report(figures: dict, args) -> None:
    n, t_local = figures["images"], figures["one_process"]["seconds"]
    big, small, trace = figures["cluster"], figures["small_shards"], figures["combined_trace"]
    print(f"{n} images, VGG-max bsnn K = 8, T = {args.timesteps}, {figures['machine']}, load {figures['load_before']:.2f}")
    print(f"one process, {args.threads} threads       {n / t_local:8.1f} images/s ({t_local:.2f} s)")
    print(f"{big['workers']} workers x 1 thread, {big['shards']} shards  {n / big['seconds']:8.1f} images/s "
          f"({big['seconds']:.2f} s; with trace parts {big['seconds_with_trace']:.2f} s)")
    print(f"{big['workers']} workers, {small['shards']} shards of {args.small_shard}    "
          f"{n / small['seconds']:8.1f} images/s ({small['seconds']:.2f} s)")
    print(f"per-shard overhead {1000 * figures['per_shard_overhead_seconds']:.1f} ms (worker time); compute "
          f"{1000 * figures['compute_seconds_per_image']:.2f} ms per image; client + scheduler "
          f"{1000 * figures['serial_seconds_per_task']:.2f} ms per task")
    print(f"combined trace: virtual datasets {1000 * trace['virtual_seconds']:.1f} ms "
          f"({trace['virtual_bytes']:,} bytes), merged copy {1000 * trace['merge_seconds']:.1f} ms "
          f"({trace['merged_bytes']:,} bytes)")
    projection = figures["projection"]
    print(f"projection, {args.project_images:,} images in {projection['shards']} shards of {args.shard_size}:")
    for row in projection["rows"]:
        print(f"  {row['machines']:3d} machines ({row['workers']:3d} workers): {row['images_per_second']:9.1f} images/s")


def main(argv: list[str] | None = None) -> dict:
    args = _arguments(argv)
    x, _ = load_dataset(ROOT / "data" / "fmnist_test.npz", limit=args.images)
    calib, _ = load_dataset(ROOT / "data" / "fmnist_calib.npz")
    snn = passes.convert(load_onnx(ROOT / "data" / "vgg_max.onnx"), calib, mode="bsnn", phases=8, percentile=99.9,
                         calibrate="percentile")
    lowered = runtime.lower(snn)
    runtime.simulate(lowered, x[:64], args.timesteps, threads=args.threads)  # compile
    t_local, local = _timed(lambda: runtime.simulate(lowered, x, args.timesteps, batch_size=args.batch_size,
                                                     threads=args.threads))
    figures: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                     "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg()[0], "images": len(x),
                     "timesteps": args.timesteps, "one_process": {"threads": args.threads, "seconds": t_local,
                                                                  "images_per_second": len(x) / t_local}}
    with tempfile.TemporaryDirectory() as folder, Cluster(workers=args.workers) as cluster:
        figures.update(_cluster_figures(cluster, snn, x, args, local))
        figures["cluster"]["seconds_with_trace"], figures["combined_trace"] = _trace_figures(
            cluster, snn, x, args, local, Path(folder))
    figures["projection"] = _projection(figures, args)
    _report(figures, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
