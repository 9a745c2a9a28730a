"""The event-driven bsnn run reproduces the dense per-period oracle (BSNN_SPEC.md, "Exactness oracle").

Checked wave by wave and population by population with the run's own source
values (teacher forcing), so each difference is local: it must be a float32
tie at a threshold, and ties must be rare. The free-running oracle must agree
on the logits up to float32 noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from spiking_graphs import chain_graph, resnet_graph, vgg_graph

import runtime
from runtime import oracle

K = 8
WAVES = 3


def _inputs(shape, n=6, seed=7):
    return np.random.default_rng(seed).random((n,) + shape).astype(np.float32)


def _largest_stage(graph):
    return max(graph.nodes[n]["op"].stage for n in graph.nodes if graph.nodes[n]["op"].op_type == "Population")


@pytest.mark.parametrize("initial_potential", ["half", "zero"])
@pytest.mark.parametrize("build", [vgg_graph, resnet_graph], ids=["vgg-max-avg", "resnet-sn"])
def test_event_run_matches_oracle(build, initial_potential):
    graph = build(mode="bsnn", phases=K, initial_potential=initial_potential)
    x = _inputs((1, 12, 12))
    L = _largest_stage(graph)
    timesteps = (L + 2 * WAVES) * K  # the output's WAVES integrate periods are L, L+2, L+4
    result = runtime.simulate(graph, x, timesteps, batch_size=4, record="all", full_dynamics=True)
    emitted = {name: oracle.emitted_per_wave(result, graph, name, WAVES) for name in result.spike_counts}
    checks, logits = oracle.teacher_forced_check(graph, x, emitted)
    total = sum(c.neuron_periods for c in checks.values())
    ties = sum(c.ties for c in checks.values())
    assert total > 20000
    for name, check in checks.items():
        assert check.unexplained == 0, f"{name}: {check}"
        # every population is active, none is saturated
        values = emitted[name]
        assert 0.02 < (values > 0).mean() < 0.98, name
    assert ties <= 1e-4 * total
    # SN and max gate emit exactly their source's (max of) K-bit values: no ties possible there
    for name, check in checks.items():
        if graph.nodes[name]["op"].op_type in ("MaxGate", "SynchronousNeuron"):
            assert check.mismatches == 0, name
    # output: V at the end of period L + 2m is the accumulated W' q + b'
    np.testing.assert_allclose(result.logits[L :: 2][:WAVES], logits, rtol=1e-4, atol=1e-4)
    # free-running oracle: same logits up to float32 noise carried through a few layers
    dense = oracle.dense_bsnn(graph, x, WAVES)
    np.testing.assert_allclose(result.logits[L :: 2][:WAVES], dense.logits, rtol=0, atol=0.05)
    # the first full output is at T_first = (L + 1) K; before it, the output holds no input-dependent value
    assert np.all(result.logits[:L] == result.logits[:L, :1])


def test_resnet_merge_reads_synchronised_shortcut():
    """The merge population's sources (conv branch and SN shortcut) all have stage s - 1."""
    graph = resnet_graph(mode="bsnn")
    lowered = runtime.lower(graph)
    stages = {n: graph.nodes[n]["op"].stage for n in lowered.names}
    for name in lowered.names:
        op = graph.nodes[name]["op"]
        if op.op_type == "SynchronousNeuron":
            (src,) = graph.predecessors(name)
            assert stages[name] == stages[src] + 1


def test_quantise_is_the_k_bit_binary_expansion():
    v = np.array([0.0, -0.3, 0.6875, 0.703125, 0.99, 1.5, 0.5], np.float32)
    q, margin = oracle.quantise(v, 4)
    np.testing.assert_array_equal(q, np.array([0, 0, 0.6875, 0.6875, 0.9375, 0.9375, 0.5], np.float32))
    assert margin[-1] == 0.0  # 0.5 sits exactly on the first threshold


def test_chain_run_equals_oracle_waves():
    graph = chain_graph([1.0, 0.75, 1.0], [0.0, 0.125, 0.0], phases=4)
    x = np.array([[0.703125], [0.203125], [0.90625]], np.float32)  # exact in float32: no ties
    result = runtime.simulate(graph, x, (2 + 2 * 5) * 4, record="all", full_dynamics=True)
    dense = oracle.dense_bsnn(graph, x, 5)
    for name in ("pop0", "pop1"):
        np.testing.assert_array_equal(oracle.emitted_per_wave(result, graph, name, 5), dense.values[name])


@pytest.mark.parametrize("build", [vgg_graph, resnet_graph], ids=["vgg-max-avg", "resnet-sn"])
def test_step_reference_matches_oracle(build):
    """The numpy step simulator (runtime.reference) run wave by wave is the oracle: the output V at the end of
    period L + 2m is the oracle's m-th wave, up to float32 summation order (the reference adds a period's
    current step by step, the oracle once per wave). Under the light cone of T = (L + 2 WAVES) K every spiking
    node fires exactly WAVES times, so its spikes are the set bits of the oracle's WAVES K-bit values."""
    from runtime.reference import reference_simulate

    graph = build(mode="bsnn", phases=K)
    x = _inputs((1, 12, 12), n=4)
    L = _largest_stage(graph)
    reference = reference_simulate(graph, x, (L + 2 * WAVES) * K)
    dense = oracle.dense_bsnn(graph, x, WAVES)
    np.testing.assert_allclose(reference.logits[L::2][:WAVES], dense.logits, rtol=1e-4, atol=1e-4)
    for name, values in dense.values.items():
        bits = np.round(values * 2**K).astype(np.int64)  # the K-bit patterns the oracle emits per wave
        spikes = sum((bits >> j) & 1 for j in range(K))  # set bits: spikes per wave and neuron
        per_sample = spikes.reshape(WAVES, len(x), -1).sum(axis=(0, 2))
        np.testing.assert_array_equal(reference.spike_counts[name], per_sample, err_msg=name)
