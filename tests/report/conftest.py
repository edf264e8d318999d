"""Fixture of the report tests: one small real toy sweep, shared by the tests that need it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def toy_sweep(tmp_path_factory):
    """A real toy sweep: fp, w8-rtn and w1-rtn on a multiple-choice and a perplexity task, 60 documents."""
    from quantsweep.sweep.runner import RunSpec, run

    out = tmp_path_factory.mktemp("toy-sweep")
    run(
        RunSpec(
            model="toy", recipes=["w8-rtn", "w1-rtn"], tasks=["toy_mc4", "toy_ppl"], limit=60, device="cpu", out_dir=out
        )
    )
    return out


@pytest.fixture(scope="session")
def two_model_sweep(tmp_path_factory):
    """A real sweep of two models (the toy in float32 and in bfloat16): fp, w8-rtn and w1-rtn, 40 documents."""
    from quantsweep.sweep.api import run_sweep

    out = tmp_path_factory.mktemp("two-models")
    spec = {
        "models": [
            {"name": "toy-fp32", "path": "toy", "device": "cpu", "dtype": "float32"},
            {"name": "toy-bf16", "path": "toy", "device": "cpu", "dtype": "bfloat16"},
        ],
        "recipes": ["w8-rtn", "w1-rtn"],
        "tasks": ["toy_mc4", "toy_ppl"],
        "limit": 40,
    }
    run_sweep(spec, out, progress=False)
    return out
