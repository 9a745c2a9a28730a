"""Clock-driven dense simulation of a converted spiking graph in PyTorch: the comparison baseline.

This is how SpikingJelly and snnTorch run converted networks: every time step
every neuron of every population is advanced with dense tensor ops
(``F.conv2d`` on the full spike maps, ``F.linear`` on the full spike vectors),
whether or not anything spiked. It runs the same spiking IR graph as
``runtime.simulate`` (the project's event-driven Numba runtime) under the same
rules (BSNN_SPEC.md), so the two can be timed side by side at the same T.

Per step ``t`` (period ``p = t // K``, phase ``k = t % K``, ``w_k = 2^-(k+1)``)
the nodes run in topological order, as in the runtime:

- a linear projection (Conv, Gemm, MatMul, AveragePool, GlobalAveragePool,
  Flatten, Reshape, Add, Sum, Mul by a constant, Concat, Pad) is applied,
  without its constant terms, to the spike values its sources emit this step;
- a population (or synchronous neuron, or the output accumulator) adds that
  current to V, then its constant current (bias, or the analog input drive
  ``W' x + b'``, divided by K except in ``if-rate``) if it integrates in this
  period, then fires if it fires in this period;
- schedules (stage s), read from :mod:`runtime.schedule` (the rules the
  runtime's kernels, the oracle and the numpy reference use; the spike value
  and the constant current's share per step from :mod:`runtime.reference`): ``bsnn`` / ``bsnn-nosn`` integrate
  the constant current in periods ``p >= s-1`` with ``p-s+1`` even and fire
  in periods ``p >= s`` with ``p-s`` even (fire: ``V >= theta w_k`` emits
  ``theta w_k`` and subtracts it); ``phase`` integrates and fires every step
  the same way; ``if-rate`` integrates ``W' s + b'`` every step and fires
  value ``theta`` when ``V >= theta``; V starts at the population's initial
  potential; a population with a ceiling is bounded by it once its
  integrate period is over (every step in ``phase`` / ``if-rate``);
- ``light_cone=True``: a population fires only in the periods whose spikes
  can still reach the output by T (``schedule.light_cone``), as the runtime
  does by default (predictions are the same either way);
- a max gate: in ``bsnn`` / ``bsnn-nosn`` every window member is a candidate
  at phase 0, the output spikes iff a candidate spikes, then the candidates
  that did not spike drop out; in ``phase`` / ``if-rate`` it passes the
  spikes of the member whose emitted value so far is largest (ties to the
  lowest index);
- the output accumulator integrates like a population (it never fires);
  the prediction at step t is the argmax of its V.

The constant currents are computed once per batch by evaluating the linear
projections with their constants on the analog input (spiking sources set to
zero). ``skip_silent=True`` skips the projections of sources that the
bistable schedule keeps silent in the current period (a schedule-aware
dense simulation; still dense within a layer).

Usage::

    sim = DenseSimulator(graph)            # mode from the graph's spiking ops
    predictions = sim.run(x, timesteps=64, batch_size=256, threads=2)   # int32 (T, N)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F

from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.errors import BsnnError, DataError, ModelError
from runtime import schedule
from runtime.reference import spike_value
from runtime.schedule import BISTABLE_MODES, constant_current_fraction

__all__ = ["LINEAR_OPS", "DenseResult", "DenseSimulator"]

LINEAR_OPS = O.LINEAR_PROJECTIONS

_INPUT, _LINEAR, _POPULATION, _GATE, _OUTPUT = range(5)


@dataclass
class DenseResult:
    """What a dense simulation produced (N samples, T steps, P = ceil(T / K) periods)."""

    predictions: np.ndarray  # int32 (T, N): argmax of the output V at every step
    logits: np.ndarray  # float32 (P, N, classes): output V at the end of each period
    spikes: np.ndarray | None  # int64 (N,) spikes of all populations and gates per sample, if counted
    timesteps: int
    phases: int
    mode: str


@dataclass
class _Node:
    name: str
    kind: int
    op: O.Op
    inputs: list[str]
    shape: tuple[int, ...]
    stage: int = 0
    threshold: float = 1.0  # populations; gates: their source's
    params: dict | None = None  # torch tensors and precomputed geometry
    v0: float = 0.0  # initial membrane potential (schedule.initial_potential)
    ceiling: np.ndarray | None = None  # upper bound of V ((), or per channel), None if unbounded


def _tensor(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _torch_pads(begins, ends) -> list[int]:
    """F.pad's argument (last axis first) from per-axis begin and end pads."""
    out: list[int] = []
    for b, e in zip(reversed(list(begins)), reversed(list(ends))):
        out += [int(b), int(e)]
    return out


class DenseSimulator:
    """A clock-driven dense PyTorch simulation of a spiking IR graph.

    Parameters
    ----------
    graph : a spiking IR graph obeying the spiking graph contract
        (docs/design.md): one ``Input``, populations, synchronous neurons, max
        gates, one ``OutputAccumulator`` and linear projections between them.
    mode : ``bsnn``, ``bsnn-nosn``, ``phase`` or ``if-rate``; None takes the
        mode of the graph's spiking ops.
    skip_silent : skip the projections of sources the bistable schedule keeps
        silent in the current period (``bsnn`` / ``bsnn-nosn`` only). The
        default, False, computes every projection every step, as a
        clock-driven simulator does.

    Raises
    ------
    ModelError
        if the graph breaks the contract (names the node and op), or in mode
        ``bsnn`` a population's sources are not all one stage earlier.
    """

    def __init__(self, graph: nx.DiGraph, mode: str | None = None, skip_silent: bool = False,
                 light_cone: bool = False) -> None:
        order = ir.topological_order(graph)
        inputs = [n for n in order if isinstance(ir.op_of(graph, n), O.Input)]
        outputs = [n for n in order if isinstance(ir.op_of(graph, n), O.OutputAccumulator)]
        if len(inputs) != 1:
            raise ModelError(f"the dense simulation needs exactly one graph input, the graph has {inputs}")
        if len(outputs) != 1:
            raise ModelError(f"a spiking graph has exactly one OutputAccumulator, this one has {len(outputs)}")
        spiking = [n for n in order if isinstance(ir.op_of(graph, n), (O.Population, O.MaxGate, O.OutputAccumulator))]
        modes = {ir.op_of(graph, n).mode for n in spiking}
        phases = {int(ir.op_of(graph, n).phases) for n in spiking}
        if len(phases) != 1:
            raise ModelError(f"spiking nodes disagree on the phases K: {sorted(phases)}")
        if mode is None:
            if len(modes) != 1:
                raise ModelError(f"spiking nodes disagree on the mode: {sorted(modes)}")
            mode = modes.pop()
        if mode not in O.MODES:
            raise BsnnError(f"mode {mode!r} is not one of {', '.join(O.MODES)}")
        self.mode = mode
        self.phases = phases.pop()
        if not 1 <= self.phases <= 16:
            raise ModelError(f"phases K = {self.phases} is outside 1..16")
        self.skip_silent = bool(skip_silent) and mode in BISTABLE_MODES
        self.input_name = inputs[0]
        self.output_name = outputs[0]
        self.input_shape = tuple(ir.shape_of(graph, self.input_name))
        # the analog input is normalised by its lambda (Input.scale), as runtime.simulate does
        self.input_scale = np.float32(np.asarray(ir.op_of(graph, self.input_name).scale))
        self.program = [self._compile(graph, name) for name in order]
        self._check_stages(graph)
        self.light_cone = bool(light_cone)
        self._targets = self._spiking_targets(graph)
        self.classes = int(math.prod(ir.shape_of(graph, self.output_name)))

    # ------------------------------------------------------------------ building

    def _compile(self, graph: nx.DiGraph, name: str) -> _Node:
        op = ir.op_of(graph, name)
        srcs = ir.inputs_of(graph, name)
        shape = tuple(ir.shape_of(graph, name))
        if isinstance(op, O.Input):
            return _Node(name, _INPUT, op, srcs, shape)
        if isinstance(op, O.OutputAccumulator):
            return _Node(name, _OUTPUT, op, srcs, shape, stage=int(op.stage))
        if isinstance(op, O.Population):  # includes SynchronousNeuron
            if not op.threshold > 0:
                raise ModelError(f"node {name!r} ({op.op_type}): threshold {op.threshold} is not positive")
            if isinstance(op, O.SynchronousNeuron):
                src_op = ir.op_of(graph, srcs[0])
                if not isinstance(src_op, (O.Population, O.MaxGate)):
                    raise ModelError(f"node {name!r} ({op.op_type}): reads {srcs[0]!r} ({src_op.op_type}); "
                                     "a synchronous neuron reads a spiking source directly")  # fmt: skip
            bound = np.asarray(getattr(op, "ceiling", np.inf), np.float32)
            return _Node(name, _POPULATION, op, srcs, shape, stage=int(op.stage), threshold=float(op.threshold),
                         v0=float(schedule.initial_potential(self.mode, self.phases, op.threshold,
                                                             op.initial_potential)),
                         ceiling=bound if np.any(np.isfinite(bound)) else None)  # fmt: skip
        if isinstance(op, O.MaxGate):
            src_op = ir.op_of(graph, srcs[0])
            if not isinstance(src_op, O.Population):
                raise ModelError(f"node {name!r} (MaxGate): reads {srcs[0]!r} ({src_op.op_type}); "
                                 "a max gate reads a population directly")  # fmt: skip
            src_shape = tuple(ir.shape_of(graph, srcs[0]))
            if len(src_shape) != 3 or len(op.kernel_shape) != 2:
                raise ModelError(f"node {name!r} (MaxGate): only 2-d max gates on (C, H, W) inputs, got {src_shape}")
            if self.mode in BISTABLE_MODES and op.stage != src_op.stage:
                raise ModelError(f"node {name!r} (MaxGate): stage {op.stage} differs from its source {srcs[0]!r} "
                                 f"(stage {src_op.stage})")  # fmt: skip
            params = {"window": self._window(op, src_shape), "source_shape": src_shape}
            return _Node(name, _GATE, op, srcs, shape, stage=int(op.stage), threshold=float(src_op.threshold),
                         params=params)  # fmt: skip
        if not isinstance(op, LINEAR_OPS):
            raise ModelError(f"node {name!r} ({op.op_type}): not a linear projection of the spiking graph contract")
        node = _Node(name, _LINEAR, op, srcs, shape, params={})
        in_shapes = [tuple(ir.shape_of(graph, s)) for s in srcs]
        p = node.params
        if isinstance(op, O.Conv):
            spatial = op.weight.ndim - 2
            if spatial not in (1, 2, 3):
                raise ModelError(f"node {name!r} (Conv): {spatial}-d convolution is not supported")
            pads = tuple(op.pads) or (0,) * (2 * spatial)
            begins, ends = pads[:spatial], pads[spatial:]
            p["weight"], p["bias"] = _tensor(op.weight), _tensor(op.bias)
            p["stride"] = tuple(op.strides) or (1,) * spatial
            p["dilation"] = tuple(op.dilations) or (1,) * spatial
            p["padding"] = tuple(begins) if begins == ends else 0
            p["pre_pad"] = None if begins == ends else _torch_pads(begins, ends)
            p["conv"] = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
            p["bias_view"] = (1, -1) + (1,) * spatial
        elif isinstance(op, O.Gemm):
            p["weight"], p["bias"] = _tensor(op.weight), _tensor(op.bias)
        elif isinstance(op, O.MatMul):
            p["weight"] = _tensor(op.weight)
        elif isinstance(op, O.AveragePool):
            if len(in_shapes[0]) != 3 or len(op.kernel_shape) != 2:
                raise ModelError(f"node {name!r} (AveragePool): only 2-d pooling on (C, H, W), got {in_shapes[0]}")
            p["window"] = self._window(op, in_shapes[0])
            p["count"] = self._pool_count(op, in_shapes[0], p["window"])
        elif isinstance(op, (O.Add, O.Mul)):
            p["constant"] = _tensor(op.constant)
        elif isinstance(op, O.Pad):
            if op.mode != "constant":
                raise ModelError(f"node {name!r} (Pad): mode {op.mode!r} is not a linear projection (constant only)")
            rank = len(in_shapes[0]) + 1
            p["pads"] = _torch_pads(op.pads[:rank], op.pads[rank:])
            p["in_shape"] = in_shapes[0]
        elif isinstance(op, O.Concat):
            p["in_shapes"] = in_shapes
        return node

    @staticmethod
    def _window(op, in_shape: tuple[int, ...]) -> dict:
        """Geometry of a 2-d pooling window over (C, H, W): pads (with the ceil-mode overhang), strides, sizes."""
        strides = tuple(op.strides) or (1, 1)
        pads = tuple(op.pads) or (0, 0, 0, 0)
        dilations = tuple(getattr(op, "dilations", ()) or ()) or (1, 1)
        kernel = tuple(op.kernel_shape)
        outs, extra = [], []
        for i in range(2):
            size = in_shape[1 + i]
            out = O.pool_output_size(size, kernel[i], strides[i], pads[i], pads[i + 2], dilations[i],
                                     bool(op.ceil_mode))  # fmt: skip
            ext = dilations[i] * (kernel[i] - 1) + 1
            outs.append(out)
            extra.append(max((out - 1) * strides[i] + ext - (size + pads[i] + pads[i + 2]), 0))
        unfolded = tuple((in_shape[1 + i] + pads[i] + pads[i + 2] + extra[i] - dilations[i] * (kernel[i] - 1) - 1)
                         // strides[i] + 1 for i in range(2))  # fmt: skip
        return {
            "kernel": kernel,
            "stride": strides,
            "dilation": dilations,
            "explicit": _torch_pads(pads[:2], pads[2:]),  # F.pad order: (left, right, top, bottom)
            "overhang": [0, extra[1], 0, extra[0]],
            "pads": _torch_pads(pads[:2], (pads[2] + extra[0], pads[3] + extra[1])),
            "out": tuple(outs),
            "unfolded": unfolded,  # windows per axis of the padded map (>= out)
            "area": kernel[0] * kernel[1],
            "channels": in_shape[0],
        }

    @staticmethod
    def _window_sum(x: torch.Tensor, win: dict, fill: float = 0.0) -> torch.Tensor:
        """Sum over each window of ``x`` (N, C, H, W), padded with ``fill`` (explicit pads) and 0 (overhang)."""
        if fill != 0.0:
            x = F.pad(x, win["explicit"], value=fill)
            x = F.pad(x, win["overhang"])
        else:
            x = F.pad(x, win["pads"])
        oh, ow = win["out"]
        if win["dilation"] == (1, 1):
            y = F.avg_pool2d(x, win["kernel"], win["stride"], 0, False, True, 1)
        else:
            c = x.shape[1]
            ones = torch.ones((c, 1) + win["kernel"], dtype=x.dtype)
            y = F.conv2d(x, ones, None, win["stride"], 0, win["dilation"], c)
        return y[:, :, :oh, :ow]

    def _pool_count(self, op: O.AveragePool, in_shape, win: dict) -> torch.Tensor:
        # divisor: members inside the input (or inside input + explicit pads with
        # count_include_pad); the ceil-mode overhang never counts (ONNX)
        ones = torch.ones((1, 1) + tuple(in_shape[1:]), dtype=torch.float32)
        count = self._window_sum(ones, win, fill=float(op.count_include_pad))
        return torch.clamp(count, min=1.0)

    def _check_stages(self, graph: nx.DiGraph) -> None:
        """Mode ``bsnn``: every population's spiking sources are one stage earlier; the output is at L + 1."""
        if self.mode not in ("bsnn", "bsnn-nosn"):
            return
        nodes = {n.name: n for n in self.program}
        largest = max([n.stage for n in self.program if n.kind in (_POPULATION, _GATE)] + [0])
        for node in self.program:
            if node.kind == _OUTPUT and node.stage != largest + 1:
                raise ModelError(f"node {node.name!r} (OutputAccumulator): stage {node.stage} but the largest "
                                 f"population stage is {largest}")  # fmt: skip
            if node.kind not in (_POPULATION, _OUTPUT) or self.mode != "bsnn":
                continue
            for src in self._spiking_sources(graph, node.name, nodes):
                stage = 0 if src == self.input_name else nodes[src].stage
                if stage != node.stage - 1:
                    raise ModelError(f"node {node.name!r} ({node.op.op_type}): stage {node.stage} but source {src!r} "
                                     f"has stage {stage}; mode bsnn needs the synchronisation pass (or bsnn-nosn)")  # fmt: skip

    def _spiking_targets(self, graph: nx.DiGraph) -> dict[str, set[str]]:
        """Spiking node -> the spiking nodes (and output) its spikes reach directly."""
        nodes = {n.name: n for n in self.program}
        targets: dict[str, set[str]] = {n.name: set() for n in self.program if n.kind in (_POPULATION, _GATE)}
        for node in self.program:
            if node.kind in (_POPULATION, _OUTPUT, _GATE):
                for src in self._spiking_sources(graph, node.name, nodes):
                    if src in targets:
                        targets[src].add(node.name)
        return targets

    def _last_fire(self, timesteps: int) -> dict[str, int]:
        """The light cone (``schedule.light_cone``): last period each spiking node fires in."""
        names = [n.name for n in self.program if n.kind in (_POPULATION, _GATE, _OUTPUT)]
        index = {name: i for i, name in enumerate(names)}
        nodes = {n.name: n for n in self.program}
        last = schedule.light_cone(
            self.mode,
            schedule.periods_of(timesteps, self.phases),
            np.array([nodes[n].stage for n in names]),
            np.array([nodes[n].kind == _POPULATION for n in names]),
            [sorted(index[t] for t in self._targets.get(n, ())) for n in names],
            index[self.output_name],
            full_dynamics=not self.light_cone,
        )
        return {name: int(last[index[name]]) for name in names}

    @staticmethod
    def _spiking_sources(graph: nx.DiGraph, name: str, nodes: dict) -> set[str]:
        found, stack = set(), list(ir.inputs_of(graph, name))
        while stack:
            s = stack.pop()
            if nodes[s].kind == _LINEAR:
                stack.extend(ir.inputs_of(graph, s))
            else:
                found.add(s)
        return found

    # ------------------------------------------------------------------ linear ops

    def _linear(self, node: _Node, args: list, n: int, affine: bool):
        """Apply a linear op to its input values (None = zero); ``affine`` adds its constant terms."""
        op, p = node.op, node.params
        if isinstance(op, (O.Add, O.Sum)):
            present = [a for a in args if a is not None]
            total = None
            for a in present:
                total = a if total is None else total + a
            if affine and isinstance(op, O.Add) and op.constant is not None:
                total = p["constant"] if total is None else total + p["constant"]
            return self._full(total, n, node.shape)
        if isinstance(op, O.Concat):
            if all(a is None for a in args):
                return None
            parts = [a if a is not None else torch.zeros((n,) + s) for a, s in zip(args, p["in_shapes"])]
            return torch.cat(parts, dim=op.axis)
        x = args[0]
        if isinstance(op, O.Pad):
            if x is None:
                if not (affine and op.value != 0):
                    return None
                x = torch.zeros((n,) + tuple(p["in_shape"]))
            return F.pad(x, p["pads"], value=float(op.value) if affine else 0.0)
        if x is None:
            if not affine:
                return None
            bias = None
            if isinstance(op, O.Conv) and op.bias is not None:
                bias = p["bias"].view(p["bias_view"])
            elif isinstance(op, O.Gemm) and op.bias is not None:
                bias = p["bias"].view(1, -1)
            return self._full(bias, n, node.shape)
        if isinstance(op, O.Conv):
            if p["pre_pad"] is not None:
                x = F.pad(x, p["pre_pad"])
            return p["conv"](x, p["weight"], p["bias"] if affine else None, p["stride"], p["padding"], p["dilation"],
                             op.group)  # fmt: skip
        if isinstance(op, O.Gemm):
            return F.linear(x, p["weight"], p["bias"] if affine else None)
        if isinstance(op, O.MatMul):
            return torch.matmul(x, p["weight"])
        if isinstance(op, O.AveragePool):
            return self._window_sum(x, p["window"]) / p["count"]
        if isinstance(op, O.GlobalAveragePool):
            return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
        if isinstance(op, O.Mul):
            return x * p["constant"]
        if isinstance(op, O.Flatten):
            return x.reshape(n, -1)
        if isinstance(op, O.Reshape):
            return x.reshape((n,) + tuple(op.shape))
        return x  # Identity, Dropout

    @staticmethod
    def _full(t, n: int, shape: tuple[int, ...]):
        if t is None:
            return None
        full = (n,) + tuple(shape)
        return t if tuple(t.shape) == full else t.expand(full).contiguous()

    # ------------------------------------------------------------------ simulation

    def _constants(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Per-step constant current of each population and the output (bias, or the analog input drive)."""
        n = x.shape[0]
        step = constant_current_fraction(self.mode, self.phases)
        values: dict[str, torch.Tensor | None] = {}
        constants: dict[str, torch.Tensor | None] = {}
        for node in self.program:
            args = [values[s] for s in node.inputs]
            if node.kind == _INPUT:
                values[node.name] = x
            elif node.kind == _LINEAR:
                values[node.name] = self._linear(node, args, n, affine=True)
            else:
                values[node.name] = None
                if node.kind in (_POPULATION, _OUTPUT):
                    total = None
                    for a in args:
                        if a is not None:
                            total = a if total is None else total + a
                    constants[node.name] = None if total is None else self._full(total * float(step), n, node.shape)
        return constants

    def _integrates(self, stage: int, p: int) -> bool:
        return schedule.integrates(schedule.MODE_CODES[self.mode], stage, p)

    def _fires(self, stage: int, p: int) -> bool:
        return schedule.fires(schedule.MODE_CODES[self.mode], stage, p)

    def _batch(self, x: torch.Tensor, timesteps: int, count_spikes: bool):
        n = x.shape[0]
        K = self.phases
        periods = schedule.periods_of(timesteps, K)
        bistable = self.mode in ("bsnn", "bsnn-nosn")
        constants = self._constants(x)
        V = {node.name: torch.full((n,) + node.shape, np.float32(node.v0)) for node in self.program
             if node.kind in (_POPULATION, _OUTPUT)}  # fmt: skip
        last = self._last_fire(timesteps)
        ceilings = {node.name: self._bound(node) for node in self.program if node.ceiling is not None}
        zeros = {node.name: torch.zeros((n,) + node.shape) for node in self.program if node.kind in (_POPULATION, _GATE)}
        gate_sources = {node.inputs[0] for node in self.program if node.kind == _GATE}
        emitted = {s: torch.zeros((n,) + V[s].shape[1:]) for s in gate_sources} if not bistable else {}
        candidates = {}
        for node in self.program:
            if node.kind == _GATE:
                win = node.params["window"]
                candidates[node.name] = torch.ones((n, win["channels"], win["area"], win["out"][0] * win["out"][1]),
                                                   dtype=torch.bool)  # fmt: skip
        predictions = torch.zeros((timesteps, n), dtype=torch.int64)
        logits = torch.zeros((periods, n, self.classes))
        spikes = torch.zeros(n, dtype=torch.int64) if count_spikes else None
        for t in range(timesteps):
            p, k = divmod(t, K)
            values: dict[str, torch.Tensor | None] = {}
            fired: dict[str, torch.Tensor | None] = {}
            for node in self.program:
                kind = node.kind
                if kind == _INPUT:
                    values[node.name] = None
                elif kind == _LINEAR:
                    values[node.name] = self._linear(node, [values[s] for s in node.inputs], n, affine=False)
                elif kind == _GATE:
                    value = float(spike_value(self.mode, node.threshold, k))
                    source_spikes = fired[node.inputs[0]] if p <= last[node.name] else None
                    spk = self._gate(node, source_spikes, candidates.get(node.name), emitted, k, n)
                    fired[node.name] = spk
                    if spk is None:
                        values[node.name] = None if self.skip_silent else zeros[node.name]
                    else:
                        values[node.name] = spk.to(torch.float32).mul_(value)
                        if count_spikes:
                            spikes += spk.reshape(n, -1).sum(dim=1)
                else:
                    v = V[node.name]
                    for s in node.inputs:
                        if values[s] is not None:
                            v += values[s]
                    const = constants[node.name]
                    if const is not None and self._integrates(node.stage, p):
                        v += const
                    if kind == _OUTPUT:
                        flat = v.reshape(n, -1)
                        predictions[t] = flat.argmax(dim=1)
                        if k == K - 1 or t == timesteps - 1:
                            logits[p] = flat
                        continue
                    if not self._fires(node.stage, p) or p > last[node.name]:
                        fired[node.name] = None
                        values[node.name] = None if self.skip_silent else zeros[node.name]
                        continue
                    if node.name in ceilings and (not bistable or k == 0):
                        torch.minimum(v, ceilings[node.name], out=v)
                    threshold = float(spike_value(self.mode, node.threshold, k))
                    spk = v >= threshold
                    value = spk.to(torch.float32).mul_(threshold)
                    v -= value
                    fired[node.name] = spk
                    values[node.name] = value
                    if node.name in emitted:
                        emitted[node.name] += value
                    if count_spikes:
                        spikes += spk.reshape(n, -1).sum(dim=1)
        return predictions, logits, spikes

    @staticmethod
    def _bound(node: _Node) -> torch.Tensor:
        """A population's ceiling shaped to broadcast against its V (batch, *shape)."""
        bound = np.asarray(node.ceiling, np.float32)
        if bound.ndim == 1:
            bound = bound.reshape((1, -1) + (1,) * (len(node.shape) - 1))
        return torch.from_numpy(np.ascontiguousarray(bound))

    @staticmethod
    def _unfold(x: torch.Tensor, win: dict, fill: float) -> torch.Tensor:
        """Windows of ``x`` (N, C, H, W) as (N, C, area, OH * OW); explicit pads and overhang hold ``fill``."""
        n = x.shape[0]
        x = F.pad(x, win["pads"], value=fill)
        u = F.unfold(x, win["kernel"], win["dilation"], 0, win["stride"])  # (N, C * area, L), channel-major
        uh, uw = win["unfolded"]
        oh, ow = win["out"]
        u = u.view(n, win["channels"], win["area"], uh, uw)
        if (uh, uw) != (oh, ow):  # ceil mode: a window starting in the end padding is dropped
            u = u[..., :oh, :ow]
        return u.reshape(n, win["channels"], win["area"], oh * ow)

    def _gate(self, node: _Node, source_spikes, cand, emitted, k: int, n: int):
        """Spikes (bool, (N, C, OH, OW)) of a max gate this step, or None if its source is silent."""
        win = node.params["window"]
        oh, ow = win["out"]
        bistable = self.mode in ("bsnn", "bsnn-nosn")
        if bistable and k == 0:
            cand.fill_(True)
        if source_spikes is None:
            if self.skip_silent:
                return None
            source_spikes = torch.zeros((n,) + node.params["source_shape"], dtype=torch.bool)
        s = self._unfold(source_spikes.to(torch.float32), win, 0.0) > 0
        if bistable:
            hits = cand & s
            fire = hits.any(dim=2)
            cand.copy_(torch.where(fire.unsqueeze(2), hits, cand))
        else:
            e = self._unfold(emitted[node.inputs[0]], win, -math.inf)
            best = e.argmax(dim=2, keepdim=True)  # first maximum: ties to the lowest index
            fire = torch.gather(s, 2, best).squeeze(2)
        return fire.view(n, win["channels"], oh, ow)

    # ------------------------------------------------------------------ public

    def simulate(
        self,
        x: np.ndarray,
        timesteps: int,
        batch_size: int = 256,
        threads: int | None = None,
        count_spikes: bool = False,
    ) -> DenseResult:
        """Run the dense simulation on ``x`` for ``timesteps`` steps.

        Parameters
        ----------
        x : float array (N, *input_shape).
        timesteps : T >= 1.
        batch_size : samples per dense tensor batch.
        threads : torch intra-op threads (None: leave torch's setting).
        count_spikes : also count the spikes of all populations and gates per sample.

        Returns
        -------
        DenseResult
        """
        x = np.asarray(x, dtype=np.float32)
        if x.shape[1:] != self.input_shape:
            if x.shape == self.input_shape:
                x = x[None]
            else:
                raise DataError(f"input of shape {x.shape} does not fit graph input {self.input_name!r}: "
                                f"expected (N, {', '.join(map(str, self.input_shape))})")  # fmt: skip
        if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
            raise BsnnError(f"timesteps must be an integer >= 1, got {timesteps!r}")
        if self.input_scale != 1:
            x = x / self.input_scale
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise BsnnError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        previous = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(int(threads))
        try:
            preds, logits, spikes = [], [], []
            with torch.inference_mode():
                for start in range(0, x.shape[0], int(batch_size)):
                    xb = torch.from_numpy(np.ascontiguousarray(x[start : start + int(batch_size)]))
                    pr, lg, sp = self._batch(xb, int(timesteps), count_spikes)
                    preds.append(pr.numpy().astype(np.int32))
                    logits.append(lg.numpy())
                    if sp is not None:
                        spikes.append(sp.numpy())
        finally:
            torch.set_num_threads(previous)
        return DenseResult(
            predictions=np.concatenate(preds, axis=1),
            logits=np.concatenate(logits, axis=1),
            spikes=np.concatenate(spikes) if count_spikes else None,
            timesteps=int(timesteps),
            phases=self.phases,
            mode=self.mode,
        )

    def run(self, x: np.ndarray, timesteps: int, batch_size: int = 256, threads: int | None = None) -> np.ndarray:
        """Predictions (argmax of the output V) at every step: int32 (T, N). See :meth:`simulate`."""
        return self.simulate(x, timesteps, batch_size=batch_size, threads=threads).predictions
