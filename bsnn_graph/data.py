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
import math
import os
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["fit_to_input", "iterate_batches", "load_dataset", "read_idx"]

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike, limit: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an ndarray.

    A raw file is memory-mapped; a ``.gz`` file is decompressed only as far
    as the first ``limit`` samples (all of them by default).
    """
    path = Path(path)
    compressed = path.suffix == ".gz"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            ndim = head[3]
            if ndim > 32:  # numpy's limit is 64; IDX data sets have 1 to 4 axes
                raise DataError(f"{path}: IDX header says {ndim} dimensions (a damaged file?)")
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_IDX_TYPES[head[2]])
            if limit is not None and dims:
                dims = (min(dims[0], int(limit)),) + dims[1:]
            size = math.prod(dims) * dtype.itemsize
            header = 4 + 4 * ndim
            if compressed:
                blocks, available = [], 0
                while available < size:  # in blocks, so that a header claiming terabytes allocates nothing
                    block = f.read(min(size - available, 1 << 26))
                    if not block:
                        break
                    blocks.append(block)
                    available += len(block)
                raw = b"".join(blocks)
            else:
                available = os.path.getsize(path) - header
            if available < size:
                shown = str(dims) if ndim <= 8 else f"of rank {ndim}"
                raise DataError(
                    f"{path}: truncated IDX data: the header says shape {shown} "
                    f"({size if size < 10**15 else 'more than 10**15'} bytes), "
                    f"the file holds {available} bytes"
                )
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if compressed:
        values = np.frombuffer(raw, dtype=dtype, count=math.prod(dims))
    elif size == 0:
        values = np.zeros(0, dtype)
    else:
        values = np.memmap(path, dtype=dtype, mode="r", offset=header, shape=(math.prod(dims),))
    values = values.reshape(dims)
    return values if dtype.byteorder in "=|" else values.astype(dtype.newbyteorder("="))


def _labels_beside(path: Path) -> Path | None:
    name = path.name
    for images, labels in (("-images-idx3-ubyte", "-labels-idx1-ubyte"), ("-images.idx3-ubyte", "-labels.idx1-ubyte")):
        if images in name:
            candidate = path.with_name(name.replace(images, labels))
            if candidate.exists():
                return candidate
    return None


def _check_images(path: Path, images: np.ndarray) -> None:
    if images.ndim < 2:
        raise DataError(f"{path}: images of shape {images.shape} need at least (N, features)")
    if images.dtype.kind not in "biuf":
        raise DataError(f"{path}: images of dtype {images.dtype} (expected integers or floats)")


def _check_labels(path: Path, labels, samples: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biuf":
        raise DataError(f"{path}: labels of dtype {labels.dtype} (expected integers)")
    if labels.ndim != 1 and not (labels.ndim == 2 and labels.shape[1] == 1):
        raise DataError(f"{path}: labels of shape {labels.shape} (expected one class index per sample, (N,))")
    labels = labels.reshape(-1)
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: label {i} is {labels[i].item()!r}, not a class index")
    if len(labels) and labels.min() < 0:
        i = int(np.argmin(labels))
        raise DataError(f"{path}: label {i} is {labels[i].item()!r}, not a class index (negative)")
    if len(labels) != samples:
        raise DataError(f"{path}: {samples} images but {len(labels)} labels")
    return labels.astype(np.int64)


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

    Raises
    ------
    DataError
        The file is missing or unreadable; the images are not a numeric
        array of rank 2 or more, hold NaN or infinite values (after
        scaling); the labels are not one non-negative integer per image.

    An IDX images file without ``.gz`` is memory-mapped, so with ``limit``
    only the samples kept are read; ``.npz`` and ``.gz`` files are read
    whole (numpy cannot map them).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such data file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file")
    labels = None
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                if "x" not in f:
                    raise DataError(f"{path}: npz file has no array 'x' (has {', '.join(f.files) or 'nothing'})")
                images = f["x"]
                labels = f.get("y")
        except DataError:
            raise
        except Exception as exc:  # zipfile, zlib and numpy format errors of a damaged file  # noqa: BLE001
            raise DataError(f"{path}: cannot read npz file ({type(exc).__name__}: {exc})") from None
    else:
        images = read_idx(path, limit)
        label_path = _labels_beside(path)
        if label_path is not None:
            labels = read_idx(label_path, limit)
    _check_images(path, images)
    if limit is not None:
        images = images[:limit]
        labels = labels[:limit] if labels is not None and labels.ndim else labels
    if labels is not None:
        labels = _check_labels(path, labels, len(images))
    if input_scale is None:
        input_scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        x = images.astype(np.float32) * np.float32(input_scale)
    finite = np.isfinite(x)
    if not finite.all():
        i = int(np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))[0])
        raise DataError(f"{path}: sample {i} holds NaN or infinite values (after scaling by {input_scale:g})")
    if x.ndim == 3:
        x = x[:, None]
    return x, labels


def _layout(shape: tuple[int, ...]) -> str:
    names = {1: ("F",), 2: ("H", "W"), 3: ("C", "H", "W"), 4: ("C", "D", "H", "W")}.get(len(shape))
    inner = ", ".join(f"{n}={d}" for n, d in zip(names, shape)) if names else ", ".join(map(str, shape))
    return f"(N, {inner})"


def fit_to_input(x: np.ndarray, shape: tuple[int, ...], source: str = "data") -> np.ndarray:
    """Check a batch against the model's per-sample input ``shape``; never reorder or reshape axes.

    Accepted: an exact fit ``(N, *shape)``, and samples that lack only a
    leading unit channel axis (``(N, H, W)`` for a ``(1, H, W)`` input),
    which gets added. Anything else (channels-last images, flat vectors for
    an image input, other sizes) is a :class:`DataError` that says which
    layout the model expects; reshape or transpose such data yourself.
    """
    x = np.asarray(x)
    shape = tuple(int(d) for d in shape)
    got = tuple(x.shape[1:])
    if x.ndim >= 1 and got == shape:
        return x
    if x.ndim >= 1 and shape[:1] == (1,) and got == shape[1:]:
        return x[:, None]
    expected = _layout(shape)
    hint = ""
    if len(shape) == 3 and got == shape[1:] + shape[:1]:
        hint = "; these look channels-last (N, H, W, C): transpose them with x.transpose(0, 3, 1, 2)"
    elif x.ndim == 2 and len(shape) > 1 and got[0] == int(np.prod(shape)):
        hint = f"; these are flat: reshape them with x.reshape(-1, {', '.join(map(str, shape))})"
    raise DataError(
        f"{source}: samples of shape {got} (array {tuple(x.shape)}) do not fit the model input {shape}: "
        f"expected {expected}{hint}"
    )


def iterate_batches(n: int, batch_size: int):
    """Yield ``slice`` objects covering ``range(n)`` in batches."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
