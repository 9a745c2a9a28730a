"""The conversion pipeline: :data:`PIPELINE`, :class:`ConversionOptions` and :func:`convert`.

``convert`` copies the caller's graph once, then runs the passes of
:data:`PIPELINE` in order on that copy, each in place, handing every pass
the options it accepts. Before normalise (the slow calibration) it checks
what to_spiking would refuse, so a model that cannot be converted fails in
seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import networkx as nx

from bsnn_graph import ops as O

from ._infra import NodeRefusal, Pass, PassError, copy_graph, passes_applied
from .canonicalise import canonicalise
from .fold_batchnorm import fold_batchnorm
from .lambda_search import search_passes
from .normalise import check_calibrate, default_calibration, normalise
from .rules import Explain
from .synchronise import synchronise
from .to_spiking import check_convertible, to_spiking

__all__ = ["PIPELINE", "ConversionOptions", "calibration_passes", "convert", "pass_names"]

#: the conversion passes, in the order they run
PIPELINE: list[Pass] = [canonicalise, fold_batchnorm, normalise, to_spiking, synchronise]


def pass_names() -> list[str]:
    """Names of the passes of :data:`PIPELINE`, in order."""
    return [p.name for p in PIPELINE]


@dataclasses.dataclass(frozen=True)
class ConversionOptions:
    """The options of :func:`convert` (keyword arguments); each pass takes those it accepts."""

    mode: str = "bsnn"  # bsnn, bsnn-nosn, phase or if-rate
    phases: int = 8  # K, phases per period (1..16)
    percentile: float = 99.99  # of the positive activations, for each population's lambda
    channelwise: bool = False  # one lambda per channel instead of per population
    # calibration batch when the calibration is an array; None: the largest that fits the activation memory
    # budget (passes.normalise.calibration_batch_size)
    batch_size: int | None = None
    # lambda of the analog input (None: Input.scale, i.e. 1); the runtime feeds x / input_lambda
    input_lambda: float | None = None
    # where V starts: "half" (theta 2^-(K+1), theta / 2 in if-rate: a fire period rounds to K bits) or "zero"
    initial_potential: str = "half"
    # how normalise chooses the lambdas: "percentile" (one pass over the data) or "search"
    # (passes.lambda_search: least K-bit activation error, layer by layer; calibration_passes passes);
    # None: passes.normalise.default_calibration(mode) (search for bsnn, bsnn-nosn and phase; percentile for if-rate)
    calibrate: str | None = None


def convert(
    graph: nx.DiGraph,
    calibration,
    until: str | None = None,
    progress: Callable[[int], None] | None = None,
    explain: Explain | None = None,
    **options,
) -> nx.DiGraph:
    """Convert an ANN IR graph into a BSNN spiking graph (a copy: the caller's graph is not changed).

    Parameters
    ----------
    graph : ANN IR graph (e.g. from :func:`bsnn_graph.load_onnx`).
    calibration : ndarray (N, *input_shape), split into batches, or an iterable of such batches.
    until : stop after the pass of this name (see :data:`PIPELINE`).
    progress : called with the number of samples after each calibration batch.
    explain : called with a :class:`passes.rules.Explanation` per rule outcome
        (pass, rule, node, ``applied`` or the reason), one per pass without rules.
    **options : the fields of :class:`ConversionOptions` (``mode``, ``phases``, ...).

    Returns
    -------
    The converted graph; metadata ``bsnn.passes`` lists the passes applied.

    Raises
    ------
    PassError (a ConversionError) naming the pass, node, op and the passes
    applied before; DataError for unusable calibration data or an unknown
    ``calibrate``; TypeError for an unknown option.
    """
    settings = ConversionOptions(**options)
    settings = dataclasses.replace(settings, calibrate=settings.calibrate or default_calibration(settings.mode))
    check_calibrate(settings.calibrate)
    last = _last_pass(graph, until)
    graph = copy_graph(graph)
    handed = {"calibration": calibration, "progress": progress, "explain": explain, **dataclasses.asdict(settings)}
    for pass_ in PIPELINE[: last + 1]:
        if pass_ is normalise and last >= PIPELINE.index(to_spiking):
            _preflight(graph, settings)
        pass_(graph, **handed)
    return graph


def _last_pass(graph: nx.DiGraph, until: str | None) -> int:
    """The index in :data:`PIPELINE` of the pass named ``until`` (the last pass when None)."""
    names = pass_names()
    if until is None:
        return len(names) - 1
    if until not in names:
        refusal = NodeRefusal(None, None, f"unknown pass {until!r} (passes: {', '.join(names)})")
        raise PassError("convert", passes_applied(graph), refusal)
    return names.index(until)


def calibration_passes(graph: nx.DiGraph, calibrate: str = "percentile") -> int:
    """How many times :func:`convert` reads the calibration data of the ANN ``graph`` (not changed).

    1 for the percentile; for search 1 + the number of population levels
    of the canonicalised, BN-folded graph (:func:`passes.lambda_search.search_passes`).
    A progress bar over the calibration covers ``samples x calibration_passes`` samples.
    """
    check_calibrate(calibrate)
    if calibrate == "percentile":
        return 1
    return search_passes(fold_batchnorm(canonicalise(copy_graph(graph)).graph).graph)


def _preflight(graph: nx.DiGraph, settings: ConversionOptions) -> None:
    """Refuse what to_spiking would refuse before spending time on calibration."""
    mode, phases, initial_potential = settings.mode, settings.phases, settings.initial_potential
    try:
        if mode not in O.MODES:
            raise NodeRefusal(None, None, f"mode {mode!r} is not one of bsnn, bsnn-nosn, phase, if-rate")
        if not (isinstance(phases, int) and 1 <= phases <= 16):
            raise NodeRefusal(None, None, f"phases (K) must be an integer in 1..16, got {phases!r}")
        if initial_potential not in O.INITIAL_POTENTIALS:
            raise NodeRefusal(
                None, None, f"initial potential {initial_potential!r} is not one of {', '.join(O.INITIAL_POTENTIALS)}"
            )
        check_convertible(graph)
    except NodeRefusal as exc:
        raise PassError("to_spiking", passes_applied(graph), exc) from None
