"""The bsnn-graph runtime: lowering, Numba kernels, simulation driver, evaluation, references.

``runtime.simulate(graph, x, timesteps)`` runs a converted spiking graph
event-driven on CPU; ``runtime.load(path)`` reads a converted ONNX file;
``runtime.evaluate_snn(graph, x, labels, timesteps)`` is the one evaluation
(accuracy per step, first output, SOPs, energy estimate) the CLI and the
benchmarks report; ``runtime.reference_simulate`` is the numpy step
reference of every mode. See docs/design.md ("Runtime API").
"""

from __future__ import annotations

from . import oracle
from .evaluate import Evaluation, evaluate_snn
from .lowering import LoweredGraph, LoweringError, lower
from .reference import ReferenceResult, reference_simulate
from .simulate import E_AC_PJ, E_MAC_PJ, SimulationResult, load, simulate

__all__ = [
    "E_AC_PJ",
    "E_MAC_PJ",
    "Evaluation",
    "LoweredGraph",
    "LoweringError",
    "ReferenceResult",
    "SimulationResult",
    "evaluate_snn",
    "load",
    "lower",
    "oracle",
    "reference_simulate",
    "simulate",
]
