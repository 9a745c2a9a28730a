"""ONNX import and export for the bsnn-graph IR.

:func:`load_onnx` reads an ONNX file into the IR (:mod:`bsnn_graph.ir`):

- the model is checked at the wire level first, so that a file that is not
  ONNX, or that was cut short, is reported as such;
- ONNX shape inference runs, and its shapes are cross-checked against the
  shapes the IR infers;
- subgraphs that only compute constants (weights behind ``Constant``,
  ``ConstantOfShape``, ``Transpose``..., and ``Shape -> Gather -> Unsqueeze
  -> Concat`` chains that build ``Reshape`` targets) are evaluated with
  numpy. ``Shape`` of a data tensor yields the batch size as a symbol, so a
  target such as ``Concat(Shape(x)[0], -1)`` resolves to a per-sample shape;
- every other node becomes one IR node, keyed by its ONNX node name when
  that is non-empty and unique, else by its output tensor name; graph inputs
  are keyed by their names;
- nodes of the custom domain ``ai.bsnn`` (the spiking ops written by
  :func:`save_onnx`) map back to :data:`bsnn_graph.ops.OP_CLASSES`.

Every unsupported op is listed in one :class:`~bsnn_graph.errors.ModelError`
(``model.onnx: unsupported ops: Sigmoid (nodes s1, s2), LSTM (node l0)``).

:func:`save_onnx` writes the IR back as an opset-17 model (19 where a node
needs it), standard ops as standard ONNX, spiking ops as ``ai.bsnn`` nodes
whose attributes are the op's dataclass fields.

The modules, by direction and stage::

    file --read--> ModelProto --load (fold | importers | bsnn_domain)--> IR graph
    IR graph --write (exporters | bsnn_domain)--> ModelProto --> file

- :mod:`.read`: the file to a ``ModelProto`` (wire-level check, UTF-8 names,
  external data);
- :mod:`.load`: ``load_onnx`` and the ``ModelLoader`` (opset, shape
  inference, inputs, node order and keys, shape cross-check, the list of
  unsupported ops, outputs, metadata);
- :mod:`.fold`: constant folding, one rule per ONNX op type (``FOLD_RULES``);
- :mod:`.importers`: ONNX node -> IR op, one converter per op type (``IMPORTERS``);
- :mod:`.exporters`: IR op -> ONNX node, one exporter per op class (``EXPORTERS``);
- :mod:`.bsnn_domain`: the ``ai.bsnn`` ops both ways, and the metadata key of ``Input.scale``;
- :mod:`.write`: ``save_onnx`` and the ``ModelWriter`` (value_info, opsets,
  metadata, the checker, atomic and external-data writes);
- :mod:`.values` (what flows between nodes while loading: ``Tensor``,
  ``BATCH``, ``Unsupported``) and :mod:`.registry` (the decorator that
  fills the three tables).
"""

from __future__ import annotations

from .importers import SUPPORTED_OPS
from .load import MIN_OPSET, load_onnx
from .values import (
    BATCH as BATCH,  # the symbolic batch size, a public name of the one-file module
)
from .write import EXPORT_OPSET, EXTERNAL_DATA_BYTES, save_onnx

__all__ = ["EXPORT_OPSET", "EXTERNAL_DATA_BYTES", "MIN_OPSET", "SUPPORTED_OPS", "load_onnx", "save_onnx"]
