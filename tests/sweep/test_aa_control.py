"""The A/A control: the baseline evaluated again at another batch size and order, as its own cell."""

from __future__ import annotations

import json

import pytest
from helpers.sweeps import stored_cells, toy_spec

from quantsweep.sweep.plan import group_units, plan_cells
from quantsweep.sweep.spec import SpecError, spec_from_dict


def test_spec_key_adds_one_control_cell_per_task_after_the_baseline():
    spec = spec_from_dict(toy_spec(recipes=["w8-rtn", "w4-rtn"], aa_control=True, batch_size=8))
    cells = plan_cells(spec).cells
    controls = [c for c in cells if c.control is not None]
    assert [c.task for c in controls] == ["toy_mc4", "toy_ppl"]
    baselines = {c.task: c for c in cells if c.is_baseline}
    for control in controls:
        assert control.recipe.name == "fp-aa" and not control.is_baseline
        assert control.baseline_key == baselines[control.task].key != control.key
        assert control.control == {"batch_size": 4, "order": "reversed"}
    without = plan_cells(spec_from_dict(toy_spec(recipes=["w8-rtn", "w4-rtn"], batch_size=8))).cells
    assert {c.key for c in without} <= {c.key for c in cells}  # the option adds cells, changes none
    # with two slots, the control still runs on the baseline's load, right after it
    units = group_units(cells, {"toy": 2})
    assert [r.name for r in units[0].recipes][:2] == ["fp", "fp-aa"]


def test_spec_key_must_be_a_boolean():
    with pytest.raises(SpecError, match="aa_control.*must be bool"):
        spec_from_dict(toy_spec(aa_control="yes"))


def test_cli_flag_reaches_run_and_sweep():
    from quantsweep.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["run", "--model", "toy", "--recipe", "fp", "--tasks", "t", "--aa-control"]).aa_control
    assert parser.parse_args(["sweep", "spec.yaml", "--out", "o", "--aa-control"]).aa_control
    assert parser.parse_args(["sweep", "spec.yaml", "--out", "o"]).aa_control is None


@pytest.mark.slow
def test_toy_sweep_with_aa_control_records_and_reports_it(tmp_path):
    """On CPU fp32 the toy's A/A control changed no answer (0 flips, delta 0) on toy_mc4 and
    moved toy_ppl's perplexity by about 1e-9 (relative): non-zero, so it is reported and
    enters the ladder as a negligible floor."""
    from quantsweep.report.html import write_report
    from quantsweep.sweep.api import judge, run_sweep

    out = tmp_path / "out"
    run_sweep(spec_from_dict(toy_spec(recipes=["w4-rtn"], limit=30, aa_control=True)), out, progress=False)
    cells = stored_cells(out)
    for task in ("toy_mc4", "toy_ppl"):
        control = cells[("fp-aa", task)]
        assert control["control"] == {"batch_size": 16, "order": "reversed"}
        assert control["evaluate"]["batch_size_used"] == 16
        assert control["evaluate"]["batch_order"] == "reversed"
    assert cells[("fp", "toy_ppl")]["divergence_reference"]["bytes_per_token"] == 200
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    primary = {(r["recipe"], r["task"]): r for r in records if r["primary"]}
    aa_mc, aa_ppl = primary[("fp-aa", "toy_mc4")], primary[("fp-aa", "toy_ppl")]
    assert aa_mc["control"] == "aa" and aa_mc["divergence_kind"] == "options"
    # the baseline's batch size is read from the baseline cell when judging, not copied into each cell
    assert aa_mc["baseline_batch_size_used"] == aa_ppl["baseline_batch_size_used"] == 32
    assert aa_mc["flips_right_to_wrong"] == aa_mc["flips_wrong_to_right"] == 0.0  # what CPU fp32 gave
    assert aa_ppl["divergence_kind"] == "token" and aa_ppl["top1_agreement"] == 1.0
    assert abs(aa_ppl["kl_mean"]) < 1e-6 and abs(aa_ppl["delta"]) < 1e-6
    w4 = primary[("w4-rtn", "toy_ppl")]
    assert w4["aa_delta"] == aa_ppl["delta"] and w4["aa_kl_mean"] == aa_ppl["kl_mean"]
    assert w4["kl_mean"] > 100 * max(abs(aa_ppl["kl_mean"]), 1e-9)
    assert (w4["aa_nonzero"] is True) == (aa_ppl["delta"] != 0)
    assert primary[("w4-rtn", "toy_mc4")]["aa_nonzero"] is False
    html = write_report(out).read_text()
    assert "A/A control: the evaluation" in html and "fp-aa" in html and "Divergence from the baseline" in html

    # a recipe cell that halved its batch: flagged where the A/A control shows batching matters
    path = out / "cells" / f"{primary[('w4-rtn', 'toy_ppl')]['cell_key']}.json"
    cell = json.loads(path.read_text())
    cell["evaluate"]["batch_size_used"] = 16
    path.write_text(json.dumps(cell))
    rejudged = {(r["recipe"], r["task"]): r for r in judge(out) if r["primary"]}
    flagged = rejudged[("w4-rtn", "toy_ppl")]
    assert flagged["batch_size_used"] == 16 and flagged["baseline_batch_size_used"] == 32
    assert flagged["batch_size_mismatch"] is (aa_ppl["delta"] != 0)
    assert rejudged[("w4-rtn", "toy_mc4")]["batch_size_mismatch"] is False


def test_quantsweep_run_with_the_control_reports_it_as_a_recipe_row(tmp_path, capsys):
    """`quantsweep run --aa-control` (the CLI's per-recipe rows) once crashed at the control's row."""
    from quantsweep.cli import main

    code = main(
        ["run", "--model", "toy", "--device", "cpu", "--recipe", "w8-rtn", "--tasks", "toy_mc4", "--limit", "20"]
        + ["--aa-control", "--out", str(tmp_path / "store")]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "[fp-aa] toy_mc4=" in out and "[w8-rtn] toy_mc4=" in out
    summary = out.split("verdict by recipe")[1]
    assert "fp-aa" in summary and "w8-rtn" in summary
