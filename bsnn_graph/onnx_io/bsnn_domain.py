"""What bsnn-graph adds to ONNX: the ``ai.bsnn`` spiking ops and the metadata key of ``Input.scale``.

A spiking op (:data:`bsnn_graph.ops.OP_CLASSES` of domain
:data:`~bsnn_graph.ops.BSNN_DOMAIN`) is one ONNX node of that domain whose
attributes are the op's dataclass fields, both directions generic over the
fields:

- :func:`export_bsnn_node`: tuples as INTS, bools as 0/1, arrays as tensors,
  None fields left out;
- :func:`import_bsnn_node`: the attributes decoded back to the fields' types,
  and checked, since a damaged or hand-edited file may carry anything (the
  mode one of :data:`~bsnn_graph.ops.MODES`, K in 1..16, a stage in 0..65535,
  lambdas positive and finite, ...). A ``Population`` written before
  ``initial_potential`` existed reads as ``"zero"`` (truncation, as it ran then).

``Input.scale`` (the input lambda) is not an op attribute in ONNX (the input
is a graph input): it travels as the metadata entry
``bsnn.input_scale.<input name>`` (:data:`INPUT_SCALE_KEY`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from .. import ops as O
from ..errors import ModelError
from .importers import tensor_input
from .values import Unsupported

if TYPE_CHECKING:
    from .load import ModelLoader
    from .write import ModelWriter

__all__ = ["INPUT_SCALE_KEY", "export_bsnn_node", "import_bsnn_node"]

INPUT_SCALE_KEY = "bsnn.input_scale."
"""Metadata key prefix that carries ``Input.scale`` (followed by the input's name)."""


# --------------------------------------------------------------------------- export


def _attribute(name: str, value) -> AttributeProto:
    """The ONNX attribute of one op field (arrays as tensors, bools as 0/1, tuples as INTS)."""
    if isinstance(value, np.ndarray):
        return helper.make_attribute(name, numpy_helper.from_array(value))
    if isinstance(value, bool):
        return helper.make_attribute(name, int(value))
    if isinstance(value, tuple):
        return helper.make_attribute(name, [int(v) for v in value], attr_type=AttributeProto.INTS)
    return helper.make_attribute(name, value)


def export_bsnn_node(writer: ModelWriter, name: str, op: O.Op, inputs: list[str]) -> None:
    """Write a spiking op as one ``ai.bsnn`` node carrying every non-None field as an attribute."""
    writer.uses_bsnn = True
    attrs = [_attribute(f.name, getattr(op, f.name)) for f in dataclasses.fields(op) if getattr(op, f.name) is not None]
    node = helper.make_node(op.op_type, inputs, [name], name=name, domain=O.BSNN_DOMAIN)
    node.attribute.extend(attrs)
    writer.nodes.append(node)


# --------------------------------------------------------------------------- import


def _field_default(f: dataclasses.Field):
    """The default of a dataclass field (None if it has none): it tells the type an attribute must have."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _decode(value, default, where: str):
    """An attribute value as the Python type of its field (tensor, bool, tuple of ints, str)."""
    if isinstance(value, TensorProto):
        return np.array(numpy_helper.to_array(value))
    if isinstance(default, np.ndarray) and isinstance(value, list):
        return np.asarray(value, np.float32)  # a tensor field given as FLOATS / INTS
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, tuple) or isinstance(value, list):
        return tuple(int(v) for v in value)
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise ModelError(f"{where} is not UTF-8 text") from None
    return value


def _check_field_type(name: str, value, default, where: str) -> None:
    """The value has the type of the op's field (a string, an integer, a number)."""
    if isinstance(default, str) and not isinstance(value, str):
        raise ModelError(f"{where} is {value!r}, expected a string")
    if isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int):
        raise ModelError(f"{where} is {value!r}, expected an integer")
    if isinstance(default, float) and not isinstance(value, (int, float)):
        raise ModelError(f"{where} is {value!r}, expected a number")


def _check_schedule_fields(name: str, value, default, where: str) -> None:
    """``mode`` is a known mode, ``phases`` (K) in 1..16, ``stage`` in 0..65535."""
    if name == "mode" and value not in O.MODES:
        raise ModelError(f"{where} is {value!r}, expected one of {', '.join(O.MODES)}")
    if name == "phases" and not 1 <= value <= 16:
        raise ModelError(f"{where} is {value}, expected K in 1..16")
    if name == "stage" and not 0 <= value < 2**16:
        raise ModelError(f"{where} is {value}, expected a stage in 0..65535")


def _check_value_kind(name: str, value, default, where: str) -> None:
    """Integers fit int32; values are numbers, strings or numeric tensors, as the field expects."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**31) <= value < 2**31:
        raise ModelError(f"{where} is {value}, out of the int32 range")
    if not isinstance(value, (str, int, float, tuple, np.ndarray)):
        raise ModelError(f"{where} is of ONNX type {type(value).__name__}, not a number, string or tensor")
    if isinstance(value, np.ndarray) and value.dtype.kind not in "biuf":
        raise ModelError(f"{where} is a tensor of {value.dtype}, expected numbers")
    if isinstance(default, np.ndarray) and not isinstance(value, (np.ndarray, int, float)):
        raise ModelError(f"{where} is {value!r}, expected a tensor or a number")


def _check_scale_and_ceiling(name: str, value, default, where: str) -> None:
    """``scale`` (lambda) positive and finite; ``scale`` / ``ceiling`` one value or one per channel."""
    if name == "scale" and isinstance(value, (int, float)) and not (math.isfinite(value) and value > 0):
        raise ModelError(f"{where} is {value}, expected a positive finite lambda")
    if name in ("scale", "ceiling") and isinstance(value, np.ndarray) and (value.ndim > 1 or value.size == 0):
        raise ModelError(f"{where} has shape {value.shape}, expected one value or one per channel")
    if name == "scale" and isinstance(value, np.ndarray) and not np.all(np.isfinite(value) & (value > 0)):
        raise ModelError(f"{where} holds {value.reshape(-1)[:4].tolist()}..., expected positive finite lambdas")


def _check_initial_potential(name: str, value, default, where: str) -> None:
    """``initial_potential`` is one of :data:`~bsnn_graph.ops.INITIAL_POTENTIALS`."""
    if name == "initial_potential" and value not in O.INITIAL_POTENTIALS:
        raise ModelError(f"{where} is {value!r}, expected one of {', '.join(O.INITIAL_POTENTIALS)}")


_ATTRIBUTE_CHECKS = (
    _check_field_type,
    _check_schedule_fields,
    _check_value_kind,
    _check_scale_and_ceiling,
    _check_initial_potential,
)
"""The checks of one decoded attribute, in the order they run (the first that fails names the problem)."""


def import_bsnn_node(loader: ModelLoader, node, attrs: dict, ins: list) -> tuple[O.Op, list[str]]:
    """An ``ai.bsnn`` node as its spiking op: every attribute decoded to its field and checked.

    Raises
    ------
    Unsupported
        The op type is not one of the ``ai.bsnn`` ops.
    ModelError
        An attribute the op does not have, or one of the wrong type or out of range.
    """
    cls = O.OP_CLASSES.get((O.BSNN_DOMAIN, node.op_type))
    if cls is None:
        raise Unsupported(f"{O.BSNN_DOMAIN}:{node.op_type}")
    kwargs = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in attrs.items():
        if name not in known:
            raise ModelError(f"node {loader.key_hint(node)!r} ({node.op_type}): unknown attribute {name!r}")
        default = _field_default(known[name])
        where = f"node {loader.key_hint(node)!r} ({node.op_type}): attribute {name!r}"
        value = _decode(value, default, where)
        for check in _ATTRIBUTE_CHECKS:
            check(name, value, default, where)
        kwargs[name] = value
    if issubclass(cls, O.Population) and "initial_potential" not in kwargs:
        kwargs["initial_potential"] = "zero"  # converted before the attribute existed: truncation, as it ran then
    tensors = [tensor_input(v, f"{node.op_type} input") for v in ins]
    return cls(**kwargs), [t.key for t in tensors]
