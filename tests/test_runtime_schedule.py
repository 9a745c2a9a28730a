"""The light-cone schedule, the initial potential and batch-independent results (BSNN_SPEC.md, runtime.schedule).

- light cone: predictions and logits identical to the full run at every
  step, for every T from 1 to (L + 4) K, on VGG (max and average pooling) and
  ResNet (identity and projection shortcuts) graphs, in bsnn and bsnn-nosn;
  at T = (L + 1) K every population fires in exactly one period (one wave);
- initial potential: hand-worked rounding in bsnn, if-rate and phase;
- results bit-identical for any batch size and thread count, events always
  consistent with the spike counts (a mismatch raises).
"""

from __future__ import annotations

import sys

import numba
import numpy as np
import pytest
from spiking_graphs import chain_graph, resnet_graph, vgg_graph
from test_runtime_modes import _reference_if_rate, _reference_phase

import runtime
from bsnn_graph.errors import BsnnError
from runtime import kernels, schedule
from runtime.simulate import kernel_tables

K = 4


def _largest_stage(lowered):
    return max(lowered.graph.nodes[n]["op"].stage for n in lowered.spiking)


def _times(result, name, sample=0):
    events = result.events[name]
    return events[events[:, 0] == sample, 1].tolist()


@pytest.mark.parametrize("mode", ["bsnn", "bsnn-nosn"])
@pytest.mark.parametrize("build", [vgg_graph, resnet_graph], ids=["vgg-max-avg", "resnet-identity-projection"])
def test_light_cone_equals_the_full_run_at_every_step(build, mode):
    lowered = runtime.lower(build(mode=mode, phases=K))
    x = np.random.default_rng(11).random((3,) + lowered.input_shape).astype(np.float32)
    largest = _largest_stage(lowered)
    pruned_somewhere = False
    for timesteps in range(1, (largest + 4) * K + 1):
        full = runtime.simulate(lowered, x, timesteps, full_dynamics=True)
        cone = runtime.simulate(lowered, x, timesteps)
        assert (full.schedule, cone.schedule) == ("full", "light-cone")
        np.testing.assert_array_equal(cone.predictions, full.predictions, err_msg=f"T = {timesteps}")
        np.testing.assert_array_equal(cone.logits, full.logits, err_msg=f"T = {timesteps}")
        assert np.all(cone.sops <= full.sops)
        pruned_somewhere |= bool(np.any(cone.sops < full.sops))
    assert pruned_somewhere


@pytest.mark.parametrize("build", [vgg_graph, resnet_graph], ids=["vgg", "resnet"])
def test_first_full_output_is_a_single_wave(build):
    lowered = runtime.lower(build(mode="bsnn", phases=K))
    x = np.random.default_rng(3).random((2,) + lowered.input_shape).astype(np.float32)
    largest = _largest_stage(lowered)
    first = schedule.first_output_step(largest, K)
    cone = runtime.simulate(lowered, x, first, record="all")
    full = runtime.simulate(lowered, x, first, record="all", full_dynamics=True)
    for name in lowered.spiking:
        stage = lowered.graph.nodes[name]["op"].stage
        periods = set((cone.events[name][:, 1] // K).tolist())
        assert periods == {stage}, name  # the spec: p + (L - s) <= P - 1 leaves only p = s at T = (L + 1) K
        assert set((full.events[name][:, 1] // K).tolist()) >= periods
    assert cone.sops.sum() < full.sops.sum()
    np.testing.assert_array_equal(cone.predictions, full.predictions)


def test_light_cone_rule_matches_the_spec_in_bsnn():
    """``p + (L - s) <= P - 1`` for every bistable population of a synchronised graph."""
    lowered = runtime.lower(resnet_graph(mode="bsnn", phases=K))
    largest = _largest_stage(lowered)
    for periods in range(1, 16):
        last = lowered.last_fire(periods * K)
        for i, name in enumerate(lowered.spiking):
            stage = lowered.graph.nodes[name]["op"].stage
            fire_periods = [p for p in range(periods) if schedule.fires(schedule.MODE_BSNN, stage, p)]
            allowed = [p for p in fire_periods if p + (largest - stage) <= periods - 1]
            fired = [p for p in fire_periods if p <= last[i]]
            assert fired == allowed, (name, periods)
        assert np.all(lowered.last_fire(periods * K, full_dynamics=True) == periods - 1)


def test_schedule_rules_by_name():
    """The named rules the kernels call, against the spec's wording: integrate in p >= s - 1 with p - s + 1 even,
    fire in p >= s with p - s even, the next fire after an integrate period is p + 1, spike values theta 2^-(k+1)."""
    bistable = (schedule.MODE_BSNN, schedule.MODE_NOSN)
    every_step = (schedule.MODE_PHASE, schedule.MODE_IF_RATE)
    assert all(schedule.is_bistable(m) for m in bistable) and not any(schedule.is_bistable(m) for m in every_step)
    for stage in range(1, 6):
        for p in range(12):
            for last in range(-1, 12):
                for mode in bistable:
                    fires = p >= stage and (p - stage) % 2 == 0
                    integrates = p >= stage - 1 and (p - stage + 1) % 2 == 0
                    assert schedule.fires_in_cone(mode, stage, p, last) == (fires and p <= last)
                    assert schedule.integrate_matters(mode, stage, p, last) == (integrates and p + 1 <= last)
                    first = min(f for f in range(p, max(p, stage) + 2) if f >= stage and (f - stage) % 2 == 0)
                    assert schedule.first_fire_from(stage, p) == first
                    assert schedule.reaches_in_cone(mode, stage, p, last) == (first <= last)
                for mode in every_step:
                    assert schedule.fires_in_cone(mode, stage, p, last) == (p <= last)
                    assert schedule.integrate_matters(mode, stage, p, last)
                    assert schedule.reaches_in_cone(mode, stage, p, last)
    for k in range(8):
        assert schedule.ceiling_applies(schedule.MODE_BSNN, k) == (k == 0)
        assert schedule.ceiling_applies(schedule.MODE_IF_RATE, k)
        theta = np.float32(0.75)
        assert schedule.spike_value(schedule.MODE_BSNN, theta, k) == theta * np.float32(2.0 ** -(k + 1))
        assert schedule.spike_value(schedule.MODE_IF_RATE, theta, k) == theta


# --------------------------------------------------------------------------- initial potential


def test_half_initial_potential_rounds_instead_of_truncating():
    # x = 0.671875: truncation to 4 bits emits 0.625 (1/2 + 1/8); rounding emits the nearest, 0.6875
    x = np.array([[0.671875]], np.float32)
    zero = runtime.simulate(chain_graph([1.0, 1.0], [0.0, 0.0], phases=4), x, 24, record="all", full_dynamics=True)
    half = runtime.simulate(chain_graph([1.0, 1.0], [0.0, 0.0], phases=4, initial_potential="half"), x, 24,
                            record="all", full_dynamics=True)
    assert zero.initial_potential == "zero" and half.initial_potential == "half"
    # V starts at 2^-(K+1) = 1/32: 0.703125 -> 1/2, 1/8, 1/16 (0.6875), residual 1/64; then 0.6875 exactly; then
    # 0.671875 -> 0.625: the residual stays in [-1/32, 1/32), so the mean emitted value converges to x
    assert _times(half, "pop0") == [4, 6, 7, 12, 14, 15, 20, 22]
    assert _times(zero, "pop0") == [4, 6, 12, 14, 15, 20, 22, 23]
    assert half.logits[1, 0, 0] == np.float32(0.6875) and zero.logits[1, 0, 0] == np.float32(0.625)


def test_if_rate_starts_at_half_the_threshold():
    x = np.array([[0.375]], np.float32)
    graph = chain_graph([1.0, 1.0], [0.0, 0.0], mode="if-rate", phases=4, initial_potential="half")
    result = runtime.simulate(graph, x, 8, record="all")
    assert _times(result, "pop0") == _reference_if_rate(0.375, 8, v0=0.5) == [1, 3, 6]


def test_phase_mode_starts_at_half_the_last_weight():
    x = np.array([[0.6875]], np.float32)
    graph = chain_graph([1.0, 1.0], [0.0, 0.0], mode="phase", phases=4, initial_potential="half")
    result = runtime.simulate(graph, x, 12, record="all")
    assert _times(result, "pop0") == _reference_phase(0.6875, 12, 4, v0=1 / 32)


def test_initial_potential_values():
    assert schedule.initial_potential("bsnn", 8, 1.0, "half") == np.float32(2.0**-9)
    assert schedule.initial_potential("phase", 4, 2.0, "half") == np.float32(2.0 / 32)
    assert schedule.initial_potential("if-rate", 8, 1.0, "half") == np.float32(0.5)
    assert schedule.initial_potential("bsnn", 8, 1.0, "zero") == 0
    with pytest.raises(ValueError, match="not one of half, zero"):
        schedule.initial_potential("bsnn", 8, 1.0, "third")


# --------------------------------------------------------------------------- one path, any batch size


def _same(a, b):
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.sops, b.sops)
    for name in a.spike_counts:
        np.testing.assert_array_equal(a.spike_counts[name], b.spike_counts[name], err_msg=name)
    for name in a.events:
        np.testing.assert_array_equal(a.events[name], b.events[name], err_msg=name)


@pytest.mark.parametrize("mode", ["bsnn", "bsnn-nosn", "if-rate"])
def test_results_do_not_depend_on_batch_size_or_threads(monkeypatch, mode):
    monkeypatch.setattr(kernels, "_SPLIT_MIN_WORK", 0)  # one sample splits every conv and dense delivery
    lowered = runtime.lower(resnet_graph(mode=mode, phases=K, size=16, width=6))
    x = np.random.default_rng(8).random((7,) + lowered.input_shape).astype(np.float32)
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    options = {"record": "all", "record_samples": [0, 3, 6], "per_neuron_counts": True}
    reference = runtime.simulate(lowered, x, 9 * K, batch_size=7, threads=1, **options)
    assert reference.sops.min() > 0 and all(len(e) for e in reference.events.values())
    for batch_size, thread_count in ((1, threads), (1, 1), (2, threads), (3, 1), (4, threads)):
        _same(runtime.simulate(lowered, x, 9 * K, batch_size=batch_size, threads=thread_count, **options), reference)


def test_one_recorded_sample_in_a_batch_gives_consistent_events():
    """The case that wrote corrupt rows at step 0: one recorded sample in a batch of a ResNet graph."""
    lowered = runtime.lower(resnet_graph(mode="bsnn", phases=K))
    x = np.random.default_rng(4).random((4,) + lowered.input_shape).astype(np.float32)
    result = runtime.simulate(lowered, x, 10 * K, batch_size=4, record="all", record_samples=[2],
                              per_neuron_counts=True)
    for name in lowered.spiking:
        events = result.events[name]
        assert set(events[:, 0].tolist()) <= {2}
        rebuilt = np.bincount(events[:, 2], minlength=result.spike_counts[name][2].size)
        np.testing.assert_array_equal(rebuilt, result.spike_counts[name][2].reshape(-1))
        stage = lowered.graph.nodes[name]["op"].stage
        periods = events[:, 1] // K
        assert np.all(periods >= stage) and np.all((periods - stage) % 2 == 0), name  # only fire periods


def test_events_that_disagree_with_the_counts_are_an_error(monkeypatch):
    module = sys.modules["runtime.simulate"]
    lowered = runtime.lower(vgg_graph(mode="bsnn", phases=K))
    x = np.random.default_rng(4).random((2,) + lowered.input_shape).astype(np.float32)
    real = module._launch
    calls = []

    def drifting(plan, run):
        calls.append(1)
        if len(calls) == 2:  # the recording pass sees other input: its spikes differ from the first pass
            run.drive[:] *= 1.5
        real(plan, run)

    monkeypatch.setattr(module, "_launch", drifting)
    with pytest.raises(BsnnError, match="recording pass of sample"):
        runtime.simulate(lowered, x, 8 * K, record="all")


def test_the_kernel_entry_refuses_packed_arguments_that_do_not_fit():
    """kernels.run_batch checks the packed tuples once per call before any kernel reads them."""
    module = sys.modules["runtime.simulate"]
    lowered = runtime.lower(vgg_graph(mode="bsnn", phases=K))
    net = kernel_tables(lowered)
    x = np.random.default_rng(4).random((2,) + lowered.input_shape).astype(np.float32)
    plan = module._Plan(lowered=lowered, net=net, timesteps=3 * K, last_fire=lowered.last_fire(3 * K),
                        schedule="light-cone", one_sample=1, per_neuron=False)
    drive = lowered.input_drive(x)
    nodes = len(lowered.names)

    def run(**changes):
        good = module._new_run(plan, drive, False, np.zeros(nodes, np.uint8), np.zeros(3, np.int64),
                               np.zeros((0, 3), np.int32))
        return good._replace(**changes)

    state = kernels.new_state(net, 2)
    assert isinstance(state, kernels.PeriodState) and kernels.uses_period_path(net)
    with pytest.raises(ValueError, match="Run.drive must be a float32 array"):
        kernels.run_batch(net, run(drive=drive.astype(np.float64)), state, 1, 1)
    with pytest.raises(ValueError, match="Run.predictions"):
        kernels.run_batch(net, run(predictions=np.zeros((3 * K + 1, 2), np.int32)), state, 1, 1)
    with pytest.raises(ValueError, match="Run.last_fire"):
        kernels.run_batch(net, run(last_fire=np.zeros(nodes + 1, np.int32)), state, 1, 1)
    with pytest.raises(ValueError, match="step path"):
        kernels.run_batch(net._replace(mode=np.int64(schedule.MODE_NOSN)), run(), state, 1, 1)
    with pytest.raises(ValueError, match="input_dense"):
        kernels.input_dense(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32), np.zeros(5, np.float32),
                            np.zeros((2, 5), np.float32))


def test_kernel_tables_are_packed_once():
    lowered = runtime.lower(vgg_graph())
    net = kernel_tables(lowered)
    assert kernel_tables(lowered) is net
    assert isinstance(net, kernels.Net) and net.node_table is lowered.node_table


def test_input_drive_of_a_sample_does_not_depend_on_its_batch():
    """The analog input layer sums in a fixed order per sample (a batched BLAS product does not), and equals the
    reference executor up to float32 rounding."""
    lowered = runtime.lower(resnet_graph(mode="bsnn", phases=K, size=16, width=6))
    x = np.random.default_rng(12).random((37,) + lowered.input_shape).astype(np.float32)
    whole = lowered.input_drive(x)
    for start, stop in ((0, 1), (5, 6), (3, 20), (36, 37)):
        np.testing.assert_array_equal(lowered.input_drive(x[start:stop]), whole[start:stop])
    module = sys.modules["runtime.lowering"]
    for node, name in lowered.input_targets:
        sub = lowered.drive_subgraphs[name]
        reference = module._evaluate_target_input(lowered.graph, sub, name, {lowered.input_name: x}, len(x))
        mine = module._evaluate_target_input(lowered.graph, sub, name, {lowered.input_name: x}, len(x), batch_free=True)
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-5)
