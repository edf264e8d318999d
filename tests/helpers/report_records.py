"""Hand-made result records for the report tests (only the fields the report reads)."""

from __future__ import annotations

import json

CONFIG = {"alpha": 0.05, "ci_level": 0.95, "accuracy_tolerance": 0.01}


def record(recipe, task, verdict, value, *, method="rtn", bits=4, family="multiple_choice", metric="acc", **fields):
    """One primary result record as the runner writes it (only the fields the report reads)."""
    base = {
        "model": "toy",
        "recipe": recipe,
        "recipe_config": {"name": recipe, "method": method, "bits": bits},
        "task": task,
        "family": family,
        "metric": metric,
        "primary": True,
        "value": value,
        "stderr": 0.01,
        "n": 400,
        "verdict": verdict,
        "reason": f"reason of {recipe}/{task}",
        "delta": -0.01,
        "ci_low": -0.02,
        "ci_high": 0.0,
        "p_value": 0.3,
        "retained": 0.9,
        "chance": 0.25,
        "device": "cpu",
        "dtype": "float32",
        "torch_version": "2.13.0+cpu",
        "verdict_config": CONFIG,
        "error": None,
    }
    if method == "none":
        base["recipe_config"] = {"name": recipe, "method": "none"}
    base.update(fields)
    return base


def write_records(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder
