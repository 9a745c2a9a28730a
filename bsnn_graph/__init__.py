"""bsnn-graph: compile trained CNNs (ONNX) into bistable spiking neural networks.

Python API of the IR layer: :func:`load_onnx`, :func:`save_onnx`,
:func:`evaluate` and the graph helpers of :mod:`bsnn_graph.ir`.
"""

from __future__ import annotations

from . import ops
from .errors import BsnnError, ConversionError, DataError, ModelError, TraceError
from .executor import evaluate
from .ir import GraphError, verify

__all__ = [
    "BsnnError",
    "ConversionError",
    "DataError",
    "GraphError",
    "ModelError",
    "TraceError",
    "evaluate",
    "load_onnx",
    "ops",
    "save_onnx",
    "verify",
]

__version__ = "0.1.0"


def __getattr__(name: str):
    # onnx import is deferred so that `import bsnn_graph` stays light
    if name in ("load_onnx", "save_onnx"):
        from . import onnx_io

        return getattr(onnx_io, name)
    raise AttributeError(f"module 'bsnn_graph' has no attribute {name!r}")
