"""The bsnn-graph runtime: lowering, Numba kernels, simulation driver, exactness oracle.

``runtime.simulate(graph, x, timesteps)`` runs a converted spiking graph
event-driven on CPU; ``runtime.load(path)`` reads a converted ONNX file.
See docs/design.md ("Runtime API").
"""

from __future__ import annotations

from . import oracle
from .lowering import LoweredGraph, LoweringError, lower
from .simulate import E_AC_PJ, E_MAC_PJ, SimulationResult, load, simulate

__all__ = [
    "E_AC_PJ",
    "E_MAC_PJ",
    "LoweredGraph",
    "LoweringError",
    "SimulationResult",
    "load",
    "lower",
    "oracle",
    "simulate",
]
