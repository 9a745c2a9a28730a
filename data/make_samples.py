"""Write the bundled Fashion-MNIST samples: ``fmnist_calib.npz`` and ``fmnist_test.npz``.

- ``fmnist_calib.npz``: 500 training images, stratified: 50 per class, drawn
  without replacement by ``numpy.random.default_rng(0)`` from each class's
  indices in the training set, then sorted by training-set index.
- ``fmnist_test.npz``: the first 2,000 images of the test set (``t10k``).

Both hold ``x`` (uint8, N x 28 x 28) and ``y`` (int64, N) and, for
traceability, ``index`` (int64, N): each image's position in its source file.
The zip members carry a fixed timestamp, so the files (and their sha256) are
byte-for-byte reproducible.

Usage::

    python data/make_samples.py [--source /usr/share/datasets/fashion-mnist] [--out data]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from bsnn_graph.data import read_idx
from bsnn_graph.errors import DataError
from bsnn_graph.fileutil import atomic_output

__all__ = ["CALIB_PER_CLASS", "CALIB_SEED", "TEST_COUNT", "calibration_indices", "main", "write_npz"]

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
CALIB_PER_CLASS = 50  # 10 classes -> 500 calibration images
CALIB_SEED = 0
TEST_COUNT = 2000
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def calibration_indices(labels: np.ndarray, per_class: int = CALIB_PER_CLASS, seed: int = CALIB_SEED) -> np.ndarray:
    """Stratified sample of training-set indices: ``per_class`` of each label, sorted.

    Parameters
    ----------
    labels : integer labels of the whole training set.
    per_class : how many images to draw from each class.
    seed : seed of ``numpy.random.default_rng``; classes are visited in
        ascending label order.

    Returns
    -------
    Sorted int64 indices into ``labels``.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise DataError(f"class {label} has only {len(members)} training images, {per_class} needed")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> str:
    """Write ``arrays`` as a deflated ``.npz`` with fixed timestamps.

    Returns the sha256 (hex) of the written file.
    """
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    """Read the IDX files under ``--source`` and write both sample files to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of the Fashion-MNIST IDX .gz files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args(argv)

    train_x = read_idx(args.source / "train-images-idx3-ubyte.gz")
    train_y = read_idx(args.source / "train-labels-idx1-ubyte.gz").astype(np.int64)
    test_x = read_idx(args.source / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(args.source / "t10k-labels-idx1-ubyte.gz").astype(np.int64)

    calib = calibration_indices(train_y)
    test = np.arange(TEST_COUNT, dtype=np.int64)
    outputs = {
        "fmnist_calib.npz": (train_x[calib], train_y[calib], calib),
        "fmnist_test.npz": (test_x[test], test_y[test], test),
    }
    for name, (x, y, index) in outputs.items():
        digest = write_npz(args.out / name, x=x.astype(np.uint8), y=y, index=index)
        counts = np.bincount(y, minlength=10).tolist()
        print(f"{name}: x {x.shape} uint8, y {y.shape} int64, per class {counts}, sha256 {digest}")


if __name__ == "__main__":
    main()
