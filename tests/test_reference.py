"""runtime.simulate against the numpy step simulator of the spec (runtime.reference), all four modes.

Checked on hand-built graphs and on data/vgg_max.onnx converted at K = 4, for
both schedules (light cone and ``full_dynamics=True``): predictions, spike
counts per neuron, SOPs per sample and per population identical; logits equal
up to float32 summation order (the runtime delivers spikes row by row, in
bsnn once per period, and computes the analog input layer with its own
kernels; the reference sums each projection with numpy), exactly equal on the
hand-worked graph, where both add the same terms in the same order. None of
this needs torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from spiking_graphs import Builder, resnet_graph, vgg_graph, with_mode

import runtime
from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.errors import BsnnError, DataError, ModelError
from runtime.reference import reference_simulate

K = 4
MODES = ("bsnn", "bsnn-nosn", "phase", "if-rate")
DATA = Path(__file__).resolve().parents[1] / "data"


def odd_ops_graph(mode="bsnn"):
    """The less common projections: Pad, Concat of two convs, a 3x3/2 ceil-mode max gate with padding, an added
    constant, asymmetric conv pads, an overlapping ceil-mode average pool before a Gemm, a Clip ceiling. L = 4."""
    b = Builder((1, 10, 10), mode, K, seed=3, calibration=32)
    padded = b.op("pad", O.Pad(pads=(0, 0, 1, 1, 0, 0, 1, 1)), ["x"])
    p1 = b.population([b.conv(padded, 3, pad=0)], 1)  # 10x10
    g1 = b.maxgate(p1)  # 5x5
    cat = b.op("cat", O.Concat(axis=1), [b.conv(g1, 3), b.conv(g1, 2, k=1, pad=0)])
    p2 = b.population([cat], 2)
    b.graph.nodes[p2]["op"].ceiling = np.array(0.8, np.float32)  # a Clip(0, c) population
    g2 = b.maxgate(p2, k=3, stride=2, pad=1, ceil_mode=True)  # 3x3
    shifted = b.op("shift", O.Add(constant=np.full((1, 5, 1, 1), 0.05, np.float32)), [g2])
    p3 = b.population([b.conv(shifted, 4, pad=(1, 1, 1, 0))], 3)  # asymmetric pads: 3x2
    avg = b.op("avg", O.AveragePool(kernel_shape=(2, 2), strides=(1, 1), pads=(0, 0, 1, 1), ceil_mode=True), [p3])
    p4 = b.population([b.gemm(b.op("flat", O.Flatten(axis=1), [avg]), 12)], 4)
    return b.output(b.gemm(p4, 5), 5)


def _graph(build, mode):
    """``build`` in ``mode``: the bsnn graph with its mode replaced, or built without SN for bsnn-nosn."""
    if mode == "bsnn-nosn":
        return build(mode=mode)
    return with_mode(build(mode="bsnn"), mode)


def _resnet(mode="bsnn"):
    return resnet_graph(mode=mode, phases=K)


def _vgg(mode="bsnn"):
    return vgg_graph(mode=mode, phases=K)


def assert_agree(reference, result, logits_exact=False):
    """The runtime's result equals the reference's (logits: up to float32 summation order unless exact)."""
    np.testing.assert_array_equal(result.predictions, reference.predictions)
    if logits_exact:
        np.testing.assert_array_equal(result.logits, reference.logits)
    else:
        scale = max(float(np.abs(reference.logits).max()), 1.0)
        np.testing.assert_allclose(result.logits, reference.logits, rtol=1e-5, atol=1e-5 * scale)
    assert set(result.spike_counts) == set(reference.neuron_spike_counts)
    for name, counts in reference.neuron_spike_counts.items():
        np.testing.assert_array_equal(result.spike_counts[name], counts, err_msg=name)
    np.testing.assert_array_equal(result.sops, reference.sops)
    for name, sops in reference.sops_per_population.items():
        np.testing.assert_array_equal(result.sops_per_population[name], sops, err_msg=name)
    assert result.schedule == reference.schedule


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).random((4, 1, 12, 12)).astype(np.float32)


@pytest.mark.parametrize("full_dynamics", [False, True], ids=["light-cone", "full"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("build", [_vgg, _resnet, odd_ops_graph], ids=["vgg", "resnet", "odd-ops"])
def test_runtime_equals_reference(build, mode, full_dynamics, images):
    graph = _graph(build, mode)
    x = images if build is not odd_ops_graph else images[:, :, :10, :10]
    T = 30  # not a whole number of periods: the last period's logits are read at step T - 1
    reference = reference_simulate(graph, x, T, full_dynamics=full_dynamics)
    result = runtime.simulate(graph, x, T, batch_size=3, threads=1, per_neuron_counts=True,
                              full_dynamics=full_dynamics)  # fmt: skip
    assert reference.sops.min() > 0 and reference.logits.std() > 0  # the network is active
    assert_agree(reference, result)


@pytest.mark.parametrize("mode", MODES)
def test_light_cone_changes_no_output(mode, images):
    """The spec: predictions and logits at every step < T are those of the full simulation; the pruned run fires
    less (bistable modes at T = (L + 1) K: one wave)."""
    graph = _graph(_vgg, mode)
    T = (5 + 1) * K
    cone = reference_simulate(graph, images, T)
    full = reference_simulate(graph, images, T, full_dynamics=True)
    np.testing.assert_array_equal(cone.predictions, full.predictions)
    np.testing.assert_array_equal(cone.logits, full.logits)
    assert (cone.schedule, full.schedule) == ("light-cone", "full")
    if mode in ("bsnn", "bsnn-nosn"):
        assert cone.sops.sum() < full.sops.sum()
    else:
        np.testing.assert_array_equal(cone.sops, full.sops)


def _conv_pool_graph():
    """pop1 -> conv 3x3 (stride 1) -> average pool 2x2/2 -> pop2: the runtime lowers the two as one 4x4/2 conv."""
    b = Builder((1, 8, 8), "bsnn", K, seed=0, calibration=16)
    p1 = b.population([b.conv("x", 3)], 1)
    avg = b.op("avg", O.AveragePool(kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0)), [b.conv(p1, 3)])
    p2 = b.population([avg], 2)
    return b.output(b.gemm(b.op("flat", O.Flatten(axis=1), [p2]), 4), 3), p1, p2


def test_conv_then_average_pool_spikes(images):
    graph, _, second = _conv_pool_graph()
    x = images[:, :, :8, :8]
    reference = reference_simulate(graph, x, 24)
    result = runtime.simulate(graph, x, 24, per_neuron_counts=True)
    np.testing.assert_array_equal(result.predictions, reference.predictions)
    for name, counts in reference.neuron_spike_counts.items():
        np.testing.assert_array_equal(result.spike_counts[name], counts, err_msg=name)
    np.testing.assert_array_equal(result.sops_per_population[second], reference.sops_per_population[second])


@pytest.mark.xfail(strict=True, reason="SOP reading: the runtime fuses a stride-1 conv and the average pool after it "
                   "into one conv (lowering._pool_after) and counts the composed kernel's synapses (3x3 then 2x2/2: "
                   "4 output positions per input position), the reference counts through the conv, then the pool (9); "
                   "BSNN_SPEC.md does not say which (issue 14 report)")  # fmt: skip
def test_conv_then_average_pool_sops(images):
    graph, first, _ = _conv_pool_graph()
    x = images[:, :, :8, :8]
    reference = reference_simulate(graph, x, 24)
    result = runtime.simulate(graph, x, 24)
    np.testing.assert_array_equal(result.sops_per_population[first], reference.sops_per_population[first])


# --------------------------------------------------------------------------- a reference model


@pytest.fixture(scope="module")
def vgg_max():
    """data/vgg_max.onnx converted at K = 4 (bsnn; no residual, so the other modes differ only in the mode field),
    with two test images."""
    import passes
    from bsnn_graph import load_onnx
    from bsnn_graph.data import load_dataset

    calibration, _ = load_dataset(DATA / "fmnist_calib.npz")
    x, _ = load_dataset(DATA / "fmnist_test.npz")
    graph = passes.convert(load_onnx(DATA / "vgg_max.onnx"), calibration[:64], phases=K)
    return graph, x[:2]


@pytest.mark.parametrize("full_dynamics", [False, True], ids=["light-cone", "full"])
@pytest.mark.parametrize("mode", MODES)
def test_vgg_max_runtime_equals_reference(vgg_max, mode, full_dynamics):
    graph, x = vgg_max
    graph = with_mode(graph, mode)
    largest = max(ir.op_of(graph, n).stage for n in graph.nodes if isinstance(ir.op_of(graph, n), O.Population))
    T = (largest + 1) * K  # the first full output
    reference = reference_simulate(graph, x, T, full_dynamics=full_dynamics)
    result = runtime.simulate(graph, x, T, threads=1, per_neuron_counts=True, full_dynamics=full_dynamics)
    assert_agree(reference, result)


# --------------------------------------------------------------------------- worked by hand


def _two_neuron_graph(mode):
    """x (1,) -> fc (w 1) -> one neuron (stage 1, V starts at "half") -> fc (w [2, -1], b [0.1, 0.3]) -> 2 outputs."""
    graph = ir.new_graph("two")
    ir.add_node(graph, "x", O.Input(shape=(1,)))
    ir.add_node(graph, "fc0", O.Gemm(weight=np.ones((1, 1), np.float32), bias=np.zeros(1, np.float32)), ["x"])
    ir.add_node(graph, "pop", O.Population(mode=mode, phases=K, stage=1, initial_potential="half"), ["fc0"])
    fc1 = O.Gemm(weight=np.array([[2.0], [-1.0]], np.float32), bias=np.array([0.1, 0.3], np.float32))
    ir.add_node(graph, "fc1", fc1, ["pop"])
    ir.add_node(graph, "out", O.OutputAccumulator(mode=mode, phases=K, stage=2), ["fc1"])
    graph.graph["outputs"] = ["out"]
    ir.verify(graph)
    return graph


def test_bsnn_worked_by_hand():
    # K = 4, phase weights 1/2, 1/4, 1/8, 1/16; the neuron starts at 2^-(K+1) = 1/32 = 0.03125 and integrates
    # 0.65 / 4 per step in period 0: V = 0.68125. Period 1 fires: 1/2 (V 0.18125), not 1/4, 1/8 (V 0.05625),
    # not 1/16: it emits 0.625 (the 4-bit value nearest 0.65) at t = 4, 6 and keeps 0.05625. Period 2 integrates
    # again: V = 0.70625; period 3 fires 1/2 (0.20625), not 1/4, 1/8 (0.08125), 1/16 (0.01875): 0.6875 at
    # t = 12, 14, 15. 5 spikes, each reaching the 2 outputs: 10 SOPs.
    # The output (stage 2) integrates in periods 1 and 3 (its source's fire periods), the bias over the period:
    # period 1: [2, -1] * 0.625 + [0.1, 0.3] = [1.35, -0.325]; it holds in period 2; period 3 adds
    # [2, -1] * 0.6875 + [0.1, 0.3]: [2.825, -0.7125]. Class 0 leads from step 4 on; before, V = [0, 0] ties
    # to class 0.
    graph = _two_neuron_graph("bsnn")
    x = np.array([[0.65]], np.float32)
    reference = reference_simulate(graph, x, 16, full_dynamics=True)
    np.testing.assert_allclose(reference.logits[:, 0], [[0, 0], [1.35, -0.325], [1.35, -0.325], [2.825, -0.7125]],
                               rtol=0, atol=1e-6)  # fmt: skip
    assert reference.spike_counts["pop"].tolist() == [5]
    assert reference.neuron_spike_counts["pop"].tolist() == [[5]]
    assert reference.sops.tolist() == [10] and reference.sops_per_population["pop"].tolist() == [10]
    assert reference.predictions[:, 0].tolist() == [0] * 16
    # the runtime adds the same terms in the same order here: logits bit for bit
    assert_agree(reference, runtime.simulate(graph, x, 16, per_neuron_counts=True, full_dynamics=True),
                 logits_exact=True)  # fmt: skip


def test_if_rate_worked_by_hand():
    # if-rate: V starts at theta / 2 = 0.5 and takes 0.65 every step; a spike (value 1) when V >= 1:
    # t=0 1.15 spike -> 0.15; t=1 0.80; t=2 1.45 spike -> 0.45; t=3 1.10 spike -> 0.10; t=4 0.75;
    # t=5 1.40 spike -> 0.40; t=6 1.05 spike -> 0.05; t=7 0.70. Spikes reach the output in their step; the output
    # takes its bias every step: after period 0 (3 spikes, 4 steps) [6 + 0.4, -3 + 1.2] = [6.4, -1.8],
    # after period 1 (5 spikes, 8 steps) [10.8, -2.6].
    graph = _two_neuron_graph("if-rate")
    x = np.array([[0.65]], np.float32)
    reference = reference_simulate(graph, x, 8)
    np.testing.assert_allclose(reference.logits[:, 0], [[6.4, -1.8], [10.8, -2.6]], rtol=0, atol=1e-5)
    assert reference.spike_counts["pop"].tolist() == [5]
    assert reference.sops.tolist() == [10]
    assert_agree(reference, runtime.simulate(graph, x, 8, per_neuron_counts=True), logits_exact=True)


def test_refusals():
    graph = _two_neuron_graph("bsnn")
    with pytest.raises(DataError, match="does not fit graph input"):
        reference_simulate(graph, np.zeros((2, 3), np.float32), 8)
    with pytest.raises(BsnnError, match="timesteps"):
        reference_simulate(graph, np.zeros((2, 1), np.float32), 0)
    graph.nodes["pop"]["op"] = O.Relu()
    with pytest.raises(ModelError, match="Relu"):
        reference_simulate(graph, np.zeros((2, 1), np.float32), 8)
