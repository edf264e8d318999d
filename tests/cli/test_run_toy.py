"""End to end on the embedded toy model: the demo and `quantsweep run` print and store correct verdicts."""

import json

import pytest

from quantsweep.cli import DEMO_RECIPES, DEMO_TASKS, main

REQUIRED_FIELDS = {
    "model",
    "recipe",
    "task",
    "metric",
    "value",
    "stderr",
    "n",
    "device",
    "dtype",
    "recipe_config",
    "chance",
    "verdict",
    "nonfinite_samples",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "retained",
    "verdict_config",
}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def primary(records, recipe, task):
    (record,) = [r for r in records if r["recipe"] == recipe and r["task"] == task and r["primary"]]
    return record


@pytest.fixture(scope="module")
def run_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(
        [
            "run",
            "--model",
            "toy",
            "--recipe",
            "fp",
            "--recipe",
            "w8-rtn",
            "--recipe",
            "w1-rtn",
            "--tasks",
            "toy_mc4,toy_ppl",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out, read_jsonl(out / "results.jsonl")


@pytest.mark.slow
def test_run_stores_every_field(run_records):
    _, records = run_records
    assert {(r["recipe"], r["task"]) for r in records if r["primary"]} == {
        (recipe, task) for recipe in ("fp", "w8-rtn", "w1-rtn") for task in ("toy_mc4", "toy_ppl")
    }
    for record in records:
        assert REQUIRED_FIELDS <= set(record), REQUIRED_FIELDS - set(record)
        assert record["device"] == "cpu" and record["dtype"] == "float32" and record["model"] == "toy"
    assert primary(records, "w8-rtn", "toy_mc4")["recipe_config"]["bits"] == 8


@pytest.mark.slow
def test_run_verdicts_are_correct(run_records):
    _, records = run_records
    assert primary(records, "fp", "toy_mc4")["verdict"] == "baseline"
    assert primary(records, "w8-rtn", "toy_mc4")["verdict"] == "lossless"
    assert primary(records, "w8-rtn", "toy_ppl")["verdict"] == "lossless"
    w1 = primary(records, "w1-rtn", "toy_mc4")
    assert w1["chance"] == pytest.approx(0.25) and w1["nonfinite_samples"] == 0
    assert w1["verdict"] == "collapsed"
    assert w1["ci_high"] < -0.5  # a real and large drop
    assert w1["retained"] < 0.2  # keeps under a fifth of fp's margin above chance


@pytest.mark.slow
def test_run_stores_one_cell_file_per_cell_with_every_document(run_records):
    out, records = run_records
    cells = [json.loads(path.read_text()) for path in sorted((out / "cells").glob("*.json"))]
    assert sorted((c["recipe"], c["task"]) for c in cells) == sorted(
        (recipe, task) for recipe in ("fp", "w8-rtn", "w1-rtn") for task in ("toy_mc4", "toy_ppl")
    )
    (fp_cell,) = [c for c in cells if c["recipe"] == "fp" and c["task"] == "toy_mc4"]
    fp_samples = fp_cell["tasks"]["toy_mc4"]["samples"]
    assert len(fp_samples) == primary(records, "fp", "toy_mc4")["n"]
    assert all(s["n_choices"] == 4 for s in fp_samples)
    assert primary(records, "fp", "toy_mc4")["cell_key"] == fp_cell["key"]
    summary = json.loads((out / "summary.json").read_text())
    (view,) = summary["models"]["toy"].values()  # one model, one setting: one view
    assert view["setting"] == "" and view["left_out"] == []
    assert view["by_recipe"]["w8-rtn"]["verdict"] == "lossless"
    assert view["by_recipe"]["w1-rtn"]["verdict"] == "collapsed"


@pytest.mark.slow
def test_fp_against_itself_is_lossless():
    import quantsweep
    from quantsweep.verdicts.task import judge_task

    model, tokenizer = quantsweep.load_model("toy", device="cpu")
    first = quantsweep.evaluate(model, tokenizer, ["toy_mc4"]).tasks["toy_mc4"]
    second = quantsweep.evaluate(model, tokenizer, ["toy_mc4"]).tasks["toy_mc4"]
    assert judge_task(second, first, metric="acc", vocab_size=model.config.vocab_size)["verdict"] == "lossless"


@pytest.mark.slow
def test_demo_shows_the_expected_pattern(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "recipe" in out and "toy_mc4 (acc)" in out
    records = read_jsonl(tmp_path / "results.jsonl")
    assert {r["recipe"] for r in records} == set(DEMO_RECIPES)
    assert {r["task"] for r in records} == set(DEMO_TASKS)
    acc = {recipe: primary(records, recipe, "toy_mc4")["value"] for recipe in DEMO_RECIPES}
    fp_stderr = primary(records, "fp", "toy_mc4")["stderr"]
    assert acc["fp"] >= 0.80
    assert abs(acc["w8-rtn"] - acc["fp"]) <= max(2 * fp_stderr, 0.01)  # within noise
    assert acc["fp"] - acc["w2-rtn"] >= 0.10  # clearly below fp
    assert acc["w1-rtn"] < acc["w2-rtn"] - 0.10  # binary far below 2-bit
    assert acc["w1-rtn"] <= 0.25 + 0.10  # binary near chance
    assert primary(records, "w1-rtn", "toy_mc4")["verdict"] == "collapsed"


def test_suite_names_print_a_column_per_task(monkeypatch, capsys):
    """`--tasks openpangu18` arrives expanded in the records; the table shows those tasks, not the suite name."""
    from types import SimpleNamespace

    import quantsweep.sweep.runner as runner

    def fake_run(spec, on_outcome=None, **kwargs):
        assert spec.tasks == ["openpangu18"]
        outcomes = []
        for recipe, value, verdict in (("fp", 0.9, "baseline"), ("w8-rtn", 0.2, "collapsed")):
            records = [
                {"recipe": recipe, "task": task, "metric": "acc", "value": value, "primary": True, "verdict": verdict}
                for task in ("arc_easy", "piqa")
            ]
            outcome = SimpleNamespace(recipe=SimpleNamespace(name=recipe), records=records, error=None)
            on_outcome(outcome)
            outcomes.append(outcome)
        return outcomes

    monkeypatch.setattr(runner, "run", fake_run)
    assert main(["run", "--model", "toy", "--recipe", "w8-rtn", "--tasks", "openpangu18"]) == 0
    out = capsys.readouterr().out
    assert "[w8-rtn] arc_easy=0.200 COLLAPSED  piqa=0.200 COLLAPSED" in out
    header = next(line for line in out.splitlines() if line.startswith("recipe "))
    assert "arc_easy (acc)" in header and "piqa (acc)" in header and "openpangu18" not in header


def test_baseline_given_as_a_path_and_a_judging_failure_is_recorded(monkeypatch):
    """The baseline is recognised when named by its YAML path; a recipe whose judging fails is an error row."""
    from pathlib import Path

    import quantsweep.verdicts.task as judge
    from quantsweep.sweep.runner import RunSpec, run

    real = judge.judge_all_metrics
    calls = []

    def judge_all_metrics(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second recipe's only task
            raise ValueError("per-sample values of an unexpected shape")
        return real(*args, **kwargs)

    monkeypatch.setattr(judge, "judge_all_metrics", judge_all_metrics)
    fp_path = str(Path(__file__).resolve().parents[2] / "recipes" / "fp.yaml")
    outcomes = run(
        RunSpec(model="toy", baseline=fp_path, recipes=["w8-rtn", "w1-rtn"], tasks=["toy_mc4"], limit=100, device="cpu")
    )
    records = [r for o in outcomes for r in o.records]
    assert primary(records, "fp", "toy_mc4")["verdict"] == "baseline"
    (failed,) = [r for r in records if r["recipe"] == "w8-rtn"]
    assert failed["verdict"] == "error" and "judging failed" in failed["error"]
    w1 = primary(records, "w1-rtn", "toy_mc4")
    assert w1["verdict"] != "error" and w1["delta"] < -0.3  # judged against the path-named baseline
