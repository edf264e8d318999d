"""What the store, judging and scheduling of a sweep cost, measured in one run on ``toy``.

Three ways to compute the same R recipes x T tasks, in this one process:

* ``sweep``: :func:`quantsweep.sweep.api.run_sweep` into a fresh store (cell keys and
  fingerprints, claims, one atomic file per cell, re-judging and rewriting
  ``results.jsonl`` after every cell);
* ``steps``: the sum of that sweep's own quantize and evaluate steps, as its cell
  records report them (the work a sweep cannot avoid): the overhead is
  ``sweep / steps`` (goal: at most 1.2x);
* ``naive``: a loop that reloads the model for every recipe, quantizes, and evaluates
  all tasks in one lm-eval call (what a shell loop over ``quantsweep run`` does).

Usage::

    python benchmarks/bench_sweep_overhead.py [--limit 200] [--repeats 2]

Writes ``benchmarks/results/bench_sweep_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPES = ["w8-rtn", "w4-rtn", "w2-rtn"]
TASKS = ["toy_mc4", "toy_ppl"]


def run_sweep_once(limit: int) -> tuple[float, float]:
    from quantsweep.sweep.api import run_sweep

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = run_sweep(
            {"models": [{"path": "toy", "device": "cpu"}], "recipes": RECIPES, "tasks": TASKS, "limit": limit},
            out,
            progress=False,
        )
        wall = time.perf_counter() - start
        cells = [json.loads(p.read_text()) for p in Path(out, "cells").glob("*.json")]
        assert len(cells) == (len(RECIPES) + 1) * len(TASKS) and all(c["status"] == "done" for c in cells)
        quantize = {c["recipe"]: c["quantize"]["seconds"] for c in cells}  # once per recipe
        steps = sum(quantize.values()) + sum(c["evaluate"]["seconds"] for c in cells)
        assert len(result.records) > 0
    return wall, steps


def run_naive_once(limit: int) -> float:
    import quantsweep

    start = time.perf_counter()
    for recipe in ["fp", *RECIPES]:
        model, tokenizer = quantsweep.load_model("toy", device="cpu")
        quantsweep.quantize(model, recipe)
        quantsweep.evaluate(model, tokenizer, TASKS, limit=limit)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    run_naive_once(20)  # warm caches (lm-eval's task index, tokenizer files) for both paths
    sweeps, steps, naive = [], [], []
    for _ in range(options.repeats):
        wall, step = run_sweep_once(options.limit)
        sweeps.append(wall)
        steps.append(step)
        naive.append(run_naive_once(options.limit))
    row = {
        "recipes": ["fp", *RECIPES],
        "tasks": TASKS,
        "limit": options.limit,
        "repeats": options.repeats,
        "sweep_s": statistics.median(sweeps),
        "steps_s": statistics.median(steps),
        "naive_s": statistics.median(naive),
        "sweep_over_steps": statistics.median(w / s for w, s in zip(sweeps, steps)),
        "sweep_over_naive": statistics.median(w / n for w, n in zip(sweeps, naive)),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
    out = ROOT / "benchmarks" / "results" / "bench_sweep_overhead.json"
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
