"""Numba kernels of the event-driven simulation.

They take only flat typed arrays, packed in two named tuples: :class:`Net`
(the lowered tables of a graph: float32 state and weights, int32 tables,
see :mod:`runtime.lowering` for the column layout) and :class:`Run` (one
call's schedule, inputs and outputs). They are private; each family is
entered through one public function that checks its packed arguments once
per call (never inside the loops): :func:`run_batch` (the simulation, called
by :func:`runtime.simulate`), :func:`input_conv2d` and :func:`input_dense`
(the analog input layer, called by :meth:`runtime.LoweredGraph.input_drive`).
Synaptic work is done only for the spikes that occur: a spike of a source
neuron adds ``value * row`` to the membrane potentials of the neurons it
reaches, through its projections (convolution
scatter, dense row, sparse row, optionally chained through a sparse prefix
such as average pooling).

The schedule rules (who integrates and fires in which period, the initial
potential, the light cone) are those of :mod:`runtime.schedule`; the
kernels call its functions. Within a step the nodes run in topological
order; a node first receives its current (its sources already delivered
this step's spikes into its V), adds its own constant current if it
integrates in this period, then fires if it fires in this period, then
delivers its spikes. A node fires only in periods up to its light-cone
limit ``Run.last_fire[n]`` (every period with ``full_dynamics``).

Threshold comparisons are exact (no fastmath anywhere): a neuron fires at
phase k iff ``V >= threshold * 2^-(k+1)`` (``V >= threshold`` in ``if-rate``).

One path per mode family, the same arithmetic for any batch size and thread
count (results are bit-identical):
- mode ``bsnn`` runs period by period (:func:`_bsnn_samples`): a fire period
  is computed at once, and each active neuron's emitted value ``q`` is
  scattered once per period (coalesced delivery). In each period the sparse
  (CSR) projections are delivered first, then the conv and dense ones, each
  in source order. :func:`_bsnn_batch` runs chunks of samples in ``prange``;
  one sample runs :func:`_bsnn_samples` directly, its conv and dense
  deliveries split over the threads by bands of target rows
  (:func:`_split_parallel`), which gives every membrane potential the same
  terms in the same order.
- the other modes (and ``bsnn`` as the tests' reference, ``_COALESCE = False``)
  run step by step (:func:`_step_samples`, :func:`_step_batch`), every spike
  delivered in its own step.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from .lowering import (
    CORE_CONV,
    CORE_CSR,
    G_C,
    G_CAND,
    G_DH,
    G_DW,
    G_H,
    G_KH,
    G_KW,
    G_OH,
    G_OW,
    G_PL,
    G_PT,
    G_SH,
    G_SW,
    G_W,
    GATE_FIELDS,
    KIND_GATE,
    KIND_OUTPUT,
    KIND_POPULATION,
    N_CEILING,
    N_DRIVE,
    N_EMITTED,
    N_GATE,
    N_KIND,
    N_PROJ_END,
    N_PROJ_START,
    N_SIZE,
    N_SOURCE,
    N_SPIKE,
    N_STAGE,
    N_STATE,
    NODE_FIELDS,
    P_CIN,
    P_CIN_G,
    P_COFF,
    P_CORE,
    P_COUT,
    P_CSR_ROW,
    P_CT,
    P_DH,
    P_DW,
    P_KH,
    P_KW,
    P_OH,
    P_OW,
    P_PL,
    P_PREFIX_ROW,
    P_PT,
    P_SH,
    P_SW,
    P_TARGET,
    P_W,
    P_WOFF,
    PROJ_FIELDS,
)
from .schedule import (
    MODE_BSNN,
    ceiling_applies,
    fires_in_cone,
    integrate_matters,
    integrates,
    is_bistable,
    phase_weight,
    reaches_in_cone,
    spike_value,
)

__all__ = [
    "Net",
    "PeriodState",
    "Run",
    "StepState",
    "input_conv2d",
    "input_dense",
    "new_period_state",
    "new_state",
    "new_step_state",
    "run_batch",
    "uses_period_path",
]

# Threading layer: "workqueue" unless the user chose one (NUMBA_THREADING_LAYER, or numba.config.THREADING_LAYER
# set before importing the runtime), and only while no parallel Numba code has run in this process (the layer is
# fixed at the first parallel launch). Measured on a 2-core machine shared with two busy processes (load 4):
# one VGG image (T = 56) split over 2 threads took 7.5 ms with workqueue and 60 ms with OpenMP, whose idle
# workers spin and are slow to wake when the cores are shared; batch throughput was the same with both. The
# kernels never nest parallel regions, which is all workqueue lacks.
if (
    "NUMBA_THREADING_LAYER" not in os.environ
    and numba.config.THREADING_LAYER == "default"
    and numba.np.ufunc.parallel._is_initialized is False
):
    numba.config.THREADING_LAYER = "workqueue"

#: below this many synaptic updates per projection and step (or period), one sample stays serial
#: (a parallel region costs microseconds, far more on a loaded machine). ResNet-14 at batch 1 on 2 threads
#: (T = 112, workqueue, loaded machine): 8.7 ms splitting from 2^18, 5.2 ms from 2^20, 6.5 ms on one thread
_SPLIT_MIN_WORK = 1 << 20

#: mode ``bsnn``: deliver a neuron's spikes into populations once per fire period (see :func:`_bsnn_samples`);
#: False runs it step by step, every spike delivered in its own step (the tests compare the two)
_COALESCE = True


class Net(NamedTuple):
    """The lowered tables of a graph as the kernels read them (columns: :mod:`runtime.lowering`)."""

    node_table: np.ndarray  # int32 (S, NODE_FIELDS)
    threshold: np.ndarray  # float32 (S,) threshold (gates: their source's)
    v0: np.ndarray  # float32 (S,) initial membrane potential (schedule.initial_potential; 0 for gates, output)
    proj: np.ndarray  # int32 (J, PROJ_FIELDS), sorted by source
    weights: np.ndarray  # float32 scatter rows of conv and dense cores
    indptr: np.ndarray  # int64 CSR row pointers
    cols: np.ndarray  # int32 CSR columns
    vals: np.ndarray  # float32 CSR values
    gate: np.ndarray  # int32 (G, GATE_FIELDS)
    fanout: np.ndarray  # int32 (spike_size,) synapses reached by one spike of each neuron
    bias: np.ndarray  # float32 (state_size,) per-step constant current
    ceiling: np.ndarray  # float32 (state_size,) upper bound of V after integrating (N_CEILING nodes), else (1,)
    output_order: np.ndarray  # int32: internal position of the output's natural index i
    output: np.int64  # row of the output accumulator
    state_size: np.int64
    spike_size: np.int64
    candidate_size: np.int64
    emitted_size: np.int64
    max_gate_out: np.int64  # largest max gate (outputs)
    mode: np.int64  # schedule.MODE_*
    phases: np.int64  # K


class PeriodState(NamedTuple):
    """Working state of the period path, one row per thread slot (reused across samples and calls).

    Only V is reset between samples (to the initial potential); the rest is
    written before it is read in every period.
    """

    V: np.ndarray  # float32 (slots, state_size)
    spikes: np.ndarray  # int32 (slots, spike_size)
    bits: np.ndarray  # int32 (slots, spike_size) spike pattern of the period (bit K-1-k: phase k)
    q: np.ndarray  # float32 (slots, spike_size) value emitted in the period
    active: np.ndarray  # int32 (slots, spike_size) active neurons of each node, ascending
    nactive: np.ndarray  # int32 (slots, nodes)


class StepState(NamedTuple):
    """Working state of the step path, one row per thread slot (reset per sample where it must be)."""

    V: np.ndarray  # float32 (slots, state_size)
    spikes: np.ndarray  # int32 (slots, spike_size)
    flags: np.ndarray  # uint8 (slots, spike_size) 1: spiked this step
    nspikes: np.ndarray  # int32 (slots, nodes)
    candidates: np.ndarray  # uint8 (slots, candidate_size) max gate candidates
    emitted: np.ndarray  # float32 (slots, emitted_size) value emitted so far (phase / if-rate gates)
    touched: np.ndarray  # uint8 (slots, max_gate_out)
    tlist: np.ndarray  # int32 (slots, max_gate_out)


class Run(NamedTuple):
    """One kernel call: the schedule, the inputs and the outputs of a batch of B samples."""

    timesteps: np.int64  # T
    periods: np.int64  # P = ceil(T / K)
    last_fire: np.ndarray  # int32 (S,) last period each node fires in (schedule.light_cone)
    drive: np.ndarray  # float32 (B, drive_size) per-step current of the input-fed targets
    per_neuron: np.int64  # 1: count spikes per neuron in neuron_counts
    neuron_counts: np.ndarray  # int32 (B, spike_size) when per_neuron, else (B, 1)
    node_counts: np.ndarray  # int64 (B, S) spikes per node
    sops: np.ndarray  # int64 (B, S) synaptic operations caused by each node's spikes
    period_sops: np.ndarray  # int64 (P, B) synaptic operations caused by the spikes of each period
    predictions: np.ndarray  # int32 (T, B)
    logits: np.ndarray  # float32 (P, B, classes)
    events: np.ndarray  # int32 (E, 3) rows (step, node, internal neuron index)
    event_start: np.ndarray  # int64 (B + 1,) first event row of each sample
    event_stop: np.ndarray  # int64 (B,) where each sample's event cursor ended (= event_start[b + 1] if consistent)
    record: np.ndarray  # uint8 (S,) 1: record this node's events
    deliveries: np.ndarray  # int64 (B,) row scatters done
    split_min_work: np.int64  # one sample: split a delivery over the threads from this many synaptic updates


# --------------------------------------------------------------------------- synaptic cores


@njit(cache=True)
def _conv_geometry(proj, j):
    """(cin, width, cout, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, woff) of conv core j."""
    return (proj[j, P_CIN], proj[j, P_W], proj[j, P_COUT], proj[j, P_OH], proj[j, P_OW], proj[j, P_KH],
            proj[j, P_KW], proj[j, P_SH], proj[j, P_SW], proj[j, P_PT], proj[j, P_PL], proj[j, P_DH],
            proj[j, P_DW], proj[j, P_WOFF])  # fmt: skip


@njit(cache=True)
def _conv_channels(proj, j):
    """(cin_g, ct, coff) of conv core j: input channels per group, channels of the target and the target channel
    of output channel 0. Input channel ci writes target channels coff + (ci // cin_g) cout + [0, cout)."""
    return proj[j, P_CIN_G], proj[j, P_CT], proj[j, P_COFF]


@njit(cache=True)
def _gate_geometry(gate, g):
    """(c, height, width, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw) of max gate row g."""
    return (gate[g, G_C], gate[g, G_H], gate[g, G_W], gate[g, G_OH], gate[g, G_OW], gate[g, G_KH], gate[g, G_KW],
            gate[g, G_SH], gate[g, G_SW], gate[g, G_PT], gate[g, G_PL], gate[g, G_DH], gate[g, G_DW])  # fmt: skip


@njit(cache=True)
def _conv_add(V, vbase, proj, j, weights, m, value, lo, hi):
    """Scatter one spike of conv input neuron ``m`` (internal index) into output rows [lo, hi).

    What :func:`_conv_position` does for one neuron, used for the neurons a
    sparse prefix (pooling) yields one at a time. Kept as its own loop: as a
    one-neuron call of :func:`_conv_position` VGG-avg (whose pooled prefixes
    take this path) ran about 8 % slower (median of 10 alternating runs).
    """
    cin, width, cout, _, ow, kh, kw, sh, sw, pt, pl, dh, dw, woff = _conv_geometry(proj, j)
    cin_g, ct, coff = _conv_channels(proj, j)
    ci = m % cin
    pos = m // cin
    cbase = vbase + coff + (ci // cin_g) * cout
    iy = pos // width
    ix = pos - iy * width
    for ky in range(kh):
        ny = iy + pt - ky * dh
        if ny < 0:
            break
        if ny % sh != 0:
            continue
        oy = ny // sh
        if oy < lo or oy >= hi:  # hi <= oh
            continue
        for kx in range(kw):
            nx = ix + pl - kx * dw
            if nx < 0:
                break
            if nx % sw != 0:
                continue
            ox = nx // sw
            if ox >= ow:
                continue
            base = cbase + (oy * ow + ox) * ct
            row = woff + ((ci * kh + ky) * kw + kw - 1 - kx) * cout  # kx reversed in the layout
            # slices, not V[base + co]: an index that is provably >= 0 lets LLVM vectorise (10x here)
            v = V[base : base + cout]
            w = weights[row : row + cout]
            for co in range(cout):
                v[co] += value * w[co]


@njit(cache=True)
def _rows_add(v, weights, offset, stride, active, soff, s, e, value, q, qoff, n):
    """``v += sum of x_m * weights[offset + m * stride : ... + n]`` over the neurons m = ``active[soff + s:soff + e]``.

    x_m is ``q[qoff + m]``, or ``value`` when ``qoff < 0``. Four rows per pass
    over v (one load and store of v, not four).
    """
    a = s
    while a + 4 <= e:
        m0 = active[soff + a]
        m1 = active[soff + a + 1]
        m2 = active[soff + a + 2]
        m3 = active[soff + a + 3]
        w0 = weights[offset + m0 * stride : offset + m0 * stride + n]
        w1 = weights[offset + m1 * stride : offset + m1 * stride + n]
        w2 = weights[offset + m2 * stride : offset + m2 * stride + n]
        w3 = weights[offset + m3 * stride : offset + m3 * stride + n]
        a += 4
        if qoff < 0:  # one step's spikes: sum the rows, scale once
            for co in range(n):
                v[co] += value * ((w0[co] + w1[co]) + (w2[co] + w3[co]))
            continue
        q0 = q[qoff + m0]
        q1 = q[qoff + m1]
        q2 = q[qoff + m2]
        q3 = q[qoff + m3]
        for co in range(n):
            v[co] += (q0 * w0[co] + q1 * w1[co]) + (q2 * w2[co] + q3 * w3[co])
    while a < e:
        m = active[soff + a]
        x = value if qoff < 0 else q[qoff + m]
        w = weights[offset + m * stride : offset + m * stride + n]
        for co in range(n):
            v[co] += x * w[co]
        a += 1


@njit(cache=True)
def _conv_add_active(V, vbase, proj, j, weights, active, soff, count, value, q, qoff, lo, hi):
    """Scatter the active neurons ``active[soff:soff+count]`` (ascending) through conv core j into output rows
    [lo, hi).

    Neuron m carries ``q[qoff + m]``, or ``value`` for all when ``qoff < 0``
    (one step's spikes: the four weight rows are summed, then scaled once).

    The active neurons of one input position are contiguous, and within it
    those of one group: the position's index math is done once, and for each
    kernel offset the group's output vector takes all of its active channels,
    four at a time (:func:`_conv_position`; so only the float32 summation
    order depends on the grouping, never on ``lo``/``hi``: a split by rows
    gives every element the same terms in the same order). Only the neurons
    whose input rows reach [lo, hi) are read.
    """
    cin, width, _, oh, _, kh, _, sh, _, pt, _, dh, _, _ = _conv_geometry(proj, j)
    cin_g = proj[j, P_CIN_G]
    s = 0
    if lo > 0 or hi < oh:  # a part of the rows: the neurons of input rows lo sh - pt .. (hi - 1) sh - pt + (kh - 1) dh
        first = max(lo * sh - pt, 0) * width * cin
        last = ((hi - 1) * sh - pt + (kh - 1) * dh + 1) * width * cin
        spikes = active[soff : soff + count]
        s = np.searchsorted(spikes, first)
        count = np.searchsorted(spikes, last)
    while s < count:
        pos = active[soff + s] // cin
        group = 0 if cin_g == cin else (active[soff + s] - pos * cin) // cin_g  # ungrouped: no division
        limit = pos * cin + (group + 1) * cin_g  # the group's neurons are active[s:e], found without a division each
        e = s + 1
        while e < count and active[soff + e] < limit:
            e += 1
        _conv_position(V, vbase, proj, j, weights, active, soff, s, e, pos, group, value, q, qoff, lo, hi)
        s = e


@njit(cache=True)
def _conv_position(V, vbase, proj, j, weights, active, soff, s, e, pos, group, value, q, qoff, lo, hi):
    """The active neurons ``active[soff + s : soff + e]`` of input position ``pos`` and one group, through every
    kernel offset of conv core j that lands in output rows [lo, hi)."""
    cin, width, cout, _, ow, kh, kw, sh, sw, pt, pl, dh, dw, woff = _conv_geometry(proj, j)
    _, ct, coff = _conv_channels(proj, j)
    stride = kh * kw * cout  # between the rows of consecutive input channels
    contiguous = sw == 1 and dw == 1 and ct == cout  # ungrouped, alone in its target: output positions adjoin
    cbase = vbase + coff + group * cout
    iy = pos // width
    ix = pos - iy * width
    for ky in range(kh):
        ny = iy + pt - ky * dh
        if ny < 0:
            break
        if sh == 1:  # integer division is slow: skip it for the common stride 1
            oy = ny
        elif ny % sh != 0:
            continue
        else:
            oy = ny // sh
        if oy < lo or oy >= hi:  # hi <= oh
            continue
        if contiguous:  # the output positions ox_lo..ox_hi and their kernel rows, each one run
            ox_lo = max(ix + pl - kw + 1, 0)
            ox_hi = min(ix + pl, ow - 1)
            if ox_lo > ox_hi:
                continue
            n = (ox_hi - ox_lo + 1) * cout
            base = cbase + (oy * ow + ox_lo) * cout
            v = V[base : base + n]
            offset = woff + (ky * kw + ox_lo - (ix + pl - kw + 1)) * cout - pos * cin * stride
            _rows_add(v, weights, offset, stride, active, soff, s, e, value, q, qoff, n)
            continue
        for kx in range(kw):
            nx = ix + pl - kx * dw
            if nx < 0:
                break
            if sw == 1:
                ox = nx
            elif nx % sw != 0:
                continue
            else:
                ox = nx // sw
            if ox >= ow:
                continue
            base = cbase + (oy * ow + ox) * ct
            v = V[base : base + cout]
            offset = woff + (ky * kw + kw - 1 - kx) * cout - pos * cin * stride
            _rows_add(v, weights, offset, stride, active, soff, s, e, value, q, qoff, cout)


@njit(cache=True)
def _dense_add(V, vbase, proj, j, weights, m, value, lo, hi):
    """Add ``value`` times scatter row ``m`` (the input feature's column of W) to outputs [lo, hi)."""
    row = proj[j, P_WOFF] + m * proj[j, P_COUT]
    v = V[vbase + lo : vbase + hi]
    w = weights[row + lo : row + hi]
    for o in range(hi - lo):
        v[o] += value * w[o]


@njit(cache=True)
def _extent(proj, j):
    """What a delivery through projection j can be split along: the output rows of a conv, the features of a dense."""
    return proj[j, P_OH] if proj[j, P_CORE] == CORE_CONV else proj[j, P_COUT]



@njit(cache=True)
def _deliver(net, V, j, spikes, soff, count, value, q, qoff, lo, hi):
    """Deliver ``count`` spikes (internal indices at ``spikes[soff:]``, ascending) through projection j.

    Each spike of neuron m carries ``value`` when ``qoff < 0``, else its own
    coalesced value ``q[qoff + m]``. Only the part ``[lo, hi)`` of the target
    is updated (see :func:`_extent`): output rows of a conv core, output
    features of a dense core; a CSR core (never split) updates all its targets.
    """
    proj = net.proj
    weights = net.weights
    indptr = net.indptr
    cols = net.cols
    vals = net.vals
    target = proj[j, P_TARGET]
    vbase = net.node_table[target, N_STATE]
    core = proj[j, P_CORE]
    prefix = proj[j, P_PREFIX_ROW]
    if core == CORE_CONV and prefix < 0:
        _conv_add_active(V, vbase, proj, j, weights, spikes, soff, count, np.float32(value), q, qoff, lo, hi)
        return
    if core == CORE_CSR:  # one tight loop (a synchronous neuron's identity: one entry per row)
        row0 = proj[j, P_CSR_ROW]
        for s in range(count):
            m = spikes[soff + s]
            v = np.float32(value) if qoff < 0 else q[qoff + m]
            for e in range(indptr[row0 + m], indptr[row0 + m + 1]):
                V[vbase + cols[e]] += v * vals[e]
        return
    for s in range(count):
        m = spikes[soff + s]
        v = np.float32(value) if qoff < 0 else q[qoff + m]  # float32 always: a float64 v changes the rounding
        if prefix < 0:
            if core == CORE_CONV:
                _conv_add(V, vbase, proj, j, weights, m, v, lo, hi)
            else:
                _dense_add(V, vbase, proj, j, weights, m, v, lo, hi)
        else:
            for e in range(indptr[prefix + m], indptr[prefix + m + 1]):
                if core == CORE_CONV:
                    _conv_add(V, vbase, proj, j, weights, cols[e], v * vals[e], lo, hi)
                else:
                    _dense_add(V, vbase, proj, j, weights, cols[e], v * vals[e], lo, hi)


@njit(cache=True)
def _reaches(net, run, j, p):
    """Whether a spike of period p through projection j can still matter to its target (light cone).

    The output always takes it; a population as :func:`runtime.schedule.reaches_in_cone` says.
    """
    target = net.proj[j, P_TARGET]
    if target == net.output:
        return True
    return reaches_in_cone(net.mode, net.node_table[target, N_STAGE], p, run.last_fire[target])


@njit(cache=True, parallel=True)
def _split_deliver(net, V, j, spikes, soff, count, value, q, qoff, blocks):
    """:func:`_deliver` with the target split into ``blocks`` parts (:func:`_extent`), one per thread."""
    width = _extent(net.proj, j)
    for blk in prange(blocks):
        _deliver(net, V, j, spikes, soff, count, value, q, qoff, blk * width // blocks, (blk + 1) * width // blocks)


@njit(cache=True)
def _deliver_split(net, V, j, spikes, soff, count, value, q, qoff, threads, split_min_work):
    """One-sample delivery: split over the threads when the projection is a large conv or dense scatter.

    A split gives every membrane potential the same terms in the same order as
    the serial :func:`_deliver`, so the result does not depend on ``threads``.
    """
    width = _extent(net.proj, j)
    blocks = min(threads, width)
    if net.proj[j, P_CORE] == CORE_CSR or blocks < 2 or count * net.fanout[soff + spikes[soff]] < split_min_work:
        _deliver(net, V, j, spikes, soff, count, value, q, qoff, 0, width)
    else:
        _split_deliver(net, V, j, spikes, soff, count, value, q, qoff, blocks)


@njit(cache=True)
def _reset_potentials(net, V):
    """Every population's V at its initial potential (``Net.v0``), the output's at 0."""
    table = net.node_table
    for n in range(table.shape[0]):
        if table[n, N_KIND] == KIND_GATE:
            continue
        v = V[table[n, N_STATE] : table[n, N_STATE] + table[n, N_SIZE]]
        v0 = net.v0[n]
        for i in range(v.size):
            v[i] = v0


@njit(cache=True)
def _apply_ceiling(net, V, n):
    """``V = min(V, ceiling)`` for node n (a population with a ceiling: Clip / ReLU6, BSNN_SPEC.md)."""
    if net.node_table[n, N_CEILING] <= 0:
        return
    voff = net.node_table[n, N_STATE]
    size = net.node_table[n, N_SIZE]
    v = V[voff : voff + size]
    c = net.ceiling[voff : voff + size]
    for i in range(size):
        v[i] = min(v[i], c[i])


@njit(cache=True)
def _add_current(net, run, b, n, V, repeat):
    """Add node n's constant current (analog input drive or bias) ``repeat`` times (separate float32 additions)."""
    table = net.node_table
    voff = table[n, N_STATE]
    size = table[n, N_SIZE]
    doff = table[n, N_DRIVE]
    v = V[voff : voff + size]
    current = run.drive[b, doff : doff + size] if doff >= 0 else net.bias[voff : voff + size]
    for _ in range(repeat):
        for i in range(size):
            v[i] += current[i]


@njit(cache=True)
def _count_spikes(net, run, b, n, p, spikes, soff, count):
    """Bookkeeping of ``count`` single spikes of node n in period p (step by step): counts and SOPs."""
    fanout = net.fanout
    synapses = 0
    for i in range(count):
        m = spikes[soff + i]
        synapses += fanout[soff + m]
        if run.per_neuron:
            run.neuron_counts[b, soff + m] += 1
    run.node_counts[b, n] += count
    run.sops[b, n] += synapses
    run.period_sops[p, b] += synapses


@njit(cache=True)
def _read_output(net, run, b, t, p, V):
    """The output's prediction at step t (argmax of V) and, at the end of a period, its logits."""
    voff = net.node_table[net.output, N_STATE]
    order = net.output_order
    best = 0
    best_value = V[voff + order[0]]
    for i in range(1, order.size):
        x = V[voff + order[i]]
        if x > best_value:
            best_value = x
            best = i
    run.predictions[t, b] = best
    if t - p * net.phases == net.phases - 1 or t == run.timesteps - 1:
        for i in range(order.size):
            run.logits[p, b, i] = V[voff + order[i]]


# --------------------------------------------------------------------------- neurons


@njit(cache=True)
def _fire(V, voff, size, threshold, spikes, soff, flags):
    """Reset-by-subtraction firing: every neuron with ``V >= threshold`` spikes; returns the count.

    Branch-free (a neuron fires unpredictably): the compare-and-subtract pass
    vectorises, the compaction writes every index and advances on a spike.
    """
    v = V[voff : voff + size]
    fired = flags[soff : soff + size]
    for i in range(size):
        fires = v[i] >= threshold
        v[i] = v[i] - threshold if fires else v[i]
        fired[i] = 1 if fires else 0
    count = 0
    for i in range(size):
        spikes[soff + count] = i  # count <= i here: stays inside the node's spike slots
        count += fired[i]
    return count


@njit(cache=True)
def _gate_touched(gate, g, spikes, ssoff, count, touched, tlist):
    """Outputs of gate row g whose window holds one of the source's spikes; returns how many."""
    c, _, width, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw = _gate_geometry(gate, g)
    n = 0
    for s in range(count):
        m = spikes[ssoff + s]
        ch = m % c
        pos = m // c
        iy = pos // width
        ix = pos - iy * width
        for ky in range(kh):
            ny = iy + pt - ky * dh
            if ny < 0:
                break
            if ny % sh != 0 or ny // sh >= oh:
                continue
            oy = ny // sh
            for kx in range(kw):
                nx = ix + pl - kx * dw
                if nx < 0:
                    break
                if nx % sw != 0 or nx // sw >= ow:
                    continue
                o = (oy * ow + nx // sw) * c + ch
                if touched[o] == 0:
                    touched[o] = 1
                    tlist[n] = o
                    n += 1
    return n


@njit(cache=True)
def _gate_step(mode, k, gate, g, spikes, ssoff, scount, sflags, emitted, eoff, candidates, touched, tlist, out_soff,
               out_flags):
    """One step of a spiking max gate; writes its spikes at ``spikes[out_soff:]`` and returns their count.

    ``bsnn`` / ``bsnn-nosn``: at phase 0 every window member is a candidate;
    an output spikes iff a candidate spikes, and then the candidates that did
    not spike drop out. ``phase`` / ``if-rate``: an output spikes iff the
    member with the largest emitted value so far (this step included; ties to
    the lowest index) spikes.
    """
    c, height, width, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw = _gate_geometry(gate, g)
    coff = gate[g, G_CAND]
    area = kh * kw
    bistable = is_bistable(mode)
    if bistable and k == 0:
        total = oh * ow * c * area
        for i in range(total):
            candidates[coff + i] = 1
    if scount == 0:
        return 0
    n = _gate_touched(gate, g, spikes, ssoff, scount, touched, tlist)
    out = 0
    for t in range(n):
        o = tlist[t]
        touched[o] = 0
        ch = o % c
        pos = o // c
        oy = pos // ow
        ox = pos - oy * ow
        fire = False
        if bistable:
            for ky in range(kh):
                iy = oy * sh - pt + ky * dh
                for kx in range(kw):
                    ix = ox * sw - pl + kx * dw
                    inside = 0 <= iy < height and 0 <= ix < width
                    if inside and candidates[coff + o * area + ky * kw + kx] == 1:
                        fire = fire or sflags[ssoff + (iy * width + ix) * c + ch] == 1
            if fire:
                for ky in range(kh):
                    iy = oy * sh - pt + ky * dh
                    for kx in range(kw):
                        ix = ox * sw - pl + kx * dw
                        inside = 0 <= iy < height and 0 <= ix < width
                        if not inside or sflags[ssoff + (iy * width + ix) * c + ch] == 0:
                            candidates[coff + o * area + ky * kw + kx] = 0
        else:
            best = -1
            best_value = np.float32(-1.0)
            for ky in range(kh):
                iy = oy * sh - pt + ky * dh
                for kx in range(kw):
                    ix = ox * sw - pl + kx * dw
                    if 0 <= iy < height and 0 <= ix < width:
                        m = (iy * width + ix) * c + ch
                        if emitted[eoff + m] > best_value:
                            best_value = emitted[eoff + m]
                            best = m
            fire = best >= 0 and sflags[ssoff + best] == 1
        if fire:
            spikes[out_soff + out] = o
            out_flags[out_soff + o] = 1
            out += 1
    return out


# --------------------------------------------------------------------------- step by step (every mode)


@njit(cache=True)
def _node_step(net, run, b, n, t, p, k, V, spikes, flags, nspikes, candidates, emitted, touched, tlist):
    """Node n at step t of sample b: constant current, ceiling, fire (or gate), bookkeeping.

    Returns the node's spike count this step (its spikes are at ``spikes[N_SPIKE:]``)
    and the value each spike carries.
    """
    table = net.node_table
    mode = net.mode
    kind = table[n, N_KIND]
    size = table[n, N_SIZE]
    soff = table[n, N_SPIKE]
    stage = table[n, N_STAGE]
    if kind != KIND_OUTPUT:
        for i in range(nspikes[n]):
            flags[soff + spikes[soff + i]] = 0
        nspikes[n] = 0
    value = spike_value(mode, net.threshold[n], k)
    last_fire = run.last_fire[n]
    if kind == KIND_GATE:
        if fires_in_cone(mode, stage, p, last_fire):
            src = table[n, N_SOURCE]
            nspikes[n] = _gate_step(mode, k, net.gate, table[n, N_GATE], spikes, table[src, N_SPIKE], nspikes[src],
                                    flags, emitted, table[src, N_EMITTED], candidates, touched, tlist, soff, flags)
    else:
        if kind == KIND_POPULATION:
            integrate = integrate_matters(mode, stage, p, last_fire)
        else:  # the output: its V is read every step
            integrate = integrates(mode, stage, p)
        if integrate:
            _add_current(net, run, b, n, V, 1)
        if kind == KIND_OUTPUT:
            _read_output(net, run, b, t, p, V)
            return 0, value
        if fires_in_cone(mode, stage, p, last_fire):
            if ceiling_applies(mode, k):
                _apply_ceiling(net, V, n)
            nspikes[n] = _fire(V, table[n, N_STATE], size, value, spikes, soff, flags)
    count = nspikes[n]
    if count > 0:
        _count_spikes(net, run, b, n, p, spikes, soff, count)
        eoff = table[n, N_EMITTED]
        if eoff >= 0:
            for i in range(count):
                emitted[eoff + spikes[soff + i]] += value
    return count, value


@njit(cache=True)
def _record(events, event, event_end, t, n, spikes, soff, count):
    """Append ``count`` events of node n at step t; the cursor always advances (the caller checks it)."""
    for i in range(count):
        if event < event_end:
            events[event, 0] = t
            events[event, 1] = n
            events[event, 2] = spikes[soff + i]
        event += 1
    return event


def new_step_state(net: Net, slots: int) -> StepState:
    """Zeroed working state of the step path for ``slots`` threads."""
    nodes = net.node_table.shape[0]
    spike = max(int(net.spike_size), 1)
    gate = max(int(net.max_gate_out), 1)
    return StepState(
        V=np.zeros((slots, max(int(net.state_size), 1)), np.float32),
        spikes=np.zeros((slots, spike), np.int32),
        flags=np.zeros((slots, spike), np.uint8),
        nspikes=np.zeros((slots, nodes), np.int32),
        candidates=np.zeros((slots, max(int(net.candidate_size), 1)), np.uint8),
        emitted=np.zeros((slots, max(int(net.emitted_size), 1)), np.float32),
        touched=np.zeros((slots, gate), np.uint8),
        tlist=np.zeros((slots, gate), np.int32),
    )


@njit(cache=True)
def _step_samples(net, run, state, slot, first, last, threads):
    """Samples ``first:last`` step by step (any mode), every spike delivered in its own step.

    Uses row ``slot`` of ``state``. ``threads > 1`` splits the large conv and
    dense scatters of a step over the threads (:func:`_deliver_split`; same
    arithmetic as serial).
    """
    nodes = net.node_table.shape[0]
    V = state.V[slot]
    spikes = state.spikes[slot]
    flags = state.flags[slot]
    nspikes = state.nspikes[slot]
    candidates = state.candidates[slot]
    emitted = state.emitted[slot]
    touched = state.touched[slot]
    tlist = state.tlist[slot]
    q = emitted[:1]  # unused: spikes carry one value per step
    for b in range(first, last):
        _reset_potentials(net, V)
        flags[:] = 0
        nspikes[:] = 0
        emitted[:] = 0
        event = run.event_start[b]
        event_end = run.event_start[b + 1]
        delivered = 0
        for t in range(run.timesteps):
            p = t // net.phases
            k = t - p * net.phases
            for n in range(nodes):
                count, value = _node_step(net, run, b, n, t, p, k, V, spikes, flags, nspikes, candidates, emitted,
                                          touched, tlist)
                if count == 0:
                    continue
                soff = net.node_table[n, N_SPIKE]
                if net.node_table[n, N_KIND] == KIND_GATE:  # window order: the conv scatter needs them sorted
                    spikes[soff : soff + count].sort()
                if run.record[n]:
                    event = _record(run.events, event, event_end, t, n, spikes, soff, count)
                for j in range(net.node_table[n, N_PROJ_START], net.node_table[n, N_PROJ_END]):
                    if _reaches(net, run, j, p):
                        _deliver_split(net, V, j, spikes, soff, count, value, q, -1, threads, run.split_min_work)
                        delivered += count
        run.deliveries[b] = delivered
        run.event_stop[b] = event


@njit(cache=True, parallel=True)
def _step_batch(net, run, state, chunks):
    """:func:`_step_samples` over the batch in ``chunks`` chunks of samples, one thread per chunk at a time
    (each on the state row of the thread that runs it)."""
    n = run.drive.shape[0]
    chunks = max(1, min(n, chunks))
    for c in prange(chunks):
        _step_samples(net, run, state, numba.get_thread_id(), c * n // chunks, (c + 1) * n // chunks, 1)


# --------------------------------------------------------------------------- bsnn, period by period


@njit(cache=True)
def _fire_period(V, voff, size, threshold, phases, kmax, bits, q, active, soff):
    """A bistable fire period at once: phase k < kmax fires iff ``V >= threshold 2^-(k+1)`` (then subtracts it).

    V cannot change during a fire period in mode ``bsnn`` (no input arrives),
    so this is the step-by-step rule exactly. Writes each neuron's spike
    pattern (bit ``K-1-k`` for phase k, so patterns compare as the values
    they encode) and emitted value ``q``; returns the active neurons, in
    ascending order at ``active[soff:]``. Phase-major and branch-free, so the
    neuron loops vectorise.
    """
    v = V[voff : voff + size]
    pattern = bits[soff : soff + size]
    value = q[soff : soff + size]
    zero = np.float32(0.0)
    for i in range(size):
        pattern[i] = 0
        value[i] = zero
    for k in range(kmax):
        w = threshold / np.float32(1 << (k + 1))
        bit = np.int32(1 << (phases - 1 - k))
        for i in range(size):
            fires = v[i] >= w
            v[i] = v[i] - w if fires else v[i]
            value[i] += w if fires else zero
            pattern[i] |= bit if fires else np.int32(0)
    count = 0
    for i in range(size):
        if pattern[i] != 0:
            active[soff + count] = i
            count += 1
    return count


@njit(cache=True)
def _gate_period(gate, g, bits, q, ssoff, active, soff):
    """A max gate over one fire period: each output emits the largest K-bit value of its window (padding: 0).

    Phase by phase, "spike iff a remaining candidate spikes, then drop the
    candidates that did not" keeps exactly the members whose pattern so far is
    the largest, so the output pattern is the largest pattern in the window.
    """
    c, height, width, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw = _gate_geometry(gate, g)
    zero = np.float32(0.0)
    for oy in range(oh):
        for ox in range(ow):
            obase = soff + (oy * ow + ox) * c
            best = bits[obase : obase + c]
            value = q[obase : obase + c]
            for ch in range(c):
                best[ch] = 0
                value[ch] = zero
            for ky in range(kh):
                iy = oy * sh - pt + ky * dh
                if iy < 0 or iy >= height:
                    continue
                for kx in range(kw):
                    ix = ox * sw - pl + kx * dw
                    if ix < 0 or ix >= width:
                        continue
                    m = ssoff + (iy * width + ix) * c
                    member = bits[m : m + c]
                    member_value = q[m : m + c]
                    for ch in range(c):  # channels innermost and branch-free: vectorises
                        larger = member[ch] > best[ch]
                        best[ch] = member[ch] if larger else best[ch]
                        value[ch] = member_value[ch] if larger else value[ch]
    count = 0
    for o in range(oh * ow * c):
        if bits[soff + o] != 0:
            active[soff + count] = o
            count += 1
    return count


@njit(cache=True)
def _popcount(x):
    """Set bits of a pattern (K <= 16 bits), branch-free."""
    x = x - ((x >> 1) & 0x5555)
    x = (x & 0x3333) + ((x >> 2) & 0x3333)
    x = (x + (x >> 4)) & 0x0F0F
    return (x + (x >> 8)) & 0x1F


def new_period_state(net: Net, slots: int) -> PeriodState:
    """Working state of the period path for ``slots`` threads (V is reset per sample, the rest written first)."""
    size = max(int(net.spike_size), 1)
    return PeriodState(
        V=np.zeros((slots, max(int(net.state_size), 1)), np.float32),
        spikes=np.zeros((slots, size), np.int32),
        bits=np.zeros((slots, size), np.int32),
        q=np.zeros((slots, size), np.float32),
        active=np.zeros((slots, size), np.int32),
        nactive=np.zeros((slots, net.node_table.shape[0]), np.int32),
    )


@njit(cache=True)
def _bsnn_nodes(net, run, b, p, V, bits, q, active, nactive, event):
    """Period p of sample b for every spiking node: integrate (bias, analog input) or fire (or gate).

    Leaves each node's active neurons in ``active`` / ``nactive`` (0 if it does
    not fire in p) and does the spike bookkeeping; returns the event cursor.
    """
    table = net.node_table
    phases = net.phases
    kmax = min(phases, run.timesteps - p * phases)
    event_end = run.event_start[b + 1]
    for n in range(table.shape[0]):
        kind = table[n, N_KIND]
        nactive[n] = 0
        if kind == KIND_OUTPUT:
            continue
        size = table[n, N_SIZE]
        soff = table[n, N_SPIKE]
        stage = table[n, N_STAGE]
        fire = fires_in_cone(MODE_BSNN, stage, p, run.last_fire[n])
        if kind == KIND_GATE:
            if not fire:
                continue
            count = _gate_period(net.gate, table[n, N_GATE], bits, q, table[table[n, N_SOURCE], N_SPIKE], active,
                                 soff)
        else:
            if integrate_matters(MODE_BSNN, stage, p, run.last_fire[n]):
                _add_current(net, run, b, n, V, phases)
            if not fire:
                continue
            _apply_ceiling(net, V, n)
            count = _fire_period(V, table[n, N_STATE], size, net.threshold[n], phases, kmax, bits, q, active, soff)
        nactive[n] = count
        if count > 0:
            pattern = bits[soff : soff + size]
            fan = net.fanout[soff : soff + size]
            spikes_total = 0
            synapses = 0
            if run.per_neuron:
                spike_count = run.neuron_counts[b, soff : soff + size]
                for i in range(size):  # every neuron, branch-free: vectorises
                    s = _popcount(pattern[i])
                    spike_count[i] += s
                    spikes_total += s
                    synapses += s * np.int64(fan[i])
            else:
                for i in range(size):
                    s = _popcount(pattern[i])
                    spikes_total += s
                    synapses += s * np.int64(fan[i])
            run.node_counts[b, n] += spikes_total
            run.sops[b, n] += synapses
            run.period_sops[p, b] += synapses
        if run.record[n]:
            for k in range(kmax):
                bit = 1 << (phases - 1 - k)
                for i in range(count):
                    m = active[soff + i]
                    if bits[soff + m] & bit:
                        if event < event_end:
                            run.events[event, 0] = p * phases + k
                            run.events[event, 1] = n
                            run.events[event, 2] = m
                        event += 1
    return event


@njit(cache=True)
def _bsnn_output(net, run, b, p, V, spikes, bits, active, nactive):
    """Period p of the output, step by step: its sources' spikes of each phase, then its constant current.

    Returns the number of row scatters done.
    """
    table = net.node_table
    proj = net.proj
    output = net.output
    phases = net.phases
    kmax = min(phases, run.timesteps - p * phases)
    integrate = integrates(MODE_BSNN, table[output, N_STAGE], p)
    delivered = 0
    for k in range(kmax):
        t = p * phases + k
        weight = phase_weight(k)
        bit = 1 << (phases - 1 - k)
        for n in range(table.shape[0]):
            count = nactive[n]
            if count == 0:
                continue
            soff = table[n, N_SPIKE]
            spiking = 0
            for j in range(table[n, N_PROJ_START], table[n, N_PROJ_END]):
                if proj[j, P_TARGET] != output:
                    continue
                if spiking == 0:
                    for i in range(count):
                        m = active[soff + i]
                        if bits[soff + m] & bit:
                            spikes[soff + spiking] = m
                            spiking += 1
                    if spiking == 0:
                        break
                _deliver(net, V, j, spikes, soff, spiking, net.threshold[n] * weight, spikes, -1, 0, _extent(proj, j))
                delivered += spiking
        if integrate:
            _add_current(net, run, b, output, V, 1)
        _read_output(net, run, b, t, p, V)
    return delivered


@njit(cache=True)
def _period_blocks(net, run, p, V, active, nactive, q, blk, blocks):
    """Block ``blk`` of ``blocks`` of a period's conv and dense deliveries: its part of every target (:func:`_extent`)."""
    table = net.node_table
    proj = net.proj
    for n in range(table.shape[0]):
        count = nactive[n]
        if count == 0:
            continue
        soff = table[n, N_SPIKE]
        for j in range(table[n, N_PROJ_START], table[n, N_PROJ_END]):
            if proj[j, P_TARGET] == net.output or proj[j, P_CORE] == CORE_CSR or not _reaches(net, run, j, p):
                continue
            width = _extent(proj, j)
            lo = blk * width // blocks
            hi = (blk + 1) * width // blocks
            if hi > lo:
                _deliver(net, V, j, active, soff, count, np.float32(0.0), q, soff, lo, hi)


@njit(cache=True, parallel=True)
def _split_parallel(net, run, p, V, active, nactive, q, blocks):
    """:func:`_period_blocks` over ``blocks`` threads: thread ``blk`` owns the rows ``[blk E / blocks, ...)``
    of every target, so no two threads write the same membrane potential."""
    for blk in prange(blocks):
        _period_blocks(net, run, p, V, active, nactive, q, blk, blocks)


@njit(cache=True)
def _bsnn_deliver(net, run, p, V, active, nactive, q, threads):
    """The coalesced deliveries of fire period p into populations: ``q * row`` per active neuron and projection.

    The sparse (CSR) projections first, serially, then the conv and dense ones
    (:func:`_period_blocks`), split over ``threads`` when the work is large
    enough; in either case every membrane potential gets the same terms in the
    same order. Targets that cannot fire again within their light cone are
    skipped. Returns the number of row scatters.
    """
    table = net.node_table
    proj = net.proj
    delivered = 0
    work = 0
    for n in range(table.shape[0]):
        count = nactive[n]
        if count == 0:
            continue
        soff = table[n, N_SPIKE]
        for j in range(table[n, N_PROJ_START], table[n, N_PROJ_END]):
            if proj[j, P_TARGET] == net.output or not _reaches(net, run, j, p):
                continue
            delivered += count
            if proj[j, P_CORE] == CORE_CSR:
                _deliver(net, V, j, active, soff, count, np.float32(0.0), q, soff, 0, _extent(proj, j))
            else:
                work += count * net.fanout[soff + active[soff]]
    if work > 0:
        if threads > 1 and work >= run.split_min_work:
            _split_parallel(net, run, p, V, active, nactive, q, threads)
        else:
            _period_blocks(net, run, p, V, active, nactive, q, 0, 1)
    return delivered


@njit(cache=True)
def _bsnn_samples(net, run, state, slot, first, last, threads):
    """Mode ``bsnn`` for samples ``first:last``, period by period, each neuron's spikes into populations delivered once.

    In a fire period a population's V cannot change (its sources integrate),
    so its K phases are computed at once (:func:`_fire_period`). The values a
    neuron emits in the period are summed (``q``) and scattered once at the
    end of the period (``q * row`` per active neuron, not one row per spike):
    the target integrates during the whole period and cannot fire before the
    next one, so only the float32 summation order differs from delivering
    every spike in its step. Spikes into the output are delivered phase by
    phase (its V is read every step). ``threads > 1``: one sample's conv and
    dense deliveries split over the threads (:func:`_bsnn_deliver`).

    Uses row ``slot`` of ``state`` (V is reset to the initial potential; the
    rest is written before it is read in every period).
    """
    V = state.V[slot]
    spikes = state.spikes[slot]
    bits = state.bits[slot]
    q = state.q[slot]
    active = state.active[slot]
    nactive = state.nactive[slot]
    for b in range(first, last):
        _reset_potentials(net, V)
        event = run.event_start[b]
        delivered = 0
        for p in range(run.periods):
            event = _bsnn_nodes(net, run, b, p, V, bits, q, active, nactive, event)
            if p + 1 < run.periods:
                delivered += _bsnn_deliver(net, run, p, V, active, nactive, q, threads)
            delivered += _bsnn_output(net, run, b, p, V, spikes, bits, active, nactive)
        run.deliveries[b] = delivered
        run.event_stop[b] = event


@njit(cache=True, parallel=True)
def _bsnn_batch(net, run, state, chunks):
    """:func:`_bsnn_samples` over the batch in ``chunks`` chunks of samples (a few per thread balance the load),
    each on the state row of the thread that runs it."""
    n = run.drive.shape[0]
    chunks = max(1, min(n, chunks))
    for c in prange(chunks):
        _bsnn_samples(net, run, state, numba.get_thread_id(), c * n // chunks, (c + 1) * n // chunks, 1)


# --------------------------------------------------------------------------- the analog input layer


@njit(cache=True, parallel=True)
def _input_conv2d(x, w, bias, sh, sw, pt, pl, dh, dw, group, out):
    """A 2-d convolution of the analog input, one sample per thread: ``out`` (N, OH, OW, C_out), channels last.

    ``w`` is (C_in / group, KH, KW, C_out). Each output element sums its terms
    in the order (c_in, ky, kx), whatever the batch, then adds the bias, so a
    sample's input current does not depend on the batch it is in (a batched
    BLAS product blocks its sums by the batch's shape).
    """
    n, _, height, width = x.shape
    cin_g, kh, kw, cout = w.shape
    oh, ow = out.shape[1], out.shape[2]
    cout_g = cout // group
    for b in prange(n):
        acc = np.empty(cout, np.float32)
        for oy in range(oh):
            for ox in range(ow):
                acc[:] = 0
                for g in range(group):
                    lo = g * cout_g
                    for ci in range(cin_g):
                        c = g * cin_g + ci
                        for ky in range(kh):
                            iy = oy * sh - pt + ky * dh
                            if iy < 0 or iy >= height:
                                continue
                            for kx in range(kw):
                                ix = ox * sw - pl + kx * dw
                                if ix < 0 or ix >= width:
                                    continue
                                v = x[b, c, iy, ix]
                                row = w[ci, ky, kx]
                                for co in range(lo, lo + cout_g):
                                    acc[co] += v * row[co]
                o = out[b, oy, ox]
                for co in range(cout):
                    o[co] = acc[co] + bias[co]


@njit(cache=True, parallel=True)
def _input_dense(x, w, bias, out):
    """``out = x @ w + bias`` for the analog input, one sample per thread, terms in input order (see
    :func:`_input_conv2d`); ``x`` (N, in), ``w`` (in, out)."""
    n, features = x.shape
    for b in prange(n):
        o = out[b]
        o[:] = 0
        for i in range(features):
            v = x[b, i]
            row = w[i]
            for j in range(o.size):
                o[j] += v * row[j]
        for j in range(o.size):
            o[j] += bias[j]


# --------------------------------------------------------------------------- the public entries


#: dtype of every array field of Net and Run (the kernels are compiled for exactly these)
_NET_DTYPES = {
    "node_table": np.int32, "threshold": np.float32, "v0": np.float32, "proj": np.int32, "weights": np.float32,
    "indptr": np.int64, "cols": np.int32, "vals": np.float32, "gate": np.int32, "fanout": np.int32,
    "bias": np.float32, "ceiling": np.float32, "output_order": np.int32,
}  # fmt: skip
_RUN_DTYPES = {
    "last_fire": np.int32, "drive": np.float32, "neuron_counts": np.int32, "node_counts": np.int64,
    "sops": np.int64, "period_sops": np.int64, "predictions": np.int32, "logits": np.float32, "events": np.int32,
    "event_start": np.int64, "event_stop": np.int64, "record": np.uint8, "deliveries": np.int64,
}  # fmt: skip
_DTYPES = tuple((packed, name, np.dtype(dtype)) for packed, table in ((0, _NET_DTYPES), (1, _RUN_DTYPES))
                for name, dtype in table.items())  # fmt: skip


def _check_packed(net: Net, run: Run, state: PeriodState | StepState) -> None:
    """Refuse packed arguments the kernels would read out of bounds or recompile for (ValueError).

    A few microseconds per call: dtypes compared by identity first, the
    shapes as one tuple (the field-by-field message only on a mismatch).
    """
    pair = (net, run)
    for packed, name, dtype in _DTYPES:
        array = getattr(pair[packed], name)
        found = getattr(array, "dtype", None)
        if found is not dtype and found != dtype:
            raise ValueError(f"{('Net', 'Run')[packed]}.{name} must be a {dtype.name} array, got {found}")
    nodes = net.node_table.shape[0]
    samples = run.drive.shape[0]
    timesteps = int(run.timesteps)
    periods = -(-timesteps // int(net.phases))
    names = ("Net.node_table", "Net.proj", "Net.gate", "Run.periods", "Run.last_fire", "Run.record",
             "Run.node_counts", "Run.sops", "Run.period_sops", "Run.predictions", "Run.logits", "Run.event_start",
             "Run.event_stop", "Run.deliveries", "Run.neuron_counts", "Run.events")  # fmt: skip
    got = (net.node_table.shape[1:], net.proj.shape[1:], net.gate.shape[1:], int(run.periods), run.last_fire.shape,
           run.record.shape, run.node_counts.shape, run.sops.shape, run.period_sops.shape, run.predictions.shape,
           run.logits.shape, run.event_start.shape, run.event_stop.shape, run.deliveries.shape,
           run.neuron_counts.shape[0], run.events.shape[1:])  # fmt: skip
    want = ((NODE_FIELDS,), (PROJ_FIELDS,), (GATE_FIELDS,), periods, (nodes,), (nodes,), (samples, nodes),
            (samples, nodes), (periods, samples), (timesteps, samples), (periods, samples, net.output_order.size),
            (samples + 1,), (samples,), (samples,), samples, (3,))  # fmt: skip
    if got != want:
        name, found, expected = next((n, g, w) for n, g, w in zip(names, got, want) if g != w)
        raise ValueError(f"{name} is {found}, expected {expected}")
    if run.per_neuron and run.neuron_counts.shape[1] < net.spike_size:
        raise ValueError(f"Run.neuron_counts has {run.neuron_counts.shape[1]} columns for {net.spike_size} neurons")
    if samples == 0 or run.events.shape[0] < run.event_start[-1]:
        raise ValueError("a run needs at least one sample and an event buffer as large as event_start says")
    if uses_period_path(net) != isinstance(state, PeriodState):
        raise ValueError(f"mode {int(net.mode)} runs on the {'period' if uses_period_path(net) else 'step'} path")


def uses_period_path(net: Net) -> bool:
    """Whether a run of ``net`` takes the period path (mode ``bsnn``, unless ``_COALESCE`` is off) or the step path."""
    return int(net.mode) == MODE_BSNN and _COALESCE


def new_state(net: Net, slots: int) -> PeriodState | StepState:
    """Working state of the path ``net`` runs on (:func:`uses_period_path`) for ``slots`` threads."""
    return (new_period_state if uses_period_path(net) else new_step_state)(net, slots)


def run_batch(net: Net, run: Run, state: PeriodState | StepState, threads: int, one_sample_threads: int) -> None:
    """Simulate the batch of ``run`` (the one entry of the simulation kernels): check, then run its path.

    Parameters
    ----------
    net : the lowered graph's tables.
    run : the batch's schedule, inputs and outputs (written in place).
    state : working state from :func:`new_state` with a row per thread
        (one row suffices for a batch of one sample).
    threads : threads running the batch (Numba's current count).
    one_sample_threads : a batch of one sample splits each period's (or
        step's) conv and dense deliveries over ``min(one_sample_threads,
        threads)`` threads; a larger batch runs chunks of samples in parallel,
        four per thread.

    Raises
    ------
    ValueError
        if the packed arguments do not fit each other.
    """
    _check_packed(net, run, state)
    period = isinstance(state, PeriodState)
    if run.drive.shape[0] == 1:
        split = np.int64(min(one_sample_threads, threads))
        (_bsnn_samples if period else _step_samples)(net, run, state, 0, 0, 1, split)
        return
    if state.V.shape[0] < threads:
        raise ValueError(f"state has {state.V.shape[0]} rows for {threads} threads")
    (_bsnn_batch if period else _step_batch)(net, run, state, np.int64(4 * threads))


def input_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, strides, pads, dilations, group: int,
                 out: np.ndarray) -> None:
    """A 2-d convolution of the analog input into ``out`` (N, OH, OW, C_out), channels last, per sample in a fixed
    order (:func:`_input_conv2d`).

    ``x`` (N, C_in, H, W) and ``weight`` (C_in / group, KH, KW, C_out)
    float32; ``strides``, ``dilations`` (2,), ``pads`` (top, left, ...).
    """
    x = np.ascontiguousarray(x, np.float32)
    weight = np.ascontiguousarray(weight, np.float32)
    bias = np.ascontiguousarray(bias, np.float32)
    if x.ndim != 4 or weight.ndim != 4 or out.ndim != 4 or out.dtype != np.float32:
        raise ValueError("input_conv2d takes a 4-d x, weight and float32 out")
    if x.shape[1] != weight.shape[0] * group or out.shape[0] != x.shape[0] or out.shape[3] != weight.shape[3]:
        raise ValueError(f"input_conv2d: x {x.shape}, weight {weight.shape}, group {group} and out {out.shape} differ")
    _input_conv2d(x, weight, bias, strides[0], strides[1], pads[0], pads[1], dilations[0], dilations[1], int(group),
                  out)


def input_dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
    """``out = x @ weight + bias`` for the analog input, terms in input order per sample (:func:`_input_dense`).

    ``x`` (N, in), ``weight`` (in, out), ``out`` (N, out) float32.
    """
    x = np.ascontiguousarray(x, np.float32)
    weight = np.ascontiguousarray(weight, np.float32)
    bias = np.ascontiguousarray(bias, np.float32)
    if x.ndim != 2 or weight.shape[0] != x.shape[1] or out.shape != (x.shape[0], weight.shape[1]):
        raise ValueError(f"input_dense: x {x.shape}, weight {weight.shape} and out {out.shape} differ")
    if out.dtype != np.float32 or bias.shape != (weight.shape[1],):
        raise ValueError("input_dense takes a float32 out and one bias per output")
    _input_dense(x, weight, bias, out)
