"""Lowering and kernels against plain numpy references.

- every lowered projection, applied to a spike map by a numpy scatter that
  reads the lowered arrays, equals the reference executor's evaluation of the
  linear subgraph between the two spiking nodes (conv scatter = dense conv of
  the spike map, dense rows = Gemm, prefixes = average / global pooling, ...);
- the Numba delivery kernel equals that numpy scatter;
- the batch path, the one-sample channel-split path and 1 or 2 threads give
  identical spikes;
- a graph using the general (CSR) path — padding, grouped and dilated convs,
  concat, ceil-mode average pooling with padding, two paths from one source —
  still matches the oracle.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from spiking_graphs import Builder, resnet_graph, vgg_graph

import runtime
from bsnn_graph import ops as O
from runtime import kernels, oracle
from runtime import lowering as L
from runtime.simulate import kernel_tables


def misc_graph(mode="bsnn"):
    b = Builder((2, 9, 9), mode, 8, seed=3)
    p1 = b.population([b.conv("x", 4)], 1)
    pad = b.op("pad", O.Pad(pads=(0, 0, 1, 1, 0, 0, 1, 1)), [p1])
    p2 = b.population([b.conv(pad, 4, pad=0)], 2)  # the Pad is absorbed into the conv scatter
    grouped = b.op("gconv", O.Conv(weight=b.rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.4,
                                   bias=np.zeros(4, np.float32), strides=(1, 1), pads=(1, 1, 1, 1),
                                   dilations=(1, 1), group=2), [p1])
    p3 = b.population([grouped, b.conv(p1, 4, k=1, pad=0)], 2)  # two paths from p1
    cat = b.op("cat", O.Concat(axis=1), [p2, p3])
    avg = b.op("avg", O.AveragePool(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True,
                                    count_include_pad=False), [cat])
    dil = b.op("dconv", O.Conv(weight=b.rng.standard_normal((6, 8, 3, 3)).astype(np.float32) * 0.3,
                               bias=np.full(6, 0.05, np.float32), strides=(1, 1), pads=(2, 2, 2, 2),
                               dilations=(2, 2)), [avg])
    p4 = b.population([dil], 3)
    gap = b.op("gap", O.GlobalAveragePool(), [p4])
    flat = b.op("flat", O.Flatten(axis=1), [gap])
    mm = b.op("mm", O.MatMul(weight=b.rng.standard_normal((6, 10)).astype(np.float32)), [flat])
    biased = b.op("bias", O.Add(constant=np.full((1, 10), 0.1, np.float32)), [mm])
    return b.output(biased, 4)


def channels_graph(mode="bsnn"):
    """Convs the conv core takes whole: grouped, depthwise, into a Concat (channel offsets), through a
    per-channel Mul, strided into a Concat, a Concat of Concats, and a 1x1 conv read by an average pool."""
    b = Builder((4, 8, 8), mode, 8, seed=5)
    p1 = b.population([b.conv("x", 6)], 1)

    def grouped(src, cout, group, stride=1):
        cin = b.graph.nodes[src]["shape"][0]
        w = b.rng.standard_normal((cout, cin // group, 3, 3)).astype(np.float32) * 0.4
        return b.op("gconv", O.Conv(weight=w, bias=np.full(cout, 0.02, np.float32), strides=(stride, stride),
                                    pads=(1, 1, 1, 1), dilations=(1, 1), group=group), [src])

    depthwise = grouped(p1, 6, 6)
    scaled = b.op("mul", O.Mul(constant=np.linspace(0.5, 1.5, 6, dtype=np.float32).reshape(1, 6, 1, 1)), [depthwise])
    cat = b.op("cat", O.Concat(axis=1), [scaled, grouped(p1, 4, 2), b.conv(p1, 2, k=1, pad=0)])
    p2 = b.population([cat], 2)  # 12 channels: 0-5 depthwise x Mul, 6-9 grouped, 10-11 a 1x1 conv
    inner = b.op("cat", O.Concat(axis=1), [grouped(p2, 4, 4, stride=2), b.conv(p2, 2, stride=2)])
    outer = b.op("cat", O.Concat(axis=1), [b.conv(p2, 3, stride=2), inner])
    p3 = b.population([b.op("mul", O.Mul(constant=np.array(0.8, np.float32)), [outer])], 3)
    # a DenseNet transition: 1x1 conv, then 2x2 average pooling (one 2x2 stride-2 conv)
    pool = b.op("avg", O.AveragePool(kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0)),
                [b.conv(p3, 4, k=1, pad=0)])
    p4 = b.population([pool], 4)
    gap = b.op("gap", O.GlobalAveragePool(), [p4])
    return b.output(b.gemm(b.op("flat", O.Flatten(axis=1), [gap]), 5), 5)


GRAPHS = {"vgg": vgg_graph, "resnet": resnet_graph, "misc": misc_graph, "channels": channels_graph}


def numpy_deliver(lowered, j, spikes_internal: np.ndarray) -> np.ndarray:
    """Reference scatter of projection j: target input (internal layout, float64) for source values."""
    row = lowered.proj_table[j]
    out = np.zeros(lowered.node_table[row[L.P_TARGET], L.N_SIZE], np.float64)
    indptr, cols, vals = lowered.csr_indptr, lowered.csr_cols, lowered.csr_vals

    def core(m, value):
        if row[L.P_CORE] == L.CORE_CSR:
            r0 = row[L.P_CSR_ROW]
            np.add.at(out, cols[indptr[r0 + m] : indptr[r0 + m + 1]], value * vals[indptr[r0 + m] : indptr[r0 + m + 1]])
        elif row[L.P_CORE] == L.CORE_DENSE:
            n_in, n_out = row[L.P_CIN], row[L.P_COUT]
            out[:] += value * lowered.weights[row[L.P_WOFF] : row[L.P_WOFF] + n_in * n_out].reshape(n_in, n_out)[m]
        else:
            cin, _h, w, cout, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, woff = row[L.P_CIN : L.P_WOFF + 1]
            cin_g, ct, coff = row[L.P_CIN_G], row[L.P_CT], row[L.P_COFF]
            weights = lowered.weights[woff : woff + cin * kh * kw * cout].reshape(cin, kh, kw, cout)[:, :, ::-1]
            ci, iy, ix = m % cin, (m // cin) // w, (m // cin) % w
            channel = coff + (ci // cin_g) * cout  # the first target channel of ci's group
            for ky in range(kh):
                for kx in range(kw):
                    ny, nx = iy + pt - ky * dh, ix + pl - kx * dw
                    if ny < 0 or nx < 0 or ny % sh or nx % sw or ny // sh >= oh or nx // sw >= ow:
                        continue
                    base = ((ny // sh) * ow + nx // sw) * ct + channel
                    out[base : base + cout] += value * weights[ci, ky, kx]

    for m in np.nonzero(spikes_internal)[0]:
        value = spikes_internal[m]
        prefix = row[L.P_PREFIX_ROW]
        if prefix < 0 or row[L.P_CORE] == L.CORE_CSR:
            core(m, value)
        else:
            for e in range(indptr[prefix + m], indptr[prefix + m + 1]):
                core(cols[e], value * vals[e])
    return out


def _natural(lowered, name, internal):
    out = np.empty_like(internal)
    out[lowered.orders[name]] = internal
    return out


@pytest.mark.parametrize("name", list(GRAPHS))
def test_projections_equal_the_executor(name):
    graph = GRAPHS[name]()
    lowered = runtime.lower(graph)
    rng = np.random.default_rng(0)
    kinds = set()
    for j in range(lowered.proj_table.shape[0]):
        row = lowered.proj_table[j]
        src, tgt = lowered.names[row[L.P_SOURCE]], lowered.names[row[L.P_TARGET]]
        kinds.add((int(row[L.P_CORE]), int(row[L.P_PREFIX_ROW] >= 0)))
        spikes = (rng.random((1,) + lowered.shapes[src]) < 0.3).astype(np.float32) * 0.5
        paths = [p for p in L._paths(graph, tgt)]
        # all paths from this source (the same source may reach the target twice)
        same = [i for i in range(lowered.proj_table.shape[0])
                if lowered.proj_table[i, L.P_SOURCE] == row[L.P_SOURCE] and lowered.proj_table[i, L.P_TARGET] == row[L.P_TARGET]]
        sub = L._linear_subgraph(graph, tgt, paths)
        expected = (L._evaluate_target_input(graph, sub, tgt, {src: spikes}, 1)
                    - L._evaluate_target_input(graph, sub, tgt, {}, 1)).reshape(-1)
        internal = spikes.reshape(-1)[lowered.orders[src]]
        got = sum(numpy_deliver(lowered, i, internal) for i in same)
        np.testing.assert_allclose(_natural(lowered, tgt, got), expected, rtol=1e-5, atol=1e-5, err_msg=f"{src}->{tgt}")
    if name == "vgg":
        assert {(L.CORE_CONV, 0), (L.CORE_CONV, 1), (L.CORE_DENSE, 0)} <= kinds
    if name == "resnet":
        assert (L.CORE_CSR, 0) in kinds  # SN identity and the Mul shortcut
    if name == "misc":
        assert (L.CORE_CONV, 1) in kinds and (L.CORE_DENSE, 1) in kinds
    if name == "channels":  # every conv in the conv core: none falls back to the coordinate list
        table = lowered.proj_table
        conv = table[table[:, L.P_CORE] == L.CORE_CONV]
        assert (L.CORE_CSR, 0) not in kinds and len(conv) == 7
        assert (conv[:, L.P_CIN_G] == 1).any() and (conv[:, L.P_COFF] > 0).any()
        assert (conv[:-1, L.P_CT] > conv[:-1, L.P_COUT]).all()  # each shares its target (a Concat)
        assert conv[-1, L.P_KH] == 2 and conv[-1, L.P_SH] == 2  # the conv and the pool as one


@pytest.mark.parametrize("name", ["vgg", "misc", "channels"])
def test_numba_delivery_equals_numpy_scatter(name):
    lowered = runtime.lower(GRAPHS[name]())
    net = kernel_tables(lowered)
    rng = np.random.default_rng(1)
    for j in range(lowered.proj_table.shape[0]):
        row = lowered.proj_table[j]
        src, tgt = row[L.P_SOURCE], row[L.P_TARGET]
        size = lowered.node_table[src, L.N_SIZE]
        spiking = np.nonzero(rng.random(size) < 0.3)[0].astype(np.int32)
        V = np.zeros(lowered.state_size, np.float32)
        kernels._deliver(net, V, j, spiking, 0, spiking.size, np.float32(0.25), np.zeros(1, np.float32), -1, 0,
                         kernels._extent(lowered.proj_table, j))
        dense = np.zeros(size, np.float32)
        dense[spiking] = 0.25
        offset = lowered.node_table[tgt, L.N_STATE]
        got = V[offset : offset + lowered.node_table[tgt, L.N_SIZE]]
        np.testing.assert_allclose(got, numpy_deliver(lowered, j, dense), rtol=1e-5, atol=1e-6)
        # coalesced: each active neuron (ascending) with its own value q, the whole target and a part of it
        # (conv: a band of output rows, dense: a slice of the features)
        q = (rng.integers(1, 256, size) / np.float32(256)).astype(np.float32)
        conv = row[L.P_CORE] == L.CORE_CONV
        width = row[L.P_OH] if conv else row[L.P_COUT]
        for lo, hi in ((0, width), (width // 3, width - 1), (1, 2)):
            V = np.zeros(lowered.state_size, np.float32)
            kernels._deliver(net, V, j, spiking, 0, spiking.size, np.float32(0), q, 0, lo, hi)
            dense = np.zeros(size, np.float32)
            dense[spiking] = q[spiking]
            expected = numpy_deliver(lowered, j, dense)
            got = V[offset : offset + lowered.node_table[tgt, L.N_SIZE]]
            if row[L.P_CORE] != L.CORE_CSR:  # conv and dense cores update only their part [lo, hi)
                index = np.arange(got.size)
                part = index // (row[L.P_CT] * row[L.P_OW]) if conv else index
                expected = np.where((part >= lo) & (part < hi), expected, 0)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_batch_single_and_thread_paths_agree(monkeypatch):
    monkeypatch.setattr(kernels, "_SPLIT_MIN_WORK", 0)  # the one-sample path splits every conv and dense scatter
    graph = vgg_graph(size=16, width=8)
    x = np.random.default_rng(2).random((3, 1, 16, 16)).astype(np.float32)
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    batch = runtime.simulate(graph, x, 64, batch_size=3, threads=threads, record="all", per_neuron_counts=True)
    serial = runtime.simulate(graph, x, 64, batch_size=2, threads=1, per_neuron_counts=True)
    single = runtime.simulate(graph, x, 64, batch_size=1, threads=threads, record="all", per_neuron_counts=True)
    for name in batch.spike_counts:
        np.testing.assert_array_equal(batch.spike_counts[name], single.spike_counts[name])
        np.testing.assert_array_equal(batch.spike_counts[name], serial.spike_counts[name])
        np.testing.assert_array_equal(batch.events[name], single.events[name])
    np.testing.assert_array_equal(batch.logits, single.logits)
    np.testing.assert_array_equal(batch.sops, serial.sops)
    assert batch.sops.min() > 0


@pytest.mark.parametrize("name", ["misc", "channels"])
def test_general_path_graph_matches_oracle(name):
    graph = GRAPHS[name]()
    x = np.random.default_rng(4).random((4,) + runtime.lower(graph).input_shape).astype(np.float32)
    waves = 2
    stage = max(graph.nodes[n]["op"].stage for n in runtime.lower(graph).spiking)  # L
    result = runtime.simulate(graph, x, (stage + 2 * waves) * 8, record="all", full_dynamics=True)
    emitted = {n: oracle.emitted_per_wave(result, graph, n, waves) for n in result.spike_counts}
    checks, logits = oracle.teacher_forced_check(graph, x, emitted)
    total = sum(c.neuron_periods for c in checks.values())
    assert all(c.unexplained == 0 for c in checks.values()), checks
    assert sum(c.ties for c in checks.values()) <= max(1, 1e-4 * total)
    assert all(emitted[n].any() for n in emitted)
    np.testing.assert_allclose(result.logits[stage::2][:waves], logits, rtol=1e-4, atol=1e-4)


def test_sops_count_spike_synapse_pairs():
    graph = vgg_graph()
    lowered = runtime.lower(graph)
    x = np.random.default_rng(3).random((2, 1, 12, 12)).astype(np.float32)
    result = runtime.simulate(lowered, x, 48, per_neuron_counts=True)
    for i, name in enumerate(lowered.names[:-1]):
        off, size = lowered.node_table[i, L.N_SPIKE], lowered.node_table[i, L.N_SIZE]
        fan = lowered.fanout[off : off + size]
        counts = result.spike_counts[name].reshape(2, -1)[:, lowered.orders[name]]
        np.testing.assert_array_equal(result.sops_per_population[name], (counts * fan).sum(axis=1))
    # a conv neuron in the middle of the map reaches 3 x 3 x C_out synapses, a corner one 2 x 2 x C_out
    first = lowered.fanout[: lowered.node_table[0, L.N_SIZE]].reshape(12, 12, -1)
    cout = lowered.shapes[lowered.names[1]][0]
    assert first[5, 5, 0] == 9 * cout and first[0, 0, 0] == 4 * cout
    assert result.sops.tolist() == sum(result.sops_per_population.values()).tolist()


@pytest.mark.parametrize("name", ["vgg", "resnet", "misc", "channels"])
@pytest.mark.parametrize("timesteps", [93, 96])
def test_period_kernel_equals_step_by_step(monkeypatch, name, timesteps):
    """Mode bsnn: the period kernel (coalesced q * row per active neuron) vs every spike delivered in its step.

    Only the float32 summation order differs, so the spikes must be the same
    except where a threshold comparison was a float32 tie: every differing
    neuron-wave is checked to be such a tie by the oracle, and ties must be rare.
    The output is fed phase by phase in both, so predictions agree wherever the
    spikes do. ``timesteps = 93`` ends inside a period.
    """
    graph = GRAPHS[name]()
    lowered = runtime.lower(graph)
    x = np.random.default_rng(5).random((4,) + lowered.input_shape).astype(np.float32)
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    options = {"threads": threads, "record": "all", "per_neuron_counts": True, "full_dynamics": True}
    period = runtime.simulate(lowered, x, timesteps, batch_size=4, **options)
    one = runtime.simulate(lowered, x[:1], timesteps, batch_size=1, **options)
    monkeypatch.setattr(kernels, "_COALESCE", False)
    step = runtime.simulate(lowered, x, timesteps, batch_size=4, **options)
    differ = 0
    for node in period.spike_counts:
        np.testing.assert_array_equal(one.events[node], period.events[node][period.events[node][:, 0] == 0])
        differ += int((period.spike_counts[node] != step.spike_counts[node]).sum())
    assert np.array_equal(period.sops, step.sops) == (differ == 0)
    # every difference is a counted tie of the oracle, run teacher-forced on each simulation's own values
    stage = max(graph.nodes[n]["op"].stage for n in lowered.spiking)
    waves = (timesteps // lowered.phases - stage) // 2
    total = ties = 0
    for result in (period, step):
        emitted = {n: oracle.emitted_per_wave(result, graph, n, waves) for n in result.spike_counts}
        checks, _ = oracle.teacher_forced_check(graph, x, emitted)
        assert all(c.unexplained == 0 for c in checks.values()), checks
        total += sum(c.neuron_periods for c in checks.values())
        ties += sum(c.ties for c in checks.values())
    assert ties <= max(2, 1e-4 * total)
    if ties == 0:  # no tie in the checked waves: the same spikes at the same steps there, and the same output
        k = lowered.phases
        np.testing.assert_array_equal(period.predictions[: (stage + 2 * waves) * k],
                                      step.predictions[: (stage + 2 * waves) * k])
        for node in period.events:
            horizon = (graph.nodes[node]["op"].stage + 2 * waves) * k
            mine, theirs = period.events[node], step.events[node]
            np.testing.assert_array_equal(np.sort(mine[mine[:, 1] < horizon], axis=0),
                                          np.sort(theirs[theirs[:, 1] < horizon], axis=0))
    same = all(np.array_equal(np.sort(period.events[n], axis=0), np.sort(step.events[n], axis=0)) for n in period.events)
    np.testing.assert_allclose(period.logits, step.logits, rtol=1e-4, atol=1e-4 + 2.0 * (not same))
    # the period kernel scatters one row per active neuron and period: fewer than one per spike
    spikes = sum(int(c.sum()) for c in step.spike_counts.values())
    table = lowered.node_table
    paths = int((table[:, L.N_PROJ_END] - table[:, L.N_PROJ_START]).max())  # one delivery per spike and path
    assert period.extra["deliveries"].sum() < step.extra["deliveries"].sum() <= spikes * paths


@pytest.mark.parametrize(("setup", "expected"), [("", "workqueue"), ("numba.config.THREADING_LAYER = 'omp'", "omp")])
def test_threading_layer_default_respects_the_user(setup, expected):
    """Importing the runtime picks workqueue only when nobody chose a threading layer."""
    import os
    import subprocess
    import sys

    code = f"import numba\n{setup}\nimport runtime.kernels\nprint(numba.config.THREADING_LAYER)"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split()[-1] == expected
