"""Shared pytest fixtures: tiny ONNX models built with onnx.helper, onnxruntime runs, test data paths."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

DATA = Path(__file__).resolve().parent / "data"


def ir_version_for(opset: int) -> int:
    """The oldest IR version that carries ``opset`` (onnxruntime refuses too new ones)."""
    return min(ir for _, ir, op, *_ in helper.VERSION_TABLE if op >= opset)


def tensor_info(name: str, shape, elem_type=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A graph input or output; ``shape`` may hold symbol names ("N") or None."""
    return helper.make_tensor_value_info(name, elem_type, shape)


def initializer(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def build_model(
    path: Path, nodes, inputs, outputs, initializers=(), opset: int = 17, domains=(), metadata=None
) -> Path:
    """Write a one-graph ONNX model to ``path`` and return the path."""
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs), initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="bsnn-graph-tests")
    model.ir_version = ir_version_for(opset)
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return path


def run_onnxruntime(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture
def make_model(tmp_path):
    """``make_model(nodes, inputs, outputs, initializers=(), opset=17, ...) -> path`` in tmp_path."""
    counter = itertools.count()

    def make(nodes, inputs, outputs, initializers=(), opset=17, name="model", **kwargs):
        return build_model(
            tmp_path / f"{name}_{next(counter)}.onnx", nodes, inputs, outputs, initializers, opset, **kwargs
        )

    return make


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than 20 s (e.g. a bundled model calibrated by search)")
