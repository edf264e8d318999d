"""The HTML report: one self-contained file, every cell present, bad input handled."""

from __future__ import annotations

import re

import pytest
from helpers.report_records import record, write_records

import quantsweep
from quantsweep.cli import main
from quantsweep.report.frames import records_frame
from quantsweep.report.html import build_report, cost_table, family_summary, write_report

EXTERNAL = re.compile(r"(?:https?|ftp|wss?)://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|<script|<link", re.IGNORECASE)


def _grid():
    return [
        record("fp", "mc", "baseline", 0.9, method="none", family="reasoning"),
        record("fp", "ppl", "baseline", 12.0, method="none", family="language", metric="word_perplexity"),
        record("w8-rtn", "mc", "lossless", 0.9, bits=8, family="reasoning"),
        record("w8-rtn", "ppl", "lossless", 12.1, bits=8, family="language", metric="word_perplexity"),
        record("w2-rtn", "mc", "collapsed", 0.26, bits=2, family="reasoning", retained=0.02),
        record(
            "w2-rtn",
            "ppl",
            "non-finite",
            None,
            bits=2,
            family="language",
            metric="word_perplexity",
            nonfinite_samples=7,
            diagnosis={"first_module": "model.layers.3.mlp.down_proj", "layer": 3},
        ),
        record(
            "w4-gptq",
            "mc",
            "inconclusive",
            0.88,
            method="gptq",
            family="reasoning",
            documents_needed=2400,
            reason="the drop is between 0% and 3%; about 2,400 documents would decide",
        ),
        {
            **record("w4-gptq", "ppl", "error", None, method="gptq", family="language"),
            "error": "RuntimeError: out of memory",
            "primary": None,
            "metric": None,
        },
    ]


def test_report_holds_every_cell_and_nothing_external(tmp_path):
    folder = write_records(tmp_path / "run", _grid())
    path = quantsweep.report(folder)
    html = path.read_text()
    assert path == folder / "report.html"
    assert not EXTERNAL.search(html)
    assert html.count('src="data:image/png;base64,') >= 3  # verdict map + one retention plot per family
    for name in ("fp", "w8-rtn", "w2-rtn", "w4-gptq", "mc", "ppl", "reasoning", "language"):
        assert f">{name}<" in html
    # recipes grouped by method, ordered by bits: baseline, then rtn 8 before 2, then gptq
    order = [html.index(f"<th>{name}</th>") for name in ("fp", "w8-rtn", "w2-rtn", "w4-gptq")]
    assert order == sorted(order)
    assert "v-non-finite" in html and "v-error" in html and "RuntimeError: out of memory" in html
    assert "model.layers.3.mlp.down_proj" in html  # the non-finite diagnosis
    assert "about 2,400" in html  # documents needed
    assert "1 cell(s) failed and have no result: w4-gptq / ppl" in html
    for name in ("results.csv", "results.parquet", "report-verdict-map.png", "report-retention-reasoning.png"):
        assert (folder / name).stat().st_size > 0
    assert b"://" not in (folder / "report-verdict-map.png").read_bytes()  # no URL even inside the PNGs


def test_csv_and_parquet_hold_the_records(tmp_path):
    pandas = pytest.importorskip("pandas")
    folder = write_records(tmp_path / "run", _grid())
    write_report(folder, tmp_path / "elsewhere" / "r.html")
    parquet = pandas.read_parquet(tmp_path / "elsewhere" / "results.parquet")
    csv = pandas.read_csv(tmp_path / "elsewhere" / "results.csv")
    assert len(parquet) == len(csv) == len(_grid())
    assert parquet["verdict"].tolist() == [r["verdict"] for r in _grid()]


def test_names_with_html_characters_are_escaped(tmp_path):
    evil = '<img src=x onerror=alert(1)>&"'
    rows = [
        record("fp", evil, "baseline", 0.9, method="none"),
        record(f"w4{evil}", evil, "degraded", 0.5, reason=f"<b>{evil}</b>"),
    ]
    html, _ = build_report(rows)
    assert "<img src=x" not in html and "<b><img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;" in html


def test_collapsed_perplexity_is_shown_in_nats_against_its_chance():
    rows = [
        record("fp", "ppl", "baseline", 12.0, method="none", metric="word_perplexity"),
        record(
            "w1",
            "ppl",
            "collapsed",
            900.0,
            bits=1,
            metric="word_perplexity",
            chance=38.9,
            chance_reference="unigram",
            chance_unigram_nats=3.66,
            chance_uniform_nats=4.81,
            cross_entropy_nats=3.9,
            reason="retention CI upper 0.02 <= 0.15",
        ),
    ]
    html, _ = build_report(rows)
    panel = html[html.index("Collapsed: score") : html.index('id="flips"')]
    assert "cross-entropy (nats/token)" in panel and "<td>3.9</td>" in panel and "<td>3.66</td>" in panel
    assert "unigram" in panel


def test_missing_baseline_is_reported_not_a_crash(tmp_path):
    rows = [
        record("w4", "mc", "inconclusive", 0.5),
        record("w4", "other", "inconclusive", 0.5),
        record("w2", "mc", "degraded", 0.3, bits=2),
    ]
    html, _ = build_report(rows)
    assert "No baseline result" in html
    assert "1 cell(s) have no record (marked MISSING): w2 / other" in html
    assert "v-missing" in html


def test_family_summary_takes_the_worst_verdict_and_the_mean_retention():
    frame = records_frame(_grid())
    summary = family_summary(frame[frame["primary"] | (frame["verdict"] == "error")])
    rows = {(r["recipe"], r["family"]): r for r in summary.to_dict("records")}
    assert rows[("w2-rtn", "reasoning")]["worst verdict"] == "collapsed"
    assert rows[("w4-gptq", "language")]["worst verdict"] == "error"
    assert rows[("w8-rtn", "reasoning")]["mean retained"] == pytest.approx(0.9)
    assert ("fp", "reasoning") not in rows  # the baseline is not compared with itself


def test_cost_table_does_not_show_fp_numbers_for_fake_quant():
    rows = [
        record(
            "w4",
            "mc",
            "lossless",
            0.9,
            kernel="fake-quant",
            theoretical_bits_per_weight=4.25,
            peak_eval_bytes=3 * 2**20,
        ),
        record(
            "w4-bnb",
            "mc",
            "lossless",
            0.9,
            kernel="bitsandbytes",
            theoretical_bits_per_weight=4.5,
            peak_eval_bytes=2 * 2**20,
            peak_eval_memory_kind="cuda-peak",
            decode_tokens_per_s=123.0,
        ),
    ]
    table = cost_table(records_frame(rows)).set_index("recipe")
    assert table.loc["w4", "measured"] == "memory and speed are the fp model's"
    assert table.loc["w4-bnb", "measured"] == "peak eval 2.0 MiB (cuda-peak); decode 123 tokens/s"
    assert cost_table(records_frame([record("w4", "mc", "lossless", 0.9)])).empty


def test_cli_report_writes_the_file_and_exits_2_without_results(tmp_path, capsys):
    folder = write_records(tmp_path / "run", _grid())
    assert main(["report", str(folder), "--out", str(tmp_path / "out.html")]) == 0
    assert (tmp_path / "out.html").is_file()
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    error = capsys.readouterr().err
    assert "no results.jsonl" in error and "nothing-here" in error and error.count("\n") == 1


@pytest.mark.slow
def test_report_of_a_real_toy_sweep_has_reasons_and_flips(toy_sweep):
    html = quantsweep.report(toy_sweep).read_text()
    assert "no reason recorded" not in html
    assert "right → wrong" in html and "w1-rtn" in html
    assert not EXTERNAL.search(html)


def test_a_foreign_results_csv_is_refused_and_kept(tmp_path):
    folder = write_records(tmp_path / "run", _grid())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "results.csv").write_text("mine\n")
    with pytest.raises(ValueError, match="no quantsweep report wrote there"):
        write_report(folder, elsewhere / "r.html")
    assert (elsewhere / "results.csv").read_text() == "mine\n"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["results.csv"]


@pytest.mark.parametrize("interrupted", ["to_csv", "to_parquet", "write_bytes"])
def test_a_report_interrupted_after_its_manifest_is_written_again(tmp_path, monkeypatch, interrupted):
    import pathlib

    import pandas

    folder = write_records(tmp_path / "run", _grid())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("the user's own file\n")

    class Killed(BaseException):  # as a kill -9 would: nothing after this point runs
        pass

    def die(*args, **kwargs):
        raise Killed

    target = pathlib.Path if interrupted == "write_bytes" else pandas.DataFrame
    with monkeypatch.context() as patch:
        patch.setattr(target, interrupted, die)
        with pytest.raises(Killed):
            write_report(folder, elsewhere / "r.html")
    assert (elsewhere / ".quantsweep-report.json").is_file()  # written before any report file
    assert not list(elsewhere.glob("*.tmp")) and not list(elsewhere.glob(".*.tmp"))

    out = write_report(folder, elsewhere / "r.html")  # the partial report is ours: replaced, not refused
    assert out.read_text().count("w2-rtn") > 0
    assert (elsewhere / "notes.txt").read_text() == "the user's own file\n"
    for name in ("results.csv", "results.parquet", "report-verdict-map.png"):
        assert (elsewhere / name).stat().st_size > 0


def test_a_report_onto_a_full_disk_is_refused_before_it_is_built(tmp_path, monkeypatch):
    import errno
    import os

    folder = write_records(tmp_path / "run", _grid())

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ValueError, match="cannot write the report into .*No space left on device"):
        write_report(folder, tmp_path / "elsewhere" / "r.html")
    assert list((tmp_path / "elsewhere").iterdir()) == []
