"""HDF5 spike traces: round trip, streaming, interruption, no-clobber, reader errors."""

from __future__ import annotations

import os
import shutil
import stat
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from bsnn_graph.errors import TraceError
from runtime.trace import (
    FORMAT,
    FORMAT_VERSION,
    TraceWriter,
    file_sha256,
    open_trace,
    write_trace,
)

T, K, CLASSES = 20, 4, 5
POPULATIONS = [
    {"name": "/features/conv1/Relu_output_0", "op_type": "Population", "shape": (2, 3, 3), "stage": 1, "scale": 1.5},
    {"name": "pool1", "op_type": "MaxGate", "shape": (2, 1, 1), "stage": 1, "scale": 1.5},
    {
        "name": "fc1",
        "op_type": "Population",
        "shape": (4,),
        "stage": 2,
        "scale": np.array([0.5, 1.0, 2.0, 4.0], np.float32),
    },
]


def make_result(n: int, seed: int = 0, first_sample: int = 0) -> SimpleNamespace:
    """A SimulationResult-shaped record of ``n`` samples with random but valid contents."""
    rng = np.random.default_rng(seed)
    periods = -(-T // K)
    counts, sops_per_population, events = {}, {}, {}
    for pop in POPULATIONS:
        neurons = int(np.prod(pop["shape"]))
        counts[pop["name"]] = rng.integers(0, T + 1, size=(n,) + tuple(pop["shape"])).astype(np.int32)
        sops_per_population[pop["name"]] = rng.integers(0, 10_000, size=n).astype(np.int64)
        rows = np.stack(
            [
                rng.integers(first_sample, first_sample + n, size=30),
                rng.integers(0, T, size=30),
                rng.integers(0, neurons, size=30),
            ],
            axis=1,
        ).astype(np.int32)
        events[pop["name"]] = rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]
    return SimpleNamespace(
        predictions=rng.integers(0, CLASSES, size=(T, n)).astype(np.int32),
        logits=rng.normal(size=(periods, n, CLASSES)).astype(np.float32),
        spike_counts=counts,
        sops=sum(sops_per_population.values()),
        sops_per_population=sops_per_population,
        events=events,
        timesteps=T,
        phases=K,
        mode="bsnn",
        populations=POPULATIONS,
    )


def batch_of(result: SimpleNamespace, start: int, stop: int) -> SimpleNamespace:
    return SimpleNamespace(
        predictions=result.predictions[:, start:stop],
        logits=result.logits[:, start:stop],
        spike_counts={k: v[start:stop] for k, v in result.spike_counts.items()},
        sops=result.sops[start:stop],
        sops_per_population={k: v[start:stop] for k, v in result.sops_per_population.items()},
        events={k: v[(v[:, 0] >= start) & (v[:, 0] < stop)] for k, v in result.events.items()},
    )


def writer_for(path, n, **kwargs) -> TraceWriter:
    return TraceWriter(
        path,
        populations=POPULATIONS,
        timesteps=T,
        phases=K,
        mode="bsnn",
        classes=CLASSES,
        samples_total=n,
        **kwargs,
    )


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(b"not really onnx, but bytes to hash")
    return path


def test_round_trip_gives_identical_arrays(tmp_path, model_file):
    n = 13
    result = make_result(n)
    labels = np.random.default_rng(1).integers(0, CLASSES, size=n)
    path = tmp_path / "run.h5"
    names = [p["name"] for p in POPULATIONS]
    written = write_trace(
        path, result, model_path=model_file, input_path="data/x.npz", labels=labels, ann_macs=123456, record=names
    )
    assert written == path
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    with open_trace(path) as trace:
        assert trace.attrs["format"] == FORMAT and trace.attrs["format_version"] == FORMAT_VERSION
        assert trace.attrs["model_sha256"] == file_sha256(model_file)
        assert trace.attrs["model_file"] == "net.onnx" and trace.attrs["input_file"] == "x.npz"
        assert trace.attrs["created"].endswith("+00:00")
        assert trace.attrs["generated_by"].startswith("bsnn-graph ")
        assert (trace.samples, trace.samples_total, trace.complete) == (n, n, True)
        assert (trace.timesteps, trace.phases, trace.periods, trace.mode) == (T, K, 5, "bsnn")
        assert trace.ann_macs == 123456
        np.testing.assert_array_equal(trace.predictions, result.predictions.T)
        assert trace.predictions.dtype == np.int32
        np.testing.assert_array_equal(trace.logits, result.logits.transpose(1, 0, 2))
        np.testing.assert_array_equal(trace.labels, labels)
        np.testing.assert_array_equal(trace.sops, result.sops)
        assert [p.name for p in trace.populations] == names
        for pop, spec in zip(trace.populations, POPULATIONS):
            assert pop.shape == spec["shape"] and pop.stage == spec["stage"] and pop.op_type == spec["op_type"]
            np.testing.assert_array_equal(pop.scale, np.asarray(spec["scale"], np.float32))
            np.testing.assert_array_equal(pop.spike_counts, result.spike_counts[pop.name].reshape(n, -1))
            np.testing.assert_array_equal(np.concatenate(list(pop.iterate_spike_counts(block=4))), pop.spike_counts)
            np.testing.assert_array_equal(pop.sops, result.sops_per_population[pop.name])
            np.testing.assert_array_equal(pop.events, result.events[pop.name])
            np.testing.assert_array_equal(pop.recorded_samples, np.arange(n))
        expected = float(np.mean(result.predictions[-1] == labels))
        assert trace.accuracy() == pytest.approx(expected)
        assert trace.accuracy(7) == pytest.approx(float(np.mean(result.predictions[6] == labels)))


def test_storage_layout_is_chunked_compressed_and_compact(tmp_path):
    result = make_result(6)
    path = write_trace(tmp_path / "t.h5", result, record=["fc1"])
    with h5py.File(path, "r") as f:
        counts = f["populations/000/spike_counts"]
        assert counts.dtype == np.uint16  # T <= 65535 bounds every count
        assert counts.compression == "gzip" and counts.shuffle and counts.maxshape[0] is None
        assert f["predictions"].dtype == np.int16
        assert f["populations/002/events"].maxshape == (None, 3)
        assert "events" not in f["populations/000"]
        # strings are fixed-length UTF-8 bytes, kept out of the global heap
        assert f["populations/000"].attrs["name"].decode() == POPULATIONS[0]["name"]
        assert f.attrs["format"] == FORMAT.encode() and f.attrs["record_populations"].dtype.kind == "S"


def test_record_samples_keeps_only_chosen_samples(tmp_path):
    n = 10
    result = make_result(n)
    with writer_for(tmp_path / "t.h5", n, record=["pool1"], record_samples=[1, 7]) as writer:
        for start in range(0, n, 3):
            writer.append(start, min(start + 3, n), batch_of(result, start, min(start + 3, n)))
    with open_trace(tmp_path / "t.h5") as trace:
        pop = trace.population("pool1")
        rows = result.events["pool1"]
        np.testing.assert_array_equal(pop.events, rows[np.isin(rows[:, 0], [1, 7])])
        np.testing.assert_array_equal(pop.recorded_samples, [1, 7])
        assert trace.population("fc1").events is None


@pytest.mark.parametrize("interruption", [RuntimeError("kernel failed"), KeyboardInterrupt()])
def test_interrupted_run_leaves_a_valid_partial_file(tmp_path, interruption):
    n, batch, k = 20, 4, 2
    result = make_result(n)
    labels = np.arange(n) % CLASSES
    path = tmp_path / "partial.h5"
    with pytest.raises(type(interruption)), writer_for(path, n, labels=labels, record=["fc1"]) as writer:
        for i, start in enumerate(range(0, n, batch)):
            if i == k:
                raise interruption
            writer.append(start, start + batch, batch_of(result, start, start + batch))
    assert writer.final_path == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial.h5"]  # no temporary file left
    with open_trace(path) as trace:
        assert trace.samples == k * batch and trace.samples_total == n and not trace.complete
        np.testing.assert_array_equal(trace.predictions, result.predictions[:, : k * batch].T)
        np.testing.assert_array_equal(trace.labels, labels[: k * batch])
        fc1 = trace.population("fc1")
        np.testing.assert_array_equal(fc1.spike_counts, result.spike_counts["fc1"][: k * batch])
        rows = result.events["fc1"]
        np.testing.assert_array_equal(fc1.events, rows[rows[:, 0] < k * batch])


def test_file_on_disk_is_valid_after_every_batch(tmp_path):
    # what a killed process leaves behind: the temporary file as last flushed
    n = 9
    result = make_result(n)
    with writer_for(tmp_path / "t.h5", n) as writer:
        writer.append(0, 3, batch_of(result, 0, 3))
        writer.append(3, 6, batch_of(result, 3, 6))
        shutil.copy(writer._live, tmp_path / "snapshot.h5")
        writer.append(6, 9, batch_of(result, 6, 9))
    with open_trace(tmp_path / "snapshot.h5") as trace:
        assert trace.samples == 6 and not trace.complete
        np.testing.assert_array_equal(trace.logits, result.logits[:, :6].transpose(1, 0, 2))
    with open_trace(tmp_path / "t.h5") as trace:
        assert trace.samples == 9 and trace.complete


def test_interruption_before_any_batch_touches_nothing(tmp_path):
    path = tmp_path / "old.h5"
    path.write_bytes(b"previous results")
    with pytest.raises(KeyboardInterrupt), writer_for(path, 5, overwrite=True):
        raise KeyboardInterrupt
    assert path.read_bytes() == b"previous results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.h5"]


def test_existing_file_is_never_clobbered_without_overwrite(tmp_path):
    path = tmp_path / "keep.h5"
    path.write_bytes(b"precious")
    with pytest.raises(TraceError, match="file exists"):
        writer_for(path, 3)
    assert path.read_bytes() == b"precious"
    write_trace(path, make_result(3), overwrite=True)
    with open_trace(path) as trace:
        assert trace.complete and trace.samples == 3


def test_file_appearing_during_the_run_is_kept(tmp_path):
    path = tmp_path / "race.h5"
    result = make_result(4)
    with pytest.raises(TraceError, match="appeared"), writer_for(path, 4) as writer:
        path.write_bytes(b"someone else's")  # before the first batch, which would give the file its name
        writer.append(0, 4, result)
    assert path.read_bytes() == b"someone else's"
    leftovers = [p for p in tmp_path.iterdir() if p.name != "race.h5"]
    assert len(leftovers) == 1
    with open_trace(leftovers[0]) as trace:
        assert trace.complete and trace.samples == 4


def test_batches_must_come_in_order(tmp_path):
    result = make_result(6)
    with pytest.raises(TraceError, match="does not follow"), writer_for(tmp_path / "t.h5", 6) as writer:
        writer.append(3, 6, batch_of(result, 3, 6))


def test_unknown_record_population_is_an_error(tmp_path):
    with pytest.raises(TraceError, match="no such population"):
        writer_for(tmp_path / "t.h5", 3, record=["conv9"])
    assert list(tmp_path.iterdir()) == []


def test_reader_errors(tmp_path):
    with pytest.raises(TraceError, match="no such trace file"):
        open_trace(tmp_path / "missing.h5")
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(TraceError, match="not an HDF5 file"):
        open_trace(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(TraceError, match="not a bsnn trace"):
        open_trace(other)
    future = write_trace(tmp_path / "future.h5", make_result(2))
    with h5py.File(future, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(TraceError, match="version 2 is not supported"):
        open_trace(future)
    broken = write_trace(tmp_path / "broken.h5", make_result(2))
    with h5py.File(broken, "a") as f:
        del f["logits"]
    with pytest.raises(TraceError, match="'logits' is missing"):
        open_trace(broken)
    with open_trace(write_trace(tmp_path / "ok.h5", make_result(2))) as trace:
        names = [p.name for p in trace.populations]
    with pytest.raises(TraceError, match="no population 'nope'"), open_trace(tmp_path / "ok.h5") as trace:
        trace.population("nope")
    assert names == [p["name"] for p in POPULATIONS]


def test_a_combined_trace_whose_part_file_is_missing_is_refused_not_read_as_zeros(tmp_path):
    from runtime.trace_parts import combine_parts, part_path

    target = tmp_path / "run.h5"
    parts = []
    for first, last in ((0, 3), (3, 5)):
        path = part_path(target, first, last)
        path.parent.mkdir(exist_ok=True)
        write_trace(path, make_result(last - first, seed=first, first_sample=first))
        parts.append((first, last, path))
    combine_parts(target, parts, samples_total=5)
    with open_trace(target) as trace:
        assert trace.samples == 5
        assert np.array_equal(trace.predictions[3:], make_result(2, seed=3).predictions.T)
    os.remove(parts[1][2])
    with pytest.raises(TraceError, match=r"part file .*0*3-0*5.h5 of dataset /\w+ is missing"):
        open_trace(target)
