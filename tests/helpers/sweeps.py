"""Small sweeps of the toy model for the sweep tests: specs, running, and reading a store back.

Example:
    >>> result = run_toy_sweep(tmp_path / "out", recipes=["w8-rtn"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

TOY_TASKS = ("toy_mc4", "toy_ppl")
LIMIT = 60


def toy_spec(recipes=("w8-rtn",), tasks=TOY_TASKS, limit=LIMIT, **extra) -> dict:
    """A one-model toy spec on CPU."""
    return {
        "models": [{"path": "toy", "device": "cpu"}],
        "recipes": list(recipes),
        "tasks": list(tasks),
        "limit": limit,
        **extra,
    }


def run_toy_sweep(out, recipes=("w8-rtn",), tasks=TOY_TASKS, limit=LIMIT, **options):
    """Run a toy sweep into ``out`` with the local backend and no progress bar."""
    from quantsweep.sweep.api import run_sweep

    return run_sweep(toy_spec(recipes, tasks, limit), out, progress=False, **options)


def stored_cells(out) -> dict[tuple[str, str], dict]:
    """(recipe, task) -> stored cell of a one-model store; fails on a duplicate (recipe, task)."""
    cells = {}
    for path in sorted((Path(out) / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        key = (cell["recipe"], cell["task"])
        assert key not in cells, f"two cell files for {key}"
        cells[key] = cell
    return cells


def result_values(out) -> dict[tuple[str, str, str], float]:
    """(recipe, task, metric) -> value from results.jsonl; fails on a duplicate row."""
    values = {}
    for line in (Path(out) / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        key = (record["recipe"], record["task"], record["metric"])
        assert key not in values, f"two records for {key}"
        values[key] = record["value"]
    return values
