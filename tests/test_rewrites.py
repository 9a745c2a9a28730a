"""The exact rewrites of BSNN_SPEC.md "Activations beyond ReLU", each on a tiny ONNX graph.

Every test checks the rewritten ANN (canonicalise -> fold_batchnorm ->
normalise, and the spiking graph's ANN meaning) against onnxruntime on the
original model (rtol 1e-4, atol 1e-5), and, where the runtime lowers every
op of the result, the event-driven run against the dense oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import initializer, run_onnxruntime, tensor_info
from onnx import helper
from test_passes_graphs import Builder, random_input

import runtime
from bsnn_graph import evaluate, ir, load_onnx, save_onnx
from bsnn_graph import ops as O
from passes import (
    PassError,
    canonicalise,
    convert,
    copy_graph,
    fold_batchnorm,
    normalise,
)
from passes.normalise import read_scales
from runtime import oracle

K = 8
WAVES = 3


def _conv(name, x, out, w_shape, rng, pad=1, inits=None):
    weight = (rng.standard_normal(w_shape) * np.sqrt(2.0 / np.prod(w_shape[1:]))).astype(np.float32)
    bias = (0.1 * rng.standard_normal(w_shape[0])).astype(np.float32)
    inits += [initializer(f"{name}.w", weight), initializer(f"{name}.b", bias)]
    k = w_shape[2]
    return helper.make_node(
        "Conv", [x, f"{name}.w", f"{name}.b"], [out], name=name, pads=[pad] * 4, kernel_shape=[k, k]
    )


def _head(x, channels, spatial, classes, rng, inits):
    """GlobalAveragePool -> Flatten -> Gemm (the logits), as nodes reading ``x``."""
    w = (rng.standard_normal((classes, channels)) / np.sqrt(channels)).astype(np.float32)
    inits += [initializer("fc.w", w), initializer("fc.b", np.zeros(classes, np.float32))]
    return [
        helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]


def _check_ann(path, x, channelwise=False):
    """Normalised and spiking ANN meaning vs onnxruntime; returns (ann graph, normalised, spiking)."""
    graph = load_onnx(path)
    (expected,) = run_onnxruntime(path, {"x": x})
    folded = fold_batchnorm(canonicalise(copy_graph(graph)).graph).graph
    np.testing.assert_allclose(evaluate(folded, x), expected, rtol=1e-4, atol=1e-5)
    normalised = normalise(folded, calibration=x, channelwise=channelwise).graph
    np.testing.assert_allclose(evaluate(normalised, x), expected, rtol=1e-4, atol=1e-5)
    spiking = convert(graph, x, phases=K, channelwise=channelwise, calibrate="percentile")  # normalise's lambdas
    np.testing.assert_allclose(evaluate(spiking, x), expected, rtol=1e-4, atol=1e-5)
    return graph, normalised, spiking


def _check_run_against_oracle(spiking, x):
    """Event-driven run vs the free-running dense oracle (the oracle test's tolerance)."""
    stages = [spiking.nodes[n]["op"].stage for n in spiking.nodes if spiking.nodes[n]["op"].op_type == "Population"]
    L = max(stages)
    result = runtime.simulate(spiking, x, (L + 2 * WAVES) * K, batch_size=8)
    dense = oracle.dense_bsnn(spiking, x, WAVES)
    np.testing.assert_allclose(result.logits[L::2][:WAVES], dense.logits, rtol=0, atol=0.05)
    # and the quantised network is close to its ANN (a gross lowering error would not be)
    ann = evaluate(spiking, x)
    scale = np.abs(ann).max()
    assert np.abs(dense.logits[0] - ann).max() < 0.2 * scale  # the first wave (logits accumulate)


# --------------------------------------------------------------------------- ReLU6 -> population with a ceiling


def _relu6_model(make_model, rng, max_value=6.0):
    inits = []
    nodes = [
        _conv("c1", "x", "h1", (4, 2, 3, 3), rng, inits=inits),
        helper.make_node("Clip", ["h1", "lo", "hi"], ["a1"], name="relu6_1"),
        helper.make_node("MaxPool", ["a1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        _conv("c2", "p1", "h2", (6, 4, 3, 3), rng, inits=inits),
        helper.make_node("Clip", ["h2", "lo", "hi"], ["a2"], name="relu6_2"),
        *_head("a2", 6, 4, 3, rng, inits),
    ]
    inits += [initializer("lo", np.float32(0.0)), initializer("hi", np.float32(max_value))]
    return make_model(nodes, [tensor_info("x", ["N", 2, 8, 8])], [tensor_info("y", ["N", 3])], inits)


def test_relu6_becomes_a_population_with_a_ceiling(make_model, rng):
    path = _relu6_model(make_model, rng, max_value=1.5)
    x = (3.0 * rng.standard_normal((32, 2, 8, 8))).astype(np.float32)
    graph, normalised, spiking = _check_ann(path, x)
    pre = evaluate(fold_batchnorm(canonicalise(graph).graph).graph, x, outputs=["c1"])
    assert (pre > 1.5).mean() > 0.05  # the clip is active: a plain ReLU would fail the comparison
    scales = read_scales(normalised)
    for name in ("relu6_1", "relu6_2"):
        op = ir.op_of(spiking, name)
        assert isinstance(op, O.Population)
        np.testing.assert_allclose(op.ceiling, np.float32(1.5) / scales[name], rtol=1e-6)
        assert op.ceiling.shape == () and op.ceiling.dtype == np.float32
        assert np.all(op.ceiling >= 1.0 - 1e-2)  # lambda is a percentile of values <= c
    assert isinstance(ir.op_of(spiking, "pool"), O.MaxGate)


def test_relu_population_has_no_ceiling_and_a_ceiling_round_trips_onnx(make_model, rng, tmp_path):
    path = _relu6_model(make_model, rng)
    x = rng.standard_normal((16, 2, 8, 8)).astype(np.float32)
    spiking = convert(load_onnx(path), x)
    ir.op_of(spiking, "relu6_1").ceiling = np.full((), np.inf, np.float32)
    channels = ir.shape_of(spiking, "relu6_2")[0]
    ir.op_of(spiking, "relu6_2").ceiling = np.linspace(1.0, 2.0, channels, dtype=np.float32)  # per channel
    save_onnx(spiking, tmp_path / "s.onnx")
    back = load_onnx(tmp_path / "s.onnx")
    for name in ("relu6_1", "relu6_2"):
        a, b = ir.op_of(spiking, name).ceiling, ir.op_of(back, name).ceiling
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert np.isinf(ir.op_of(back, "relu6_1").ceiling)
    np.testing.assert_array_equal(evaluate(back, x), evaluate(spiking, x))


def test_relu6_with_per_channel_lambdas_is_refused_naming_the_node(make_model, rng):
    path = _relu6_model(make_model, rng)
    x = rng.standard_normal((4, 2, 8, 8)).astype(np.float32)
    with pytest.raises(Exception, match=r"pass normalise .*'relu6_1' \(Clip\): Clip\(0, 6.0\) with per-channel"):
        convert(load_onnx(path), x, channelwise=True)


def test_clip_with_a_nonzero_minimum_is_refused(make_model, rng):
    path = _relu6_model(make_model, rng)
    graph = load_onnx(path)
    ir.op_of(graph, "relu6_2").min = -1.0
    with pytest.raises(Exception, match=r"'relu6_2' \(Clip\): Clip\(min=-1.0, max=6.0\) is not supported"):
        convert(graph, rng.standard_normal((4, 2, 8, 8)).astype(np.float32))


def test_relu6_spiking_run_matches_the_oracle(make_model, rng):
    path = _relu6_model(make_model, rng, max_value=1.5)
    x = (3.0 * rng.standard_normal((16, 2, 8, 8))).astype(np.float32)
    _, _, spiking = _check_ann(path, x)
    _check_run_against_oracle(spiking, x)


# --------------------------------------------------------------------------- MaxPool after Concat


def _fire_model(make_model, rng):
    """SqueezeNet fire: squeeze 1x1 -> relu -> (expand 1x1 relu, expand 3x3 relu) -> Concat -> MaxPool."""
    inits = []
    nodes = [
        _conv("squeeze", "x", "s", (3, 2, 1, 1), rng, pad=0, inits=inits),
        helper.make_node("Relu", ["s"], ["sr"], name="squeeze_relu"),
        _conv("e1", "sr", "h1", (4, 3, 1, 1), rng, pad=0, inits=inits),
        helper.make_node("Relu", ["h1"], ["r1"], name="e1_relu"),
        _conv("e3", "sr", "h3", (4, 3, 3, 3), rng, inits=inits),
        helper.make_node("Relu", ["h3"], ["r3"], name="e3_relu"),
        helper.make_node("Concat", ["r1", "r3"], ["cat"], name="cat", axis=1),
        helper.make_node("MaxPool", ["cat"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        _conv("c2", "p", "h", (5, 8, 3, 3), rng, inits=inits),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        *_head("a", 5, 4, 3, rng, inits),
    ]
    return make_model(nodes, [tensor_info("x", ["N", 2, 8, 8])], [tensor_info("y", ["N", 3])], inits)


def test_maxpool_after_concat_becomes_concat_of_branch_gates(make_model, rng):
    path = _fire_model(make_model, rng)
    x = rng.standard_normal((16, 2, 8, 8)).astype(np.float32)
    canonical = canonicalise(load_onnx(path))
    assert canonical.modified
    g = canonical.graph
    assert isinstance(ir.op_of(g, "pool"), O.Concat) and "cat" not in g
    parts = ir.inputs_of(g, "pool")
    assert [ir.inputs_of(g, p) for p in parts] == [["e1_relu"], ["e3_relu"]]
    assert all(isinstance(ir.op_of(g, p), O.MaxPool) and ir.op_of(g, p).ceil_mode for p in parts)
    _, _, spiking = _check_ann(path, x)
    assert all(isinstance(ir.op_of(spiking, p), O.MaxGate) for p in parts)
    _check_run_against_oracle(spiking, x)


def test_maxpool_after_a_spatial_concat_is_left_for_to_spiking_to_refuse():
    b = Builder(3)
    x = b.input("x", (2, 4, 4))
    cat = b.op("cat", O.Concat(axis=2), b.relu("r1", b.conv("c1", x, 2)), b.relu("r2", b.conv("c2", x, 2)))
    pool = b.op("pool", O.MaxPool(kernel_shape=(2, 2), strides=(2, 2), pads=(0,) * 4), cat)
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), pool), 3))
    assert isinstance(ir.op_of(canonicalise(copy_graph(graph)).graph, "pool"), O.MaxPool)  # a window straddles the parts
    with pytest.raises(PassError, match=r"'pool' \(MaxPool\): MaxPool must read a ReLU population, reads 'cat'"):
        convert(graph, random_input(graph))


# --------------------------------------------------------------------------- BatchNormalization with no linear op before


def _bn_node(name, x, out, channels, rng, inits):
    inits += [
        initializer(f"{name}.s", (1.0 + 0.3 * rng.standard_normal(channels)).astype(np.float32)),
        initializer(f"{name}.b", (0.2 * rng.standard_normal(channels)).astype(np.float32)),
        initializer(f"{name}.m", (0.2 * rng.standard_normal(channels)).astype(np.float32)),
        initializer(f"{name}.v", (0.5 + rng.random(channels)).astype(np.float32)),
    ]
    return helper.make_node(
        "BatchNormalization", [x, f"{name}.s", f"{name}.b", f"{name}.m", f"{name}.v"], [out], name=name
    )


def _preactivation_model(make_model, rng):
    """conv -> relu -> BN -> relu -> conv, and a pre-activation merge: Add -> BN -> ReLU."""
    inits = []
    nodes = [
        _conv("c1", "x", "h1", (4, 2, 3, 3), rng, inits=inits),
        helper.make_node("Relu", ["h1"], ["r1"], name="r1"),
        _bn_node("bn1", "r1", "b1", 4, rng, inits),
        helper.make_node("Relu", ["b1"], ["r2"], name="r2"),
        _conv("c2", "r2", "h2", (4, 4, 3, 3), rng, inits=inits),
        helper.make_node("Add", ["h2", "r1"], ["s"], name="add"),
        _bn_node("bn2", "s", "b2", 4, rng, inits),
        helper.make_node("Relu", ["b2"], ["r3"], name="r3"),
        *_head("r3", 4, 8, 3, rng, inits),
    ]
    return make_model(nodes, [tensor_info("x", ["N", 2, 8, 8])], [tensor_info("y", ["N", 3])], inits)


def test_batchnorm_without_a_linear_neighbour_is_an_affine_projection(make_model, rng):
    path = _preactivation_model(make_model, rng)
    x = rng.standard_normal((16, 2, 8, 8)).astype(np.float32)
    graph, _, spiking = _check_ann(path, x)
    folded = fold_batchnorm(canonicalise(graph).graph).graph
    for bn in ("bn1", "bn2"):
        assert isinstance(ir.op_of(folded, bn), O.Add)
        assert isinstance(ir.op_of(folded, f"{bn}_scale"), O.Mul)
    assert ir.inputs_of(spiking, "r3") == ["bn2"]  # Add -> BN -> ReLU is a population reading an affine projection
    assert isinstance(ir.op_of(spiking, "r3"), O.Population)
    _check_run_against_oracle(spiking, x)


# --------------------------------------------------------------------------- LeakyReLU / PReLU


def _leaky_model(make_model, rng, prelu: bool):
    """conv -> LeakyRelu (or PRelu per channel) -> conv -> LeakyRelu -> head."""
    inits = []
    if prelu:
        inits += [initializer("slope", np.array([0.1, 0.25, -0.2, 0.3], np.float32).reshape(4, 1, 1))]
        act = helper.make_node("PRelu", ["h1", "slope"], ["a1"], name="act1")
    else:
        act = helper.make_node("LeakyRelu", ["h1"], ["a1"], name="act1", alpha=0.2)
    nodes = [
        _conv("c1", "x", "h1", (4, 2, 3, 3), rng, inits=inits),
        act,
        _conv("c2", "a1", "h2", (5, 4, 3, 3), rng, inits=inits),
        helper.make_node("LeakyRelu", ["h2"], ["a2"], name="act2", alpha=0.1),
        *_head("a2", 5, 8, 3, rng, inits),
    ]
    return make_model(nodes, [tensor_info("x", ["N", 2, 8, 8])], [tensor_info("y", ["N", 3])], inits)


@pytest.mark.parametrize("prelu", [False, True], ids=["leaky", "prelu"])
def test_leaky_relu_is_two_populations_of_one_stage_summed_linearly(make_model, rng, prelu):
    path = _leaky_model(make_model, rng, prelu)
    x = rng.standard_normal((16, 2, 8, 8)).astype(np.float32)
    graph, normalised, spiking = _check_ann(path, x)
    plain = evaluate(graph, x, outputs=["c1"])
    assert (plain < 0).mean() > 0.2  # the negative side matters: ReLU alone would fail the comparison
    scales = read_scales(normalised)
    for act in ("act1", "act2"):
        positive, negative = ir.op_of(spiking, f"{act}_positive"), ir.op_of(spiking, f"{act}_negative")
        assert isinstance(positive, O.Population) and isinstance(negative, O.Population)
        assert positive.stage == negative.stage
        assert float(scales[f"{act}_negative"]) != float(scales[f"{act}_positive"])
        assert isinstance(ir.op_of(spiking, act), O.Add)
    _check_run_against_oracle(spiking, x)


def test_leaky_relu_and_prelu_round_trip_onnx(make_model, rng, tmp_path):
    graph = load_onnx(_leaky_model(make_model, rng, prelu=True))
    save_onnx(graph, tmp_path / "back.onnx")
    x = rng.standard_normal((4, 2, 8, 8)).astype(np.float32)
    (expected,) = run_onnxruntime(tmp_path / "back.onnx", {"x": x})
    np.testing.assert_allclose(evaluate(graph, x), expected, rtol=1e-4, atol=1e-5)
    assert isinstance(ir.op_of(load_onnx(tmp_path / "back.onnx"), "act1"), O.PRelu)


# --------------------------------------------------------------------------- early refusals


def test_every_unconvertible_node_is_named_in_one_refusal_before_calibration():
    b = Builder(5)
    x = b.input("x", (2, 4, 4))
    h = b.op("pool_on_input", O.MaxPool(kernel_shape=(2, 2), strides=(1, 1), pads=(0,) * 4), x)
    h = b.op("clip", O.Clip(min=-1.0, max=1.0), b.conv("c1", h, 2))
    h = b.op("softmax", O.Softmax(axis=1), b.relu("r", b.conv("c2", h, 2)))
    graph = b.output(b.gemm("fc", b.op("flat", O.Flatten(), h), 3))
    calls = []
    with pytest.raises(PassError) as info:
        convert(graph, random_input(graph), progress=calls.append)
    assert calls == []  # refused before any calibration batch
    message = str(info.value)
    assert "\n" not in message
    assert info.value.node == "pool_on_input" and info.value.op_type == "MaxPool"
    assert "and 2 more node(s) that cannot be converted" in message
    assert "'clip' (Clip): Clip(min=-1.0, max=1.0)" in message
    assert "'softmax' (Softmax): Softmax inside the network" in message


@pytest.mark.parametrize("activation", ["Sigmoid", "Tanh", "LRN", "Gelu"])
def test_non_piecewise_linear_activations_are_all_named_at_load(make_model, rng, activation):
    from bsnn_graph.errors import BsnnError

    inits = []
    attrs = {"size": 3} if activation == "LRN" else {}
    nodes = [
        _conv("c1", "x", "h1", (4, 2, 3, 3), rng, inits=inits),
        helper.make_node(activation, ["h1"], ["a1"], name="act1", **attrs),
        _conv("c2", "a1", "h2", (4, 4, 3, 3), rng, inits=inits),
        helper.make_node(activation, ["h2"], ["a2"], name="act2", **attrs),
        # SiLU as PyTorch exports it: x * Sigmoid(x), a product of two tensors
        helper.make_node("Sigmoid", ["a2"], ["g"], name="gate"),
        helper.make_node("Mul", ["a2", "g"], ["a3"], name="silu"),
        *_head("a3", 4, 8, 3, rng, inits),
    ]
    opset = 20 if activation == "Gelu" else 17
    path = make_model(nodes, [tensor_info("x", ["N", 2, 8, 8])], [tensor_info("y", ["N", 3])], inits, opset=opset)
    with pytest.raises(BsnnError) as info:
        load_onnx(path)
    message = str(info.value)
    assert "\n" not in message and "unsupported" in message
    for name in ("act1", "act2", "gate"):  # the SiLU is refused through its Sigmoid
        assert name in message


def test_output_softmax_over_channels_of_a_pooled_map_is_removed():
    """SqueezeNet ends with GlobalAveragePool -> Softmax on (N, classes, 1, 1)."""
    b = Builder(6)
    x = b.input("x", (2, 4, 4))
    pooled = b.op("gap", O.GlobalAveragePool(), b.relu("r", b.conv("c", x, 3)))
    graph = b.output(b.op("softmax", O.Softmax(axis=1), pooled))
    result = canonicalise(copy_graph(graph)).graph
    assert "softmax" not in result and result.graph["metadata"]["bsnn.removed_output_op"] == "Softmax"
    # over a singleton axis the softmax is constant, not argmax-invariant: it stays
    ir.op_of(graph, "softmax").axis = -1
    assert "softmax" in canonicalise(graph).graph


# --------------------------------------------------------------------------- channel shuffle (a permutation)


def _shuffle_model(make_model, rng, groups=2):
    """grouped conv -> relu -> Reshape (g, C/g, H, W) -> Transpose (0, 2, 1, 3, 4) -> Reshape (C, H, W) -> conv."""
    inits = [
        initializer("split", np.array([0, groups, 6 // groups, 8, 8], np.int64)),
        initializer("merge", np.array([0, 6, 8, 8], np.int64)),
    ]
    nodes = [
        _conv("c1", "x", "h1", (6, 1, 3, 3), rng, inits=inits),
        helper.make_node("Relu", ["h1"], ["r1"], name="r1"),
        helper.make_node("Reshape", ["r1", "split"], ["s"], name="split"),
        helper.make_node("Transpose", ["s"], ["t"], name="shuffle", perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "merge"], ["m"], name="merge"),
        _conv("c2", "m", "h2", (4, 6, 3, 3), rng, inits=inits),
        helper.make_node("Relu", ["h2"], ["r2"], name="r2"),
        *_head("r2", 4, 8, 3, rng, inits),
    ]
    # c1 reads 6 input channels: one per group of a depthwise conv over a 6-channel input
    return make_model(nodes, [tensor_info("x", ["N", 6, 8, 8])], [tensor_info("y", ["N", 3])], inits)


def _fix_depthwise(path):
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.name == "c1":
            node.attribute.append(helper.make_attribute("group", 6))
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("channelwise", [False, True])
def test_channel_shuffle_is_a_linear_permutation(make_model, rng, channelwise):
    path = _fix_depthwise(_shuffle_model(make_model, rng))
    x = rng.standard_normal((16, 6, 8, 8)).astype(np.float32)
    *_, spiking = _check_ann(path, x, channelwise)
    op = ir.op_of(spiking, "shuffle")
    assert isinstance(op, O.Transpose) and op.perm == (0, 2, 1, 3, 4)
    assert [ir.op_of(spiking, s).op_type for s in ir.inputs_of(spiking, "c2")] == ["Reshape"]


def test_transpose_flat_permutation_is_its_exact_meaning(rng):
    op = O.Transpose(perm=(0, 2, 1, 3, 4))
    shape = (3, 2, 4, 5)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    y = np.transpose(x, op.perm)
    permutation = op.flat_permutation(shape)
    assert sorted(permutation.tolist()) == list(range(int(np.prod(shape))))
    np.testing.assert_array_equal(y.reshape(2, -1), x.reshape(2, -1)[:, permutation])
    assert op.output_shape([shape]) == (2, 3, 4, 5)
    with pytest.raises(O.ShapeError, match="keeping axis 0"):
        O.Transpose(perm=(1, 0, 2, 3, 4)).output_shape([shape])


def test_transpose_round_trips_onnx(make_model, rng, tmp_path):
    graph = load_onnx(_fix_depthwise(_shuffle_model(make_model, rng)))
    save_onnx(graph, tmp_path / "back.onnx")
    x = rng.standard_normal((4, 6, 8, 8)).astype(np.float32)
    (expected,) = run_onnxruntime(tmp_path / "back.onnx", {"x": x})
    np.testing.assert_allclose(evaluate(graph, x), expected, rtol=1e-4, atol=1e-5)
    assert ir.op_of(load_onnx(tmp_path / "back.onnx"), "shuffle").perm == (0, 2, 1, 3, 4)


def test_channel_shuffle_spiking_run_matches_the_oracle(make_model, rng):
    path = _fix_depthwise(_shuffle_model(make_model, rng))
    x = rng.standard_normal((16, 6, 8, 8)).astype(np.float32)
    _, _, spiking = _check_ann(path, x)
    _check_run_against_oracle(spiking, x)
