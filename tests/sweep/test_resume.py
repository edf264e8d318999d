"""Resume, extend and re-judge: nothing lost, nothing computed twice, failures recorded."""

import json
import os
from dataclasses import dataclass

import pytest
from helpers.sweeps import result_values, run_toy_sweep, stored_cells

import quantsweep.eval.harness as harness
from quantsweep.methods.registry import RecipeConfig, register_method


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    result = run_toy_sweep(out, recipes=["w8-rtn"])
    return out, result


def _count_evaluations(monkeypatch):
    calls = []
    real = harness.evaluate

    def counting(model, tokenizer, tasks, *args, **kwargs):
        calls.append(tuple(tasks))
        return real(model, tokenizer, tasks, *args, **kwargs)

    monkeypatch.setattr(harness, "evaluate", counting)
    return calls


def test_first_sweep_stores_one_file_per_cell(first_sweep):
    out, result = first_sweep
    cells = stored_cells(out)
    assert sorted(cells) == [("fp", "toy_mc4"), ("fp", "toy_ppl"), ("w8-rtn", "toy_mc4"), ("w8-rtn", "toy_ppl")]
    assert all(c["status"] == "done" for c in cells.values())
    assert len(cells[("fp", "toy_mc4")]["tasks"]["toy_mc4"]["samples"]) == 60
    assert cells[("w8-rtn", "toy_mc4")]["baseline_key"] == cells[("fp", "toy_mc4")]["key"]
    assert result.plan.describe() == "0 of 4 cells already done; 4 to run"


def test_adding_a_recipe_keeps_everything_and_does_not_evaluate_fp_again(first_sweep, monkeypatch):
    out, _ = first_sweep
    before = {k: c["finished_at"] for k, c in stored_cells(out).items()}
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    calls = _count_evaluations(monkeypatch)
    result = run_toy_sweep(out, recipes=["w4-rtn"])
    assert result.plan.describe() == "2 of 4 cells already done; 2 to run"
    assert sorted(calls) == [("toy_mc4",), ("toy_ppl",)] and {c["recipe"] for c in result.computed} == {"w4-rtn"}
    cells = stored_cells(out)
    assert {recipe for recipe, _ in cells} == {"fp", "w8-rtn", "w4-rtn"}
    for key, finished in before.items():
        assert cells[key]["finished_at"] == finished
    assert all((out / "cells" / name).stat().st_mtime_ns == ns for name, ns in mtimes.items())
    values = result_values(out)
    assert {recipe for recipe, _, _ in values} == {"fp", "w8-rtn", "w4-rtn"}
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    w4 = next(r for r in records if r["recipe"] == "w4-rtn" and r["task"] == "toy_mc4" and r["primary"])
    assert w4["verdict"] in ("lossless", "inconclusive", "degraded") and w4["delta"] is not None  # judged against fp


def test_the_same_command_again_computes_nothing(first_sweep, monkeypatch):
    out, _ = first_sweep
    calls = _count_evaluations(monkeypatch)
    result = run_toy_sweep(out, recipes=["w8-rtn"])
    assert calls == [] and result.computed == []
    assert result.plan.describe() == "4 of 4 cells already done; 0 to run"
    assert {(r["recipe"], r["task"]) for r in result.records} == {
        (recipe, task) for recipe in ("fp", "w8-rtn") for task in ("toy_mc4", "toy_ppl")
    }


def test_another_limit_gives_new_keys_and_is_never_mixed_silently(first_sweep):
    out, _ = first_sweep
    result = run_toy_sweep(out, recipes=["w8-rtn"], tasks=["toy_mc4"], limit=30)
    assert result.plan.describe() == "0 of 2 cells already done; 2 to run"
    assert {r["n"] for r in result.records if r["primary"]} == {30}
    summary = json.loads((out / "summary.json").read_text())
    views = summary["models"]["toy"]
    assert sorted(view["setting"] for view in views.values()) == ["limit=30", "limit=60"]  # apart, labelled
    assert "more than one setting" in summary["warning"]
    assert all(view["by_recipe"]["w8-rtn"]["n_tasks"] <= 2 for view in views.values())  # never merged
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    w8 = [r for r in records if r["recipe"] == "w8-rtn" and r["task"] == "toy_mc4" and r["primary"]]
    assert sorted(r["n"] for r in w8) == [30, 60] and len({r["settings"] for r in w8}) == 2


def test_judge_from_disk_with_new_thresholds_evaluates_nothing(first_sweep, monkeypatch):
    import quantsweep

    out, _ = first_sweep

    def no_evaluation(*args, **kwargs):
        raise AssertionError("judging must not evaluate")

    monkeypatch.setattr(harness, "evaluate", no_evaluation)
    records = quantsweep.judge(out, alpha=0.01, accuracy_tolerance=0.05)
    assert records and all(r["verdict_config"]["alpha"] == 0.01 for r in records)
    stored = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["verdict_config"]["accuracy_tolerance"] == 0.05 for r in stored)
    with pytest.raises(ValueError, match="unknown key 'alpah'"):
        quantsweep.judge(out, alpah=0.01)


def test_load_results_and_sweep_return_dataframes(first_sweep, tmp_path):
    import quantsweep

    out, _ = first_sweep
    frame = quantsweep.load_results(out)
    assert {"model", "recipe", "task", "metric", "value", "verdict", "cell_key"} <= set(frame.columns)
    assert set(frame.recipe) >= {"fp", "w8-rtn", "w4-rtn"}
    with pytest.raises(ValueError, match="no results at"):
        quantsweep.load_results(tmp_path / "empty")


@dataclass(frozen=True, kw_only=True)
class _FlakyConfig(RecipeConfig):
    fail: bool = True


@register_method("test-flaky", config=_FlakyConfig)
def _apply_flaky(model, config, calibration=None):
    if os.environ.get("QUANTSWEEP_TEST_FLAKY") == "fail":
        raise RuntimeError("this recipe is broken today")
    return model


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on_then_retry_failed(tmp_path, monkeypatch):
    recipe = _FlakyConfig(name="flaky", method="test-flaky")
    monkeypatch.setenv("QUANTSWEEP_TEST_FLAKY", "fail")
    result = run_toy_sweep(tmp_path, recipes=[recipe, "w8-rtn"], tasks=["toy_mc4"])
    cells = stored_cells(tmp_path)
    assert cells[("flaky", "toy_mc4")]["status"] == "failed"
    assert "this recipe is broken today" in cells[("flaky", "toy_mc4")]["error"]
    assert cells[("flaky", "toy_mc4")]["stage"] == "quantizing"
    assert cells[("w8-rtn", "toy_mc4")]["status"] == "done"  # the sweep went on
    (error,) = [r for r in result.records if r["recipe"] == "flaky"]
    assert error["verdict"] == "error" and "broken today" in error["error"]
    again = run_toy_sweep(tmp_path, recipes=[recipe, "w8-rtn"], tasks=["toy_mc4"])
    assert again.computed == [] and "1 failed earlier" in again.plan.describe()
    monkeypatch.setenv("QUANTSWEEP_TEST_FLAKY", "ok")
    retried = run_toy_sweep(tmp_path, recipes=[recipe, "w8-rtn"], tasks=["toy_mc4"], retry_failed=True)
    assert [c["recipe"] for c in retried.computed] == ["flaky"]
    assert stored_cells(tmp_path)[("flaky", "toy_mc4")]["status"] == "done"


def test_out_of_memory_halves_the_batch_and_records_it(tmp_path, monkeypatch):
    real = harness.evaluate

    def small_memory(model, tokenizer, tasks, *args, batch_size=32, **kwargs):
        if tasks == ["toy_ppl"]:
            raise RuntimeError("NPU out of memory. Tried to allocate 40.00 GiB")
        if batch_size > 8:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, tokenizer, tasks, *args, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(harness, "evaluate", small_memory)
    run_toy_sweep(tmp_path, recipes=[])
    cells = stored_cells(tmp_path)
    mc4 = cells[("fp", "toy_mc4")]
    assert mc4["status"] == "done" and mc4["evaluate"]["batch_size_used"] == 8
    assert [r["batch_size"] for r in mc4["evaluate"]["oom_retries"]] == [32, 16]
    ppl = cells[("fp", "toy_ppl")]
    assert ppl["status"] == "failed" and ppl["error_kind"] == "out_of_memory" and ppl["batch_size_used"] == 1
    assert [r["batch_size"] for r in ppl["oom_retries"]] == [32, 16, 8, 4, 2, 1]


def test_force_recomputes_every_cell(tmp_path, monkeypatch):
    run_toy_sweep(tmp_path, recipes=[], tasks=["toy_mc4"])
    before = stored_cells(tmp_path)[("fp", "toy_mc4")]["finished_at"]
    calls = _count_evaluations(monkeypatch)
    result = run_toy_sweep(tmp_path, recipes=[], tasks=["toy_mc4"], force=True)
    assert calls == [("toy_mc4",)] and len(result.computed) == 1
    assert stored_cells(tmp_path)[("fp", "toy_mc4")]["finished_at"] >= before


def test_many_models_per_spec_each_loaded_once_and_judged_against_its_own_baseline(tmp_path, monkeypatch):
    import quantsweep.models.loading as models
    from quantsweep.sweep.api import run_sweep

    loads = []
    real = models.load_model

    def counting(path, *args, **kwargs):
        loads.append((str(path), kwargs.get("dtype")))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", counting)
    spec = {
        "models": [
            {"name": "toy-fp32", "path": "toy", "device": "cpu", "dtype": "float32"},
            {"name": "toy-bf16", "path": "toy", "device": "cpu", "dtype": "bfloat16"},
        ],
        "recipes": ["w8-rtn", "w4-rtn"],
        "tasks": ["toy_mc4"],
        "limit": 30,
    }
    result = run_sweep(spec, tmp_path, progress=False)
    assert sorted(loads) == [("toy", "bfloat16"), ("toy", "float32")]  # once per model, not per recipe
    primary = {(r["model"], r["recipe"]): r for r in result.records if r["primary"]}
    assert set(primary) == {(m, r) for m in ("toy-fp32", "toy-bf16") for r in ("fp", "w8-rtn", "w4-rtn")}
    assert primary[("toy-bf16", "fp")]["dtype"] == "bfloat16" and primary[("toy-fp32", "fp")]["dtype"] == "float32"
    cells = {json.loads(p.read_text())["key"]: json.loads(p.read_text()) for p in (tmp_path / "cells").glob("*.json")}
    for cell in cells.values():
        if not cell["is_baseline"]:
            assert cells[cell["baseline_key"]]["model"] == cell["model"]  # its own model's baseline
    spec["models"][1]["dtype"] = "float32"
    with pytest.raises(ValueError, match="are the same checkpoint with the same dtype"):
        run_sweep(spec, tmp_path, progress=False)


def test_the_current_spec_decides_the_baseline_and_the_labels(tmp_path):
    """A second sweep with another baseline (and a renamed model) judges stored cells by its own plan."""
    from quantsweep.sweep.api import run_sweep

    run_toy_sweep(tmp_path, recipes=["w8-rtn"], tasks=["toy_mc4"])
    spec = {
        "models": [{"name": "toy-renamed", "path": "toy", "device": "cpu"}],
        "baseline": "w8-rtn",
        "recipes": ["w4-rtn", "fp"],
        "tasks": ["toy_mc4"],
        "limit": 60,
    }
    result = run_sweep(spec, tmp_path, progress=False)
    rows = {r["recipe"]: r for r in result.records if r["primary"]}
    assert rows["w8-rtn"]["verdict"] == "baseline"
    assert rows["fp"]["verdict"] != "baseline" and rows["fp"]["delta"] is not None  # fp judged against w8
    assert {r["model"] for r in result.records} == {"toy-renamed"}


def test_judge_keeps_the_sweeps_own_thresholds(tmp_path):
    import quantsweep
    from quantsweep.sweep.api import run_sweep

    spec = {
        "models": [{"path": "toy", "device": "cpu"}],
        "recipes": [],
        "tasks": ["toy_mc4"],
        "limit": 30,
        "verdict": {"accuracy_tolerance": 0.02},
    }
    run_sweep(spec, tmp_path, progress=False)
    records = quantsweep.judge(tmp_path, alpha=0.01)
    assert {(r["verdict_config"]["alpha"], r["verdict_config"]["accuracy_tolerance"]) for r in records} == {
        (0.01, 0.02)
    }


def test_two_different_recipes_with_one_name_are_refused(tmp_path):
    from quantsweep.methods.registry import RecipeError
    from quantsweep.recipes import get_recipe

    other = type(get_recipe("w4-rtn"))(**{**get_recipe("w4-rtn").to_dict(), "group_size": 32})
    with pytest.raises(RecipeError, match="two different recipes are named 'w4-rtn'.*group_size"):
        run_toy_sweep(tmp_path, recipes=["w4-rtn", other])


def test_relative_paths_are_made_absolute_for_every_worker(tmp_path, monkeypatch):
    from quantsweep.sweep.api import run_sweep

    monkeypatch.chdir(tmp_path)
    result = run_sweep(
        {"models": [{"path": "toy", "device": "cpu"}], "recipes": [], "tasks": ["toy_mc4"], "limit": 20},
        "relative-store",
        progress=False,
    )
    assert result.out == tmp_path / "relative-store" and result.out.is_absolute()
    cell = json.loads(next((tmp_path / "relative-store" / "cells").glob("*.json")).read_text())
    assert cell["status"] == "done"


def test_derived_files_left_stale_by_a_kill_are_rebuilt_on_reading(tmp_path):
    """A run killed after a cell's file and before the rebuild: reading the store rebuilds it, nothing lost."""
    import quantsweep

    run_toy_sweep(tmp_path, recipes=["w8-rtn"], tasks=["toy_mc4"], limit=20)
    complete = result_values(tmp_path)
    results = tmp_path / "results.jsonl"
    results.write_text("")  # what a kill mid-rebuild of an older list could leave
    old = min(p.stat().st_mtime for p in (tmp_path / "cells").glob("*.json")) - 60
    os.utime(results, (old, old))
    frame = quantsweep.load_results(tmp_path)
    assert set(zip(frame.recipe, frame.task, frame.metric)) == set(complete)
    assert result_values(tmp_path) == complete
