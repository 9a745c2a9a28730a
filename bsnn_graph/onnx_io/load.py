"""Building the IR graph from a ``ModelProto``: :func:`load_onnx` and its :class:`ModelLoader`.

The stages of :meth:`ModelLoader.run`, in order:

1. the default-domain opset must be in ``MIN_OPSET`` .. the newest onnx knows;
2. ONNX shape inference (its shapes are cross-checked against the IR's shape
   rules node by node; a node with the wrong number of inputs is named);
3. initializers become numpy constants, graph inputs ``Input`` nodes (FLOAT,
   only the batch axis symbolic, one batch dimension for all);
4. the nodes are sorted topologically (dangling edges and cycles reported) and
   keyed (ONNX node name when non-empty and unique, else the output name);
5. each node is folded (:mod:`~bsnn_graph.onnx_io.fold`, when all its inputs
   are constant), or converted (:data:`~bsnn_graph.onnx_io.importers.IMPORTERS`,
   :func:`~bsnn_graph.onnx_io.bsnn_domain.import_bsnn_node`) into one IR node;
   an unsupported node is recorded, and the nodes behind it are tried with
   ONNX-inferred shapes so that one error lists every unsupported op;
6. the graph outputs are set, nodes that feed no output removed, the
   metadata read (``Input.scale`` restored) and :func:`bsnn_graph.ir.verify` run.
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .. import ir
from .. import ops as O
from ..errors import BsnnError, ModelError
from .bsnn_domain import INPUT_SCALE_KEY, import_bsnn_node
from .fold import FOLDABLE, fold
from .importers import IMPORTERS
from .read import read_model
from .values import (
    BATCH,
    DEFAULT_DOMAINS,
    BatchSize,
    Tensor,
    Unsupported,
    node_attributes,
)

__all__ = ["MIN_OPSET", "ModelLoader", "load_onnx"]

MIN_OPSET = 6
"""Oldest default-domain opset read (opsets 6-8 with their legacy attributes)."""


def load_onnx(path: str | os.PathLike) -> nx.DiGraph:
    """Read an ONNX model into an IR graph.

    Parameters
    ----------
    path : the ``.onnx`` file (opset 6 up to the newest the installed onnx knows).

    Returns
    -------
    networkx.DiGraph
        The IR graph (see :mod:`bsnn_graph.ir`); it passes :func:`bsnn_graph.ir.verify`.

    Raises
    ------
    ModelError
        The file is missing, not ONNX, truncated or inconsistent (dangling
        edges, shapes that disagree), or uses unsupported ops (all listed in
        one message).
    """
    path = Path(path)
    model = read_model(path)
    return ModelLoader(path, model).run()


def _source_module(node: onnx.NodeProto) -> str | None:
    """The module the exporter recorded for ``node`` (``features.1 (BatchNorm2d)``), or None.

    PyTorch's dynamo exporter stores ``pkg.torch.onnx.name_scopes`` and
    ``pkg.torch.onnx.class_hierarchy`` in the node's metadata.
    """
    props = {p.key: p.value for p in getattr(node, "metadata_props", ())}
    try:
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        classes = ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(scopes, list) or not isinstance(classes, list):
        return None
    pairs = [
        (str(scope), str(cls).rsplit(".", 1)[-1])
        for scope, cls in zip(scopes, classes)
        if scope and not str(cls).startswith("aten.")
    ]
    return f"{pairs[-1][0]} ({pairs[-1][1]})" if pairs else None


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message ('' if it has none)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""


class ModelLoader:
    """One load of one model: the IR graph under construction and what the converters need.

    The converters of :mod:`~bsnn_graph.onnx_io.importers` read ``opset``
    (default domain), ``batch_value`` (the batch size, an int or
    :data:`~bsnn_graph.onnx_io.values.BATCH`), ``current_key`` (the IR key of
    the node being converted) and call :meth:`outputs_used`,
    :meth:`add_helper` and :meth:`key_hint`.
    """

    def __init__(self, path: Path, model: onnx.ModelProto):
        self.path = path
        self.model = model
        self.graph_proto = model.graph
        self.opset = 1
        self.bsnn_opset = None
        for entry in model.opset_import:
            if entry.domain in DEFAULT_DOMAINS:
                self.opset = int(entry.version)
            elif entry.domain == O.BSNN_DOMAIN:
                self.bsnn_opset = int(entry.version)
        self.graph = ir.new_graph(name=model.graph.name or path.stem, opset=self.opset)
        self.values: dict[str, object] = {}  # tensor name -> Tensor | ndarray
        self.poisoned: set[str] = set()  # tensors behind an unsupported op
        self.unsupported: dict[str, list[str]] = defaultdict(list)
        self.consumed = {i for n in model.graph.node for i in n.input if i}
        self.consumed |= {o.name for o in model.graph.output}
        self.tensor_of_key: dict[str, str] = {}
        self.batch_value = BATCH
        self.current_key = ""  # IR key of the node being converted (names the extra node of add_helper)
        self.inferred: dict[str, list] = {}  # tensor name -> ONNX-inferred shape (None for unknown axes)
        # onnx shape inference before opset 22 counts a ceil-mode pooling window
        # that starts in the end padding (onnxruntime and the spec drop it): no
        # cross-check for such pools and what follows them
        self.unchecked: set[str] = set()

    # ------------------------------------------------------------------ used by the converters

    def outputs_used(self, node: onnx.NodeProto, first: int) -> bool:
        """Whether any output of ``node`` from position ``first`` on is read by a node or the graph."""
        return any(name and name in self.consumed for name in node.output[first:])

    def add_helper(self, name: str, op: O.Op, inputs: list[str]) -> str:
        """Add an extra IR node for an ONNX node that maps to two IR nodes; returns its key."""
        key = ir.unique_name(self.graph, name)
        try:
            return ir.add_node(self.graph, key, op, inputs)
        except BsnnError as exc:
            raise self.fail(str(exc)) from None
        except Exception as exc:  # noqa: BLE001  (as in _add_ir)
            raise self.fail(f"node {name!r} ({op.op_type}): cannot infer its output shape ({exc})") from None

    def key_hint(self, node: onnx.NodeProto) -> str:
        """The name a message gives ``node``: its name, else its first output, else its op type."""
        return node.name or (node.output[0] if node.output else node.op_type)

    # ------------------------------------------------------------------ messages

    def _shape_text(self, tensor: str) -> str:
        value = self.values.get(tensor)
        if isinstance(value, Tensor):
            return str(("N",) + tuple(value.shape)).replace("'", "")
        if isinstance(value, np.ndarray):
            return f"constant {tuple(value.shape)}"
        inferred = self.inferred.get(tensor)
        return str(tuple("?" if d is None else d for d in inferred)).replace("'", "") if inferred else "?"

    def describe(self, node: onnx.NodeProto) -> str:
        """``node 'n4' (Mul, inputs (N, 8, 4, 4) x (N, 8, 4, 4) -> (N, 8, 4, 4), module features.2 (SiLU))``."""
        ins = " x ".join(self._shape_text(i) for i in node.input if i) or "none"
        outs = ", ".join(self._shape_text(o) for o in node.output if o) or "none"
        where = _source_module(node)
        return (
            f"node {self.key_hint(node)!r} ({node.op_type}, inputs {ins} -> {outs}"
            + (f", module {where}" if where else "")
            + ")"
        )

    def where(self, node: onnx.NodeProto, name: str) -> str:
        """A node's name for the list of unsupported ops, with the module the exporter recorded."""
        module = _source_module(node)
        return f"{name} in {module}" if module else name

    def fail(self, message: str) -> ModelError:
        """A ModelError whose message starts with the model's path."""
        return ModelError(f"{self.path}: {message}")

    # ------------------------------------------------------------------ the stages

    def run(self) -> nx.DiGraph:
        """The IR graph of the model (the stages of the module docstring)."""
        if self.opset < MIN_OPSET:
            raise self.fail(f"unsupported opset {self.opset} (oldest supported: {MIN_OPSET})")
        if self.opset > onnx.defs.onnx_opset_version():
            raise self.fail(f"unsupported opset {self.opset} (newer than onnx {onnx.__version__} knows)")
        self.inferred = self._shape_inference()
        self._read_initializers()
        self._read_inputs()
        nodes = self._sorted_nodes()
        keys = self._node_keys(nodes)
        for node in nodes:
            self._add(node, keys)
        if self.unsupported:
            listing = ", ".join(
                f"{label} (node{'s' if len(names) > 1 else ''} {', '.join(names)})"
                for label, names in self.unsupported.items()
            )
            raise self.fail(f"unsupported ops: {listing}")
        self._set_outputs()
        self._read_metadata()
        try:
            ir.verify(self.graph)
        except BsnnError as exc:
            raise self.fail(str(exc)) from None
        return self.graph

    def _shape_inference(self) -> dict[str, list]:
        """Tensor name -> shape from ONNX shape inference (None for an axis it leaves unknown)."""
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False, data_prop=True)
        except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as exc:
            for node in self.graph_proto.node:  # a clearer message than shape inference's, if it applies
                problem = self._arity_problem(node)
                if problem:
                    raise self.fail(f"{self.describe(node)}: {problem}") from None
            raise self.fail(f"ONNX shape inference failed: {str(exc).strip().splitlines()[-1]}") from None
        shapes = {}
        g = inferred.graph
        for info in list(g.value_info) + list(g.output):
            t = info.type.tensor_type
            if t.HasField("shape"):
                shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        return shapes

    def _read_initializers(self) -> None:
        for tensor in self.graph_proto.initializer:
            self.values[tensor.name] = self._decode(tensor, tensor.name)
        for sparse in self.graph_proto.sparse_initializer:
            self.values[sparse.values.name] = self._decode(sparse, sparse.values.name)

    def _decode(self, tensor, name: str) -> np.ndarray:
        """An initializer as an ndarray; a ModelError naming it if its data does not fit its dims or type."""
        proto = tensor.values if isinstance(tensor, onnx.SparseTensorProto) else tensor
        dims = tuple(int(d) for d in tensor.dims)
        try:
            dtype = TensorProto.DataType.Name(proto.data_type)
        except ValueError:
            raise self.fail(f"initializer {name!r}: unknown element type {proto.data_type}") from None
        try:
            return np.array(numpy_helper.to_array(tensor))
        except Exception as exc:  # ValueError, TypeError, KeyError of a damaged tensor  # noqa: BLE001
            stored = f"{len(proto.raw_data)} bytes of raw data" if proto.HasField("raw_data") else "its typed data"
            detail = _first_line(exc) or exc  # quoted: the first line's repr, or the exception's
            raise self.fail(
                f"initializer {name!r} ({dtype}, dims {dims}): {stored} cannot be read as {dtype} of these dims "
                f"({type(exc).__name__}: {detail!r})"
            ) from None

    def _read_inputs(self) -> None:
        """An ``Input`` node per graph input (initializers listed as inputs excepted); the batch dimension."""
        batches = {}
        for info in self.graph_proto.input:
            if info.name in self.values:
                continue  # an initializer listed as an input (old exporters): a constant
            batches[info.name] = self._read_input(info)
        if not batches:
            raise self.fail("model has no graph inputs")
        if len(set(batches.values())) > 1:
            listing = ", ".join(f"{k}: {v}" for k, v in batches.items())
            raise self.fail(f"unsupported: graph inputs have different batch dimensions ({listing})")
        batch = next(iter(batches.values()))
        self.graph.graph["batch"] = batch
        self.batch_value = batch if isinstance(batch, int) else BATCH

    def _read_input(self, info: onnx.ValueInfoProto) -> int | str:
        """Add the ``Input`` node of one graph input; return its batch dimension (a size or a symbol)."""
        t = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not t.HasField("shape"):
            raise self.fail(f"graph input {info.name!r} has no tensor shape")
        if t.elem_type != TensorProto.FLOAT:
            dtype = TensorProto.DataType.Name(t.elem_type)
            raise self.fail(f"unsupported graph input {info.name!r} of element type {dtype} (only FLOAT)")
        dims = list(t.shape.dim)
        if not dims:
            raise self.fail(f"unsupported graph input {info.name!r}: a scalar has no batch axis")
        first = dims[0]
        batch = first.dim_value if first.HasField("dim_value") else (first.dim_param or "N")
        shape = []
        for axis, d in enumerate(dims[1:], start=1):
            if not d.HasField("dim_value"):
                raise self.fail(
                    f"unsupported graph input {info.name!r}: axis {axis} is symbolic "
                    f"({d.dim_param or '?'}); only the batch axis may be"
                )
            shape.append(int(d.dim_value))
        self._add_ir(info.name, O.Input(shape=tuple(shape)), [], "Input", info.name)
        return batch

    def _check_edges(self, nodes: list[onnx.NodeProto], producer: dict[str, int]) -> None:
        """Every node input and graph output is produced by a node, a graph input or an initializer."""
        known = set(self.values) | set(self.graph)
        for node in nodes:
            for name in node.input:
                if name and name not in producer and name not in known:
                    raise self.fail(
                        f"dangling edge: input {name!r} of node {self.key_hint(node)!r} ({node.op_type}) "
                        "is produced by no node and is not a graph input or initializer"
                    )
        for out in self.graph_proto.output:
            if out.name not in producer and out.name not in known:
                raise self.fail(f"dangling edge: graph output {out.name!r} is produced by no node")

    def _sorted_nodes(self) -> list[onnx.NodeProto]:
        """The nodes in a topological order (the smallest file position first among the ready ones)."""
        nodes = list(self.graph_proto.node)
        producer = {}
        for i, node in enumerate(nodes):
            for out in node.output:
                if out:
                    producer[out] = i
        self._check_edges(nodes, producer)
        deps = nx.DiGraph()
        deps.add_nodes_from(range(len(nodes)))
        for i, node in enumerate(nodes):
            for name in node.input:
                if name in producer:
                    deps.add_edge(producer[name], i)
        if not nx.is_directed_acyclic_graph(deps):
            raise self.fail("the ONNX graph has a cycle")
        return [nodes[i] for i in nx.lexicographical_topological_sort(deps)]

    def _node_keys(self, nodes) -> dict[int, str]:
        """``id(node)`` -> IR key: the node name when non-empty and unique, else its first output name."""
        counts = defaultdict(int)
        for node in nodes:
            if node.name:
                counts[node.name] += 1
        taken = set(self.graph.nodes)
        outputs = {o for node in nodes for o in node.output if o}
        keys = {}
        for node in nodes:
            if not node.output or not node.output[0]:
                continue
            name = node.name
            if name and counts[name] == 1 and name not in taken and (name not in outputs or name == node.output[0]):
                key = name
            else:
                key = node.output[0]
            if key in taken:
                key = ir.unique_name(self.graph, key)
                while key in taken:
                    key = key + "_"
            taken.add(key)
            keys[id(node)] = key
        return keys

    def _add_ir(self, key: str, op: O.Op, inputs: list[str], op_type: str, tensor: str) -> None:
        """Add the IR node ``key`` computing ONNX tensor ``tensor``; cross-check its shape with ONNX's."""
        try:
            ir.add_node(self.graph, key, op, inputs)
        except BsnnError as exc:
            raise self.fail(str(exc)) from None
        except Exception as exc:  # attributes the op's shape rule cannot use (zero strides, short lists)  # noqa: BLE001
            shapes = " x ".join(str(("N",) + tuple(ir.shape_of(self.graph, i))).replace("'", "") for i in inputs)
            raise self.fail(
                f"node {key!r} ({op_type}, inputs {shapes or 'none'}): cannot infer its output shape "
                f"({type(exc).__name__}: {exc})"
            ) from None
        shape = ir.shape_of(self.graph, key)
        self.values[tensor] = Tensor(key, shape)
        self.tensor_of_key[key] = tensor
        expected = self.inferred.get(tensor)
        if tensor in self.unchecked:
            expected = None
        if expected is not None and op_type != "Input":
            ours = [None] + list(shape)
            if len(expected) != len(ours) or any(
                e is not None and e != 0 and e != o for e, o in zip(expected[1:], ours[1:])
            ):
                raise self.fail(
                    f"node {key!r} ({op_type}): shape {tuple(shape)} per sample disagrees with ONNX shape "
                    f"inference ({['N' if e is None else e for e in expected]})"
                )

    def _arity_problem(self, node: onnx.NodeProto) -> str | None:
        """What is wrong with the number of inputs / outputs of a default-domain node, or None."""
        if node.domain not in DEFAULT_DOMAINS or not onnx.defs.has(node.op_type):
            return None
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset)
        except Exception:  # noqa: BLE001  (no version of the op at this opset)
            return f"no {node.op_type} in opset {self.opset}"
        given = len(node.input)
        while given and not node.input[given - 1]:
            given -= 1
        if not schema.min_input <= given <= schema.max_input:
            return f"{given} inputs, {node.op_type} takes {schema.min_input}..{schema.max_input}"
        if len(node.output) < schema.min_output or not node.output[0]:
            return f"{len(node.output)} outputs, {node.op_type} has at least {max(schema.min_output, 1)}"
        return None

    # ------------------------------------------------------------------ one node

    def _add(self, node: onnx.NodeProto, keys: dict[int, str]) -> None:
        """Fold, convert or record as unsupported one ONNX node."""
        label = node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}:{node.op_type}"
        name = self.key_hint(node)
        problem = self._arity_problem(node)
        if problem:
            raise self.fail(f"{self.describe(node)}: {problem}")
        if any(i in self.poisoned for i in node.input if i):
            self._dry_run(node, label, name)
            return
        ins = [self.values[i] if i else None for i in node.input]
        try:
            attrs = node_attributes(node)
        except Exception as exc:  # an attribute of undefined or mismatched type  # noqa: BLE001
            raise self.fail(f"{self.describe(node)}: unreadable attribute ({type(exc).__name__}: {exc})") from None
        ceil_pool = node.op_type in ("MaxPool", "AveragePool") and attrs.get("ceil_mode", 0) and self.opset < 22
        if ceil_pool or any(i in self.unchecked for i in node.input):
            self.unchecked.update(o for o in node.output if o)
        try:
            converted = self._convert(node, attrs, ins, keys, label)
        except Unsupported as exc:
            self.unsupported[exc.label].append(self.where(node, name))
            self.poisoned.update(o for o in node.output if o)
            return
        except ModelError as exc:
            message = str(exc)
            raise (exc if message.startswith(f"{self.path}:") else self.fail(message)) from None
        except Exception as exc:  # a damaged node: wrong attribute types, arities, values  # noqa: BLE001
            detail = _first_line(exc)
            raise self.fail(f"{self.describe(node)}: cannot read it ({type(exc).__name__}: {detail})") from None
        if converted is not None:
            op, data_inputs = converted
            self._add_ir(keys[id(node)], op, data_inputs, node.op_type, node.output[0])

    def _convert(self, node, attrs, ins, keys, label) -> tuple[O.Op, list[str]] | None:
        """``(op, data_inputs)`` of a node, or None when it was folded to a constant."""
        if node.domain == O.BSNN_DOMAIN:
            return import_bsnn_node(self, node, attrs, ins)
        if node.domain not in DEFAULT_DOMAINS:
            raise Unsupported(label)
        if node.op_type in FOLDABLE and not any(isinstance(v, Tensor) for v in ins):
            self._fold(node, attrs, ins)
            return None
        if node.op_type == "Shape":
            self._shape_of_tensor(node, attrs, ins[0])
            return None
        if node.op_type not in IMPORTERS:
            raise Unsupported(label)
        self.current_key = keys[id(node)]
        return IMPORTERS[node.op_type](self, node, attrs, ins)

    def _fold(self, node, attrs, ins) -> None:
        """Store the folded value of a node whose inputs are all constant."""
        try:
            value = fold(node.op_type, attrs, ins, self.opset)
        except Unsupported:
            raise
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise Unsupported(f"{node.op_type} computing a shape from the batch size ({exc})") from None
        self.values[node.output[0]] = np.asarray(value) if not isinstance(value, np.ndarray) else value
        for extra in node.output[1:]:
            if extra and extra in self.consumed:
                raise Unsupported(f"{node.op_type} with several outputs on constants")

    def _shape_of_tensor(self, node, attrs, x: Tensor) -> None:
        """``Shape`` of a data tensor: a constant vector, the batch size as :data:`BATCH` if symbolic."""
        full = np.array([self.batch_value] + list(x.shape), dtype=object)
        start, end = attrs.get("start", 0), attrs.get("end", None)
        value = full[start:end]
        if all(not isinstance(v, BatchSize) for v in value):
            value = value.astype(np.int64)
        self.values[node.output[0]] = value

    def _stand_in_inputs(self, node: onnx.NodeProto) -> list:
        """The inputs of a node behind an unsupported op, its ONNX-inferred shapes standing in for them."""
        ins = []
        for i in node.input:
            value = self.values.get(i) if i else None
            if value is None and i:
                inferred = self.inferred.get(i)
                if not inferred or any(d is None or d <= 0 for d in inferred[1:]):
                    value = None
                else:
                    value = Tensor("?", tuple(int(d) for d in inferred[1:]))
            ins.append(value)
        return ins

    def _dry_run(self, node: onnx.NodeProto, label: str, name: str) -> None:
        """A node behind an unsupported op: list it too if it is unsupported in itself."""
        ins = self._stand_in_inputs(node)
        default_domain = node.domain in DEFAULT_DOMAINS
        if default_domain:
            known = node.op_type in IMPORTERS or node.op_type in FOLDABLE or node.op_type == "Shape"
        else:
            known = (node.domain, node.op_type) in O.OP_CLASSES
        unsupported = None
        if not known:
            unsupported = label
        elif default_domain and node.op_type in FOLDABLE and node.op_type not in IMPORTERS:
            unsupported = label  # folds constants only, and its input is computed from the data
        elif default_domain and node.op_type in IMPORTERS and all(v is not None for v, i in zip(ins, node.input) if i):
            try:
                self.current_key = "?"
                IMPORTERS[node.op_type](self, node, node_attributes(node), ins)
            except Unsupported as exc:
                unsupported = exc.label
            except Exception:  # noqa: BLE001, S110  (the model fails anyway; only unsupported ops are listed)
                pass
        if unsupported is not None:
            self.unsupported[unsupported].append(self.where(node, name))
        self.poisoned.update(o for o in node.output if o)

    # ------------------------------------------------------------------ the end

    def _set_outputs(self) -> None:
        """The graph outputs (computed tensors, each listed once); drop nodes that feed none of them."""
        outputs = []
        names = [info.name for info in self.graph_proto.output]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise self.fail(f"graph output {twice[0]!r} is listed more than once")
        for info in self.graph_proto.output:
            value = self.values.get(info.name)
            if not isinstance(value, Tensor):
                raise self.fail(f"unsupported: graph output {info.name!r} is a constant, not computed from the input")
            outputs.append(value.key)
        if not outputs:
            raise self.fail("model has no graph outputs")
        self.graph.graph["outputs"] = outputs
        live = set(outputs) | set(self.graph.graph["inputs"])
        for out in outputs:
            live |= nx.ancestors(self.graph, out)
        self.graph.remove_nodes_from([n for n in list(self.graph.nodes) if n not in live])

    def _read_metadata(self) -> None:
        """``metadata_props`` into ``graph.graph["metadata"]``; ``bsnn.input_scale.*`` into ``Input.scale``."""
        metadata = {}
        for prop in self.model.metadata_props:
            if prop.key.startswith(INPUT_SCALE_KEY):
                name = prop.key[len(INPUT_SCALE_KEY) :]
                if name in self.graph and isinstance(ir.op_of(self.graph, name), O.Input):
                    ir.op_of(self.graph, name).scale = float(prop.value)
                    continue
            metadata[prop.key] = prop.value
        self.graph.graph["metadata"] = metadata
