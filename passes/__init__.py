"""Conversion passes: the ordered graph rewrites that turn an ANN IR graph into a BSNN spiking graph.

:data:`PIPELINE` lists them in order; each is a :class:`Pass` callable alone
(``result = passes.fold_batchnorm(graph)``; ``result.graph``,
``result.modified``) that **changes the graph it is given in place**;
:func:`convert` copies the caller's graph once and runs them all on the
copy (or up to ``until``). The output satisfies the spiking graph contract
of ``docs/design.md``.

Each pass lives in the module of its name (``passes/fold_batchnorm.py``);
the package attribute of that name is the :class:`Pass` object, so
``from passes import fold_batchnorm`` gives the pass, and
``importlib.import_module("passes.fold_batchnorm")`` the module. The
rewrites of canonicalise and fold_batchnorm are :class:`~passes.rules.Rule`
objects (:mod:`passes.rules`), which ``convert(..., explain=...)`` can
report on rule by rule.
"""

from __future__ import annotations

from ._infra import Pass, PassError, PassResult, copy_graph
from .canonicalise import canonicalise
from .fold_batchnorm import fold_batchnorm
from .normalise import default_calibration, normalise
from .percentile import StreamingPercentile
from .pipeline import (
    PIPELINE,
    ConversionOptions,
    calibration_passes,
    convert,
    pass_names,
)
from .rules import Explanation, Rule
from .synchronise import synchronise
from .to_spiking import to_spiking

__all__ = [
    "PIPELINE",
    "ConversionOptions",
    "Explanation",
    "Pass",
    "PassError",
    "PassResult",
    "Rule",
    "StreamingPercentile",
    "calibration_passes",
    "canonicalise",
    "convert",
    "copy_graph",
    "default_calibration",
    "fold_batchnorm",
    "normalise",
    "pass_names",
    "synchronise",
    "to_spiking",
]
