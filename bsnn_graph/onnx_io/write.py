"""Writing an IR graph as an ONNX file: :func:`save_onnx` and its :class:`ModelWriter`.

The writer walks the IR in topological order and writes each op through
:data:`~bsnn_graph.onnx_io.exporters.EXPORTERS` (standard ops) or
:func:`~bsnn_graph.onnx_io.bsnn_domain.export_bsnn_node` (``ai.bsnn`` ops);
graph inputs and outputs and every intermediate tensor get a value_info with
the batch axis ``graph.graph["batch"]``. The model is checked with the ONNX
checker and written atomically, its weights inline or, beyond
:data:`EXTERNAL_DATA_BYTES`, in one external data file beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import ir
from .. import ops as O
from ..errors import ModelError
from ..fileutil import atomic_output
from .bsnn_domain import INPUT_SCALE_KEY, export_bsnn_node
from .exporters import EXPORTERS

__all__ = ["EXPORT_OPSET", "EXTERNAL_DATA_BYTES", "ModelWriter", "save_onnx"]

EXPORT_OPSET = 17
"""Default-domain opset written by :func:`save_onnx` (19 when a node needs it)."""

_EXPORT_IR_VERSION = 8  # the IR version of opset 17; onnxruntime reads it

#: initializer bytes above which save_onnx writes the weights to an external data file
EXTERNAL_DATA_BYTES = 1 << 30


class ModelWriter:
    """One export of one IR graph: the nodes and initializers written so far.

    Exporters call :meth:`constant` and :meth:`emit`; they may raise
    ``opset`` (e.g. to 19) and set ``uses_bsnn``.
    """

    def __init__(self, graph: nx.DiGraph):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.names = set(graph.nodes)
        self.opset = EXPORT_OPSET
        self.uses_bsnn = False
        batch = graph.graph.get("batch", "N")
        self.batch = batch if isinstance(batch, int) else str(batch)

    def constant(self, node: str, what: str, value: np.ndarray) -> str:
        """Add ``value`` as an initializer named ``<node>.<what>`` (made unique); return the name."""
        name = f"{node}.{what}"
        while name in self.names:
            name += "_"
        self.names.add(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def emit(self, name: str, op_type: str, inputs: list[str], **attrs) -> None:
        """Append a default-domain node ``name`` with one output, also called ``name``."""
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        """The float tensor type of IR node ``name``: the batch axis, then its per-sample shape."""
        shape = [self.batch] + list(ir.shape_of(self.graph, name))
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    def add(self, name: str, op: O.Op, inputs: list[str]) -> None:
        """Write the node(s) of IR node ``name``; ModelError if its op has no ONNX export."""
        if op.domain == O.BSNN_DOMAIN:
            export_bsnn_node(self, name, op, inputs)
            return
        export = EXPORTERS.get(type(op))
        if export is None:
            raise ModelError(f"node {name!r} ({op.op_type}): no ONNX export for this op")
        export(self, name, op, inputs)

    def build(self) -> onnx.ModelProto:
        """The ONNX model of the graph (nodes, value_info, opsets, metadata with ``Input.scale``)."""
        g = self.graph
        inputs = [self.value_info(name) for name in g.graph["inputs"]]
        for name in ir.topological_order(g):
            op = ir.op_of(g, name)
            if isinstance(op, O.Input):
                continue
            self.add(name, op, ir.inputs_of(g, name))
        outputs = [self.value_info(name) for name in g.graph["outputs"]]
        hidden = [
            self.value_info(n)
            for n in ir.topological_order(g)
            if n not in g.graph["outputs"] and not isinstance(ir.op_of(g, n), O.Input)
        ]
        graph_proto = helper.make_graph(
            self.nodes, str(g.graph.get("name") or "graph"), inputs, outputs, self.initializers, value_info=hidden
        )
        opsets = [helper.make_opsetid("", self.opset)]
        if self.uses_bsnn:
            opsets.append(helper.make_opsetid(O.BSNN_DOMAIN, 1))
        model = helper.make_model(graph_proto, opset_imports=opsets, producer_name="bsnn-graph")
        model.ir_version = _EXPORT_IR_VERSION if self.opset <= 17 else 9
        metadata = {str(k): str(v) for k, v in (g.graph.get("metadata") or {}).items()}
        for name in g.graph["inputs"]:
            scale = ir.op_of(g, name).scale
            if scale != 1.0:
                metadata[INPUT_SCALE_KEY + name] = repr(float(scale))
        helper.set_model_props(model, metadata)
        return model


def save_onnx(graph: nx.DiGraph, path: str | os.PathLike) -> None:
    """Write an IR graph as an ONNX model (atomically: a failed write leaves ``path`` untouched).

    Standard ops are written as opset-17 ONNX (opset 19 if an AveragePool is
    dilated), weights as initializers, the batch axis as ``graph.graph["batch"]``
    (a symbol name or a fixed size), a Reshape target as ``[0, *shape]``.
    Spiking ops become nodes of the ``ai.bsnn`` domain (version 1) carrying
    every dataclass field as an attribute (tuples as ints, bools as 0/1,
    arrays as tensors). ``graph.graph["metadata"]`` becomes metadata_props.

    Weights beyond :data:`EXTERNAL_DATA_BYTES` in all (protobuf cannot hold
    a message over 2 GiB) go to one external data file ``<name>.data``
    beside ``path`` (ONNX external data, location relative to the model;
    tensors under 1 KiB stay inline); :func:`~bsnn_graph.onnx_io.load_onnx`
    reads it back.

    Parameters
    ----------
    graph : the IR graph; it must pass :func:`bsnn_graph.ir.verify`.
    path : the output ``.onnx`` file.

    Raises
    ------
    ModelError
        An op has no ONNX export, or the model fails the ONNX checker.
    """
    ir.verify(graph)
    model = ModelWriter(graph).build()
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if weight_bytes <= EXTERNAL_DATA_BYTES:
        try:
            onnx.checker.check_model(model, full_check=False)
        except onnx.checker.ValidationError as exc:
            raise ModelError(f"{path}: exported model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
        with atomic_output(path) as tmp:
            onnx.save_model(model, str(tmp))
        return
    _save_with_external_data(model, Path(path))


def _save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Write ``path`` and its weights ``<path name>.data`` beside it (each file replaced atomically)."""
    location = f"{path.name}.data"
    with atomic_output(path) as tmp:  # checks the folder; the temporary name reserves the rename target
        staging = Path(tmp).parent / f".{path.name}.{os.getpid()}.staging"
        staging.mkdir()
        try:
            onnx.save_model(
                model,
                str(staging / path.name),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=location,
                size_threshold=1024,
            )
            try:
                onnx.checker.check_model(str(staging / path.name), full_check=False)
            except onnx.checker.ValidationError as exc:
                raise ModelError(f"{path}: exported model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
            os.replace(staging / location, path.parent / location)
            os.replace(staging / path.name, tmp)
        finally:
            for leftover in staging.iterdir():
                leftover.unlink()
            staging.rmdir()
