"""Conversion passes: the ordered graph rewrites that turn an ANN IR graph into a BSNN spiking graph.

:data:`PIPELINE` lists them in order; each is a :class:`Pass` callable alone
(``result = passes.fold_batchnorm(graph)``; ``result.graph``,
``result.modified``); :func:`convert` runs them all (or up to ``until``).
The output satisfies the spiking graph contract of ``docs/design.md``.

Each pass lives in the module of its name (``passes/fold_batchnorm.py``);
the package attribute of that name is the :class:`Pass` object, so
``from passes import fold_batchnorm`` gives the pass, and
``importlib.import_module("passes.fold_batchnorm")`` the module.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from bsnn_graph import ops as O

from ._infra import NodeRefusal, Pass, PassError, PassResult, passes_applied
from .canonicalise import canonicalise
from .fold_batchnorm import fold_batchnorm
from .lambda_search import search_passes
from .normalise import check_calibrate, normalise
from .percentile import StreamingPercentile
from .synchronise import synchronise
from .to_spiking import check_convertible, to_spiking

__all__ = [
    "PIPELINE",
    "Pass",
    "PassError",
    "PassResult",
    "StreamingPercentile",
    "calibration_passes",
    "canonicalise",
    "convert",
    "fold_batchnorm",
    "normalise",
    "pass_names",
    "synchronise",
    "to_spiking",
]

#: the conversion passes, in the order they run
PIPELINE: list[Pass] = [canonicalise, fold_batchnorm, normalise, to_spiking, synchronise]


def pass_names() -> list[str]:
    """Names of the passes of :data:`PIPELINE`, in order."""
    return [p.name for p in PIPELINE]


def convert(
    graph: nx.DiGraph,
    calibration,
    mode: str = "bsnn",
    phases: int = 8,
    percentile: float = 99.99,
    channelwise: bool = False,
    until: str | None = None,
    progress: Callable[[int], None] | None = None,
    batch_size: int | None = None,
    input_lambda: float | None = None,
    initial_potential: str = "half",
    calibrate: str = "percentile",
) -> nx.DiGraph:
    """Convert an ANN IR graph into a BSNN spiking graph (the input graph is not changed).

    Parameters
    ----------
    graph : ANN IR graph (e.g. from :func:`bsnn_graph.load_onnx`).
    calibration : ndarray (N, *input_shape), split into ``batch_size``
        batches, or an iterable of such batches.
    mode : ``bsnn`` (default), ``bsnn-nosn``, ``phase`` or ``if-rate``.
    phases : K, phases per period (1..16).
    percentile : of the positive activations, for each population's lambda.
    channelwise : one lambda per channel instead of per population.
    until : stop after the pass of this name (see :data:`PIPELINE`).
    progress : called with the number of samples after each calibration batch.
    batch_size : calibration batch size when ``calibration`` is an array; None
        (default): the largest that fits the activation memory budget
        (:func:`passes.normalise.calibration_batch_size`).
    input_lambda : lambda of the analog input (default ``Input.scale``, i.e. 1);
        the runtime must feed ``x / input_lambda``.
    initial_potential : where every spiking population's V starts: ``"half"``
        (the default: ``theta 2^-(K+1)``, ``theta / 2`` in ``if-rate``, so a
        fire period rounds to K bits) or ``"zero"`` (truncation).
    calibrate : how normalise chooses the lambdas: ``"percentile"`` (the
        default; one pass over the calibration data) or ``"search"``
        (:mod:`passes.lambda_search`: the lambda minimising the K-bit
        network's activation error, layer by layer, with K = ``phases`` and
        ``initial_potential``; :func:`calibration_passes` passes).

    Returns
    -------
    The converted graph; metadata ``bsnn.passes`` lists the passes applied.

    Raises
    ------
    PassError (a ConversionError) naming the pass, node, op and the passes
    applied before; DataError for unusable calibration data or an unknown
    ``calibrate``.
    """
    check_calibrate(calibrate)
    names = pass_names()
    if until is not None and until not in names:
        raise PassError(
            "convert",
            passes_applied(graph),
            NodeRefusal(None, None, f"unknown pass {until!r} (passes: {', '.join(names)})"),
        )
    options = {
        "calibration": calibration,
        "mode": mode,
        "phases": phases,
        "percentile": percentile,
        "channelwise": channelwise,
        "progress": progress,
        "batch_size": batch_size,
        "input_lambda": input_lambda,
        "initial_potential": initial_potential,
        "calibrate": calibrate,
    }
    for pass_ in PIPELINE:
        if pass_ is normalise and (until is None or names.index(until) >= names.index("to_spiking")):
            _preflight(graph, mode, phases, initial_potential)
        graph = pass_(graph, **options).graph
        if pass_.name == until:
            break
    return graph


def calibration_passes(graph: nx.DiGraph, calibrate: str = "percentile") -> int:
    """How many times :func:`convert` reads the calibration data of the ANN ``graph``.

    1 for the percentile; for search 1 + the number of population levels
    of the canonicalised, BN-folded graph (:func:`passes.lambda_search.search_passes`).
    A progress bar over the calibration covers ``samples x calibration_passes`` samples.
    """
    check_calibrate(calibrate)
    if calibrate == "percentile":
        return 1
    return search_passes(fold_batchnorm(canonicalise(graph).graph).graph)


def _preflight(graph: nx.DiGraph, mode: str, phases: int, initial_potential: str = "half") -> None:
    """Refuse what to_spiking would refuse before spending time on calibration."""
    try:
        if mode not in ("bsnn", "bsnn-nosn", "phase", "if-rate"):
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
