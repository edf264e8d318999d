"""The driver's judged records stay current while workers store cells during judging."""

from __future__ import annotations

import json
import shutil

import pytest

from quantsweep.sweep.api import run_sweep
from quantsweep.sweep.derived import DerivedFiles
from quantsweep.sweep.store import CellStore
from quantsweep.verdicts.config import VerdictConfig

SPEC = {
    "models": [{"name": "toy", "path": "toy", "device": "cpu"}],
    "recipes": ["w2-rtn"],
    "tasks": ["toy_mc4"],
    "limit": 50,
    "seed": 1234,
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished toy store: the baseline and w2-rtn on toy_mc4, and the keys of both cells."""
    out = tmp_path_factory.mktemp("swept")
    outcome = run_sweep(SPEC, out, progress=False)
    keys = {cell.recipe.name: cell.key for cell in outcome.plan.cells}
    return out, keys


def _verdict(records, recipe):
    (row,) = [r for r in records if r["recipe"] == recipe and r["primary"]]
    return row["verdict"], row.get("baseline_missing")


def test_a_baseline_stored_while_its_recipe_is_judged_is_used_next_time(swept, tmp_path, monkeypatch):
    """A worker stores the baseline just after the driver looked for it: the next judging must pair them.

    The first judging sees no baseline (``baseline_missing``, no paired verdict). The cache must not
    record the baseline that appeared meanwhile as the one it was judged with, or the recipe keeps
    its unpaired verdict for good (the Ray fault test saw ``inconclusive`` for a ``degraded`` cell).
    """
    out, keys = swept
    expected = _verdict(DerivedFiles(CellStore(out), VerdictConfig()).records(), "w2-rtn")
    assert expected == ("degraded", None)

    store = CellStore(tmp_path / "store")
    (store.directory / "cells").mkdir(parents=True, exist_ok=True)
    shutil.copy(CellStore(out).cell_path(keys["w2-rtn"]), store.cell_path(keys["w2-rtn"]))
    derived = DerivedFiles(store, VerdictConfig())
    real_read = store.read_cell

    def read_then_store_the_baseline(key):
        found = real_read(key)
        if key == keys["fp"] and not store.cell_path(key).exists():  # the worker's write lands right after
            shutil.copy(CellStore(out).cell_path(key), store.cell_path(key))
        return found

    monkeypatch.setattr(store, "read_cell", read_then_store_the_baseline)
    first = _verdict(derived.records([keys["w2-rtn"]]), "w2-rtn")
    assert first[1] is True  # judged without its baseline: the race happened
    monkeypatch.setattr(store, "read_cell", real_read)
    assert _verdict(derived.records([keys["w2-rtn"]]), "w2-rtn") == expected


def test_a_baseline_replaced_within_one_clock_tick_is_judged_again(swept, tmp_path):
    """A failed baseline replaced by a done one with the very same modification time is still seen as new."""
    import json
    import os

    out, keys = swept
    store = CellStore(tmp_path / "store")
    (store.directory / "cells").mkdir(parents=True, exist_ok=True)
    shutil.copy(CellStore(out).cell_path(keys["w2-rtn"]), store.cell_path(keys["w2-rtn"]))
    done = CellStore(out).read_cell(keys["fp"])
    failed = {**done, "status": "failed", "error": "", "tasks": {}}
    store.write_cell(failed)
    padding = len(json.dumps(done, separators=(",", ":"))) - store.cell_path(keys["fp"]).stat().st_size + 1
    store.write_cell({**failed, "error": "x" * padding})  # the failed version is as long as the done one
    assert store.cell_path(keys["fp"]).stat().st_size == len(json.dumps(done, separators=(",", ":"))) + 1
    derived = DerivedFiles(store, VerdictConfig())
    assert _verdict(derived.records([keys["w2-rtn"]]), "w2-rtn")[0] != "degraded"
    assert store.status(keys["fp"]) == "failed"
    tick = store.cell_path(keys["fp"]).stat().st_mtime_ns
    store.write_cell(done)
    os.utime(store.cell_path(keys["fp"]), ns=(tick, tick))  # the same coarse timestamp as the failed version
    assert json.loads(store.cell_path(keys["fp"]).read_text())["status"] == "done"
    assert store.status(keys["fp"]) == "done"
    assert _verdict(derived.records([keys["w2-rtn"]]), "w2-rtn") == ("degraded", None)


def test_a_control_stored_after_its_recipe_was_judged_is_taken_into_account(tmp_path):
    """The A/A control lands after the recipe was judged (on Ray the baseline's unit runs it last): judged again."""
    spec = {**SPEC, "aa_control": True}
    outcome = run_sweep(spec, tmp_path / "full", progress=False)
    keys = {cell.recipe.name: cell.key for cell in outcome.plan.cells}
    full, store = CellStore(tmp_path / "full"), CellStore(tmp_path / "store")
    (store.directory / "cells").mkdir(parents=True, exist_ok=True)
    for name in ("fp", "w2-rtn"):
        shutil.copy(full.cell_path(keys[name]), store.cell_path(keys[name]))
    derived = DerivedFiles(store, VerdictConfig(), plan=outcome.plan)

    def aa_nonzero():
        (row,) = [r for r in derived.records([keys["w2-rtn"]]) if r["primary"]]
        return row["aa_nonzero"]

    assert aa_nonzero() is None  # no control yet
    shutil.copy(full.cell_path(keys["fp-aa"]), store.cell_path(keys["fp-aa"]))
    assert aa_nonzero() is False  # the control's difference is read: exactly zero on CPU


def test_a_cell_stored_during_a_rebuild_is_judged_by_the_next_refresh(swept, tmp_path):
    """results.jsonl is dated when its cells were listed: a cell stored while it was written is seen as newer."""
    import os
    import time

    from quantsweep.sweep.api import refresh_derived
    from quantsweep.sweep.derived import CLOCK_SLACK_NS

    out, keys = swept
    store = CellStore(tmp_path / "store")
    (store.directory / "cells").mkdir(parents=True, exist_ok=True)
    shutil.copy(CellStore(out).cell_path(keys["fp"]), store.cell_path(keys["fp"]))
    derived = DerivedFiles(store, VerdictConfig())
    real_records = derived.records

    def records_then_a_worker_stores(keys_=None):
        found = real_records(keys_)
        shutil.copy(CellStore(out).cell_path(keys["w2-rtn"]), store.cell_path(keys["w2-rtn"]))  # after the listing
        return found

    derived.records = records_then_a_worker_stores
    assert {r["recipe"] for r in derived.rebuild()} == {"fp"}
    time.sleep(CLOCK_SLACK_NS / 1e9)  # the next report comes later than the file system's clock slack
    assert refresh_derived(store.directory)  # the driver died here: the next report judges the late cell
    assert {json.loads(line)["recipe"] for line in (store.directory / "results.jsonl").read_text().splitlines()} == {
        "fp",
        "w2-rtn",
    }
    assert not refresh_derived(store.directory)  # now current: nothing judged again
    tick = 1_700_000_000_000_000_000  # a store unpacked from an archive: every file dated the same second
    for path in [*(store.directory / "cells").glob("*.json"), store.directory / "results.jsonl"]:
        os.utime(path, ns=(tick, tick))
    assert not refresh_derived(store.directory)
