"""Calibration and the reference executor in bounded memory: blocked convolution, blocked
histogram updates, and a calibration batch size chosen from a memory budget."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_graphs import random_input, resnet, vgg

import passes.percentile as percentile_module
from bsnn_graph import executor
from passes import StreamingPercentile, convert
from passes.normalise import calibration_batch_size


@pytest.mark.parametrize(("group", "stride", "pad"), [(1, 1, 1), (2, 2, 0), (4, 1, 2)])
def test_blocked_convolution_equals_the_unblocked_one(monkeypatch, group, stride, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4, 11, 9)).astype(np.float32)
    weight = rng.standard_normal((8, 4 // group, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    args = (x, weight, bias, (stride, stride), (pad,) * 4, (1, 1), group)
    whole = executor.conv_nd(*args)
    # one output row of one sample per block (the smallest block there is)
    monkeypatch.setattr(executor, "CONV_BLOCK_BYTES", 1)
    rows = executor.conv_nd(*args)
    np.testing.assert_allclose(rows, whole, rtol=1e-5, atol=1e-5)
    # a few rows of a few samples
    monkeypatch.setattr(executor, "CONV_BLOCK_BYTES", 4 * 4 * 9 * 9 * 3)
    np.testing.assert_allclose(executor.conv_nd(*args), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [None, 3])
def test_blocked_histogram_update_counts_the_same(monkeypatch, channels):
    rng = np.random.default_rng(1)
    batch = rng.standard_normal((6, 3, 7, 5)).astype(np.float32)
    whole = StreamingPercentile(channels)
    whole.update(batch)
    monkeypatch.setattr(percentile_module, "UPDATE_BLOCK", 7)
    blocked = StreamingPercentile(channels)
    blocked.update(batch)
    np.testing.assert_array_equal(blocked.counts, whole.counts)
    np.testing.assert_array_equal(blocked.minimum, whole.minimum)
    np.testing.assert_array_equal(blocked.maximum, whole.maximum)


def test_calibration_batch_size_follows_the_budget():
    graph = resnet()
    one = calibration_batch_size(graph, budget_bytes=1)
    assert one == 1
    small = calibration_batch_size(graph, budget_bytes=1 << 20, largest=10_000)
    large = calibration_batch_size(graph, budget_bytes=1 << 24, largest=10_000)
    assert 1 <= small < large
    assert abs(large / small - 16) < 1  # proportional to the budget
    assert calibration_batch_size(graph, budget_bytes=1 << 40, largest=64) == 64


def test_default_batch_size_gives_the_same_conversion_as_an_explicit_one():
    graph = vgg("max")
    x = random_input(graph, n=40)
    chosen = convert(graph, x)
    explicit = convert(graph, x, batch_size=7)
    assert chosen.graph["metadata"]["bsnn.calibration_samples"] == "40"
    # the same lambdas up to float32 rounding: the calibration runs the executor, whose BLAS sums depend on the
    # batch's shape (bit-equal on some CPUs, 1 ulp apart on others)
    for name in chosen.nodes:
        a, b = chosen.nodes[name]["op"], explicit.nodes[name]["op"]
        assert type(a) is type(b), name
        for field in ("weight", "bias", "scale", "constant"):
            if getattr(a, field, None) is not None:
                np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-7, err_msg=name)
