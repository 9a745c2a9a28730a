"""Each mode's schedule on tiny graphs whose spike times are worked out by hand (K = 4 unless said).

Phase weights for K = 4: 1/2, 1/4, 1/8, 1/16 at phases 0..3 of each period.
"""

from __future__ import annotations

import numpy as np
from spiking_graphs import chain_graph

import runtime
from bsnn_graph import ir
from bsnn_graph import ops as O


def _times(result, name, sample=0):
    events = result.events[name]
    return events[events[:, 0] == sample, 1].tolist()


def test_bistable_schedule_one_neuron():
    # x -> (w 1) -> pop0 (stage 1) -> (w 1) -> output (stage 2); x = 0.6875 = 0.1011b
    graph = chain_graph([1.0, 1.0], [0.0, 0.0], phases=4)
    result = runtime.simulate(graph, np.array([[0.6875]], np.float32), 16, record="all")
    # period 0 integrates (never fires), period 1 fires 1/2 at t=4, 1/8 at t=6, 1/16 at t=7,
    # period 2 integrates again, period 3 fires the same value
    assert _times(result, "pop0") == [4, 6, 7, 12, 14, 15]
    # the output integrates during its sources' fire periods: nothing in period 0, 0.6875 per fire period
    np.testing.assert_array_equal(result.logits[:, 0, 0], [0.0, 0.6875, 0.6875, 1.375])
    assert result.spike_counts["pop0"].tolist() == [6]  # spikes per sample (per neuron: per_neuron_counts=True)
    assert result.sops.tolist() == [6]  # one synapse per spike
    # SOPs by the period of their spikes: fire periods 1 and 3, three spikes each
    assert result.extra["sops_per_period"][:, 0].tolist() == [0, 3, 0, 3]


def test_bistable_residual_carries_to_the_next_period():
    # x = 0.703125 = 0.6875 + 1/64: each fire period emits 0.6875 and keeps 1/64; the 4th emits 0.75
    graph = chain_graph([1.0, 1.0], [0.0, 0.0], phases=4)
    result = runtime.simulate(graph, np.array([[0.703125]], np.float32), 32, record="all")
    assert _times(result, "pop0") == [4, 6, 7, 12, 14, 15, 20, 22, 23, 28, 29]


def test_bistable_negative_and_saturated_input():
    graph = chain_graph([1.0, 1.0], [0.0, 0.0], phases=4)
    result = runtime.simulate(graph, np.array([[-0.3], [2.0]], np.float32), 16, record="all")
    assert _times(result, "pop0", 0) == []  # V <= 0 never fires
    assert _times(result, "pop0", 1) == [4, 5, 6, 7, 12, 13, 14, 15]  # V >= 1 - 2^-K: all K spikes


def test_bias_is_integrated_over_one_period():
    graph = chain_graph([1.0, 1.0], [0.5, 0.25], phases=4)
    result = runtime.simulate(graph, np.array([[0.0]], np.float32), 8, record="all")
    assert _times(result, "pop0") == [4]
    # output: 0.5 from the spike + its own bias 0.25 over period 1
    assert result.logits[1, 0, 0] == np.float32(0.75)


def test_stages_and_first_output():
    # two populations (L = 2): the first full output is at the end of period 2, T_first = (L + 1) K = 12
    graph = chain_graph([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], phases=4)
    result = runtime.simulate(graph, np.array([[0.6875]], np.float32), 24, record="all")
    assert _times(result, "pop1") == [8, 10, 11, 16, 18, 19]
    np.testing.assert_array_equal(result.logits[:, 0, 0], [0, 0, 0.6875, 0.6875, 1.375, 1.375])


def _sn_chain(mode="bsnn"):
    graph = ir.new_graph("sn")
    ir.add_node(graph, "x", O.Input(shape=(1,)))
    ir.add_node(graph, "fc0", O.Gemm(weight=np.ones((1, 1), np.float32), bias=np.zeros(1, np.float32)), ["x"])
    ir.add_node(graph, "pop0", O.Population(mode=mode, phases=4, stage=1, initial_potential="zero"), ["fc0"])
    ir.add_node(graph, "sn", O.SynchronousNeuron(mode=mode, phases=4, stage=2, initial_potential="zero"), ["pop0"])
    ir.add_node(graph, "fc1", O.Gemm(weight=np.ones((1, 1), np.float32), bias=np.zeros(1, np.float32)), ["sn"])
    ir.add_node(graph, "out", O.OutputAccumulator(mode=mode, phases=4, stage=3), ["fc1"])
    graph.graph["outputs"] = ["out"]
    return graph


def test_synchronous_neuron_delays_by_exactly_one_stage():
    graph = _sn_chain()
    x = np.array([[0.703125], [0.3125]], np.float32)
    result = runtime.simulate(graph, x, 40, record="all")
    for sample in range(2):
        source = _times(result, "pop0", sample)
        assert _times(result, "sn", sample) == [t + 4 for t in source if t + 4 < 40]
    assert result.sops_per_population["pop0"].tolist() == result.spike_counts["pop0"].reshape(2).tolist()


def _gate_graph(mode, values, timesteps_phases=4):
    graph = ir.new_graph("gate")
    width = len(values)
    ir.add_node(graph, "x", O.Input(shape=(1, 1, width)))
    conv = O.Conv(weight=np.ones((1, 1, 1, 1), np.float32), bias=None, strides=(1, 1), pads=(0, 0, 0, 0),
                  dilations=(1, 1))
    ir.add_node(graph, "conv", conv, ["x"])
    pop = O.Population(mode=mode, phases=timesteps_phases, stage=1, initial_potential="zero")
    ir.add_node(graph, "pop", pop, ["conv"])
    gate = O.MaxGate(mode=mode, phases=timesteps_phases, stage=1, kernel_shape=(1, width), strides=(1, width),
                     pads=(0, 0, 0, 0), dilations=(1, 1))
    ir.add_node(graph, "gate", gate, ["pop"])
    ir.add_node(graph, "flat", O.Flatten(axis=1), ["gate"])
    ir.add_node(graph, "fc", O.Gemm(weight=np.ones((1, 1), np.float32), bias=np.zeros(1, np.float32)), ["flat"])
    ir.add_node(graph, "out", O.OutputAccumulator(mode=mode, phases=timesteps_phases, stage=2), ["fc"])
    graph.graph["outputs"] = ["out"]
    ir.verify(graph)
    return graph


def test_max_gate_drops_candidates():
    # members 0.625 = 0.1010b and 0.5625 = 0.1001b: both spike at phase 0 (gate spikes), only the first at
    # phase 2 (gate spikes, the second drops out), only the second at phase 3 (no longer a candidate)
    graph = _gate_graph("bsnn", [0.625, 0.5625])
    x = np.array([[[[0.625, 0.5625]]]], np.float32)
    result = runtime.simulate(graph, x, 16, record="all")
    assert _times(result, "pop") == [4, 4, 6, 7, 12, 12, 14, 15]
    assert _times(result, "gate") == [4, 6, 12, 14]  # 0.625 = max, every fire period (candidates reset)
    assert result.logits[1, 0, 0] == np.float32(0.625)


def _reference_if_rate(drive, steps, v0=0.0):
    """Spike steps of one if-rate neuron with constant drive, threshold 1, V starting at ``v0``."""
    v, times = np.float32(v0), []
    for t in range(steps):
        v = np.float32(v + np.float32(drive))
        if v >= 1:
            v = np.float32(v - 1)
            times.append(t)
    return times


def test_if_rate_counts_for_constant_input():
    graph = chain_graph([1.0, 1.0], [0.0, 0.0], mode="if-rate", phases=4)
    x = np.array([[0.375], [0.0], [1.5]], np.float32)
    result = runtime.simulate(graph, x, 16, record="all")
    assert _times(result, "pop0", 0) == [2, 5, 7, 10, 13, 15] == _reference_if_rate(0.375, 16)
    assert result.spike_counts["pop0"].reshape(-1).tolist() == [6, 0, 16]
    # steps 2 (period 0), 5, 7 (period 1), 10 (2), 13, 15 (3); 4 spikes a period at 1.5
    assert result.extra["sops_per_period"].T.tolist() == [[1, 2, 1, 2], [0, 0, 0, 0], [4, 4, 4, 4]]
    # spikes of step t reach the output in step t; logits = accumulated V
    assert result.logits[-1, :, 0].tolist() == [6.0, 0.0, 16.0]


def test_if_rate_max_gate_follows_the_largest_rate():
    # member rates 0.3 and 0.5: after step 1 the second has emitted more, so the gate passes its spikes
    graph = _gate_graph("if-rate", [0.3, 0.5])
    x = np.array([[[[0.3, 0.5]]]], np.float32)
    result = runtime.simulate(graph, x, 20, record="all")
    second = [t for t, n in zip(result.events["pop"][:, 1], result.events["pop"][:, 2]) if n == 1]
    assert second == list(range(1, 20, 2))
    assert _times(result, "gate") == second


def test_phase_max_gate_ties_to_the_lowest_index():
    # equal members: the gate passes member 0's spikes (which are also member 1's)
    graph = _gate_graph("phase", [0.4, 0.4])
    x = np.array([[[[0.4, 0.4]]]], np.float32)
    result = runtime.simulate(graph, x, 16, record="all")
    first = [t for t, n in zip(result.events["pop"][:, 1], result.events["pop"][:, 2]) if n == 0]
    assert _times(result, "gate") == first and first


def test_phase_mode_integrates_and_fires_every_step():
    graph = chain_graph([1.0, 1.0], [0.0, 0.0], mode="phase", phases=4)
    result = runtime.simulate(graph, np.array([[0.6875]], np.float32), 12, record="all")
    # V += 0.171875 each step; fire when V >= 2^-(k+1): worked out by hand
    assert _times(result, "pop0")[:7] == [1, 2, 3, 5, 6, 7, 8]
    assert _times(result, "pop0") == _reference_phase(0.6875, 12, 4)


def _reference_phase(drive, steps, phases, v0=0.0):
    """Spike steps of one phase-mode neuron: V += drive / K every step, fire 2^-(k+1) at phase k."""
    v, times = np.float32(v0), []
    for t in range(steps):
        v = np.float32(v + np.float32(drive / phases))
        w = np.float32(2.0 ** -(t % phases + 1))
        if v >= w:
            v = np.float32(v - w)
            times.append(t)
    return times


def _residual_graph(mode):
    """x -> p1 (s1) -> p2 (s2); merge p3 = p2 + p1 (identity shortcut); with SN in bsnn."""
    one = np.ones((1, 1), np.float32)
    zero = np.zeros(1, np.float32)
    graph = ir.new_graph("residual")
    ir.add_node(graph, "x", O.Input(shape=(1,)))
    ir.add_node(graph, "fc1", O.Gemm(weight=one, bias=zero), ["x"])
    ir.add_node(graph, "p1", O.Population(mode=mode, phases=4, stage=1, initial_potential="zero"), ["fc1"])
    ir.add_node(graph, "fc2", O.Gemm(weight=one, bias=zero), ["p1"])
    ir.add_node(graph, "p2", O.Population(mode=mode, phases=4, stage=2, initial_potential="zero"), ["fc2"])
    ir.add_node(graph, "fc3", O.Gemm(weight=one, bias=zero), ["p2"])
    short = "p1"
    if mode == "bsnn":
        sn = O.SynchronousNeuron(mode=mode, phases=4, stage=2, initial_potential="zero")
        short = ir.add_node(graph, "sn", sn, ["p1"])
    ir.add_node(graph, "mul", O.Mul(constant=np.ones((1, 1), np.float32)), [short])
    ir.add_node(graph, "p3", O.Population(mode=mode, phases=4, stage=3, initial_potential="zero"), ["fc3", "mul"])
    ir.add_node(graph, "fc4", O.Gemm(weight=one, bias=zero), ["p3"])
    ir.add_node(graph, "out", O.OutputAccumulator(mode=mode, phases=4, stage=4), ["fc4"])
    graph.graph["outputs"] = ["out"]
    ir.verify(graph)
    return graph


def test_nosn_residual_shows_phase_lead_and_sn_fixes_it():
    x = np.array([[0.25]], np.float32)
    # with SN: the merge integrates 0.25 + 0.25 in period 2 and emits exactly 0.5 in periods 3 and 5
    synced = runtime.simulate(_residual_graph("bsnn"), x, 24, record="all")
    assert _times(synced, "p3") == [12, 20]
    # without SN: the shortcut's 0.25 arrives at t=5 (merge idle), again at t=13 during the merge's fire
    # period (still added to V): period 3 emits 1/2 at t=12 and 1/4 at t=13 -> 0.75, the wrong value
    unsynced = runtime.simulate(_residual_graph("bsnn-nosn"), x, 24, record="all")
    assert _times(unsynced, "p3") == [12, 13, 21, 22, 23]


def test_threshold_scales_spike_values():
    graph = chain_graph([1.0, 1.0], [0.0, 0.0], phases=4, threshold=2.0)
    result = runtime.simulate(graph, np.array([[1.375]], np.float32), 8, record="all")
    # thresholds 1, 1/2, 1/4, 1/8: 1.375 = 1 + 1/4 + 1/8
    assert _times(result, "pop0") == [4, 6, 7]
    assert result.logits[1, 0, 0] == np.float32(1.375)
