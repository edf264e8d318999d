"""kill -9 at several points, then a rerun: every cell present once, values equal to an uninterrupted run.

Each run is a real ``quantsweep run`` subprocess. The kill points:

* inside a cell file's write, between its fsync and its rename (a fault hook in the
  store, ``QUANTSWEEP_FAULT=kill-before-rename:N``, SIGKILLs the process itself there);
* at a moment chosen from outside: the test SIGKILLs the process as soon as the first
  cell file appears, while the next cell is being quantized or evaluated.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.sweeps import result_values, stored_cells

pytestmark = pytest.mark.slow

COMMAND = [
    "run",
    "--model",
    "toy",
    "--recipe",
    "fp",
    "--recipe",
    "w8-rtn",
    "--recipe",
    "w2-rtn",
    "--tasks",
    "toy_mc4,toy_ppl",
    "--limit",
    "40",
    "--device",
    "cpu",
]
EXPECTED = {(recipe, task) for recipe in ("fp", "w8-rtn", "w2-rtn") for task in ("toy_mc4", "toy_ppl")}


def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("QUANTSWEEP_FAULT", None)
    env.update(extra)
    return env


def _run(out, **env):
    return subprocess.run(
        [sys.executable, "-m", "quantsweep", *COMMAND, "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=600,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    result = _run(out)
    assert result.returncode == 0, result.stderr[-2000:]
    return result_values(out)


def _check_complete(out, reference):
    assert set(stored_cells(out)) == EXPECTED  # each (recipe, task) once: stored_cells fails on a duplicate
    assert all(c["status"] == "done" for c in stored_cells(out).values())
    assert result_values(out) == reference  # result_values fails on a duplicate record
    from quantsweep.sweep.store import CellStore

    assert len(CellStore(out).keys()) == len(EXPECTED)  # a temporary file a kill left behind is never a cell


@pytest.mark.parametrize("nth_write", [1, 4])
def test_killed_while_a_cell_file_is_written(tmp_path, reference, nth_write):
    killed = _run(tmp_path, QUANTSWEEP_FAULT=f"kill-before-rename:{nth_write}")
    assert killed.returncode == -signal.SIGKILL
    assert len(stored_cells(tmp_path)) == nth_write - 1  # the cell being written is not there, half or whole
    (partial,) = list((tmp_path / "cells").glob(".*.tmp"))  # the written, unrenamed file of the killed cell
    rerun = _run(tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{nth_write - 1} of 6 cells already done" in rerun.stdout
    _check_complete(tmp_path, reference)


def test_killed_between_cells_from_outside(tmp_path, reference):
    process = subprocess.Popen(
        [sys.executable, "-m", "quantsweep", *COMMAND, "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    deadline = time.time() + 300
    while (
        time.time() < deadline and not list((tmp_path / "cells").glob("*.json"))
        if (tmp_path / "cells").exists()
        else time.time() < deadline
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    done_before = len(stored_cells(tmp_path))
    assert 1 <= done_before < 6
    leftover_claims = list((tmp_path / "claims").glob("*.claim"))
    rerun = _run(tmp_path)  # the dead process's claim (same host, pid gone) is taken over at once
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{done_before} of 6 cells already done" in rerun.stdout
    _check_complete(tmp_path, reference)
    assert leftover_claims == [] or not any(p.exists() for p in leftover_claims)


def test_two_sweeps_into_one_store_compute_each_cell_once(tmp_path, reference):
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "quantsweep", *COMMAND, "--out", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    _check_complete(tmp_path, reference)
    for cell in stored_cells(tmp_path).values():  # each cell's log holds exactly one evaluation
        log = (tmp_path / "logs" / f"{cell['key']}.log").read_text()
        assert log.count(f"evaluating task {cell['task']}") == 1, cell["key"]


def test_a_cell_that_kills_its_process_every_time_becomes_a_failed_cell(tmp_path, reference):
    """What the kernel's OOM killer does to a cell too big for the machine: after two deaths it is a finding."""
    for attempt in (1, 2):
        killed = _run(tmp_path, QUANTSWEEP_FAULT="kill-evaluating:w8-rtn/toy_ppl")
        assert killed.returncode == -signal.SIGKILL, attempt
    third = _run(tmp_path, QUANTSWEEP_FAULT="kill-evaluating:w8-rtn/toy_ppl")
    assert third.returncode == 0, third.stderr[-2000:]
    cells = stored_cells(tmp_path)
    assert set(cells) == EXPECTED
    failed = cells[("w8-rtn", "toy_ppl")]
    assert failed["status"] == "failed" and failed["error_kind"] == "killed" and failed["deaths"] == 2
    assert "died 2 times" in failed["error"] and "--batch-size" in failed["error"]
    others = {k: c for k, c in cells.items() if k != ("w8-rtn", "toy_ppl")}
    assert all(c["status"] == "done" for c in others.values())
    values = result_values(tmp_path)
    assert all(values[key] == reference[key] for key in values if key[:2] != ("w8-rtn", "toy_ppl"))
