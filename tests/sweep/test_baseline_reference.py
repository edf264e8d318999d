"""A recipe cell and its baseline's stored distributions: the cluster race, an older store, a resume.

The race is made deterministic without Ray: the baseline cell is held by "another host"
(a claim file written here), the recipe's unit runs in this thread, and the baseline's
files land only once the recipe cell has said that it waits.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from types import SimpleNamespace

import pytest
from helpers.sweeps import run_toy_sweep, stored_cells, toy_spec

from quantsweep.sweep.context import UnitContext
from quantsweep.sweep.plan import group_units, plan_sweep
from quantsweep.sweep.reference import BaselineReference
from quantsweep.sweep.spec import spec_from_dict
from quantsweep.sweep.store import CellStore

LIMIT = 20
SPEC = toy_spec(recipes=["w8-rtn"], limit=LIMIT)
REFERENCE_LOGGER = "quantsweep.sweep.reference"
WAIT_S = 2.0  # how long the raced baseline keeps the recipe cell waiting (s)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    """The local backend's run of ``SPEC``: the baseline runs first, so every divergence is there."""
    out = tmp_path_factory.mktemp("local")
    run_toy_sweep(out, recipes=["w8-rtn"], limit=LIMIT)
    return out


def _units(out):
    """The baseline's unit and the recipe's unit of ``SPEC`` in store ``out``, as a 2-slot cluster splits them."""
    store = CellStore(out)
    plan = plan_sweep(spec_from_dict(SPEC), store)
    baseline, recipe = group_units(list(plan.to_run), {"toy": 2})
    return store, plan, baseline, recipe


def _hold_claim(store, key, host="another-host"):
    """A live claim on ``key`` by a process elsewhere (another host: its pid is not checked here)."""
    path = store.directory / "claims" / f"{key}.claim"
    path.write_text(json.dumps({"host": host, "pid": 1, "started": time.time(), "token": "elsewhere"}))
    return path


class _Said(logging.Handler):
    """Sets an event when the reference logger says that a cell waits."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.waiting = threading.Event()

    def emit(self, record):
        if " waits " in record.getMessage():
            self.waiting.set()


def test_a_recipe_cell_that_gets_there_first_waits_for_its_baseline(local_store, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("quantsweep.sweep.reference.POLL_S", 0.05)
    out = tmp_path / "race"
    store, plan, baseline_unit, recipe_unit = _units(out)
    claims = [_hold_claim(store, cell.key) for cell in baseline_unit.cells]
    said = _Said()
    logging.getLogger(REFERENCE_LOGGER).addHandler(said)

    def baseline_finishes_later():
        assert said.waiting.wait(120), "the recipe cell never waited"
        time.sleep(WAIT_S)  # a baseline that takes a while yet
        for cell in baseline_unit.cells:  # as run_unit does: the reference, then the cell file, then the claim
            reference = local_store / "references" / f"{cell.key}.npz"
            if reference.exists():
                store.write_reference(cell.key, reference.read_bytes())
            store.write_cell(json.loads((local_store / "cells" / f"{cell.key}.json").read_text()))
        for claim in claims:
            claim.unlink()

    thread = threading.Thread(target=baseline_finishes_later)
    thread.start()
    try:
        from quantsweep.sweep.cell import run_unit

        with caplog.at_level(logging.INFO, logger="quantsweep"):
            summaries = run_unit(recipe_unit, UnitContext.from_plan(plan, out))
    finally:
        said.waiting.set()
        thread.join()
        logging.getLogger(REFERENCE_LOGGER).removeHandler(said)
    assert [s["status"] for s in summaries] == ["done", "done"]
    raced, local = stored_cells(out), stored_cells(local_store)
    ppl = raced[("w8-rtn", "toy_ppl")]
    assert ppl["tasks"]["toy_ppl"]["divergence"] == local[("w8-rtn", "toy_ppl")]["tasks"]["toy_ppl"]["divergence"]
    assert ppl["tasks"]["toy_ppl"]["divergence"]["positions"] > 0
    assert ppl["evaluate"]["baseline_wait_seconds"] >= WAIT_S
    assert ppl["evaluate"]["seconds"] < WAIT_S  # the evaluation's own time leaves the wait out
    waits = [r for r in caplog.records if " waits " in r.getMessage()]
    assert len(waits) == 1 and ppl["key"] in waits[0].getMessage()  # the multiple-choice cell never waits
    assert " waits " in store.log_path(ppl["key"]).read_text()  # and the cell's own log says so
    assert raced[("w8-rtn", "toy_mc4")]["evaluate"]["baseline_wait_seconds"] == 0.0


def test_a_baseline_from_an_older_quantsweep_says_so_once(local_store, tmp_path, caplog):
    from quantsweep.sweep.api import judge
    from quantsweep.sweep.cell import run_unit

    out = tmp_path / "older"
    store, plan, baseline_unit, recipe_unit = _units(out)
    for cell in baseline_unit.cells:  # stored before references existed: no file, no divergence_reference field
        record = json.loads((local_store / "cells" / f"{cell.key}.json").read_text())
        del record["divergence_reference"]
        store.write_cell(record)
    with caplog.at_level(logging.INFO, logger="quantsweep"):
        run_unit(recipe_unit, UnitContext.from_plan(plan, out))
    messages = [r for r in caplog.records if r.name == REFERENCE_LOGGER]
    assert len(messages) == 1 and messages[0].levelno == logging.WARNING
    ppl_baseline = next(c.key for c in baseline_unit.cells if c.task == "toy_ppl")
    text = messages[0].getMessage()
    assert ppl_baseline in text and "older quantsweep" in text and "--force" in text
    ppl = stored_cells(out)[("w8-rtn", "toy_ppl")]
    assert "older quantsweep" in ppl["tasks"]["toy_ppl"]["divergence"]["error"]
    assert ppl["evaluate"]["baseline_wait_seconds"] < 1.0  # nothing to wait for
    record = next(r for r in judge(out) if r["recipe"] == "w8-rtn" and r["task"] == "toy_ppl" and r["primary"])
    assert record["divergence_kind"] == "token" and record["kl_mean"] is None
    assert "older quantsweep" in record["divergence_error"]


def test_a_recipe_added_later_reads_the_stored_baseline_without_waiting(tmp_path, caplog):
    out = tmp_path / "resume"
    run_toy_sweep(out, recipes=["w8-rtn"], limit=LIMIT)
    with caplog.at_level(logging.INFO, logger="quantsweep"):
        result = run_toy_sweep(out, recipes=["w4-rtn"], limit=LIMIT)
    assert {c["recipe"] for c in result.computed} == {"w4-rtn"}
    assert not [r for r in caplog.records if r.name == REFERENCE_LOGGER]
    w4 = stored_cells(out)[("w4-rtn", "toy_ppl")]
    assert w4["tasks"]["toy_ppl"]["divergence"]["positions"] > 0 and w4["tasks"]["toy_ppl"]["divergence"]["kl_mean"] > 0
    assert w4["evaluate"]["baseline_wait_seconds"] < 1.0


# ---------------------------------------------------------------------- the lookup alone
def _lookup(tmp_path, **options):
    store = CellStore(tmp_path / "store")
    run = SimpleNamespace(started_at=0.0, force=False, retry_failed=False)
    cell = SimpleNamespace(key="w4", baseline_key="fp", task="toy_ppl")
    return store, BaselineReference(store, cell, run, poll_s=0.02, **options)


def test_a_baseline_whose_owner_dies_is_given_up_naming_it(tmp_path, caplog):
    store, lookup = _lookup(tmp_path)
    claim = _hold_claim(store, "fp")
    threading.Timer(0.2, claim.unlink).start()  # the owner goes without storing the cell
    with caplog.at_level(logging.INFO, logger=REFERENCE_LOGGER):
        reason = lookup("toy_ppl")
    assert "fp" in reason and "died" in reason and lookup.waited >= 0.15
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "baseline cell fp" in warnings[0]
    assert lookup("toy_ppl") == reason  # kept: an out-of-memory retry does not wait again


def test_a_stale_owner_is_given_up_at_once(tmp_path):
    store, lookup = _lookup(tmp_path)
    claim = _hold_claim(store, "fp")
    old = time.time() - 10 * store.stale_after_s
    os.utime(claim, (old, old))
    started = time.monotonic()
    assert "baseline cell fp" in lookup("toy_ppl")
    assert time.monotonic() - started < 5


def test_the_wait_is_bounded(tmp_path, caplog):
    store, lookup = _lookup(tmp_path, wait_s=0.2)
    _hold_claim(store, "fp")
    with caplog.at_level(logging.WARNING, logger=REFERENCE_LOGGER):
        reason = lookup("toy_ppl")
    assert "not stored within 0.2 s" in reason and "baseline cell fp" in caplog.text
    assert 0.15 <= lookup.waited < 5


def test_a_failed_baseline_is_named(tmp_path, caplog):
    store, lookup = _lookup(tmp_path)
    store.write_cell({"key": "fp", "status": "failed", "error": "RuntimeError: out of memory"})
    with caplog.at_level(logging.WARNING, logger=REFERENCE_LOGGER):
        reason = lookup("toy_ppl")
    assert reason.startswith("the baseline cell fp failed (RuntimeError: out of memory)")
    assert "failed" in caplog.text and lookup.waited < 1.0


def test_a_second_cell_of_the_same_baseline_does_not_wait_again(tmp_path):
    gave_up: dict[str, str] = {}
    store, first = _lookup(tmp_path, wait_s=0.3, gave_up=gave_up)
    _hold_claim(store, "fp")
    reason = first("toy_ppl")
    assert first.waited >= 0.25 and gave_up == {"fp": reason}
    second = BaselineReference(
        store, SimpleNamespace(key="w2", baseline_key="fp", task="toy_ppl"), first.run, poll_s=0.02, gave_up=gave_up
    )
    assert second("toy_ppl") == reason and second.waited < 0.2  # the unit's memo: no second 0.3 s wait


def test_under_force_an_earlier_runs_reference_is_not_taken_for_the_new_one(local_store, tmp_path):
    import shutil

    out = tmp_path / "store"
    shutil.copytree(local_store, out)
    store = CellStore(out)
    plan = plan_sweep(spec_from_dict(SPEC), store)
    baseline = next(cell for cell in plan.cells if cell.is_baseline and cell.task == "toy_ppl")
    assert store.read_reference(baseline.key) is not None  # left by the earlier run
    cell = SimpleNamespace(key="w8", baseline_key=baseline.key, task="toy_ppl")
    forced = SimpleNamespace(started_at=time.time() + 1, force=True, retry_failed=False)
    _hold_claim(store, baseline.key)  # the forced baseline is being recomputed elsewhere
    lookup = BaselineReference(store, cell, forced, wait_s=0.2, poll_s=0.02)
    assert "not stored within" in lookup("toy_ppl")  # waited for the new one, did not take the old
    kept = SimpleNamespace(started_at=time.time() + 1, force=False, retry_failed=False)
    assert not isinstance(BaselineReference(store, cell, kept, wait_s=0.2, poll_s=0.02)("toy_ppl"), str)


def test_under_force_a_failed_baseline_is_said_not_replaced_by_the_earlier_runs_reference(local_store, tmp_path):
    """The forced baseline failed in this run: its failure is the reason, never the previous run's distributions."""
    import shutil

    out = tmp_path / "store"
    shutil.copytree(local_store, out)
    store = CellStore(out)
    plan = plan_sweep(spec_from_dict(SPEC), store)
    baseline = next(cell for cell in plan.cells if cell.is_baseline and cell.task == "toy_ppl")
    forced = SimpleNamespace(started_at=time.time(), force=True, retry_failed=False)
    time.sleep(0.05)
    store.write_cell({"key": baseline.key, "status": "failed", "error": "RuntimeError: boom"})  # failed in this run
    assert store.read_reference(baseline.key) is not None  # the earlier run's file is still there
    cell = SimpleNamespace(key="w8", baseline_key=baseline.key, task="toy_ppl")
    reason = BaselineReference(store, cell, forced, wait_s=0.2, poll_s=0.02)("toy_ppl")
    assert isinstance(reason, str) and "failed (RuntimeError: boom)" in reason
