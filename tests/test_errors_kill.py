"""A run killed with SIGKILL leaves a trace that opens, says how many samples it holds, and inspects (issue 12)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_cli_run import tiny_snn

from bsnn_graph import save_onnx
from bsnn_graph.cli import main
from runtime.trace import open_trace

ROOT = Path(__file__).resolve().parent.parent


def _held(path: Path) -> int:
    try:
        with open_trace(path) as trace:
            return trace.samples
    except Exception:  # noqa: BLE001  (not there yet, or between the link and the first flush)
        return 0


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_trace_of_a_run_killed_with_sigkill_is_readable(tmp_path):
    model = tmp_path / "snn.onnx"
    save_onnx(tiny_snn(), model)
    n = 4000
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.uniform(0, 1, (n, 1, 6, 6)).astype(np.float32), y=rng.integers(0, 4, n))
    trace = tmp_path / "killed.h5"
    command = [sys.executable, "-c", "from bsnn_graph.cli import main; main()", "run", str(model), "--data", str(data)]
    command += ["-T", "64", "--batch-size", "2", "--threads", "1", "--trace", str(trace), "--record", "all"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # wait (no time limit: a slow machine only makes it slower) until a few batches are in the file
        while process.poll() is None and _held(trace) < 6:
            time.sleep(0.05)  # polling interval only; nothing is timed
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    with open_trace(trace) as opened:
        held = opened.samples
        assert 6 <= held < n and opened.samples_total == n and not opened.complete
        assert opened.predictions.shape == (held, 64) and len(opened.labels) == held
        for pop in opened.populations:
            assert pop.spike_counts.shape[0] == held
            assert pop.events is None or (pop.events[:, 0] < held).all()
    result = CliRunner().invoke(main, ["inspect", str(trace)])
    assert result.exit_code == 0, result.output
    assert f"{held} of {n} samples, INCOMPLETE" in result.stdout
    document = json.loads(CliRunner().invoke(main, ["inspect", str(trace), "--json"]).stdout)
    assert (document["samples"], document["complete"]) == (held, False)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temporary file left over
