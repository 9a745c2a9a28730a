"""What flows between the ONNX nodes while a model is loaded, and readers of node attributes.

While :func:`~bsnn_graph.onnx_io.load_onnx` walks the nodes, every tensor name
maps to one of:

- a :class:`Tensor`: computed from the graph input, i.e. the output of an IR node;
- a numpy array: a constant (an initializer, or a subgraph folded by
  :mod:`~bsnn_graph.onnx_io.fold`); a folded shape vector may hold
  :data:`BATCH`, the symbolic batch size, as an ``object`` element;
- None, for an absent optional input.

A converter that meets a use of an op the IR cannot express raises
:class:`Unsupported`; the loader collects them all into one ModelError.
"""

from __future__ import annotations

import dataclasses

import onnx
from onnx import helper

__all__ = [
    "BATCH",
    "DEFAULT_DOMAINS",
    "BatchSize",
    "Tensor",
    "Unsupported",
    "absolute_axes",
    "as_text",
    "node_attributes",
    "optional_input",
]

DEFAULT_DOMAINS = ("", "ai.onnx")
"""The domain names of the standard ONNX ops."""


class Unsupported(Exception):
    """Raised by a converter or fold rule: this use of the op is not supported (``label`` names it)."""

    def __init__(self, label: str):
        super().__init__(label)
        self.label = label


class BatchSize:
    """The batch size of a model whose batch axis is symbolic (appears in folded shape vectors)."""

    def __repr__(self) -> str:
        return "N"


BATCH = BatchSize()
"""The one symbolic batch size (``Shape(x)[0]`` of a data tensor ``x`` whose batch axis is symbolic)."""


@dataclasses.dataclass
class Tensor:
    """A tensor computed from the graph input."""

    key: str  # IR node computing this tensor
    shape: tuple[int, ...]  # per sample


def node_attributes(node: onnx.NodeProto) -> dict[str, object]:
    """The attributes of ``node`` as Python values (name -> value)."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def as_text(value) -> str:
    """A string attribute (bytes in the protobuf) as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def absolute_axes(axes, rank: int) -> list[int]:
    """Axes with negative ones counted from the end of a rank-``rank`` tensor."""
    return [int(a) + rank if int(a) < 0 else int(a) for a in axes]


def optional_input(values: list, i: int):
    """Input ``i`` of a node, or None when the node has fewer inputs."""
    return values[i] if i < len(values) else None
