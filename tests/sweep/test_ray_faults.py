"""Faults on a real local Ray: a worker killed with SIGKILL mid-sweep, a driver killed and run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ray_helpers import TOY_SPEC, cell_files, judged_rows, keys_by_recipe, write_spec

pytestmark = pytest.mark.slow

DEADLINE_S = 240.0


def _wait_for(condition, what: str, timeout_s: float = DEADLINE_S, poll_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def _claim_pid(out: Path, key: str) -> int | None:
    import json

    path = out / "claims" / f"{key}.claim"
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _assert_complete_and_equal(out: Path, reference: dict) -> list[dict]:
    cells = cell_files(out)
    keys = [c["key"] for c in cells]
    assert len(keys) == len(set(keys)) == 6, keys  # every cell present, once
    assert all(c["status"] == "done" for c in cells)
    rows = judged_rows(out)  # asserts no (model, recipe, task, metric) twice
    assert set(rows) == set(reference)
    for key, (value, verdict) in reference.items():
        assert rows[key][1] == verdict and rows[key][0] == pytest.approx(value, rel=1e-12, abs=0), key
    return cells


def test_a_killed_worker_loses_nothing(ray_cluster, local_reference, tmp_path):
    """SIGKILL the worker of the second unit while it computes w2-rtn, after it stored w8-rtn.

    Ray retries the unit on a new worker; that one skips w8-rtn's stored cells (kept, still
    bearing the killed pid) and takes over the dead worker's claims on w2-rtn.
    """
    import quantsweep

    out = tmp_path / "out"
    keys = keys_by_recipe(TOY_SPEC, out)
    outcome = {}

    def drive():
        try:
            outcome["frame"] = quantsweep.sweep(TOY_SPEC, out=out, backend="ray", progress=False)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = error

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    target = keys[("w2-rtn", "toy_mc4")]
    pid = _wait_for(lambda: _claim_pid(out, target), "a worker to claim w2-rtn's cells")
    os.kill(pid, signal.SIGKILL)
    driver.join(DEADLINE_S)
    assert not driver.is_alive(), "the sweep did not finish after the worker was killed"
    assert "error" not in outcome, outcome.get("error")
    cells = {c["key"]: c for c in _assert_complete_and_equal(out, local_reference)}
    for task in TOY_SPEC["tasks"]:
        assert cells[keys[("w8-rtn", task)]]["ran_on"]["pid"] == pid  # finished before the kill: kept
        assert cells[keys[("w2-rtn", task)]]["ran_on"]["pid"] != pid  # unfinished: run again


def test_a_killed_driver_resumes_with_every_cell_once(ray_cluster, local_reference, tmp_path):
    """Kill -9 a `quantsweep sweep --backend ray` driver once a cell is stored, then rerun it."""
    out = tmp_path / "out"
    spec_path = write_spec(tmp_path)
    command = [
        sys.executable,
        "-m",
        "quantsweep",
        "sweep",
        str(spec_path),
        "--out",
        str(out),
        "--backend",
        "ray",
        "--address",
        ray_cluster,
    ]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        first = _wait_for(
            lambda: cell_files(out) if (out / "cells").is_dir() else None, "the first cell of the killed driver's sweep"
        )
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.stderr.close()
    assert driver.returncode == -signal.SIGKILL
    assert len(cell_files(out)) < 6, "the driver finished before it was killed; the test proves nothing"
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S, env=dict(os.environ))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "already done" in rerun.stdout + rerun.stderr
    cells = {c["key"]: c for c in _assert_complete_and_equal(out, local_reference)}
    for kept in first:  # the cells stored before the kill were not computed again
        assert cells[kept["key"]]["finished_at"] == kept["finished_at"]
        assert cells[kept["key"]]["ran_on"] == kept["ran_on"]


def test_a_unit_whose_retries_are_spent_leaves_failed_cells_not_a_hang(ray_cluster, tmp_path):
    """With no retries left, the driver stores the dead unit's missing cells as failed, with Ray's error."""
    from quantsweep.sweep.context import UnitContext
    from quantsweep.sweep.plan import plan_sweep
    from quantsweep.sweep.ray import run_ray
    from quantsweep.sweep.spec import load_spec
    from quantsweep.sweep.store import CellStore

    spec = {**TOY_SPEC, "recipes": ["w8-rtn"]}
    store = CellStore(tmp_path / "out")
    plan = plan_sweep(load_spec(spec), store)
    keys = {(c.recipe.name, c.task): c.key for c in plan.cells}
    outcome = {}
    driver = threading.Thread(
        target=lambda: outcome.update(
            summaries=run_ray(plan, UnitContext.from_plan(plan, store.directory), max_retries=0)
        ),
        daemon=True,
    )
    driver.start()
    target = keys[("w8-rtn", "toy_mc4")]
    pid = _wait_for(lambda: _claim_pid(store.directory, target), "a worker to claim w8-rtn's cells")
    os.kill(pid, signal.SIGKILL)
    driver.join(DEADLINE_S)
    assert not driver.is_alive()
    by_key = {s["key"]: s for s in outcome["summaries"]}
    assert set(by_key) == set(keys.values())  # every cell accounted for, once
    for task in TOY_SPEC["tasks"]:
        failed = store.read_cell(keys[("w8-rtn", task)])
        assert failed["status"] == "failed" and failed["stage"] == "running on Ray"
        assert "Worker" in failed["error"] or "worker" in failed["error"], failed["error"]
        assert store.read_cell(keys[("fp", task)])["status"] == "done"
