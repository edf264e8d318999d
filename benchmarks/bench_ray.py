"""A toy sweep on the local backend, on Ray with 1 worker and on Ray with 2 workers, in one run.

The same spec (the toy model, the baseline and ``--recipes`` RTN recipes, ``--tasks``,
``--limit`` documents each, on CPU) is swept into a fresh store by:

* ``local``: this process, one unit (the model loaded once), also timed ``cold`` (the
  first sweep of the process: imports, task set-up) and ``warm``;
* ``ray-1``: a local Ray started with ``num_cpus=1``, so one unit runs at a time;
* ``ray-2``: a local Ray with ``num_cpus=2``: the model's recipes split into two
  units (two loads) that run side by side.

Each configuration is timed ``cold`` (the first sweep: Ray starts worker processes,
which import torch, transformers and lm-eval; locally, the process's first imports and
task set-up) and then ``--repeats`` times ``warm`` (each into another fresh store, on the
workers left from before); the warm figure is the best of those, the least disturbed by
other jobs on the machine.
Ray's start-up (``ray.init``) is timed apart. Reported:

* overhead = ray-1 / local (what Ray costs for the same serial work);
* scaling  = ray-1 / ray-2 (what a second worker buys; ideal 2.0);
* each run's busy time: the sum over its cells of the quantize and evaluate seconds
  recorded in the cell files, i.e. the work without scheduling and loading.

Every worker and this process use one thread (``OMP_NUM_THREADS=1``), so a worker is
one core. Writes ``benchmarks/results/bench_ray.json``::

    OMP_NUM_THREADS=1 python benchmarks/bench_ray.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "bench_ray.json"
RECIPES = ["w8-rtn", "w4-rtn", "w2-rtn"]


def spec(recipes: list[str], tasks: list[str], limit: int) -> dict:
    """The benchmark's sweep spec (the baseline ``fp`` is added by the planner)."""
    return {
        "models": [{"name": "toy", "path": "toy", "device": "cpu"}],
        "recipes": recipes,
        "tasks": tasks,
        "limit": limit,
        "seed": 1234,
    }


def busy_seconds(store: Path) -> float:
    """Sum of the quantize (once per recipe) and evaluate seconds recorded in the cell files."""
    total, quantized = 0.0, set()
    for path in (store / "cells").glob("*.json"):
        cell = json.loads(path.read_text())
        total += cell["evaluate"]["seconds"]
        if cell["recipe"] not in quantized:
            quantized.add(cell["recipe"])
            total += cell["quantize"]["seconds"]
    return total


def timed_sweep(the_spec: dict, backend: str, folder: Path) -> dict:
    """Sweep into a fresh store; the wall time, cells and busy seconds."""
    from quantsweep.sweep.api import run_sweep

    started = time.perf_counter()
    result = run_sweep(the_spec, folder, backend=backend, progress=False)
    seconds = time.perf_counter() - started
    failed = [s for s in result.computed if s["status"] != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} cells failed: {failed[0]['error']}")
    hosts = sorted({json.dumps(s["ran_on"], sort_keys=True) for s in result.computed})
    return {
        "seconds": round(seconds, 2),
        "cells": len(result.computed),
        "busy_seconds": round(busy_seconds(folder), 2),
        "workers_seen": len({json.loads(h)["pid"] for h in hosts}),
    }


def cold_and_warm(the_spec: dict, backend: str, scratch: Path, name: str, repeats: int) -> dict:
    """One cold sweep, then ``repeats`` warm ones; the warm entry is the fastest."""
    cold = timed_sweep(the_spec, backend, scratch / f"{name}-cold")
    warm = [timed_sweep(the_spec, backend, scratch / f"{name}-warm{i}") for i in range(repeats)]
    return {
        "cold": cold,
        "warm": min(warm, key=lambda run: run["seconds"]),
        "warm_seconds_all": [run["seconds"] for run in warm],
    }


def ray_runs(the_spec: dict, num_cpus: int, scratch: Path, repeats: int) -> dict:
    """Start a local Ray with ``num_cpus`` CPUs, sweep cold and warm, shut it down."""
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    startup = time.perf_counter() - started
    try:
        runs = cold_and_warm(the_spec, "ray", scratch, f"ray{num_cpus}", repeats)
    finally:
        ray.shutdown()
    return {"ray_init_seconds": round(startup, 2), **runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--tasks", default="toy_mc4,toy_ppl")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="warm sweeps per configuration (best is kept)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import ray
    import torch

    torch.set_num_threads(1)
    load_at_start = os.getloadavg()[0]  # other jobs on the machine make every number noisier
    the_spec = spec(args.recipes.split(","), args.tasks.split(","), args.limit)
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        scratch = Path(tmp)
        local = cold_and_warm(the_spec, "local", scratch, "local", args.repeats)
        one = ray_runs(the_spec, 1, scratch, args.repeats)
        two = ray_runs(the_spec, 2, scratch, args.repeats)
    result = {
        "benchmark": "bench_ray",
        "spec": the_spec,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_1m_at_start": load_at_start,
            "load_average_1m_at_end": os.getloadavg()[0],
            "torch": torch.__version__,
            "ray": ray.__version__,
            "omp_num_threads": os.environ["OMP_NUM_THREADS"],
        },
        "local": local,
        "ray_1_worker": one,
        "ray_2_workers": two,
        "overhead_ray1_vs_local": {
            "cold": round(one["cold"]["seconds"] / local["cold"]["seconds"], 2),
            "warm": round(one["warm"]["seconds"] / local["warm"]["seconds"], 2),
        },
        "scaling_ray2_vs_ray1": {
            "cold": round(one["cold"]["seconds"] / two["cold"]["seconds"], 2),
            "warm": round(one["warm"]["seconds"] / two["warm"]["seconds"], 2),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    logging.getLogger("bench_ray").warning("wrote %s", args.out)
    json.dump(
        {
            k: result[k]
            for k in ("local", "ray_1_worker", "ray_2_workers", "overhead_ray1_vs_local", "scaling_ray2_vs_ray1")
        },
        sys.stdout,
        indent=2,
    )
    sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    main()
