"""Reading an ONNX file into a ``ModelProto``, with the checks that name what is wrong with it.

:func:`read_model` is the first stage of :func:`~bsnn_graph.onnx_io.load_onnx`:

- the path must be a readable file;
- the bytes are walked at the protobuf wire level (:func:`wire_problem`) before
  they are parsed, so a file that is not ONNX, or that was cut short, is
  reported as such rather than as a protobuf decode error;
- every string field must be UTF-8 text (a bit flip decodes as bytes);
- weights stored as ONNX external data must lie beside the model; they are
  loaded into the model.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from ..errors import ModelError

__all__ = ["read_model", "wire_problem"]


def read_model(path: Path) -> onnx.ModelProto:
    """The model in ``path``, its external weights loaded.

    Raises
    ------
    ModelError
        ``path`` is missing, a folder or unreadable, is not ONNX or was cut
        short, holds a name that is not UTF-8, or its external weights are
        missing or unreadable.
    """
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None
    problem = wire_problem(data)
    if problem:
        raise ModelError(f"{path}: {problem}")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    bad = _non_text_name(model)
    if bad:
        raise ModelError(f"{path}: damaged ONNX file: {bad} is not UTF-8 text")
    _load_external_data(model, path)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Load the initializers stored in external files beside ``path`` into ``model``."""
    external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if not external:
        return
    for tensor in external:
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        where = path.parent / location
        if not location or not where.is_file():
            raise ModelError(
                f"{path}: weights of initializer {tensor.name!r} are stored in the external file "
                f"{location or '(no location given)'!r}, which is not beside the model "
                f"(copy {path.name}.data or the exporter's data file along with {path.name})"
            )
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # OSError, ValueError, onnx.checker.ValidationError  # noqa: BLE001
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: cannot load external weight data ({message})") from None


# --------------------------------------------------------------------------- the wire-level check


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The protobuf varint at ``data[pos:]`` and the position after it (EOFError if cut short)."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise EOFError
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _model_wire_types() -> dict[int, int]:
    """Field number -> protobuf wire type of the fields of ``ModelProto`` (0 varint, 2 length-delimited)."""
    wire_types = {}
    for f in onnx.ModelProto.DESCRIPTOR.fields:
        varint = f.type in (f.TYPE_INT64, f.TYPE_INT32, f.TYPE_UINT64, f.TYPE_BOOL, f.TYPE_ENUM)
        wire_types[f.number] = 0 if varint else 2  # ModelProto has no repeated scalar fields
    return wire_types


def _top_level_fields(data: bytes) -> tuple[set[int], str | None]:
    """The field numbers at the top level of ``data``, and what is wrong with it (None if nothing)."""
    wire_types = _model_wire_types()
    seen, pos = set(), 0
    try:
        while pos < len(data):
            tag, pos = _read_varint(data, pos)
            number, wire = tag >> 3, tag & 7
            expected = wire_types.get(number)
            if expected is None and 0 < number < 64 and wire in (0, 1, 2, 5):
                expected = wire  # a field of a newer ModelProto
            if expected != wire:
                return seen, "not an ONNX model"
            if wire == 0:
                _, pos = _read_varint(data, pos)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
                if pos > len(data):
                    raise EOFError
            else:
                length, pos = _read_varint(data, pos)
                if pos + length > len(data):
                    return seen, f"truncated ONNX file (a field of {length} bytes ends past the end of the file)"
                pos += length
            seen.add(number)
    except EOFError:
        return seen, "truncated ONNX file (it ends inside a field)"
    except ValueError:
        return seen, "not an ONNX model"
    return seen, None


def wire_problem(data: bytes) -> str | None:
    """Walk the top level of a serialised ModelProto; say what is wrong, or None.

    Parameters
    ----------
    data : the bytes of the file.

    Returns
    -------
    str or None
        ``"empty file, not an ONNX model"``, ``"not an ONNX model"``,
        ``"truncated ONNX file (...)"``, ... or None for a well-formed model
        (one with an IR version, a graph and an opset_import).
    """
    if not data:
        return "empty file, not an ONNX model"
    seen, problem = _top_level_fields(data)
    if problem:
        return problem
    if 7 not in seen or 1 not in seen:
        return "not an ONNX model (no graph or no IR version)"
    if 8 not in seen:
        return "truncated or invalid ONNX file (no opset_import)"
    return None


def _non_text_name(model: onnx.ModelProto) -> str | None:
    """Where a string field of the model decoded as bytes (invalid UTF-8, e.g. a bit flip), or None."""
    graph = model.graph
    fields = [("graph name", graph.name)]
    fields += [(f"metadata key {p.key!r}", p.key) for p in model.metadata_props]
    fields += [(f"metadata value of {p.key!r}", p.value) for p in model.metadata_props]
    fields += [("opset domain", o.domain) for o in model.opset_import]
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        fields.append(("a value name", info.name))
    fields += [("an initializer name", t.name) for t in graph.initializer]
    for node in graph.node:
        fields += [("a node name", node.name), ("an op type", node.op_type), ("a node domain", node.domain)]
        fields += [("an edge name", name) for name in list(node.input) + list(node.output)]
        fields += [("an attribute name", a.name) for a in node.attribute]
    for what, value in fields:
        if not isinstance(value, str):
            return what
    return None
