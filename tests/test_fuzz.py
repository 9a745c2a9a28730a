"""Seeded fuzzing of every input format, every command in process (issue 12; engine in ``fuzzing.py``).

Each case mutates one input (ONNX bytes or structure, npz, IDX, HDF5 trace)
and runs one command on it; it must end in exit 0 or one ``error:`` line
(exit 1), change no existing output and leave no temporary file. Longer
runs: ``python benchmarks/fuzz.py --cases 5000``.
"""

from __future__ import annotations

import warnings

import pytest
from fuzzing import KINDS, Fuzzer

CASES = 480  # 80 per input format; about a minute on a slow shared machine


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    return Fuzzer(tmp_path_factory.mktemp("fuzz"), seed=2026)


@pytest.mark.parametrize("block", range(len(KINDS)))
def test_fuzzed_inputs_end_in_exit_0_or_one_error_line(fuzzer, block):
    failures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy overflow warnings of the mutated data are expected
        for index in range(block, CASES, len(KINDS)):
            case = fuzzer.run(index)
            if case.problem is not None:
                failures.append(
                    f"case {index} ({case.kind}: {case.mutation}; {' '.join(case.command)}): "
                    f"{case.problem}\n{case.detail[-1500:]}"
                )
    assert not failures, f"{len(failures)} of {CASES // len(KINDS)} cases broke the contract:\n" + "\n".join(
        failures[:5]
    )


def test_the_contract_check_catches_what_it_should():
    # the checker itself: a traceback, two error lines or a stray exit code are failures
    from types import SimpleNamespace

    from fuzzing import _check

    ok = SimpleNamespace(exception=None, exit_code=1, stderr="calibrating\nerror: x.onnx: bad\n", stdout="")
    assert _check(ok) == (None, "")
    crash = SimpleNamespace(exception=ValueError("boom"), exit_code=1, stderr="", stdout="")
    assert _check(crash)[0] == "traceback: ValueError"
    two = SimpleNamespace(exception=None, exit_code=1, stderr="error: a\nerror: b\n", stdout="")
    assert _check(two)[0] == "not one error line"
    usage = SimpleNamespace(exception=SystemExit(2), exit_code=2, stderr="Usage: bsnn\nError: no\n", stdout="")
    assert _check(usage)[0] == "exit 2"
