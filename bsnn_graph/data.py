"""Input data for calibration and evaluation: ``.npz`` files and MNIST-style IDX files.

- ``.npz``: array ``x`` (images) and optional ``y`` (integer labels).
- IDX (``.gz`` or raw): the images file, e.g. ``t10k-images-idx3-ubyte.gz``;
  labels are read from the matching ``*-labels-idx1-ubyte[.gz]`` beside it
  when present.

uint8 images are scaled by 1/255 (override with ``input_scale``); float
images are used as they are unless ``input_scale`` is given. A missing
channel axis is added: (N, H, W) becomes (N, 1, H, W).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["fit_to_input", "iterate_batches", "load_dataset", "read_idx"]

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an ndarray."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - header < count * dtype.itemsize:
        raise DataError(f"{path}: truncated IDX data: expected {count * dtype.itemsize} bytes for shape {dims}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _labels_beside(path: Path) -> Path | None:
    name = path.name
    for images, labels in (("-images-idx3-ubyte", "-labels-idx1-ubyte"), ("-images.idx3-ubyte", "-labels.idx1-ubyte")):
        if images in name:
            candidate = path.with_name(name.replace(images, labels))
            if candidate.exists():
                return candidate
    return None


def load_dataset(
    path: str | os.PathLike, input_scale: float | None = None, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load images (float32, N x C x ...) and labels (int64 or None) from ``path``.

    Parameters
    ----------
    path : ``.npz`` with ``x`` (and optional ``y``), or an IDX images file.
    input_scale : multiply the raw values by this; default 1/255 for uint8
        data and 1 for float data.
    limit : keep only the first ``limit`` samples.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such data file")
    labels = None
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                if "x" not in f:
                    raise DataError(f"{path}: npz file has no array 'x' (has {', '.join(f.files) or 'nothing'})")
                images = f["x"]
                labels = f.get("y")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read npz file ({exc})") from None
    else:
        images = read_idx(path)
        label_path = _labels_beside(path)
        if label_path is not None:
            labels = read_idx(label_path)
    if limit is not None:
        images = images[:limit]
        labels = labels[:limit] if labels is not None else None
    if labels is not None:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(labels) != len(images):
            raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    if images.ndim < 2:
        raise DataError(f"{path}: images of shape {images.shape} need at least (N, features)")
    if input_scale is None:
        input_scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    x = images.astype(np.float32) * np.float32(input_scale)
    if x.ndim == 3:
        x = x[:, None]
    return x, labels


def fit_to_input(x: np.ndarray, shape: tuple[int, ...], source: str = "data") -> np.ndarray:
    """Check (and where unambiguous, reshape) a batch to the model's per-sample input shape."""
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    if int(np.prod(x.shape[1:])) == int(np.prod(shape)):
        return x.reshape((x.shape[0],) + tuple(shape))
    raise DataError(f"{source}: samples of shape {tuple(x.shape[1:])} do not fit the model input {tuple(shape)}")


def iterate_batches(n: int, batch_size: int):
    """Yield ``slice`` objects covering ``range(n)`` in batches."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
