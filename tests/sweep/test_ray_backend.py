"""The Ray backend on a real local Ray (2 CPUs): same cells as the local backend, failures recorded."""

from __future__ import annotations

import os
import shutil
import socket

import pytest
from ray_helpers import TOY_SPEC, cell_files, judged_rows

pytestmark = pytest.mark.slow


def test_ray_sweep_equals_local_cell_for_cell(ray_cluster, local_reference, tmp_path):
    import quantsweep

    frame = quantsweep.sweep(TOY_SPEC, out=tmp_path, backend="ray", progress=False)
    rows = judged_rows(tmp_path)
    assert set(rows) == set(local_reference)
    for key, (value, verdict) in local_reference.items():
        assert rows[key][1] == verdict, key
        assert rows[key][0] == pytest.approx(value, rel=1e-12, abs=0), key
    assert len(frame) == len(rows)
    cells = cell_files(tmp_path)
    assert len(cells) == 3 * 2  # (fp, w8-rtn, w2-rtn) x (toy_mc4, toy_ppl)
    for cell in cells:  # every cell ran in a Ray worker, and says where
        assert cell["status"] == "done"
        assert cell["ran_on"]["pid"] != os.getpid()
        assert cell["ran_on"]["host"] == socket.gethostname()
        assert cell["ran_on"]["device"] == "cpu"


def test_ray_rerun_computes_nothing(ray_cluster, tmp_path):
    import quantsweep
    from quantsweep.sweep.api import run_sweep

    spec = {**TOY_SPEC, "recipes": ["w8-rtn"], "tasks": ["toy_mc4"]}
    quantsweep.sweep(spec, out=tmp_path, backend="ray", progress=False)
    before = {c["key"]: c["finished_at"] for c in cell_files(tmp_path)}
    again = run_sweep(spec, tmp_path, backend="ray", progress=False)
    assert again.computed == [] and not again.plan.to_run
    assert {c["key"]: c["finished_at"] for c in cell_files(tmp_path)} == before


def test_model_unreadable_on_the_worker_node_is_a_failed_cell(ray_cluster, tmp_path):
    """The driver could read the checkpoint when it planned; the worker's node cannot."""
    from helpers.checkpoints import write_hf_model

    from quantsweep.sweep.context import UnitContext
    from quantsweep.sweep.plan import plan_sweep
    from quantsweep.sweep.ray import run_ray
    from quantsweep.sweep.spec import load_spec
    from quantsweep.sweep.store import CellStore

    checkpoint = tmp_path / "llama"
    write_hf_model(checkpoint)
    spec = load_spec(
        {
            "models": [{"name": "tiny", "path": str(checkpoint), "device": "cpu"}],
            "recipes": ["w8-rtn"],
            "tasks": ["toy_mc4"],
            "limit": 10,
        }
    )
    store = CellStore(tmp_path / "out")
    plan = plan_sweep(spec, store)
    shutil.rmtree(checkpoint)  # gone on "the worker's node" (the same machine here)
    summaries = run_ray(plan, UnitContext.from_plan(plan, store.directory))
    assert len(summaries) == 2 and {s["status"] for s in summaries} == {"failed"}
    for cell in cell_files(store.directory):
        assert cell["status"] == "failed" and cell["stage"] == "loading the model"
        assert str(checkpoint) in cell["error"] and socket.gethostname() in cell["error"]
