"""The ONNX backend test cases shipped in the onnx wheel (pytorch-converted and
pytorch-operator): every model load_onnx accepts must reproduce the stored
outputs; a model it rejects as unsupported is skipped with the reason.

The cases are enumerated from the installed wheel, so an op that becomes
supported is picked up without editing this file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bsnn_graph import ModelError, evaluate, load_onnx

RTOL, ATOL = 1e-4, 1e-5
BACKEND_DATA = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data"
CASES = sorted(
    p.parent for group in ("pytorch-converted", "pytorch-operator") for p in (BACKEND_DATA / group).glob("*/model.onnx")
)


def _tensors(folder: Path, prefix: str) -> list[np.ndarray]:
    files = sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    return [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in files]


def test_backend_cases_found():
    assert len(CASES) > 50


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_backend_case(case: Path):
    try:
        graph = load_onnx(case / "model.onnx")
    except ModelError as exc:
        if "unsupported" in str(exc):
            pytest.skip(str(exc).split(": ", 1)[1])
        raise
    data_sets = sorted(case.glob("test_data_set_*"))
    assert data_sets
    for data_set in data_sets:
        inputs, outputs = _tensors(data_set, "input"), _tensors(data_set, "output")
        feeds = dict(zip(graph.graph["inputs"], inputs, strict=True))
        got = evaluate(graph, feeds)
        assert got.shape == outputs[0].shape
        np.testing.assert_allclose(got, outputs[0], rtol=RTOL, atol=ATOL)
