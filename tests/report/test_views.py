"""Every view shows the models side by side, settings apart, and names what it leaves out.

The text table, summary.json and the HTML report are built from the same records; each must keep
models and settings apart (never one merged row per recipe and task) and say, with why, when a
cell is left out.
"""

from __future__ import annotations

import json
import re

from helpers.report_records import record

from quantsweep.report.html import build_report
from quantsweep.report.text import format_table
from quantsweep.verdicts.summary import summarize_views
from quantsweep.verdicts.views import split_views


def _model(model, values, settings="s", **fields):
    """fp and w4 on one task for ``model``, with the given values; distinct cell keys per model and setting."""
    tag = f"{model}-{settings}"
    common = {"model": model, "settings": settings, **fields}
    return [
        record("fp", "mc", "baseline", values[0], method="none", cell_key=f"{tag}-fp", **common),
        record("w4", "mc", "degraded", values[1], cell_key=f"{tag}-w4", **common),
    ]


def _section(html: str, model: str) -> str:
    match = re.search(
        rf'<section class="view" id="view-\d+" data-model="{re.escape(model)}">(.*?)</section>', html, re.S
    )
    assert match, model
    return match.group(1)


def test_two_models_get_their_own_map_rows_and_figure(tmp_path):
    records = _model("1b", (0.811, 0.402)) + _model("7b", (0.923, 0.915))
    html, figures = build_report(records)
    small, large = _section(html, "1b"), _section(html, "7b")
    assert "0.811" in small and "0.402" in small and "0.923" not in small
    assert "0.923" in large and "0.915" in large and "0.402" not in large
    assert "report-models-multiple_choice.png" in figures  # the models side by side, per family
    assert 'alt="retained margin against bits per weight by model, multiple_choice"' in html
    assert {"report-verdict-map-1b.png", "report-verdict-map-7b.png"} <= set(figures)
    family = html[html.index('id="families"') : html.index('id="figures"')]
    assert family.count(">1b<") == 1 and family.count(">7b<") == 1  # a model column in the family table


def test_the_text_table_and_summary_keep_models_apart():
    records = _model("1b", (0.811, 0.402)) + _model("7b", (0.923, 0.915))
    text = format_table(records)
    first, second = text.split("\n\nmodel ")
    assert first.startswith("model 1b") and "0.402" in first and "0.915" not in first
    assert second.startswith("7b") and "0.915" in second
    summary = summarize_views(records)
    assert set(summary["models"]) == {"1b", "7b"}
    assert summary["models"]["1b"]["s"]["by_recipe"]["w4"]["n_tasks"] == 1


def test_two_settings_of_one_model_are_shown_apart_and_labelled(tmp_path):
    records = _model("toy", (0.9, 0.5), settings="a", limit=60) + _model("toy", (0.8, 0.4), settings="b", limit=100)
    views = split_views(records)
    assert [view.title for view in views] == ["toy · limit=60", "toy · limit=100"]
    html, _ = build_report(records)
    assert "Model toy has results of 2 settings (limit=60; limit=100)" in html
    assert html.count('<section class="view"') == 2
    assert "model toy · limit=60" in format_table(records) and "model toy · limit=100" in format_table(records)
    summary = summarize_views(records)
    assert {v["setting"] for v in summary["models"]["toy"].values()} == {"limit=60", "limit=100"}


def test_a_second_cell_under_one_name_and_setting_is_left_out_and_named(tmp_path):
    old = record("w8", "mc", "degraded", 0.38, model="toy", settings="s", cell_key="old-key", finished_at="2026-01-01")
    old["recipe_config"] = {"method": "rtn", "bits": 1}
    new = record("w8", "mc", "lossless", 1.0, model="toy", settings="s", cell_key="new-key", finished_at="2026-02-01")
    base = record("fp", "mc", "baseline", 1.0, method="none", model="toy", settings="s", cell_key="fp-key")
    records = [base, old, new]
    (view,) = split_views(records)
    assert [r["cell_key"] for r in view.records] == ["fp-key", "new-key"]  # the newer cell is shown
    (line,) = view.left_out
    assert "old-key" in line and "recipe config differs" in line
    html, _ = build_report(records)
    assert "1 cell(s) left out of this view" in html and "old-key" in html
    assert ">1.000<" in html and "0.380" not in html.split('id="figures"')[0]
    assert "left out: w8 / mc" in format_table(records)
    summary = summarize_views(records)
    assert summary["models"]["toy"]["s"]["left_out"] == [line] and "left out" in summary["warning"]


def test_escape_sequences_in_names_never_reach_the_terminal(tmp_path, capsys):
    from quantsweep.cli import main

    evil = "w8\x1b[2J\x1b[31mred"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(json.dumps({"name": evil, "method": "rtn", "bits": 8}))  # JSON is YAML
    code = main(
        ["run", "--model", "toy", "--device", "cpu", "--tasks", "toy_mc4", "--limit", "10", "--recipe", str(recipe)]
        + ["--out", str(tmp_path / "store")]  # a fresh store: the recipe is quantized here, its bar drawn
    )
    out = capsys.readouterr()
    assert code == 0
    assert "w8\\x1b[2J\\x1b[31mred" in out.out  # shown, escaped
    assert "\x1b" not in out.out
    assert "\x1b[2J" not in out.err and "\x1b[31m" not in out.err  # (the progress bar's own cursor moves aside)
    rows = [record("fp", "mc", "baseline", 0.9, method="none"), record(evil, "mc", "degraded", 0.5)]
    assert "\x1b" not in format_table(rows)


def _aa_section(html: str) -> str:
    return html[html.index('id="aa-control"') : html.index('id="needed"')]


def _with_control(model, values, delta, flips):
    """``_model``'s records, with an A/A control cell whose difference from the baseline is ``delta``."""
    noise = {"aa_nonzero": True, "aa_delta": delta, "aa_flips": flips, "aa_kl_mean": 1e-4}
    fp, w4 = _model(model, values)
    control = record(
        "fp-aa", "mc", "lossless", values[0], method="none", cell_key=f"{model}-s-fp-aa", model=model, settings="s"
    )
    return [fp, {**w4, **noise}, {**control, "control": "aa", "delta": delta}]


def test_each_models_panel_shows_its_own_aa_control_and_none_of_anothers():
    records = _with_control("1b", (0.811, 0.402), -0.0123, 0.05) + _model("7b", (0.923, 0.915))
    html, _ = build_report(records)
    line = "A/A control differs from the baseline on mc: delta -0.0123, 5.0% of answers flipped"
    small, large = _section(html, "1b"), _section(html, "7b")
    assert line in small and "A/A control of 1b" in small
    assert "A/A control differs" not in large and "A/A control of" not in large  # 7b ran no control
    section = _aa_section(html)
    assert section.count(line) == 1 and "<h3>1b</h3>" in section and "<h3>7b</h3>" not in section
    assert html.count(line) == 2  # in 1b's panel and under 1b in the A/A section, nowhere else


def test_two_models_with_controls_on_one_task_each_show_their_own():
    records = _with_control("1b", (0.811, 0.402), -0.0123, 0.05) + _with_control("7b", (0.923, 0.915), 0.0456, 0.02)
    html, _ = build_report(records)
    small, large = _section(html, "1b"), _section(html, "7b")
    assert "delta -0.0123" in small and "delta 0.0456" not in small
    assert "delta 0.0456" in large and "delta -0.0123" not in large
    section = _aa_section(html)
    first, second = section.index("<h3>1b</h3>"), section.index("<h3>7b</h3>")
    assert first < section.index("delta -0.0123") < second < section.index("delta 0.0456")
