"""Lambda by search: each population's lambda minimises the K-bit network's activation error, layer by layer.

A ``bsnn`` network is exactly a K-bit quantised ANN (BSNN_SPEC.md,
"Exactness oracle"): at its first full output a population of lambda
``lambda`` (threshold 1) emits, in ANN units,

    q = lambda * Q_K(min(z / lambda + v0, c / lambda))

where ``z`` is its pre-activation computed from the already quantised
upstream populations (ANN units), ``v0`` the initial potential
(``2^-(K+1)`` for ``"half"``, 0 for ``"zero"``), ``c`` the ceiling of a
``Clip(0, c)`` population (infinite for a ReLU) and ``Q_K(V)`` the K-bit
MSB-first expansion ``floor(V 2^K) 2^-K`` clipped to ``[0, 1 - 2^-K]``.
With ``"half"`` that is ``z / lambda`` rounded to the nearest multiple of
``2^-K`` (ties up), with ``"zero"`` truncated. Lambda trades saturation
(values above ``lambda (1 - 2^-(K+1))`` are clipped) against resolution
(the step ``lambda 2^-K``). The ceiling is applied to ``V`` (offset
included), as the neuron does, not to ``z``.

Search (:func:`search_scales`), for the populations of the BN-folded ANN:

1. one pass of the float ANN over the calibration data keeps the streaming
   histograms of :func:`passes.calibration.activation_statistics`: per
   population (or channel) the percentile lambda (``percentile``), the 90th
   percentile of the positive activations and the maximum ``m``;
2. candidates (:func:`candidate_lambdas`): ``count`` (default 40) lambdas
   geometrically spaced from the 90th percentile up to the smallest lambda
   at which nothing saturates, ``m / (1 - 2^-(K+1))`` (``"half"``) or
   ``m / (1 - 2^-K)`` (``"zero"``), plus the percentile lambda itself: the
   search is never worse than the percentile on its own objective;
3. populations are grouped into *levels* (:func:`population_levels`; level
   = 1 + the highest level among the populations upstream, 1 without any)
   and each level costs one more pass over the calibration data. In the
   pass of level ``l`` only the ancestors of its populations are evaluated,
   twice: the float ANN (the target ``a = min(max(z_float, 0), c)``) and
   the K-bit network (:func:`quantised_forward`: populations of levels
   ``< l`` emit ``q`` at their chosen lambdas); per candidate (and channel)
   the squared error ``sum (q(z) - a)^2`` is accumulated; the argmin over
   the whole calibration data is the population's lambda.

Cost: ``1 + levels`` passes over the calibration data, but each node of
the ANN is evaluated (as both networks) in one pass only: pass ``l``
evaluates the ancestors no earlier pass did, starting from the values the
earlier passes kept (:func:`_level_plan`: per batch, every evaluated value
that a node not yet evaluated reads; in a chain, one tensor per network).
So the search costs about two forward passes plus the error sums, not the
``P^2`` layer evaluations of re-running the first ``l`` layers in pass
``l``. Memory: one batch of both networks' activations (the default batch
is half of :func:`passes.calibration.calibration_batch_size`), the error
sums (``candidates x channels`` float64 per population of the level) and
the kept values, held in memory up to ``frontier_bytes`` (default half of
:data:`passes.calibration.CALIBRATION_MEMORY_BYTES`) and beyond that in
temporary ``.npy`` files, read back batch by batch: bounded whatever the
size of the calibration data.

``channelwise``: one lambda per channel (axis 1), each channel with its own
candidates and error sums. A ``Clip(0, c)`` population has one lambda (its
bound is one number), so :func:`passes.normalise.normalise` refuses
``channelwise`` on a graph with one, before calibrating, as with the
percentile. A population (channel) with no positive activation keeps its
percentile lambda (1 for a population).

The modes ``phase`` and ``if-rate`` are searched with the same model and
``K = phases``, an approximation: their neurons do not emit ``Q_K`` of one
integrated value.

Refusal: calibration data that can be read only once (an iterator; the
search reads it ``1 + levels`` times), ``phases`` outside 1..16, an unknown
initial potential, and everything :func:`passes.calibration.activation_statistics`
refuses.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import networkx as nx
import numba
import numpy as np

from bsnn_graph import ir
from bsnn_graph import ops as O
from bsnn_graph.errors import DataError
from bsnn_graph.executor import apply_op

from .calibration import (
    CALIBRATION_MEMORY_BYTES,
    activation_statistics,
    calibration_batch_size,
    calibration_inputs,
    percentile_lambdas,
    population_names,
)
from .percentile import StreamingPercentile

__all__ = [
    "CANDIDATES",
    "LOW_PERCENTILE",
    "candidate_lambdas",
    "fake_quantise",
    "population_levels",
    "quantised_forward",
    "search_passes",
    "search_scales",
]

#: geometric candidates per population (or channel), besides the percentile lambda
CANDIDATES = 40
#: the smallest candidate: this percentile of the positive ANN activations
LOW_PERCENTILE = 90.0


def _offset(phases: int, initial_potential: str) -> float:
    if initial_potential not in O.INITIAL_POTENTIALS:
        raise DataError(f"initial potential {initial_potential!r} is not one of {', '.join(O.INITIAL_POTENTIALS)}")
    return 2.0 ** -(phases + 1) if initial_potential == "half" else 0.0


def _ceiling(op: O.Op) -> float:
    """The ANN ceiling ``c`` of a population activation (inf for a ReLU)."""
    return float(op.max) if isinstance(op, O.Clip) else np.inf


def _per_channel(lam: np.ndarray, ndim: int) -> np.ndarray:
    """A lambda of shape () or (C,) broadcastable against a batch (N, C, ...) of ``ndim`` axes."""
    lam = np.asarray(lam, np.float32)
    return lam.reshape((1, -1) + (1,) * (ndim - 2)) if lam.ndim else lam


def fake_quantise(
    z: np.ndarray, lam, phases: int, initial_potential: str = "half", ceiling: float = np.inf
) -> np.ndarray:
    """What a population of lambda ``lam`` emits at its first fire period, in ANN units (float32).

    ``lam * Q_K(min(z / lam + v0, ceiling / lam))`` for a batch ``z`` (N, C, ...)
    of pre-activations in ANN units; ``lam`` is a number or per channel (C,).
    """
    lam = _per_channel(lam, np.ndim(z))
    levels = np.float32(2.0**phases)
    v = np.asarray(z, np.float32) * (levels / lam)  # V 2^K, computed in place from here on
    v += np.float32(_offset(phases, initial_potential) * 2.0**phases)
    if np.isfinite(ceiling):
        np.minimum(v, np.float32(ceiling) * (levels / lam), out=v)
    np.floor(v, out=v)
    np.clip(v, 0, levels - 1, out=v)
    v *= lam / levels
    return v


def candidate_lambdas(
    low: np.ndarray, maximum: np.ndarray, percentile_lambda: np.ndarray, phases: int,
    initial_potential: str = "half", count: int = CANDIDATES,
) -> np.ndarray:
    """The candidate lambdas, float32 (rows, count + 1): a geometric grid and the percentile lambda last.

    Row r runs from ``low[r]`` to ``maximum[r] / (1 - 2^-(K+1))`` (``"half"``)
    or ``maximum[r] / (1 - 2^-K)`` (``"zero"``) in ``count`` points (both ends
    included). A row whose ``maximum`` is not positive (no positive
    activation) holds only its percentile lambda.
    """
    low, maximum, pct = (np.atleast_1d(np.asarray(a, np.float64)) for a in (low, maximum, percentile_lambda))
    saturating = 1.0 - (2.0 ** -(phases + 1) if _offset(phases, initial_potential) else 2.0**-phases)
    empty = ~(maximum > 0)
    high = np.where(empty, 1.0, maximum / saturating)
    low = np.where(empty | ~(low > 0), high, np.minimum(low, high))
    fraction = np.linspace(0.0, 1.0, count)[None, :]
    grid = low[:, None] * (high / low)[:, None] ** fraction
    table = np.concatenate([grid, pct[:, None]], axis=1)
    table[empty] = pct[empty, None]
    return table.astype(np.float32)


def population_levels(graph: nx.DiGraph) -> dict[str, int]:
    """Level of every population of the ANN ``graph``: 1 + the highest level among the populations upstream."""
    populations = population_names(graph)
    members = set(populations)
    levels: dict[str, int] = {}
    below: dict[str, int] = {}  # per node: the highest population level at or before it (0: none)
    for name in ir.topological_order(graph):
        upstream = max((below[s] for s in ir.inputs_of(graph, name)), default=0)
        if name in members:
            levels[name] = upstream + 1
            below[name] = levels[name]
        else:
            below[name] = upstream
    return {p: levels[p] for p in populations}


def search_passes(graph: nx.DiGraph) -> int:
    """Passes over the calibration data :func:`search_scales` makes on the folded ANN ``graph``: 1 + levels."""
    return 1 + max(population_levels(graph).values(), default=0)


# --------------------------------------------------------------------------- the two networks


def _dual_forward(
    graph: nx.DiGraph, x: np.ndarray, order: list[str], quantised: dict[str, np.ndarray], settings: tuple[int, str],
    targets: Iterable[str], values: tuple[dict, dict] | None = None, keep: frozenset = frozenset(),
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Evaluate ``order`` (topological) as the float ANN and as the K-bit network.

    Populations in ``quantised`` (name -> lambda) emit :func:`fake_quantise`
    in the K-bit network; a node downstream of none of them has one value
    for both. Yields ``(target, z_quantised, z_float)``, the pre-activations
    of each population in ``targets`` (which is not itself evaluated).

    ``values = (exact, low_bit)``: the values of nodes outside ``order`` that
    it reads (a frontier of an earlier pass; the graph input is ``x``), updated
    in place. A value is dropped after its last reader in ``order`` unless
    its node is in ``keep``; without ``values`` ``order`` must be closed
    under inputs.
    """
    targets = set(targets)
    exact, low_bit = values if values is not None else ({}, {})  # low_bit: K-bit values where they differ
    exact[graph.graph["inputs"][0]] = x
    remaining = {}
    for name in order:
        for s in ir.inputs_of(graph, name):
            remaining[s] = remaining.get(s, 0) + 1
    for name in order:
        op = ir.op_of(graph, name)
        srcs = ir.inputs_of(graph, name)
        if isinstance(op, O.Input):
            continue
        if name in targets:
            yield name, low_bit.get(srcs[0], exact[srcs[0]]), exact[srcs[0]]
        else:
            exact[name] = np.asarray(apply_op(op, [exact[s] for s in srcs]), np.float32)
            if name in quantised:
                z = low_bit.get(srcs[0], exact[srcs[0]])
                low_bit[name] = fake_quantise(z, quantised[name], *settings, ceiling=_ceiling(op))
            elif any(s in low_bit for s in srcs):
                low_bit[name] = np.asarray(apply_op(op, [low_bit.get(s, exact[s]) for s in srcs]), np.float32)
        for s in set(srcs):
            remaining[s] -= srcs.count(s)
            if remaining[s] == 0 and s not in keep:
                exact.pop(s, None)
                low_bit.pop(s, None)


def quantised_forward(
    graph: nx.DiGraph, x: np.ndarray, lambdas: dict[str, np.ndarray], phases: int, initial_potential: str = "half",
) -> dict[str, np.ndarray]:
    """The K-bit network's value of every population (ANN units) and of the graph outputs on the batch ``x``.

    Each population in ``lambdas`` emits :func:`fake_quantise` of its
    pre-activation; this is what the converted ``bsnn`` network emits at its
    first full output (float32 rounding aside), its logits included.
    """
    order = ir.topological_order(graph)
    outputs = list(graph.graph["outputs"])
    values: dict[str, np.ndarray] = {}
    for name in order:
        op = ir.op_of(graph, name)
        if isinstance(op, O.Input):
            values[name] = np.asarray(x, np.float32)
            continue
        value = np.asarray(apply_op(op, [values[s] for s in ir.inputs_of(graph, name)]), np.float32)
        if name in lambdas:
            z = values[ir.inputs_of(graph, name)[0]]
            value = fake_quantise(z, lambdas[name], phases, initial_potential, _ceiling(op))
        values[name] = value
    return {n: values[n] for n in list(lambdas) + outputs}


# --------------------------------------------------------------------------- error sums


@numba.njit(parallel=True, cache=True)
def _squared_errors(z, target, inverse, step, bound, offset, levels, errors):  # pragma: no cover - compiled
    """errors[c, g] += sum over (n, s) of (step[c, g] * Q(z[n, c, s] inverse[c, g] + offset) - target[n, c, s])^2.

    ``Q(v)`` = ``floor(min(v, bound[c, g]) levels)`` clipped to ``[0, levels - 1]``;
    z, target float32 (N, C, S); inverse, step, bound float32 (C, G); errors float64 (C, G).
    Each thread owns the rows c it writes.
    """
    n_samples, channels, size = z.shape
    candidates = inverse.shape[1]
    top = levels - np.float32(1.0)
    for c in numba.prange(channels):
        total = np.zeros(candidates, np.float64)
        for n in range(n_samples):
            for s in range(size):
                value = z[n, c, s]
                wanted = target[n, c, s]
                for g in range(candidates):
                    v = min(value * inverse[c, g] + offset, bound[c, g])
                    code = min(max(np.floor(v * levels), np.float32(0.0)), top)
                    d = code * step[c, g] - wanted
                    total[g] += d * d
        for g in range(candidates):
            errors[c, g] += total[g]


def _accumulate(errors: np.ndarray, z: np.ndarray, z_float: np.ndarray, table: np.ndarray, ceiling: float,
                settings: tuple[int, str]) -> None:
    """Add one batch's squared errors per candidate to ``errors`` (channels, candidates)."""
    phases, initial_potential = settings
    channels = z.shape[1]
    z = np.ascontiguousarray(z.reshape(z.shape[0], channels, -1), np.float32)
    target = np.clip(z_float.reshape(z.shape), 0, ceiling).astype(np.float32)
    table = np.broadcast_to(table, (channels, table.shape[1]))
    levels = np.float32(2.0**phases)
    with np.errstate(over="ignore"):
        bound = np.ascontiguousarray(np.float32(ceiling) / table, np.float32)
    _squared_errors(z, target, np.ascontiguousarray(1.0 / table, np.float32),
                    np.ascontiguousarray(table / levels, np.float32), bound,
                    np.float32(_offset(phases, initial_potential)), levels, errors)


# --------------------------------------------------------------------------- the search


def _candidates(graph, statistics: dict[str, StreamingPercentile], percentile: float, phases: int,
                initial_potential: str) -> dict[str, np.ndarray]:
    """Per population the candidate table (rows: 1, or one per channel)."""
    lambdas = percentile_lambdas(statistics, percentile)
    tables = {}
    for name, estimator in statistics.items():
        low = estimator.percentile(LOW_PERCENTILE)
        maximum = np.where(estimator.count > 0, estimator.maximum, 0.0)
        tables[name] = candidate_lambdas(low, maximum, lambdas[name], phases, initial_potential)
    return tables


class _Frontier:
    """Per calibration batch, the values of both networks that later passes read (see :func:`search_scales`).

    Held in memory up to ``budget`` bytes in all; beyond that a batch's
    arrays go to ``.npy`` files in ``folder`` (read back and deleted when
    taken), so memory stays bounded whatever the size of the calibration data.
    """

    def __init__(self, budget: int, folder: str):
        self.budget = budget
        self.folder = Path(folder)
        self.used = 0
        self.batches: dict[int, list[tuple[int, str, np.ndarray | Path]]] = {}
        self.files = 0

    def put(self, batch: int, exact: dict[str, np.ndarray], low_bit: dict[str, np.ndarray]) -> None:
        entries = []
        for kind, values in enumerate((exact, low_bit)):
            for name, value in values.items():
                if self.used + value.nbytes <= self.budget:
                    self.used += value.nbytes
                    entries.append((kind, name, value))
                    continue
                path = self.folder / f"{self.files}.npy"
                self.files += 1
                np.save(path, value)
                entries.append((kind, name, path))
        self.batches[batch] = entries

    def take(self, batch: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        values: tuple[dict, dict] = ({}, {})
        for kind, name, value in self.batches.pop(batch, []):
            if isinstance(value, Path):
                values[kind][name] = np.load(value)
                value.unlink()
            else:
                self.used -= value.nbytes
                values[kind][name] = value
        return values


def _level_plan(graph, level: list[str], evaluated: set[str]) -> tuple[list[str], frozenset]:
    """The nodes the pass of ``level`` evaluates (its targets included), and those whose values it keeps.

    A pass evaluates the ancestors of its populations' inputs that no earlier
    pass evaluated (``evaluated``, updated here); it keeps every evaluated
    value a node not yet evaluated reads (later passes start from these).
    """
    inputs = {ir.inputs_of(graph, p)[0] for p in level}
    needed = set(level) | inputs | set().union(*(nx.ancestors(graph, n) for n in inputs))
    source = graph.graph["inputs"][0]
    order = [n for n in ir.topological_order(graph) if n in needed and n not in evaluated and n != source]
    evaluated.update(n for n in order if n not in level)
    keep = frozenset(n for n in evaluated if any(c not in evaluated for c in ir.consumers(graph, n)))
    return order, keep


def _search_level(graph, calibration, batch_size, level: list[str], chosen, tables, settings, progress, plan,
                  frontier: _Frontier):
    """One pass over the calibration data: the chosen lambda of every population of ``level``.

    ``plan``: :func:`_level_plan` of the level; each batch starts from the
    values ``frontier`` holds for it and leaves there the ones ``plan`` keeps.
    """
    order, keep = plan
    errors = {p: np.zeros((ir.shape_of(graph, p)[0], tables[p].shape[1])) for p in level}
    for b, x in enumerate(calibration_inputs(graph, calibration, batch_size)):
        values = frontier.take(b)
        for name, z, z_float in _dual_forward(graph, x, order, chosen, settings, level, values, keep):
            ceiling = _ceiling(ir.op_of(graph, name))
            _accumulate(errors[name], z, z_float, tables[name], ceiling, settings)
        frontier.put(b, *({n: v for n, v in part.items() if n in keep} for part in values))
        if progress is not None:
            progress(len(x))
    picked = {}
    for name in level:
        table = tables[name]
        if table.shape[0] == 1:  # one lambda for the population: the channels' errors add up
            picked[name] = np.asarray(table[0, np.argmin(errors[name].sum(axis=0))], np.float64)
        else:
            picked[name] = table[np.arange(len(table)), np.argmin(errors[name], axis=1)].astype(np.float64)
    return picked


def search_scales(
    graph: nx.DiGraph,
    calibration,
    phases: int = 8,
    initial_potential: str = "half",
    percentile: float = 99.99,
    channelwise: bool = False,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    frontier_bytes: int | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Lambdas by search of every ReLU (and Clip(0, c)) of the folded ANN ``graph`` (see the module docstring).

    Returns ``(lambdas, samples)`` like :func:`passes.calibration.population_scales`:
    name -> float64 array of shape () or (C,). ``progress(n)`` is called after
    each batch of ``n`` samples of every pass (:func:`search_passes` passes).
    ``frontier_bytes``: the memory the values kept between passes may take
    (default half of :data:`passes.calibration.CALIBRATION_MEMORY_BYTES`);
    the rest goes to temporary files.
    """
    if not (isinstance(phases, int) and 1 <= phases <= 16):
        raise DataError(f"phases (K) must be an integer in 1..16, got {phases!r}")
    settings = (phases, initial_potential)
    _offset(phases, initial_potential)
    if not 0 < percentile <= 100:
        raise DataError(f"percentile {percentile} is not in (0, 100]")
    if isinstance(calibration, Iterator):
        raise DataError("lambda by search reads the calibration data several times: give an array or a list "
                        "of batches, not an iterator")
    if batch_size is None:
        batch_size = calibration_batch_size(graph, CALIBRATION_MEMORY_BYTES // 2)
    statistics, samples = activation_statistics(graph, calibration, channelwise, batch_size, progress)
    tables = _candidates(graph, statistics, percentile, *settings)
    levels = population_levels(graph)
    chosen: dict[str, np.ndarray] = {}
    evaluated: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="bsnn-search-") as folder:
        frontier = _Frontier(CALIBRATION_MEMORY_BYTES // 2 if frontier_bytes is None else frontier_bytes, folder)
        for level in range(1, max(levels.values(), default=0) + 1):
            members = [p for p, lv in levels.items() if lv == level]
            plan = _level_plan(graph, members, evaluated)
            chosen.update(_search_level(graph, calibration, batch_size, members, chosen, tables, settings, progress,
                                        plan, frontier))
    return {p: chosen[p] for p in levels}, samples

