"""Errors a user can cause. Their messages are one line that names the file,
node, op or shape at fault; the CLI prints them without a traceback."""

__all__ = ["BsnnError", "ConversionError", "DataError", "ModelError", "TraceError"]


class BsnnError(Exception):
    """Base class of errors caused by user input (bad file, unsupported op, wrong shape)."""


class ModelError(BsnnError):
    """A model file is not ONNX, is truncated or inconsistent, or uses unsupported ops."""


class ConversionError(BsnnError):
    """A conversion pass cannot apply to the graph (names the pass, node and op)."""


class DataError(BsnnError, ValueError):
    """A data file (npz or IDX) or an array cannot be read or does not fit the model.

    Also a ``ValueError``, so code that caught the executor's former
    ``ValueError`` for a wrong input shape still does.
    """


class TraceError(BsnnError):
    """An HDF5 trace file is missing, malformed or of an unknown format version."""
