"""Fuzzing of every input format ``bsnn`` reads, shared by ``tests/test_fuzz.py`` and ``benchmarks/fuzz.py``.

A *case* is one mutated input (an ONNX model, an npz or IDX data set, or an
HDF5 trace) and one command run on it in process with click's CliRunner.
The contract (issue 12): the command ends with exit 0, or with exit 1 and
one ``error: ...`` line as the last line of stderr, never a traceback or a
hang; and a failing command changes no existing output file and leaves no
temporary file behind.

The hang guard is SIGALRM, which interrupts Python code only: a loop inside
a C library (HDF5 looped on a damaged global heap, which is why traces keep
their strings inline) shows up as a run that never finishes, and the case
being run is the last ``caseN`` folder in the scratch folder.

Cases are numbered; case ``i`` of seed ``s`` is always the same
(``numpy.random.default_rng([s, i])``), so a failure found in a long run is
replayed with ``python benchmarks/fuzz.py --seed s --first i --cases 1 -v``.
"""

from __future__ import annotations

import contextlib
import gzip
import shutil
import signal
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto

__all__ = ["KINDS", "Case", "Fuzzer"]

DATA = Path(__file__).resolve().parent / "data"
T_STEPS = "8"

#: input formats fuzzed, in the order cases cycle through them
KINDS = ("onnx_bytes", "onnx_structure", "snn_structure", "npz", "idx", "trace")

_SENTINEL = b"an existing output file that a failing command must not change\n"


@dataclass
class Case:
    """One fuzz case: what was mutated, the command, and what went wrong (``problem`` None if nothing)."""

    index: int
    kind: str
    mutation: str
    command: list[str]
    exit_code: int | None = None
    problem: str | None = None
    detail: str = field(default="", repr=False)


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int):
    """Raise _Hang in the main thread after ``seconds`` (a guard against hangs, not a timing check)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def alarm(signum, frame):
        raise _Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Fuzzer:
    """Builds the base inputs once in ``folder``, then runs numbered cases.

    Parameters
    ----------
    folder : a scratch folder (the base files and one sub-folder per case go there).
    seed : the seed of the case sequence.
    hang_seconds : a case that runs longer than this counts as a hang (0: no limit).
    """

    def __init__(self, folder: Path, seed: int = 0, hang_seconds: int = 120) -> None:
        self.folder = Path(folder)
        self.seed = seed
        self.hang_seconds = hang_seconds
        self.base = self.folder / "base"
        self.base.mkdir(parents=True, exist_ok=True)
        self._build_base()

    # ------------------------------------------------------------------ base inputs

    def _build_base(self) -> None:
        import passes
        from bsnn_graph import load_onnx, save_onnx

        rng = np.random.default_rng(12)
        self.ann = self.base / "ann.onnx"
        shutil.copy(DATA / "vgg_tiny_legacy.onnx", self.ann)
        self.dynamo = self.base / "dynamo.onnx"
        shutil.copy(DATA / "vgg_tiny_dynamo.onnx", self.dynamo)
        self.images = rng.integers(0, 256, (12, 1, 12, 12), dtype=np.uint8)
        self.labels = rng.integers(0, 10, 12).astype(np.int64)
        self.data = self.base / "data.npz"
        np.savez(self.data, x=self.images, y=self.labels)
        self.snn = self.base / "snn.onnx"
        graph = load_onnx(self.ann)
        save_onnx(passes.convert(graph, self.images.astype(np.float32) / 255, phases=4), self.snn)
        self.trace = self.base / "trace.h5"
        result = self._invoke(
            ["run", self.snn, "--data", self.data, "-T", T_STEPS, "--batch-size", "4", "--trace", self.trace]
            + ["--record", "all", "--record-samples", "3"]
        )
        if result.exit_code != 0:
            raise RuntimeError(f"cannot build the base trace: {result.output}")
        from runtime.trace import open_trace

        with open_trace(self.trace) as trace:
            self.population_names = [p.name for p in trace.populations]

    # ------------------------------------------------------------------ running

    @staticmethod
    def _invoke(args):
        from bsnn_graph.cli import main

        return CliRunner().invoke(main, [str(a) for a in args])

    def run(self, index: int) -> Case:
        """Build case ``index``, run its command and check the contract."""
        rng = np.random.default_rng([self.seed, index])
        kind = KINDS[index % len(KINDS)]
        where = self.folder / f"case{index}"
        if where.exists():
            shutil.rmtree(where)
        where.mkdir()
        try:
            mutation, command, outputs = getattr(self, f"_case_{kind}")(rng, where)
        except Exception:  # noqa: BLE001  (a bug of the fuzzer itself: report it like any other failure)
            return Case(index, kind, "building the case", [], problem="fuzzer error", detail=traceback.format_exc())
        case = Case(index, kind, mutation, [str(a) for a in command])
        existing = {}
        for out in outputs:
            if rng.random() < 0.5:
                out.write_bytes(_SENTINEL)
                existing[out] = True
                if "--overwrite" not in case.command:
                    case.command.append("--overwrite")
        before = {p.name for p in where.iterdir()}
        try:
            with _time_limit(self.hang_seconds):
                result = self._invoke(case.command)
        except _Hang as exc:
            case.problem, case.detail = "hang", str(exc)
            return case
        case.exit_code = result.exit_code
        case.problem, case.detail = _check(result)
        if case.problem is None and result.exit_code != 0:
            changed = [out.name for out in existing if out.read_bytes() != _SENTINEL]
            if changed:
                case.problem, case.detail = "changed an existing output", ", ".join(changed)
        leftovers = sorted(p.name for p in where.iterdir() if p.name not in before and p.name.endswith(".tmp"))
        if case.problem is None and leftovers:
            case.problem, case.detail = "left temporary files", ", ".join(leftovers)
        if case.problem is None:
            shutil.rmtree(where, ignore_errors=True)
        return case

    # ------------------------------------------------------------------ commands

    def _ann_commands(self, rng, model: Path, where: Path, data: Path | None = None):
        data = data or self.data
        out = where / "out.onnx"
        choices = [
            (["info", model], []),
            (["info", model, "--json"], []),
            (["convert", model, "--calib", data, "-o", out, "-K", "4"], [out]),
            (["eval", model, "--calib", data, "--data", data, "-T", "4,8", "-K", "4"], []),
        ]
        return choices[int(rng.integers(len(choices)))]

    def _snn_commands(self, rng, model: Path, where: Path, data: Path | None = None):
        data = data or self.data
        trace = where / "out.h5"
        choices = [
            (["info", model], []),
            (["run", model, "--data", data, "-T", T_STEPS, "--json"], []),
            (["run", model, "--data", data, "-T", T_STEPS, "--trace", trace, "--record", "all"], [trace]),
            (["eval", model, "--data", data, "-T", "4,8"], []),
        ]
        return choices[int(rng.integers(len(choices)))]

    # ------------------------------------------------------------------ ONNX

    def _case_onnx_bytes(self, rng, where):
        source = [self.ann, self.dynamo, self.snn][int(rng.integers(3))]
        data = bytearray(source.read_bytes())
        how = ["truncate", "flip", "insert", "empty", "garbage", "repeat"][int(rng.integers(6))]
        if how == "truncate":
            data = data[: int(rng.integers(0, len(data)))]
        elif how == "flip":
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        elif how == "insert":
            at = int(rng.integers(len(data)))
            data[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        elif how == "empty":
            data = bytearray()
        elif how == "garbage":
            data = bytearray(rng.integers(0, 256, int(rng.integers(1, 2000)), dtype=np.uint8).tobytes())
        else:
            data = data + data[: int(rng.integers(1, len(data)))]
        model = where / "model.onnx"
        model.write_bytes(bytes(data))
        commands = self._snn_commands if source == self.snn else self._ann_commands
        command, outputs = commands(rng, model, where)
        return f"{how} {source.name}", command, outputs

    def _case_onnx_structure(self, rng, where):
        source = [self.ann, self.dynamo][int(rng.integers(2))]
        model = onnx.load(source)
        mutation = _mutate_model(rng, model)
        path = where / "model.onnx"
        _save(model, path)
        command, outputs = self._ann_commands(rng, path, where)
        return f"{mutation} ({source.name})", command, outputs

    def _case_snn_structure(self, rng, where):
        model = onnx.load(self.snn)
        mutation = _mutate_model(rng, model)
        path = where / "model.onnx"
        _save(model, path)
        command, outputs = self._snn_commands(rng, path, where)
        return mutation, command, outputs

    # ------------------------------------------------------------------ data

    def _case_npz(self, rng, where):
        x, y, mutation = _mutate_arrays(rng, self.images, self.labels)
        path = where / "data.npz"
        arrays = {} if x is None else {"x": x}
        if y is not None:
            arrays["y"] = y
        if rng.random() < 0.1:
            arrays = {"images": self.images}
            mutation = "no array x"
        np.savez(path, **arrays) if rng.random() < 0.7 else np.savez_compressed(path, **arrays)
        if rng.random() < 0.1:
            raw = bytearray(path.read_bytes())
            raw = raw[: int(rng.integers(0, len(raw)))] if rng.random() < 0.5 else _flip(rng, raw)
            path.write_bytes(bytes(raw))
            mutation += ", damaged zip"
        return mutation, *self._data_command(rng, path, where)

    def _case_idx(self, rng, where):
        x, y, mutation = _mutate_arrays(rng, self.images[:, 0], self.labels, idx=True)
        compressed = rng.random() < 0.5
        suffix = ".gz" if compressed else ""
        images = where / f"t-images-idx3-ubyte{suffix}"
        labels = where / f"t-labels-idx1-ubyte{suffix}"
        raw_images = _idx_bytes(x if x is not None else np.zeros((0,), np.uint8))
        raw_labels = _idx_bytes(y) if y is not None else None
        damage = rng.random()
        if damage < 0.3:
            raw_images = _damage_header(rng, raw_images)
            mutation += ", damaged header"
        elif damage < 0.45:
            raw_images = raw_images[: int(rng.integers(0, len(raw_images)))]
            mutation += ", truncated"
        for path, raw in ((images, raw_images), (labels, raw_labels)):
            if raw is None:
                continue
            if compressed:
                raw = gzip.compress(raw)
                if path == images and rng.random() < 0.2:
                    raw = raw[: int(rng.integers(0, len(raw)))]
                    mutation += ", truncated gzip"
            path.write_bytes(raw)
        return mutation, *self._data_command(rng, images, where)

    def _data_command(self, rng, data: Path, where: Path):
        out = where / "out.onnx"
        choices = [
            (["convert", self.ann, "--calib", data, "-o", out, "-K", "4"], [out]),
            (["eval", self.ann, "--calib", self.data, "--data", data, "-T", "4,8", "-K", "4"], []),
            (["eval", self.ann, "--calib", data, "--data", self.data, "-T", "4", "-K", "4"], []),
        ]
        if rng.random() < 0.5:
            return choices[int(rng.integers(len(choices)))]
        return self._snn_commands(rng, self.snn, where, data=data)

    # ------------------------------------------------------------------ traces

    def _case_trace(self, rng, where):
        path = where / "trace.h5"
        shutil.copy(self.trace, path)
        mutation = _mutate_trace(rng, path)
        plot = where / "plot.png"
        choices = [
            (["inspect", path], []),
            (["inspect", path, "--json"], []),
            (
                ["inspect", path, "--population", self.population_names[int(rng.integers(len(self.population_names)))]],
                [],
            ),
            (["inspect", path, "--plot", plot], [plot]),
            (["inspect", path, "--plot", plot, "--sample", str(int(rng.integers(0, 5)))], [plot]),
        ]
        command, outputs = choices[int(rng.integers(len(choices)))]
        return mutation, command, outputs


# ====================================================================== checks


def _check(result) -> tuple[str | None, str]:
    """The contract on one CliRunner result: (problem or None, detail)."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        detail = "".join(traceback.format_exception(result.exception))
        return f"traceback: {type(result.exception).__name__}", detail
    stderr = result.stderr
    if "Traceback" in stderr or "Traceback" in result.stdout:
        return "traceback printed", stderr
    if result.exit_code == 0:
        return None, ""
    if result.exit_code != 1:
        return f"exit {result.exit_code}", stderr + result.stdout
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    if len(errors) != 1 or lines[-1] != errors[0]:
        return "not one error line", stderr
    if "\n" in errors[0] or len(errors[0]) > 2000:
        return "error line too long", errors[0][:300]
    return None, ""


# ====================================================================== mutations


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def _flip(rng, raw: bytearray) -> bytearray:
    for _ in range(int(rng.integers(1, 30))):
        raw[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
    return raw


_ODD_INTS = [0, 1, 2, 3, -1, -2, 5, 7, 64, 100_000, 2**31, -(2**40)]
_ODD_FLOATS = [0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf")]
_OP_TYPES = ["Add", "Relu", "Conv", "MaxPool", "Gemm", "Concat", "Reshape", "Sum", "Mul", "Sigmoid", "Transpose"]
_OP_TYPES += ["Identity", "Flatten", "Softmax", "BatchNormalization", "Constant", "Shape", "Gather", "NoSuchOp"]


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def _odd_int(rng, exclude_last: int = 0) -> int:
    return _ODD_INTS[int(rng.integers(len(_ODD_INTS) - exclude_last))]


def _new_op_type(rng, model, node) -> str:
    new = _pick(rng, _OP_TYPES)
    what = f"op type of {node.name} {node.op_type} -> {new}"
    node.op_type = new
    return what


def _remove_node(rng, model, node) -> str:
    graph = model.graph
    graph.node.remove(node)
    return f"removed node {node.name} (dangling edge)"


def _remove_initializer(rng, model, node) -> str:
    graph = model.graph
    i = int(rng.integers(len(graph.initializer)))
    name = graph.initializer[i].name
    del graph.initializer[i]
    return f"removed initializer {name}"


def _initializer_dims(rng, model, node) -> str:
    graph = model.graph
    tensor = _pick(rng, graph.initializer)
    if tensor.dims:
        axis = int(rng.integers(len(tensor.dims)))
        tensor.dims[axis] = _odd_int(rng)
    else:
        tensor.dims.append(3)
    return f"dims of initializer {tensor.name} -> {list(tensor.dims)}"


def _initializer_dtype(rng, model, node) -> str:
    graph = model.graph
    tensor = _pick(rng, graph.initializer)
    dtypes = [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT8, TensorProto.BOOL]
    dtypes += [TensorProto.STRING, TensorProto.UNDEFINED, 77]
    tensor.data_type = _pick(rng, dtypes)
    return f"dtype of initializer {tensor.name} -> {tensor.data_type}"


def _truncate_initializer(rng, model, node) -> str:
    graph = model.graph
    tensor = _pick(rng, graph.initializer)
    if tensor.raw_data:
        tensor.raw_data = tensor.raw_data[: int(rng.integers(len(tensor.raw_data)))]
    else:
        del tensor.float_data[:]
    return f"truncated data of initializer {tensor.name}"


def _change_attribute(rng, model, node) -> str:
    if not node.attribute:
        node.attribute.add(name="axis", type=onnx.AttributeProto.INT, i=int(rng.integers(-3, 5)))
        return f"extra attribute axis on {node.name}"
    attr = _pick(rng, node.attribute)
    if attr.ints:
        attr.ints[int(rng.integers(len(attr.ints)))] = _odd_int(rng)
    elif attr.type == onnx.AttributeProto.INT:
        attr.i = _odd_int(rng)
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = _pick(rng, _ODD_FLOATS)
    else:
        attr.type = int(rng.integers(0, 15))
    return f"attribute {attr.name} of {node.name}"


def _add_attribute(rng, model, node) -> str:
    attr = node.attribute.add()
    attr.name = _pick(rng, ["kernel_shape", "strides", "pads", "axis", "perm", "alpha"])
    attr.type = _pick(rng, [onnx.AttributeProto.STRING, onnx.AttributeProto.FLOATS, onnx.AttributeProto.INTS])
    if attr.type == onnx.AttributeProto.STRING:
        attr.s = b"odd"
    elif attr.type == onnx.AttributeProto.FLOATS:
        attr.floats.extend([1.5, float("nan")])
    else:
        attr.ints.extend(int(v) for v in rng.integers(-2, 9, int(rng.integers(0, 6))))
    return f"attribute {attr.name} of type {attr.type} on {node.name}"


def _opset(rng, model, node) -> str:
    version = int(rng.choice([1, 5, 6, 7, 9, 11, 13, 19, 21, 22, 23, 30, 999]))
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = version
    return f"opset -> {version}"


def _empty_graph(rng, model, node) -> str:
    graph = model.graph
    del graph.node[:]
    return "empty graph (no nodes)"


def _graph_inputs_outputs(rng, model, node) -> str:
    graph = model.graph
    which = int(rng.integers(3))
    if which == 0:
        del graph.input[:]
        return "no graph inputs"
    if which == 1:
        del graph.output[:]
        return "no graph outputs"
    if graph.output:
        graph.output.add().CopyFrom(graph.output[0])
    return "duplicate graph output"


def _input_dims(rng, model, node) -> str:
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    if dims:
        axis = int(rng.integers(len(dims)))
        value = _odd_int(rng, exclude_last=3)
        if rng.random() < 0.3:
            dims[axis].dim_param = "S"
        else:
            dims[axis].dim_value = value
    return "input dims mutated"


def _input_dtype(rng, model, node) -> str:
    graph = model.graph
    graph.input[0].type.tensor_type.elem_type = int(rng.choice([0, 2, 7, 10, 11, 8]))
    return f"input element type -> {graph.input[0].type.tensor_type.elem_type}"


def _rewire_edge(rng, model, node) -> str:
    graph = model.graph
    nodes = list(graph.node)
    a, b = sorted(rng.choice(len(nodes), 2, replace=False))
    if nodes[a].input and nodes[b].output:
        nodes[a].input[0] = nodes[b].output[0]  # an edge backwards: a cycle or a shape mismatch
    return f"edge rewired: {nodes[a].name} reads {nodes[b].name}"


def _node_domain(rng, model, node) -> str:
    node.domain = _pick(rng, ["ai.bsnn", "com.microsoft", "x.y"])
    return f"domain of {node.name} -> {node.domain}"


def _rename_output(rng, model, node) -> str:
    graph = model.graph
    nodes = list(graph.node)
    if node.output:
        node.output[0] = nodes[int(rng.integers(len(nodes)))].output[0] if rng.random() < 0.5 else ""
    return f"output of {node.name} renamed or emptied"


#: (when it applies, mutation) by the number drawn; one that does not apply falls back to renaming an output
_MODEL_MUTATIONS = [
    ("nodes", _new_op_type),
    ("nodes", _remove_node),
    ("initializers", _remove_initializer),
    ("initializers", _initializer_dims),
    ("initializers", _initializer_dtype),
    ("initializers", _truncate_initializer),
    ("nodes", _change_attribute),
    ("nodes", _add_attribute),
    ("always", _opset),
    ("always", _empty_graph),
    ("always", _graph_inputs_outputs),
    ("inputs", _input_dims),
    ("inputs", _input_dtype),
    ("three nodes", _rewire_edge),
    ("nodes", _node_domain),
]


def _mutate_model(rng, model: onnx.ModelProto) -> str:
    """Apply one structural mutation to ``model`` in place; return what it was."""
    graph = model.graph
    nodes = list(graph.node)
    choice = int(rng.integers(16))
    pick = int(rng.integers(max(len(nodes), 1)))
    node = nodes[pick] if nodes else None
    applies = {"always": True, "nodes": bool(nodes), "initializers": bool(graph.initializer),
               "inputs": bool(graph.input), "three nodes": len(nodes) > 2}
    if choice < len(_MODEL_MUTATIONS) and applies[_MODEL_MUTATIONS[choice][0]]:
        mutation = _MODEL_MUTATIONS[choice][1]
        return mutation(rng, model, node)
    return _rename_output(rng, model, node) if nodes else "nothing to mutate"


def _mutate_arrays(rng, images: np.ndarray, labels: np.ndarray, idx: bool = False):
    """A mutated (images, labels, description); either may be None (absent)."""
    x, y = images.copy(), labels.copy()
    what = []
    choice = int(rng.integers(12))
    if choice == 0:
        dtypes = [np.float16, np.float64, np.int64, np.int8, np.uint16, np.bool_] if not idx else [np.int8, np.float32]
        if not idx:
            dtypes += [np.complex64, "U2", np.float32]
        dtype = dtypes[int(rng.integers(len(dtypes)))]
        x = x.astype(dtype)
        what.append(f"dtype {np.dtype(dtype)}")
    elif choice == 1:
        rank = int(rng.integers(0, 6))
        x = x.reshape(x.shape[:1] + (-1,)) if rank == 2 else x
        if rank == 0:
            x = np.asarray(x.reshape(-1)[0])
        elif rank == 1:
            x = x.reshape(-1)
        elif rank >= 4:
            x = x.reshape(x.shape + (1,) * (rank - x.ndim)) if rank > x.ndim else x
        what.append(f"rank {x.ndim}")
    elif choice == 2:
        x = x.astype(np.float32)
        x.reshape(-1)[rng.integers(0, x.size, int(rng.integers(1, 5)))] = [np.nan, np.inf, -np.inf][
            int(rng.integers(3))
        ]
        what.append("NaN/inf values")
    elif choice == 3:
        x, y = x[:0], y[:0]
        what.append("empty")
    elif choice == 4:
        y = y[: int(rng.integers(0, len(y)))] if rng.random() < 0.5 else np.concatenate([y, y])
        what.append(f"{len(y)} labels")
    elif choice == 5:
        y = None
        what.append("no labels")
    elif choice == 6:
        odd = [y.astype(np.float64) + 0.5, -y - 1, y.reshape(-1, 1), np.stack([y, y], 1), y * 10**6]
        if not idx:
            odd += [y.astype("U3"), np.full(len(y), np.nan)]
        y = odd[int(rng.integers(len(odd)))]
        what.append(f"labels {y.dtype} {y.shape}")
    elif choice == 7:
        shape = [(12, 12, 12, 1), (12, 144), (12, 3, 12, 12), (12, 12, 12), (12, 1, 11, 12), (12, 1, 12, 12, 1)]
        shape = shape[int(rng.integers(len(shape)))]
        x = np.resize(x, shape)
        what.append(f"shape {shape}")
    elif choice == 8 and not idx:
        x = x.astype(np.float32) * np.float32(1e38) * 10
        what.append("overflowing values")
    elif choice == 9:
        x = x[:1]
        y = y[:1]
        what.append("one sample")
    else:
        what.append("unchanged")
    if idx and x is not None and x.dtype.kind not in "uif":
        x = x.astype(np.uint8)
    return x, y, ", ".join(what)


_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C}
_IDX_CODES |= {np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def _idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    kinds = {"u": np.uint8, "b": np.uint8, "i": ">i4", "f": ">f4"}
    dtype = np.dtype(np.uint8) if array.dtype == np.uint8 else np.dtype(kinds.get(array.dtype.kind, ">f4"))
    if array.dtype == np.int8:
        dtype = np.dtype(np.int8)
    with np.errstate(invalid="ignore", over="ignore"):
        data = array.astype(dtype)
    header = bytes([0, 0, _IDX_CODES[dtype], array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + data.tobytes()


def _damage_header(rng, raw: bytes) -> bytes:
    raw = bytearray(raw)
    at = int(rng.integers(0, min(len(raw), 4 + 4 * max(raw[3] if len(raw) > 3 else 0, 1))))
    raw[at] = int(rng.integers(0, 256))
    return bytes(raw)


def _mutate_trace(rng, path: Path) -> str:
    """Damage the trace at ``path`` in one of several ways; return what was done."""
    import h5py

    choice = int(rng.integers(10))
    if choice == 0:
        raw = path.read_bytes()
        path.write_bytes(raw[: int(rng.integers(0, len(raw)))])
        return "truncated"
    if choice == 1:
        raw = bytearray(path.read_bytes())
        path.write_bytes(bytes(_flip(rng, raw)))
        return "bit flips"
    with h5py.File(path, "r+") as f:
        names = []
        f.visit(names.append)
        if choice == 2:
            victim = names[int(rng.integers(len(names)))]
            del f[victim]
            return f"removed {victim}"
        if choice == 3:
            keys = list(f.attrs)
            victim = keys[int(rng.integers(len(keys)))]
            del f.attrs[victim]
            return f"removed root attribute {victim}"
        if choice == 4:
            keys = ["format_version", "samples_written", "samples_total", "timesteps", "phases", "periods"]
            keys += ["classes", "complete", "mode", "output_stage", "ann_macs"]
            key = keys[int(rng.integers(len(keys)))]
            values = [0, -1, 2, 10**9, 1.5, float("nan"), "seven", True, np.array([1, 2])]
            value = values[int(rng.integers(len(values)))]
            f.attrs[key] = value
            return f"root attribute {key} = {value!r}"
        if choice == 5:
            datasets = [n for n in names if isinstance(f[n], h5py.Dataset)]
            victim = datasets[int(rng.integers(len(datasets)))]
            shape = f[victim].shape
            del f[victim]
            kind = int(rng.integers(4))
            if kind == 0:
                f.create_group(victim)
                return f"{victim} replaced by a group"
            if kind == 1:
                f[victim] = np.full(shape, np.nan, np.float32)
                return f"{victim} replaced by NaN floats"
            if kind == 2:
                f[victim] = np.array([b"x"] * max(1, shape[0] if shape else 1))
                return f"{victim} replaced by strings"
            f[victim] = np.zeros((1,) * (len(shape) + 1), np.int32)
            return f"{victim} replaced by the wrong rank"
        if choice == 6:
            groups = [n for n in names if n.startswith("populations/") and n.count("/") == 1]
            group = f[groups[int(rng.integers(len(groups)))]]
            key = ["name", "index", "op_type", "shape", "stage", "scale", "source"][int(rng.integers(7))]
            if key in group.attrs and rng.random() < 0.5:
                del group.attrs[key]
                return f"removed attribute {key} of {group.name}"
            group.attrs[key] = [np.array([-3, 2]), "x", np.nan, 10**6][int(rng.integers(4))]
            return f"attribute {key} of {group.name} changed"
        if choice == 7:
            f["logits"][...] = np.nan
            return "NaN logits"
        if choice == 8:
            f.attrs["format_version"] = int(rng.choice([0, 2, 99]))
            return f"format_version {f.attrs['format_version']}"
        f.create_dataset("populations/999/spike_counts", data=np.zeros((2, 2), np.int32)) if rng.random() < 0.5 else (
            f["populations"].create_group("zzz")
        )
        f["dtype_only"] = np.dtype("f4")  # a named datatype: an object of another kind
        return "extra population group and a named datatype"
