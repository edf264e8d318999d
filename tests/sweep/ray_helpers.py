"""Shared pieces of the Ray tests: the toy spec, a local reference sweep, and cell readers.

The spec is the smallest one that still exercises the backend: the toy model, the
baseline and two recipes (so a model is split into two units on a 2-CPU Ray), two
tasks, 50 documents each.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

TOY_SPEC = {
    "models": [{"name": "toy", "path": "toy", "device": "cpu"}],
    "recipes": ["w8-rtn", "w2-rtn"],
    "tasks": ["toy_mc4", "toy_ppl"],
    "limit": 50,
    "seed": 1234,
}


def write_spec(folder: Path, spec: dict = TOY_SPEC) -> Path:
    """The spec as a YAML file in ``folder``."""
    path = Path(folder) / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cell_files(out: Path) -> list[dict]:
    """Every cell file of a store, parsed."""
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob("*.json"))]


def judged_rows(out: Path) -> dict[tuple, tuple]:
    """(model, recipe, task, metric) -> (value, verdict), from the store's results.jsonl.

    Raises AssertionError when one (model, recipe, task, metric) appears twice.
    """
    rows = {}
    for line in (Path(out) / "results.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        key = (row["model"], row["recipe"], row["task"], row["metric"])
        assert key not in rows, f"{key} appears twice in results.jsonl"
        rows[key] = (row["value"], row.get("verdict"))
    return rows


def keys_by_recipe(spec: dict, out: Path) -> dict[tuple[str, str], str]:
    """(recipe, task) -> cell key, as the planner computes it."""
    from quantsweep.sweep.plan import plan_sweep
    from quantsweep.sweep.spec import load_spec
    from quantsweep.sweep.store import CellStore

    plan = plan_sweep(load_spec(spec), CellStore(out))
    return {(cell.recipe.name, cell.task): cell.key for cell in plan.cells}
