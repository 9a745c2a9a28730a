"""The one registry style of the ONNX layer: a dict filled by a decorator.

Three tables use it: :data:`~bsnn_graph.onnx_io.fold.FOLD_RULES` (ONNX op type
-> constant-folding rule), :data:`~bsnn_graph.onnx_io.importers.IMPORTERS`
(ONNX op type -> converter to an IR op) and
:data:`~bsnn_graph.onnx_io.exporters.EXPORTERS` (IR op class -> writer of ONNX
nodes)::

    IMPORTERS: dict[str, Callable] = {}
    importer = registrar(IMPORTERS, "importer")

    @importer("Sub", "Mul", "Div")
    def import_constant_binary(loader, node, attrs, ins): ...
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

__all__ = ["registrar"]


def registrar(table: dict, what: str) -> Callable:
    """A decorator factory that files a function in ``table`` under each key it is given.

    Parameters
    ----------
    table : the dict to fill (key -> function).
    what : what a function of this table is, for the error on a key registered twice.

    Returns
    -------
    callable
        ``register(*keys)``, a decorator that stores the decorated function under
        every key and returns it unchanged.
    """

    def register(*keys: Hashable) -> Callable:
        def store(function: Callable) -> Callable:
            for key in keys:
                if key in table:
                    raise ValueError(f"two {what}s for {key!r}: {table[key].__name__} and {function.__name__}")
                table[key] = function
            return function

        return store

    return register
