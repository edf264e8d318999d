"""The toy paper grid gives the values and verdicts recorded before the restructure (issue 15).

``tests/data/paper_grid_golden.jsonl`` was written from ``results.jsonl`` of

    quantsweep run --model toy --recipe paper-grid --tasks toy_mc4,toy_mc2,toy_ppl,toy_gen

on main at c691deb (before issue 15), CPU, torch 2.13.0+cpu, fp32. A structural change must
reproduce every row: the same cells, verdicts, reasons and numbers.
"""

import json
import math
from pathlib import Path

import pytest

from quantsweep.cli import main

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "paper_grid_golden.jsonl"
NUMBERS = ("value", "stderr", "delta", "ci_low", "ci_high", "p_value", "retained", "chance")
EXACT = ("n", "verdict", "nonfinite_samples", "reason", "primary")


def _rows(lines):
    rows = {}
    for line in lines:
        record = json.loads(line)
        rows[(record["recipe"], record["task"], record["metric"])] = record
    return rows


def _same_number(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


@pytest.mark.slow
def test_toy_paper_grid_matches_the_record_from_before_the_restructure(tmp_path):
    code = main(
        [
            "run",
            "--model",
            "toy",
            "--recipe",
            "paper-grid",
            "--tasks",
            "toy_mc4,toy_mc2,toy_ppl,toy_gen",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    golden = _rows(GOLDEN.read_text().splitlines())
    now = _rows((tmp_path / "results.jsonl").read_text().splitlines())
    assert sorted(now) == sorted(golden)
    for key, want in golden.items():
        got = now[key]
        for field in EXACT:
            assert got[field] == want[field], (key, field, got[field], want[field])
        for field in NUMBERS:
            assert _same_number(got[field], want[field]), (key, field, got[field], want[field])
