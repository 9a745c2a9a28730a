"""runtime.evaluate: the fields of an Evaluation, worked out by hand on a one-neuron, two-class graph."""

from __future__ import annotations

import numpy as np
import pytest

import runtime
from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.errors import DataError
from runtime.evaluate import evaluate_snn, first_output_of

K = 4


def two_class_graph(mode: str = "bsnn", phases: int = K):
    """x (1,) -> fc (w 1) -> pop0 (stage 1) -> fc (w [-1, 1]) -> output (2 classes, stage 2): L = 1.

    The class scores are (-v, v), v the value pop0 has emitted: class 0 while
    pop0 is silent (a tie goes to the lowest index), class 1 from its first spike on.
    """
    graph = ir.new_graph("two_class")
    ir.add_node(graph, "x", O.Input(shape=(1,)))
    ir.add_node(graph, "fc0", O.Gemm(weight=np.ones((1, 1), np.float32), bias=np.zeros(1, np.float32)), ["x"])
    population = O.Population(mode=mode, phases=phases, stage=1, initial_potential="zero")
    ir.add_node(graph, "pop0", population, ["fc0"])
    weight = np.array([[-1.0], [1.0]], np.float32)
    ir.add_node(graph, "fc1", O.Gemm(weight=weight, bias=np.zeros(2, np.float32)), ["pop0"])
    ir.add_node(graph, "out", O.OutputAccumulator(mode=mode, phases=phases, stage=2), ["fc1"])
    graph.graph["outputs"] = ["out"]
    ir.verify(graph)
    return graph


# x = 0.6875 = 0.1011b fires at t = 4, 6, 7 (period 1) and 12, 14, 15 (period 3); -0.3 never fires;
# 2.0 saturates: all K = 4 spikes in periods 1 and 3. Each spike reaches the two classes: 2 SOPs.
X = np.array([[0.6875], [-0.3], [2.0]], np.float32)
LABELS = np.array([1, 0, 1])


def test_every_field_of_a_bistable_run_by_hand():
    evaluation = evaluate_snn(two_class_graph(), X, LABELS, 16, batch_size=2)
    assert (evaluation.mode, evaluation.phases, evaluation.timesteps, evaluation.samples) == ("bsnn", K, 16, 3)
    assert (evaluation.classes, evaluation.schedule, evaluation.initial_potential) == (2, "light-cone", "zero")
    # pop0's first spike (step 4, 0-based) turns samples 0 and 2 to class 1; sample 1 stays class 0
    expected = np.zeros((16, 3), np.int32)
    expected[4:, [0, 2]] = 1
    np.testing.assert_array_equal(evaluation.predictions, expected)
    # labels (1, 0, 1): sample 1 is right from the start, samples 0 and 2 from step 4 on
    assert evaluation.correct_per_step.tolist() == [1] * 4 + [3] * 12
    np.testing.assert_array_equal(evaluation.accuracy_per_step, np.array([1] * 4 + [3] * 12) / 3)
    assert evaluation.accuracy == 1.0
    assert evaluation.predicted_per_class.tolist() == [1, 2]
    # T_first = (L + 1) K = 2 * 4
    assert evaluation.first_output_step == 8 and evaluation.accuracy_first_output == 1.0
    # SOPs: 6 spikes * 2, 0, 8 spikes * 2; half in period 1, half in period 3
    assert evaluation.sops_total == 28 and evaluation.sops_per_sample == pytest.approx(28 / 3)
    assert evaluation.sops_per_period_total.tolist() == [0, 14, 0, 14]
    np.testing.assert_allclose(evaluation.sops_per_period, [0, 14 / 3, 0, 14 / 3])
    # the ANN: 1 + 2 MACs; the analog input layer: 1 MAC
    assert (evaluation.ann_macs, evaluation.input_macs) == (3, 1)
    energy = evaluation.energy
    assert energy["estimate"] is True
    assert energy["snn_energy_pj_per_sample"] == pytest.approx(0.9 * 28 / 3 + 4.6 * 1)
    assert energy["ann_energy_pj_per_sample"] == pytest.approx(4.6 * 3)
    assert evaluation.bytes_per_sample == evaluation.result.extra["bytes_per_sample"]
    assert evaluation.seconds > 0
    np.testing.assert_array_equal(evaluation.labels, LABELS)


def test_before_the_first_full_output_there_is_no_accuracy_there():
    evaluation = evaluate_snn(two_class_graph(), X, LABELS, 7)
    assert evaluation.first_output_step == 8 and evaluation.accuracy_first_output is None
    assert evaluation.correct_per_step.tolist() == [1] * 4 + [3] * 3


def test_without_labels_the_accuracy_fields_are_none():
    evaluation = evaluate_snn(two_class_graph(), X, None, 16)
    assert evaluation.correct_per_step is None and evaluation.accuracy_per_step is None
    assert evaluation.accuracy is None and evaluation.accuracy_first_output is None
    assert evaluation.sops_total == 28 and evaluation.first_output_step == 8


def test_a_lowered_graph_evaluates_like_the_graph():
    graph = two_class_graph()
    a = evaluate_snn(graph, X, LABELS, 16)
    b = evaluate_snn(runtime.lower(graph), X, LABELS, 16, batch_size=1, threads=1)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert (a.first_output_step, a.sops_total, a.energy) == (b.first_output_step, b.sops_total, b.energy)


@pytest.mark.parametrize("mode", ["phase", "if-rate"])
def test_the_rate_modes_have_no_first_full_output(mode):
    graph = two_class_graph(mode=mode)
    assert first_output_of(graph) is None
    evaluation = evaluate_snn(graph, X, LABELS, 8)
    assert evaluation.first_output_step is None and evaluation.accuracy_first_output is None
    assert evaluation.sops_per_period_total.sum() == evaluation.sops_total


def test_first_output_of_reads_the_output_stage():
    graph = two_class_graph(mode="bsnn-nosn", phases=3)
    assert first_output_of(graph) == 2 * 3
    assert first_output_of(runtime.lower(graph)) == 2 * 3


def test_labels_must_match_the_samples():
    with pytest.raises(DataError, match="2 labels for 3 samples"):
        evaluate_snn(two_class_graph(), X, LABELS[:2], 8)
