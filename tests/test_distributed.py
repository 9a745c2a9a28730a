"""Sharded runs on a 2-worker Dask LocalCluster (processes): identical to one process, faults, resume, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from spiking_graphs import vgg_graph

pytest.importorskip("distributed")

import runtime
from bsnn_graph import save_onnx
from bsnn_graph.cli import main
from bsnn_graph.errors import DataError
from runtime.distributed import Cluster, ShardedRun, TracePlan, shards_of
from runtime.trace import open_trace
from runtime.trace_parts import parts_folder

T = 40
SAMPLES = 21
SHARD = 4  # 6 shards, the last one short


@pytest.fixture(scope="module")
def cluster():
    with Cluster(workers=2, threads_per_worker=1) as c:
        yield c


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    graph = vgg_graph(seed=3)
    path = folder / "vgg.bsnn.onnx"
    save_onnx(graph, path)
    rng = np.random.default_rng(7)
    x = rng.random((SAMPLES, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 10, SAMPLES)
    data = folder / "data.npz"
    np.savez(data, x=x, y=y)
    return path, runtime.load(path), x, y, data


def assert_same_result(got, want):
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_array_equal(got.logits, want.logits)
    np.testing.assert_array_equal(got.sops, want.sops)
    assert got.spike_counts.keys() == want.spike_counts.keys()
    for name in want.spike_counts:
        np.testing.assert_array_equal(got.spike_counts[name], want.spike_counts[name])
        np.testing.assert_array_equal(got.sops_per_population[name], want.sops_per_population[name])
    assert got.events.keys() == want.events.keys()
    for name in want.events:
        np.testing.assert_array_equal(got.events[name], want.events[name])


def assert_same_trace(got_path, want_path):
    with open_trace(got_path) as got, open_trace(want_path) as want:
        assert (got.samples, got.samples_total, got.complete) == (want.samples, want.samples_total, True)
        for key in ("mode", "phases", "timesteps", "model_sha256", "model_file", "input_file", "ann_macs",
                    "record_populations", "output_stage", "schedule", "initial_potential"):
            assert got.attrs.get(key) == want.attrs.get(key), key
        np.testing.assert_array_equal(got.predictions, want.predictions)
        np.testing.assert_array_equal(got.logits, want.logits)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.sops, want.sops)
        assert [p.name for p in got.populations] == [p.name for p in want.populations]
        for a, b in zip(got.populations, want.populations):
            assert (a.shape, a.stage, a.op_type, a.recorded) == (b.shape, b.stage, b.op_type, b.recorded)
            np.testing.assert_array_equal(a.spike_counts, b.spike_counts)
            np.testing.assert_array_equal(a.sops, b.sops)
            if b.recorded:
                np.testing.assert_array_equal(a.events, b.events)
                np.testing.assert_array_equal(a.recorded_samples, b.recorded_samples)


def test_evaluation_over_the_cluster_is_the_local_evaluation(cluster, model):
    from runtime.evaluate import evaluate_snn

    _, graph, x, y, _ = model
    local = evaluate_snn(graph, x, y, T, batch_size=2)
    finished = []
    sharded = cluster.evaluate(graph, x, y, T, batch_size=2, shard_size=SHARD,
                               on_shard=lambda first, last: finished.append((first, last)))
    assert sorted(finished) == shards_of(SAMPLES, SHARD)
    assert_same_result(sharded.result, local.result)
    np.testing.assert_array_equal(sharded.correct_per_step, local.correct_per_step)
    np.testing.assert_array_equal(sharded.sops_per_period_total, local.sops_per_period_total)
    for key in ("first_output_step", "accuracy_first_output", "sops_total", "sops_per_sample", "energy",
                "bytes_per_sample", "schedule", "initial_potential"):
        assert getattr(sharded, key) == getattr(local, key), key
    # a ShardedRun made beforehand is run as it is; one of other samples is refused
    job = ShardedRun(cluster, graph, x, T, shard_size=SHARD, batch_size=2)
    again = evaluate_snn(graph, x, y, T, cluster=job)
    assert again.sops_total == local.sops_total and sorted(job.done) == list(range(len(job.shards)))
    with pytest.raises(DataError, match="sharded run is of 21 samples"):
        evaluate_snn(graph, x[:5], y[:5], T, cluster=job)


def test_shards_are_fixed_by_size_not_by_workers_and_cut_whole_batches(cluster, model):
    assert shards_of(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shards_of(3, 8) == [(0, 3)]
    _, graph, x, _, _ = model
    assert ShardedRun(cluster, graph, x, T, shard_size=5, batch_size=4).shards == [(0, 8), (8, 16), (16, 21)]


def test_sharded_run_is_the_single_process_run_and_loads_once_per_worker(cluster, model):
    _, graph, x, _, _ = model
    record = ["pop2", "gate5"]
    wanted = [0, 5, 6, 19]
    want = runtime.simulate(graph, x, T, batch_size=2, record=record, record_samples=wanted)
    job = ShardedRun(cluster, graph, x, T, shard_size=SHARD, batch_size=2, record=record, record_samples=wanted)
    got = job.run()
    assert_same_result(got, want)
    assert sorted(job.done) == list(range(6))
    # one lowering per worker process, not one per shard
    lowered = {}
    for out in job.done.values():
        lowered.setdefault(out["pid"], []).append(out["lowered_now"])
    assert len(lowered) <= 2 and all(flags.count(True) <= 1 for flags in lowered.values())
    assert sum(flags.count(True) for flags in lowered.values()) <= 2
    # a second run of the same model lowers nothing again
    again = ShardedRun(cluster, graph, x, T, shard_size=SHARD, batch_size=2)
    again.run()
    assert not any(out["lowered_now"] for out in again.done.values())


def test_a_shard_that_fails_on_bad_data_stops_the_run_with_its_error(cluster, model):
    _, graph, x, _, _ = model
    bad = x.reshape(SAMPLES, 1, 144)[:, :, :100]  # does not fit the graph input
    with pytest.raises(DataError, match="does not fit graph input"):
        ShardedRun(cluster, graph, bad, T, shard_size=SHARD, batch_size=SHARD).run()


def _worker_pids(cluster) -> set[int]:
    return set(cluster.client.run(os.getpid).values())


def test_a_worker_killed_during_the_run_gives_the_identical_result(cluster, model, tmp_path):
    path, graph, x, y, data = model
    local = tmp_path / "local.h5"
    invoke("run", path, "--data", data, "-T", T, "--trace", local, "--record", "all", "--record-samples", SAMPLES,
           "--batch-size", 2)
    want = runtime.simulate(graph, x, T, record="all", batch_size=2)
    before = _worker_pids(cluster)
    killed = []

    def kill_a_busy_worker(first, last):
        if killed:
            return
        busy = [w for w, tasks in cluster.client.processing().items() if tasks]
        pids = cluster.client.run(os.getpid, workers=busy[:1])
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    plan = TracePlan(path=tmp_path / "sharded.h5", labels=y, model_path=path, input_path=data,
                     output_stage=6, attributes={"batch_size": 2, "input_scale": -1.0})
    job = ShardedRun(cluster, graph, x, T, shard_size=2, batch_size=2, record=list(want.events), trace=plan,
                     record_samples=list(range(SAMPLES)))
    got = job.run(kill_a_busy_worker)
    assert job.close() == plan.path
    assert killed and killed[0] in before
    assert_same_result(got, want)
    assert_same_trace(plan.path, local)
    cluster.client.wait_for_workers(2, timeout=60)
    assert len(_worker_pids(cluster) - before) >= 1  # the nanny started a new worker process


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_run_and_eval_with_workers_print_the_local_report(model, tmp_path):
    path, _, _, _, data = model
    local = invoke("run", path, "--data", data, "-T", T, "--json", "--batch-size", 4)
    sharded = invoke("run", path, "--data", data, "-T", T, "--json", "--batch-size", 4, "--workers", 2,
                     "--shard-size", 7)  # rounded up to 8, a multiple of the batch size
    assert sharded.exit_code == 0, sharded.output
    a, b = json.loads(local.stdout), json.loads(sharded.stdout)
    for key in ("predictions", "accuracy_per_step", "sops_per_sample", "energy", "bytes_per_sample", "samples"):
        assert a[key] == b[key], key
    assert "8 shards" not in sharded.stderr and "3 shards" in sharded.stderr  # the progress bar counts shards
    local = invoke("eval", path, "--data", data, "-T", "16,40", "--json", "--batch-size", 4)
    sharded = invoke("eval", path, "--data", data, "-T", "16,40", "--json", "--batch-size", 4, "--workers", 2,
                     "--shard-size", 8)
    assert sharded.exit_code == 0, sharded.output
    a, b = json.loads(local.stdout), json.loads(sharded.stdout)
    assert a["modes"]["bsnn"]["accuracy_per_step"] == b["modes"]["bsnn"]["accuracy_per_step"]
    assert a["modes"]["bsnn"]["sops_per_sample"] == b["modes"]["bsnn"]["sops_per_sample"]


def _complete(part: Path) -> bool:
    with open_trace(part) as trace:
        return bool(trace.complete)


def test_resume_after_an_interruption_computes_only_the_missing_shards(cluster, model, tmp_path):
    path, graph, x, y, data = model
    target = tmp_path / "run.h5"
    plan = TracePlan(path=target, labels=y, model_path=path, input_path=data, output_stage=6)
    job = ShardedRun(cluster, graph, x, T, shard_size=SHARD, batch_size=SHARD, trace=plan)
    finished = []

    def interrupt(first, last):
        finished.append(first)
        if len(finished) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job.run(interrupt)
    where = job.close(interrupted=True)
    if where is not None:  # shard 0 was among the first two: a partial trace
        with open_trace(where) as partial:
            assert not partial.complete and 0 < partial.samples < SAMPLES
    cluster.client.wait_for_workers(2)
    # a shard already running when the run was interrupted still finishes (cancel does not stop a running
    # task; its part is renamed into place whole): wait for it before looking at what is there
    # (a cancelled task leaves the scheduler's books at once, so ask the workers what their threads still run)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        any(cluster.client.processing().values())
        or any(cluster.client.run(lambda dask_worker: len(dask_worker.active_threads)).values())
    ):
        time.sleep(0.05)
    # a shard cut off inside the simulation publishes its part with complete = false (seen under load): only the
    # complete parts are reused, the others are computed again
    present = {p.name: p.stat().st_mtime_ns for p in parts_folder(target).glob("*.h5") if _complete(p)}
    again = ShardedRun(cluster, graph, x, T, shard_size=SHARD, batch_size=SHARD, trace=TracePlan(**plan.__dict__))
    assert 0 < len(again.pending) == 6 - len(present) <= 4
    got = again.run()
    assert again.close() == target
    assert sorted(again.done) == again.pending  # only the missing shards were computed
    for name, stamp in present.items():
        assert (parts_folder(target) / name).stat().st_mtime_ns == stamp
    assert_same_result(got, runtime.simulate(graph, x, T, batch_size=SHARD))
    with open_trace(target) as trace:
        assert trace.complete and trace.samples == SAMPLES
        np.testing.assert_array_equal(trace.labels, y)
    # the combined file reads from anywhere: its parts are named relative to it
    code = f"from runtime.trace import open_trace; t = open_trace({str(target)!r}); print(int(t.sops.sum()))"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == str(int(got.sops.sum())), out.stderr


def test_cli_trace_with_workers_inspects_like_a_local_trace_and_resumes(model, tmp_path):
    path, _, _, _, data = model
    local, sharded = tmp_path / "local.h5", tmp_path / "sharded.h5"
    common = ("--data", data, "-T", T, "--record", "pop4", "--batch-size", 5)
    assert invoke("run", path, *common, "--trace", local).exit_code == 0
    out = invoke("run", path, *common, "--trace", sharded, "--workers", 2, "--shard-size", 5)
    assert out.exit_code == 0, out.output
    assert_same_trace(sharded, local)
    a = json.loads(invoke("inspect", local, "--json").stdout)
    b = json.loads(invoke("inspect", sharded, "--json").stdout)
    for key in ("samples", "complete", "accuracy", "sops_per_sample", "populations", "energy"):
        assert a[key] == b[key], key
    # a finished trace is not replaced without --overwrite, even by a sharded run
    again = invoke("run", path, "--data", data, "-T", T, "--trace", sharded, "--workers", 2)
    assert again.exit_code == 1 and "file exists" in again.stderr


def test_without_the_options_dask_is_not_imported_and_without_dask_the_error_is_one_line(model, tmp_path):
    path, _, _, _, data = model
    code = (
        "import sys; from click.testing import CliRunner; from bsnn_graph.cli import main;"
        f"r = CliRunner().invoke(main, ['run', {str(path)!r}, '--data', {str(data)!r}, '-T', '8']);"
        "assert r.exit_code == 0, r.output;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')));"
        "sys.modules['distributed'] = None;"
        f"r = CliRunner().invoke(main, ['run', {str(path)!r}, '--data', {str(data)!r}, '-T', '8', '--workers', '2']);"
        "print(r.exit_code); print(r.stderr.strip())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[]", out.stderr
    assert lines[1] == "1"
    assert lines[2].startswith("error: --workers / --scheduler need Dask") and len(lines) == 3
