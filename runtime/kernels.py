"""Numba kernels of the event-driven simulation.

They take only flat typed arrays (float32 state and weights, int32 tables,
see :mod:`runtime.lowering` for the column layout) and are private; the public
entry point is :func:`runtime.simulate`. Synaptic work is done only for the
spikes that occur: a spike of a source neuron adds ``value * row`` to the
membrane potentials of the neurons it reaches, through its projections
(convolution scatter, dense row, sparse row, optionally chained through a
sparse prefix such as average pooling).

Time: step ``t``, period ``p = t // K``, phase ``k = t % K``, phase weight
``2^-(k+1)``. Within a step the nodes run in topological order; a node
first receives its current (its sources already delivered this step's
spikes into its V), adds its own constant current if it integrates in this
period, then fires if it fires in this period, then delivers its spikes.

Schedules (stage s): ``bsnn`` / ``bsnn-nosn`` integrate the constant
current (bias, analog input) in periods ``p >= s-1`` with ``p-s+1`` even and
fire in periods ``p >= s`` with ``p-s`` even; spike currents are added when
they arrive (in ``bsnn`` only during integrate periods, by construction of
the stages; in ``bsnn-nosn`` also during fire periods). ``phase`` and
``if-rate`` integrate and fire every step.

Threshold comparisons are exact (no fastmath anywhere): a neuron fires at
phase k iff ``V >= threshold * 2^-(k+1)`` (``V >= threshold`` in ``if-rate``).

Mode ``bsnn`` runs period by period (:func:`_bsnn_samples`): a fire period
is computed at once, and each active neuron's emitted value ``q`` is
scattered once per period (coalesced delivery); the step-by-step kernels
(:func:`_run_sample`) run the other modes and serve as its reference.

Parallelism (threading layer: see below): :func:`_simulate_batch` runs the samples of a batch in
``prange`` (each thread owns its samples' state);
:func:`_simulate_one` / :func:`_bsnn_one` run one sample and split the larger convolution and
dense scatters over the threads: each thread owns a band of output rows of every conv target
and a slice of the features of every dense target (:func:`_extent`), so no two threads write
the same V, and a thread reads only the spikes whose receptive rows reach its band.
"""

from __future__ import annotations

import os

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
    KIND_GATE,
    KIND_OUTPUT,
    KIND_POPULATION,
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
    P_CIN,
    P_CORE,
    P_COUT,
    P_CSR_ROW,
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
)

__all__: list[str] = []

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

#: below this many synaptic updates per projection and step, the one-sample path stays serial
#: (a parallel region costs microseconds, far more on a loaded machine)
_SPLIT_MIN_WORK = 262144

#: mode ``bsnn``: deliver a neuron's spikes into populations once per fire period (see :func:`_run_sample`);
#: False delivers every spike in its own step (the tests compare the two)
_COALESCE = True


# --------------------------------------------------------------------------- synaptic cores


@njit(cache=True)
def _conv_geometry(proj, j):
    """(cin, width, cout, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, woff) of conv core j."""
    return (proj[j, P_CIN], proj[j, P_W], proj[j, P_COUT], proj[j, P_OH], proj[j, P_OW], proj[j, P_KH],
            proj[j, P_KW], proj[j, P_SH], proj[j, P_SW], proj[j, P_PT], proj[j, P_PL], proj[j, P_DH],
            proj[j, P_DW], proj[j, P_WOFF])  # fmt: skip


@njit(cache=True)
def _gate_geometry(gate, g):
    """(c, height, width, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw) of max gate row g."""
    return (gate[g, G_C], gate[g, G_H], gate[g, G_W], gate[g, G_OH], gate[g, G_OW], gate[g, G_KH], gate[g, G_KW],
            gate[g, G_SH], gate[g, G_SW], gate[g, G_PT], gate[g, G_PL], gate[g, G_DH], gate[g, G_DW])  # fmt: skip


@njit(cache=True)
def _conv_add(V, vbase, proj, j, weights, m, value, lo, hi):
    """Scatter one spike of conv input neuron ``m`` (internal index) into output rows [lo, hi)."""
    cin, width, cout, _, ow, kh, kw, sh, sw, pt, pl, dh, dw, woff = _conv_geometry(proj, j)
    ci = m % cin
    pos = m // cin
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
            base = vbase + (oy * ow + ox) * cout
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

    The active neurons of one input position are contiguous: the position's
    index math is done once, and for each kernel offset its output vector
    ``V[base:base+cout]`` takes all of that position's active channels, four
    at a time (so only the float32 summation order depends on the grouping,
    never on ``lo``/``hi``: a split by rows gives every element the same terms
    in the same order). Only the neurons whose input rows reach [lo, hi) are read.
    """
    cin, width, cout, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, woff = _conv_geometry(proj, j)
    stride = kh * kw * cout  # between the rows of consecutive input channels
    contiguous = sw == 1 and dw == 1
    s = 0
    if lo > 0 or hi < oh:  # a part of the rows: the neurons of input rows lo sh - pt .. (hi - 1) sh - pt + (kh - 1) dh
        first = max(lo * sh - pt, 0) * width * cin
        last = ((hi - 1) * sh - pt + (kh - 1) * dh + 1) * width * cin
        spikes = active[soff : soff + count]
        s = np.searchsorted(spikes, first)
        count = np.searchsorted(spikes, last)
    while s < count:
        pos = active[soff + s] // cin
        limit = (pos + 1) * cin  # the position's neurons are active[s:e], found without a division each
        e = s + 1
        while e < count and active[soff + e] < limit:
            e += 1
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
                base = vbase + (oy * ow + ox_lo) * cout
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
                base = vbase + (oy * ow + ox) * cout
                v = V[base : base + cout]
                offset = woff + (ky * kw + kw - 1 - kx) * cout - pos * cin * stride
                _rows_add(v, weights, offset, stride, active, soff, s, e, value, q, qoff, cout)
        s = e


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
def _deliver(V, node_table, proj, j, weights, indptr, cols, vals, spikes, soff, count, value, q, qoff, lo, hi):
    """Deliver ``count`` spikes (internal indices at ``spikes[soff:]``, ascending) through projection j.

    Each spike of neuron m carries ``value`` when ``qoff < 0``, else its own
    coalesced value ``q[qoff + m]``. Only the part ``[lo, hi)`` of the target
    is updated (see :func:`_extent`): output rows of a conv core, output
    features of a dense core; a CSR core (never split) updates all its targets.
    """
    target = proj[j, P_TARGET]
    vbase = node_table[target, N_STATE]
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
    if mode <= 1 and k == 0:
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
        if mode <= 1:
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


# --------------------------------------------------------------------------- one sample


@njit(cache=True)
def _node_step(b, n, t, p, k, weight, mode, phases, timesteps, periods, node_table, node_threshold, gate, fanout,
               bias, drive, output_order, output, V, spikes, flags, nspikes, candidates, emitted, touched, tlist,
               counts, sops, predictions, logits):
    """Node n at step t of sample b: receive constant current, fire (or gate), do the bookkeeping.

    Returns the node's spike count this step (its spikes are at ``spikes[N_SPIKE:]``)
    and the value each spike carries.
    """
    kind = node_table[n, N_KIND]
    size = node_table[n, N_SIZE]
    soff = node_table[n, N_SPIKE]
    if kind != KIND_OUTPUT:
        for i in range(nspikes[n]):
            flags[soff + spikes[soff + i]] = 0
        nspikes[n] = 0
    if mode == 3:
        value = node_threshold[n]
    else:
        value = node_threshold[n] * weight
    if kind == KIND_GATE:
        src = node_table[n, N_SOURCE]
        nspikes[n] = _gate_step(mode, k, gate, node_table[n, N_GATE], spikes, node_table[src, N_SPIKE], nspikes[src],
                                flags, emitted, node_table[src, N_EMITTED], candidates, touched, tlist, soff,
                                flags)
    else:
        stage = node_table[n, N_STAGE]
        voff = node_table[n, N_STATE]
        if mode >= 2:
            integrate = True
            fire = True
        else:
            integrate = p >= stage - 1 and (p - stage + 1) % 2 == 0
            fire = p >= stage and (p - stage) % 2 == 0
            # a population's integrate period p only matters for its fire period p + 1
            integrate = integrate and (kind == KIND_OUTPUT or p + 1 < periods)
        if integrate:
            doff = node_table[n, N_DRIVE]
            v = V[voff : voff + size]
            if doff >= 0:
                current = drive[b, doff : doff + size]
            else:
                current = bias[voff : voff + size]
            for i in range(size):
                v[i] += current[i]
        if kind == KIND_POPULATION and fire:
            nspikes[n] = _fire(V, voff, size, value, spikes, soff, flags)
        elif kind == KIND_OUTPUT:
            classes = output_order.size
            best = 0
            best_value = V[voff + output_order[0]]
            for i in range(1, classes):
                v = V[voff + output_order[i]]
                if v > best_value:
                    best_value = v
                    best = i
            predictions[t, b] = best
            if k == phases - 1 or t == timesteps - 1:
                for i in range(classes):
                    logits[p, b, i] = V[voff + output_order[i]]
            return 0, value
    count = nspikes[n]
    eoff = node_table[n, N_EMITTED]
    for i in range(count):
        m = spikes[soff + i]
        counts[b, soff + m] += 1
        sops[b, n] += fanout[soff + m]
        if eoff >= 0:
            emitted[eoff + m] += value
    return count, value


@njit(cache=True)
def _record(events, event, event_end, t, n, spikes, soff, count):
    for i in range(count):
        if event < event_end:
            events[event, 0] = t
            events[event, 1] = n
            events[event, 2] = spikes[soff + i]
            event += 1
    return event


@njit(cache=True)
def _new_state(nodes, state_size, spike_size, candidate_size, emitted_size, max_gate_out):
    """Zeroed per-sample state (a serial function: in a parallel one each np.zeros would be a parallel region)."""
    V = np.zeros(max(state_size, 1), np.float32)
    spikes = np.zeros(max(spike_size, 1), np.int32)
    flags = np.zeros(max(spike_size, 1), np.uint8)
    nspikes = np.zeros(nodes, np.int32)
    candidates = np.zeros(max(candidate_size, 1), np.uint8)
    emitted = np.zeros(max(emitted_size, 1), np.float32)
    touched = np.zeros(max(max_gate_out, 1), np.uint8)
    tlist = np.zeros(max(max_gate_out, 1), np.int32)
    return V, spikes, flags, nspikes, candidates, emitted, touched, tlist


@njit(cache=True)
def _new_period_state(nodes, state_size, spike_size):
    """Zeroed per-sample state of :func:`_bsnn_samples`: V, spike list, patterns, values, active lists."""
    V = np.zeros(max(state_size, 1), np.float32)
    spikes = np.zeros(max(spike_size, 1), np.int32)
    bits = np.zeros(max(spike_size, 1), np.int32)
    q = np.zeros(max(spike_size, 1), np.float32)
    active = np.zeros(max(spike_size, 1), np.int32)
    nactive = np.zeros(nodes, np.int32)
    return V, spikes, bits, q, active, nactive


@njit(cache=True)
def _run_sample(b, mode, phases, timesteps, node_table, node_threshold, proj, weights, indptr, cols, vals, gate,
                fanout, bias, drive, output_order, output, state_size, spike_size, candidate_size, emitted_size,
                max_gate_out, counts, sops, predictions, logits, events, event_start, record, deliveries):
    """Simulate sample ``b`` step by step for ``timesteps`` steps, writing row b of the outputs.

    Every node runs every step and every spike is delivered in its own step
    (any mode; ``bsnn`` uses :func:`_bsnn_samples` unless ``_COALESCE`` is off).
    """
    nodes = node_table.shape[0]
    V, spikes, flags, nspikes, candidates, emitted, touched, tlist = _new_state(
        nodes, state_size, spike_size, candidate_size, emitted_size, max_gate_out
    )
    q = emitted[:1]  # unused: spikes carry one value per step
    periods = (timesteps + phases - 1) // phases
    event = event_start[b]
    event_end = event_start[b + 1]
    delivered = 0
    for t in range(timesteps):
        p = t // phases
        k = t - p * phases
        weight = np.float32(1.0) / np.float32(1 << (k + 1))
        for n in range(nodes):
            count, value = _node_step(b, n, t, p, k, weight, mode, phases, timesteps, periods, node_table,
                                      node_threshold, gate, fanout, bias, drive, output_order, output, V, spikes,
                                      flags, nspikes, candidates, emitted, touched, tlist, counts, sops, predictions,
                                      logits)
            if count == 0:
                continue
            soff = node_table[n, N_SPIKE]
            if node_table[n, N_KIND] == KIND_GATE:  # its spikes come in window order: the conv scatter needs them sorted
                spikes[soff : soff + count].sort()
            if record[n]:
                event = _record(events, event, event_end, t, n, spikes, soff, count)
            for j in range(node_table[n, N_PROJ_START], node_table[n, N_PROJ_END]):
                _deliver(V, node_table, proj, j, weights, indptr, cols, vals, spikes, soff, count, value, q, -1,
                         0, _extent(proj, j))
                delivered += count
    deliveries[b] = delivered


# --------------------------------------------------------------------------- bsnn, period by period


@njit(cache=True)
def _integrate_period(V, voff, size, current, phases):
    """Add the constant current of K steps (K separate float32 additions, as step by step)."""
    v = V[voff : voff + size]
    for _ in range(phases):
        for i in range(size):
            v[i] += current[i]


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


@njit(cache=True)
def _bsnn_nodes(b, p, phases, timesteps, periods, node_table, node_threshold, gate, fanout, bias, drive, V, bits, q,
                active, nactive, counts, sops, events, event, event_end, record):
    """Period p of sample b for every spiking node: integrate (bias, analog input) or fire (or gate).

    Leaves each node's active neurons in ``active`` / ``nactive`` (0 if it does
    not fire in p) and does the spike bookkeeping; returns the event cursor.
    """
    kmax = min(phases, timesteps - p * phases)
    for n in range(node_table.shape[0]):
        kind = node_table[n, N_KIND]
        nactive[n] = 0
        if kind == KIND_OUTPUT:
            continue
        size = node_table[n, N_SIZE]
        soff = node_table[n, N_SPIKE]
        stage = node_table[n, N_STAGE]
        fire = p >= stage and (p - stage) % 2 == 0
        if kind == KIND_GATE:
            if not fire:
                continue
            count = _gate_period(gate, node_table[n, N_GATE], bits, q, node_table[node_table[n, N_SOURCE], N_SPIKE],
                                 active, soff)
        else:
            voff = node_table[n, N_STATE]
            if p >= stage - 1 and (p - stage + 1) % 2 == 0 and p + 1 < periods:  # matters only if it fires in p+1
                doff = node_table[n, N_DRIVE]
                if doff >= 0:
                    _integrate_period(V, voff, size, drive[b, doff : doff + size], phases)
                else:
                    _integrate_period(V, voff, size, bias[voff : voff + size], phases)
            if not fire:
                continue
            count = _fire_period(V, voff, size, node_threshold[n], phases, kmax, bits, q, active, soff)
        nactive[n] = count
        if count > 0:
            pattern = bits[soff : soff + size]
            spike_count = counts[b, soff : soff + size]
            fan = fanout[soff : soff + size]
            synapses = 0
            for i in range(size):  # every neuron, branch-free: vectorises
                s = _popcount(pattern[i])
                spike_count[i] += s
                synapses += s * np.int64(fan[i])
            sops[b, n] += synapses
        if record[n]:
            for k in range(kmax):
                bit = 1 << (phases - 1 - k)
                for i in range(count):
                    m = active[soff + i]
                    if bits[soff + m] & bit and event < event_end:
                        events[event, 0] = p * phases + k
                        events[event, 1] = n
                        events[event, 2] = m
                        event += 1
    return event


@njit(cache=True)
def _bsnn_output(b, p, phases, timesteps, node_table, node_threshold, proj, weights, indptr, cols, vals, bias, drive,
                 output_order, output, V, spikes, bits, q, active, nactive, predictions, logits):
    """Period p of the output, step by step: its sources' spikes of each phase, then its constant current.

    Returns the number of row scatters done.
    """
    kmax = min(phases, timesteps - p * phases)
    stage = node_table[output, N_STAGE]
    integrate = p >= stage - 1 and (p - stage + 1) % 2 == 0
    voff = node_table[output, N_STATE]
    size = node_table[output, N_SIZE]
    doff = node_table[output, N_DRIVE]
    classes = output_order.size
    delivered = 0
    for k in range(kmax):
        t = p * phases + k
        weight = np.float32(1.0) / np.float32(1 << (k + 1))
        bit = 1 << (phases - 1 - k)
        for n in range(node_table.shape[0]):
            count = nactive[n]
            if count == 0:
                continue
            soff = node_table[n, N_SPIKE]
            spiking = 0
            for j in range(node_table[n, N_PROJ_START], node_table[n, N_PROJ_END]):
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
                _deliver(V, node_table, proj, j, weights, indptr, cols, vals, spikes, soff, spiking,
                         node_threshold[n] * weight, q, -1, 0, _extent(proj, j))
                delivered += spiking
        if integrate:
            v = V[voff : voff + size]
            if doff >= 0:
                current = drive[b, doff : doff + size]
            else:
                current = bias[voff : voff + size]
            for i in range(size):
                v[i] += current[i]
        best = 0
        best_value = V[voff + output_order[0]]
        for i in range(1, classes):
            x = V[voff + output_order[i]]
            if x > best_value:
                best_value = x
                best = i
        predictions[t, b] = best
        if k == phases - 1 or t == timesteps - 1:
            for i in range(classes):
                logits[p, b, i] = V[voff + output_order[i]]
    return delivered


@njit(cache=True)
def _bsnn_samples(first, last, phases, timesteps, node_table, node_threshold, proj, weights, indptr, cols, vals,
                  gate, fanout, bias, drive, output_order, output, state_size, spike_size, counts, sops, predictions,
                  logits, events, event_start, record, deliveries):
    """Mode ``bsnn`` for samples ``first:last``, period by period, each neuron's spikes into populations delivered once.

    In a fire period a population's V cannot change (its sources integrate),
    so its K phases are computed at once (:func:`_fire_period`). The values a
    neuron emits in the period are summed (``q``) and scattered once at the
    end of the period (``q * row`` per active neuron, not one row per spike):
    the target integrates during the whole period and cannot fire before the
    next one, so only the float32 summation order differs from delivering
    every spike in its step. Spikes into the output are delivered phase by
    phase (its V is read every step). Periods whose targets could not fire
    before ``timesteps`` are neither integrated nor delivered.

    The state is allocated once for the samples (only V needs zeroing between
    them: the rest is written before it is read in every period).
    """
    nodes = node_table.shape[0]
    V, spikes, bits, q, active, nactive = _new_period_state(nodes, state_size, spike_size)
    periods = (timesteps + phases - 1) // phases
    for b in range(first, last):
        V[:] = 0
        event = event_start[b]
        event_end = event_start[b + 1]
        delivered = 0
        for p in range(periods):
            event = _bsnn_nodes(b, p, phases, timesteps, periods, node_table, node_threshold, gate, fanout, bias,
                                drive, V, bits, q, active, nactive, counts, sops, events, event, event_end, record)
            if p + 1 < periods:
                for n in range(nodes):
                    count = nactive[n]
                    soff = node_table[n, N_SPIKE]
                    for j in range(node_table[n, N_PROJ_START], node_table[n, N_PROJ_END]):
                        if count > 0 and proj[j, P_TARGET] != output:
                            _deliver(V, node_table, proj, j, weights, indptr, cols, vals, active, soff, count,
                                     np.float32(0.0), q, soff, 0, _extent(proj, j))
                            delivered += count
            delivered += _bsnn_output(b, p, phases, timesteps, node_table, node_threshold, proj, weights, indptr,
                                      cols, vals, bias, drive, output_order, output, V, spikes, bits, q, active,
                                      nactive, predictions, logits)
        deliveries[b] = delivered


@njit(cache=True, parallel=True)
def _simulate_batch(mode, phases, timesteps, node_table, node_threshold, proj, weights, indptr, cols, vals, gate,
                    fanout, bias, drive, output_order, output, state_size, spike_size, candidate_size, emitted_size,
                    max_gate_out, counts, sops, predictions, logits, events, event_start, record, deliveries):
    """All samples of a batch step by step (any mode), one thread per sample at a time."""
    for b in prange(drive.shape[0]):
        _run_sample(b, mode, phases, timesteps, node_table, node_threshold, proj, weights, indptr, cols, vals, gate,
                    fanout, bias, drive, output_order, output, state_size, spike_size, candidate_size, emitted_size,
                    max_gate_out, counts, sops, predictions, logits, events, event_start, record, deliveries)


@njit(cache=True, parallel=True)
def _bsnn_batch(phases, timesteps, node_table, node_threshold, proj, weights, indptr, cols, vals, gate, fanout, bias,
                drive, output_order, output, state_size, spike_size, counts, sops, predictions, logits, events,
                event_start, record, deliveries, chunks):
    """Mode ``bsnn``, all samples of a batch period by period, in ``chunks`` chunks of samples at a time.

    Each chunk reuses one allocation of the state; a few chunks per thread balance the load.
    """
    n = drive.shape[0]
    chunks = max(1, min(n, chunks))
    for c in prange(chunks):
        _bsnn_samples(c * n // chunks, (c + 1) * n // chunks, phases, timesteps, node_table, node_threshold, proj,
                      weights, indptr, cols, vals, gate, fanout, bias, drive, output_order, output, state_size,
                      spike_size, counts, sops, predictions, logits, events, event_start, record, deliveries)


@njit(cache=True, parallel=True)
def _split_deliver(V, node_table, proj, j, weights, indptr, cols, vals, spikes, soff, count, value, q, qoff, blocks):
    """:func:`_deliver` with the target split into ``blocks`` parts (:func:`_extent`), one per thread."""
    width = _extent(proj, j)
    for blk in prange(blocks):
        _deliver(V, node_table, proj, j, weights, indptr, cols, vals, spikes, soff, count, value, q, qoff,
                 blk * width // blocks, (blk + 1) * width // blocks)


@njit(cache=True)
def _deliver_one(V, node_table, proj, j, weights, indptr, cols, vals, spikes, soff, count, value, q, qoff, fanout,
                 threads, split_min_work):
    """One-sample delivery: split over the threads when the projection is a large conv or dense scatter."""
    width = _extent(proj, j)
    blocks = min(threads, width)
    if proj[j, P_CORE] == CORE_CSR or blocks < 2 or count * fanout[soff + spikes[soff]] < split_min_work:
        _deliver(V, node_table, proj, j, weights, indptr, cols, vals, spikes, soff, count, value, q, qoff, 0, width)
    else:
        _split_deliver(V, node_table, proj, j, weights, indptr, cols, vals, spikes, soff, count, value, q, qoff,
                       blocks)


@njit(cache=True)
def _simulate_one(mode, phases, timesteps, node_table, node_threshold, proj, weights, indptr, cols, vals, gate,
                  fanout, bias, drive, output_order, output, state_size, spike_size, candidate_size, emitted_size,
                  max_gate_out, counts, sops, predictions, logits, events, event_start, record, deliveries, threads,
                  split_min_work):
    """One sample (row 0); the larger conv and dense scatters are split over the threads (:func:`_extent`).

    The same schedule as :func:`_run_sample`. A projection is split when its
    spikes of the step reach at least ``split_min_work`` synapses. Each thread owns a part ``[lo, hi)`` of the
    target (conv rows, dense features), so no two threads write the same membrane potential.
    """
    nodes = node_table.shape[0]
    V, spikes, flags, nspikes, candidates, emitted, touched, tlist = _new_state(
        nodes, state_size, spike_size, candidate_size, emitted_size, max_gate_out
    )
    q = emitted[:1]  # unused: spikes carry one value per step
    periods = (timesteps + phases - 1) // phases
    event = event_start[0]
    event_end = event_start[1]
    delivered = 0
    for t in range(timesteps):
        p = t // phases
        k = t - p * phases
        weight = np.float32(1.0) / np.float32(1 << (k + 1))
        for n in range(nodes):
            count, value = _node_step(0, n, t, p, k, weight, mode, phases, timesteps, periods, node_table,
                                      node_threshold, gate, fanout, bias, drive, output_order, output, V, spikes,
                                      flags, nspikes, candidates, emitted, touched, tlist, counts, sops, predictions,
                                      logits)
            if count == 0:
                continue
            soff = node_table[n, N_SPIKE]
            if node_table[n, N_KIND] == KIND_GATE:  # its spikes come in window order: the conv scatter needs them sorted
                spikes[soff : soff + count].sort()
            if record[n]:
                event = _record(events, event, event_end, t, n, spikes, soff, count)
            for j in range(node_table[n, N_PROJ_START], node_table[n, N_PROJ_END]):
                _deliver_one(V, node_table, proj, j, weights, indptr, cols, vals, spikes, soff, count, value, q,
                             -1, fanout, threads, split_min_work)
                delivered += count
    deliveries[0] = delivered


@njit(cache=True)
def _period_blocks(V, node_table, proj, weights, indptr, cols, vals, active, nactive, q, output, blk, blocks):
    """Block ``blk`` of ``blocks`` of a period's conv and dense deliveries: its part of every target (:func:`_extent`)."""
    for n in range(node_table.shape[0]):
        count = nactive[n]
        if count == 0:
            continue
        soff = node_table[n, N_SPIKE]
        for j in range(node_table[n, N_PROJ_START], node_table[n, N_PROJ_END]):
            if proj[j, P_TARGET] == output or proj[j, P_CORE] == CORE_CSR:
                continue
            width = _extent(proj, j)
            lo = blk * width // blocks
            hi = (blk + 1) * width // blocks
            if hi > lo:
                _deliver(V, node_table, proj, j, weights, indptr, cols, vals, active, soff, count, np.float32(0.0),
                         q, soff, lo, hi)


@njit(cache=True, parallel=True)
def _split_parallel(V, node_table, proj, weights, indptr, cols, vals, active, nactive, q, output, blocks):
    for blk in prange(blocks):
        _period_blocks(V, node_table, proj, weights, indptr, cols, vals, active, nactive, q, output, blk, blocks)


@njit(cache=True)
def _split_period(V, node_table, proj, weights, indptr, cols, vals, active, nactive, q, output, blocks):
    """All conv and dense deliveries of one period, in one parallel region when ``blocks > 1``.

    Thread ``blk`` owns the part ``[blk * E // blocks, (blk + 1) * E // blocks)``
    of every target (E = :func:`_extent`: conv output rows, dense features), so no two threads write the same
    membrane potential; each element gets its terms in the serial order.
    """
    if blocks < 2:
        _period_blocks(V, node_table, proj, weights, indptr, cols, vals, active, nactive, q, output, 0, 1)
    else:
        _split_parallel(V, node_table, proj, weights, indptr, cols, vals, active, nactive, q, output, blocks)


@njit(cache=True)
def _bsnn_one(phases, timesteps, node_table, node_threshold, proj, weights, indptr, cols, vals, gate, fanout, bias,
              drive, output_order, output, state_size, spike_size, counts, sops, predictions, logits, events,
              event_start, record, deliveries, threads, split_min_work):
    """:func:`_bsnn_samples` for one sample (row 0): a period's conv and dense deliveries split over the threads.

    When a period's deliveries reach ``split_min_work`` synapses they run in one
    parallel region (:func:`_split_period`), each thread owning a part of every
    target (conv output rows, dense features); CSR deliveries stay serial.
    """
    nodes = node_table.shape[0]
    V, spikes, bits, q, active, nactive = _new_period_state(nodes, state_size, spike_size)
    periods = (timesteps + phases - 1) // phases
    event = event_start[0]
    event_end = event_start[1]
    delivered = 0
    for p in range(periods):
        event = _bsnn_nodes(0, p, phases, timesteps, periods, node_table, node_threshold, gate, fanout, bias, drive,
                            V, bits, q, active, nactive, counts, sops, events, event, event_end, record)
        if p + 1 < periods:
            work = 0
            for n in range(nodes):
                count = nactive[n]
                soff = node_table[n, N_SPIKE]
                for j in range(node_table[n, N_PROJ_START], node_table[n, N_PROJ_END]):
                    if count > 0 and proj[j, P_TARGET] != output:
                        delivered += count
                        if proj[j, P_CORE] == CORE_CSR:
                            _deliver(V, node_table, proj, j, weights, indptr, cols, vals, active, soff, count,
                                     np.float32(0.0), q, soff, 0, _extent(proj, j))
                        else:
                            work += count * fanout[soff + active[soff]]
            if work > 0:
                blocks = threads if work >= split_min_work else 1
                _split_period(V, node_table, proj, weights, indptr, cols, vals, active, nactive, q, output, blocks)
        delivered += _bsnn_output(0, p, phases, timesteps, node_table, node_threshold, proj, weights, indptr, cols,
                                  vals, bias, drive, output_order, output, V, spikes, bits, q, active, nactive,
                                  predictions, logits)
    deliveries[0] = delivered
