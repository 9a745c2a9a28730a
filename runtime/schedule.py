"""The schedule rules of BSNN_SPEC.md, in one place: who integrates, who fires, which periods matter.

The Numba kernels (:mod:`runtime.kernels`), the dense oracle
(:mod:`runtime.oracle`) and the dense PyTorch baseline
(``benchmarks/dense_torch.py``) all read the rules from here.

Time: step ``t``, period ``p = t // K``, phase ``k = t % K``, phase weight
``2^-(k+1)`` (:func:`phase_weight`).

- **Bistable schedule** (modes ``bsnn``, ``bsnn-nosn``), a node of stage s:
  it integrates in periods ``p >= s - 1`` with ``p - s + 1`` even
  (:func:`integrates`) and fires in periods ``p >= s`` with ``p - s`` even
  (:func:`fires`); its m-th fire period is ``s + 2m``
  (:func:`fire_period`). ``phase`` and ``if-rate`` integrate and fire every
  step (:func:`is_bistable` tells the two families apart). A spike at phase
  k carries ``theta 2^-(k+1)`` (theta in ``if-rate``, :func:`spike_value`);
  a ceiling bounds V before the first phase of a fire period
  (:func:`ceiling_applies`).
- **First full output**: at the end of period L, ``T_first = (L + 1) K``
  (:func:`first_output_step`).
- **Initial potential** ("rounding, not truncation"): every spiking
  population starts at ``theta 2^-(K+1)`` (``"half"``; ``theta / 2`` in
  ``if-rate``), or at 0 (``"zero"``) (:func:`initial_potential`).
- **Light cone** (:func:`light_cone`): with T known, a fire of node n in
  period p matters only if its spikes can still change the output by the
  last period ``P - 1``; populations fire (and integrate) only in the
  periods that matter: :func:`fires_in_cone`, :func:`integrate_matters`,
  :func:`reaches_in_cone` (whether a spike into a population still counts).

The Numba-compiled rules (``@njit``) take the mode as its number
(:data:`MODE_CODES`); the kernels call them, so each rule is written once.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bsnn_graph.ops import BISTABLE_MODES, INITIAL_POTENTIALS, MODES

__all__ = [
    "BISTABLE_MODES",
    "INITIAL_POTENTIALS",
    "MODES",
    "MODE_BSNN",
    "MODE_CODES",
    "MODE_IF_RATE",
    "MODE_NOSN",
    "MODE_PHASE",
    "SCHEDULES",
    "ceiling_applies",
    "constant_current_fraction",
    "fire_period",
    "fires",
    "fires_in_cone",
    "first_fire_from",
    "first_output_step",
    "initial_potential",
    "integrate_matters",
    "integrates",
    "is_bistable",
    "light_cone",
    "periods_of",
    "phase_weight",
    "reaches_in_cone",
    "spike_value",
]

#: mode numbers of the kernels
MODE_BSNN = 0
MODE_NOSN = 1
MODE_PHASE = 2
MODE_IF_RATE = 3
MODE_CODES = {"bsnn": MODE_BSNN, "bsnn-nosn": MODE_NOSN, "phase": MODE_PHASE, "if-rate": MODE_IF_RATE}
assert tuple(MODE_CODES) == MODES

#: names of the two schedules a run can use (traces and ``--json`` say which ran)
SCHEDULES = ("light-cone", "full")


@njit(cache=True)
def phase_weight(k):
    """Value of a spike at phase k (threshold 1): ``2^-(k+1)``, float32."""
    return np.float32(1.0) / np.float32(1 << (k + 1))


@njit(cache=True)
def spike_value(mode, threshold, k):
    """Value a spike of a neuron with ``threshold`` carries at phase k: theta in ``if-rate``, else ``theta 2^-(k+1)``."""
    return threshold if mode == MODE_IF_RATE else threshold * phase_weight(k)


def constant_current_fraction(mode: str, phases: int) -> np.float32:
    """Share of a node's constant current ``W' x + b'`` it takes per step: ``1 / K`` (a period adds it once),
    1 in ``if-rate``; float32."""
    return np.float32(1.0 if mode == "if-rate" else 1.0 / phases)


@njit(cache=True)
def is_bistable(mode):
    """Whether ``mode`` follows the bistable schedule (``bsnn``, ``bsnn-nosn``) rather than every step."""
    return mode <= MODE_NOSN


@njit(cache=True)
def integrates(mode, stage, p):
    """Whether a node of ``stage`` takes its constant current (bias, analog input) in period p."""
    if mode >= MODE_PHASE:
        return True
    return p >= stage - 1 and (p - stage + 1) % 2 == 0


@njit(cache=True)
def fires(mode, stage, p):
    """Whether a node of ``stage`` fires in period p (bistable: ``p >= s``, ``p - s`` even; else always)."""
    if mode >= MODE_PHASE:
        return True
    return p >= stage and (p - stage) % 2 == 0


@njit(cache=True)
def first_fire_from(stage, p):
    """The first bistable fire period ``>= p`` of a node of ``stage``."""
    f = max(p, stage)
    return f + (f - stage) % 2


@njit(cache=True)
def fires_in_cone(mode, stage, p, last_fire):
    """Whether a node of ``stage`` fires in period p within its light-cone limit ``last_fire`` (:func:`light_cone`)."""
    return p <= last_fire and fires(mode, stage, p)


@njit(cache=True)
def integrate_matters(mode, stage, p, last_fire):
    """Whether a population takes its constant current in period p and that can still matter.

    It integrates in p (:func:`integrates`), and in the bistable modes an
    integrate period matters only for the fire period after it, ``p + 1``,
    which must be within the light-cone limit ``last_fire``.
    """
    return integrates(mode, stage, p) and (mode >= MODE_PHASE or p + 1 <= last_fire)


@njit(cache=True)
def reaches_in_cone(mode, stage, p, last_fire):
    """Whether a spike of period p into a population of ``stage`` can still matter (light cone).

    Bistable modes: iff the population's first fire period from p
    (:func:`first_fire_from`: the same period in ``bsnn-nosn`` when it fires
    in p, else the next) is within its limit ``last_fire``; every spike
    matters in ``phase`` and ``if-rate``.
    """
    return mode >= MODE_PHASE or first_fire_from(stage, p) <= last_fire


@njit(cache=True)
def ceiling_applies(mode, k):
    """Whether V is bounded by its ceiling before the fire at phase k (BSNN_SPEC.md, Clip / ReLU6).

    Bistable modes: once, at phase 0 of a fire period (the integrate period
    before it is over); ``phase`` and ``if-rate``: every step.
    """
    return mode >= MODE_PHASE or k == 0


def fire_period(stage, wave):
    """Period of the ``wave``-th (from 0) fire period of a bistable node of ``stage``: ``stage + 2 wave``.

    Works on ints and on integer arrays alike.
    """
    return stage + 2 * wave


def periods_of(timesteps: int, phases: int) -> int:
    """``P = ceil(T / K)``, the periods a run of T steps touches."""
    return -(-int(timesteps) // int(phases))


def first_output_step(largest_stage: int, phases: int) -> int:
    """``T_first = (L + 1) K``: the first step at which the output holds a full wave (end of period L)."""
    return (int(largest_stage) + 1) * int(phases)


def initial_potential(mode: str, phases: int, threshold: float, setting: str) -> np.float32:
    """Membrane potential a spiking population starts at (BSNN_SPEC.md, "Initial potential").

    ``"half"``: half of the smallest spike value, ``theta 2^-(K+1)``, so a
    fire period emits the K-bit value nearest to V (ties up) instead of
    truncating it; in ``if-rate`` (spikes of value theta) ``theta / 2``.
    ``"zero"``: 0 (truncation).
    """
    if setting not in INITIAL_POTENTIALS:
        raise ValueError(f"initial potential {setting!r} is not one of {', '.join(INITIAL_POTENTIALS)}")
    if setting == "zero":
        return np.float32(0.0)
    if mode == "if-rate":
        return np.float32(threshold) * np.float32(0.5)
    return np.float32(threshold) * np.float32(2.0 ** -(int(phases) + 1))


def light_cone(
    mode: str,
    periods: int,
    stages: np.ndarray,
    is_population: np.ndarray,
    targets: list[list[int]],
    output: int,
    full_dynamics: bool = False,
) -> np.ndarray:
    """The last period in which each node's fire can still change the output: int32 (nodes,).

    Parameters
    ----------
    mode : the graph's mode.
    periods : P = ceil(T / K).
    stages : int (nodes,) stage of each node, nodes in topological order.
    is_population : bool (nodes,): True for populations and synchronous
        neurons (they fire one period after they integrate), False for max
        gates and the output (they pass a spike on in the period it arrives).
    targets : for each node, the nodes its spikes reach directly (its
        projections' targets and the max gates reading it).
    output : index of the output accumulator.
    full_dynamics : every node fires in every fire period (no pruning).

    A spike of node n in period p reaches target t in the *effect period*
    ``e_t(p)``: p for the output and max gates, and for a population the first
    fire period of t at or after p (the next period in ``bsnn``, where t
    integrates while n fires; the same period in ``bsnn-nosn`` when the spike
    arrives while t fires). The fire of n at p matters iff ``e_t(p) <= last[t]``
    for some target t; ``last[output] = P - 1``. In ``bsnn`` this is the
    spec's ``p + (L - s) <= P - 1``. ``phase`` and ``if-rate`` deliver every
    spike within its step, so every step matters there.
    """
    count = len(stages)
    last = np.full(count, periods - 1, np.int32)
    if full_dynamics or mode not in BISTABLE_MODES:
        return last
    last[:] = -1
    last[output] = periods - 1
    for n in range(count - 1, -1, -1):  # targets come after their sources
        if n == output:
            continue
        best = -1
        for t in targets[n]:
            if last[t] < 0:
                continue
            if is_population[t]:
                stage = int(stages[t])
                if last[t] < stage:
                    continue
                best = max(best, last[t] - (last[t] - stage) % 2)  # t's last fire period that matters
            else:
                best = max(best, int(last[t]))
        last[n] = best
    return last
