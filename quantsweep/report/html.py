"""One self-contained HTML report of a results folder, with CSV, Parquet and PNGs beside it.

``write_report(DIR)`` reads the records (:func:`~quantsweep.report.frames.load_records`),
builds every table with pandas and every figure with matplotlib, and renders
``templates/report.html.j2`` with jinja2 (autoescaped: recipe and task names with
HTML characters are shown, never interpreted). Figures are inline PNG data URIs and
the CSS is inline, so the file opens offline and can be mailed or put on a wiki.

The report holds the verdict map (recipes grouped by method, ordered by bits; tasks
grouped by family; value, delta with its interval and n per cell, the reason on
hover and listed below), the worst verdict and mean retained margin per family,
retained margin against bits per weight per family, the non-finite and collapsed
cells, answer flips, the documents inconclusive cells would need, a cost table when
cost fields are recorded, and the record of the run (model, fingerprint, device,
dtype, versions, calibration, thresholds, failed cells with their errors).

Several models, or one model under several settings, are shown side by side: one view
per (model, settings) (:func:`~quantsweep.verdicts.views.split_views`) with its own map
and figures, a ``model`` column in every table, and a figure per family of retained
margin against bits per weight with one line per model. A cell a view leaves out is
named in the warnings, with why.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> def record(recipe, bits, value, verdict, reason=None):  # a primary accuracy record, as a sweep stores it
    ...     return {"model": "toy", "recipe": recipe, "recipe_config": {"method": "rtn" if bits else "none", "bits": bits},
    ...             "task": "toy_mc4", "family": "knowledge", "metric": "acc", "primary": True, "value": value,
    ...             "verdict": verdict, "reason": reason, "retained": None if bits is None else value / 0.91}
    >>> records = [record("fp", None, 0.91, "baseline"), record("w4-rtn", 4, 0.90, "lossless"),
    ...            record("w1-rtn", 1, 0.26, "collapsed", "accuracy 0.260 is at chance (0.250)")]
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in records))
    >>> write_report(folder) == folder / "report.html"
    True
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from quantsweep.report import frames, plots
from quantsweep.report.text import format_controls
from quantsweep.sweep.store import atomic_write_text, probe_writable
from quantsweep.verdicts.rules import ERROR, UNREMARKABLE, VERDICT_MARKERS, primary_or_error_mask
from quantsweep.verdicts.summary import family_overview
from quantsweep.verdicts.views import split_views

logger = logging.getLogger(__name__)

TEMPLATE = "report.html.j2"
MARKERS = {**VERDICT_MARKERS, "missing": "MISSING"}  # the text table's markers, plus cells with no record
_PERCENT_METRICS = {"acc", "acc_norm", "exact_match", "word_perplexity", "byte_perplexity", "bits_per_byte"}
_COST_FIELDS = (
    "kernel",
    "theoretical_bits_per_weight",
    "stored_bytes",
    "peak_eval_bytes",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _format_value(value) -> str:
    if _missing(value):
        return "nan"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.3g}"


def _format_delta(row) -> str:
    """Delta and its interval in the metric's units: percent for accuracies and perplexity ratios."""
    if row.verdict in ("baseline", ERROR, "non-finite") or _missing(row.delta):
        return ""
    if row.metric in _PERCENT_METRICS:
        show = lambda x: "?" if _missing(x) else f"{100 * x:+.1f}"  # noqa: E731 - local formatter
        return f"{show(row.delta)}% [{show(row.ci_low)}, {show(row.ci_high)}]"
    show = lambda x: "?" if _missing(x) else f"{x:+.3g}"  # noqa: E731
    return f"{show(row.delta)} [{show(row.ci_low)}, {show(row.ci_high)}]"


def _recipe_order(cells: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(method, recipes) groups: the baseline's group first, methods in order of appearance, bits descending."""
    per_recipe = (
        cells.groupby("recipe", sort=False)
        .agg(
            method=("method", "first"),
            bits=("bits_per_weight", "first"),
            baseline=("verdict", lambda v: bool((v == "baseline").any())),
        )
        .reset_index()
    )
    methods = list(dict.fromkeys(per_recipe.sort_values("baseline", ascending=False, kind="stable")["method"]))
    groups = []
    for method in methods:
        group = per_recipe[per_recipe["method"] == method].copy()
        group["sort_bits"] = group["bits"].fillna(-1.0)
        group = group.sort_values(["baseline", "sort_bits"], ascending=[False, False], kind="stable")
        groups.append((method, list(group["recipe"])))
    return groups


def _task_order(cells: pd.DataFrame) -> list[tuple[str, list[str]]]:
    families = cells.assign(family=cells["family"].fillna("other"))
    out = []
    for family in dict.fromkeys(families["family"]):
        out.append((family, list(dict.fromkeys(families.loc[families["family"] == family, "task"]))))
    return out


def _map_rows(cells: pd.DataFrame, recipe_groups, task_groups) -> list[dict[str, Any]]:
    lookup = {(row.recipe, row.task): row for row in cells.itertuples()}
    bits_of = cells.groupby("recipe", sort=False)["bits_per_weight"].first().to_dict()
    tasks = [task for _, group in task_groups for task in group]
    rows = []
    for method, recipes in recipe_groups:
        for index, recipe in enumerate(recipes):
            entries = []
            for task in tasks:
                row = lookup.get((recipe, task))
                if row is None:
                    entries.append(
                        {
                            "verdict": "missing",
                            "marker": MARKERS["missing"],
                            "value": "",
                            "delta": "",
                            "n": "",
                            "reason": "no record for this cell",
                            "kl": "",
                            "aa": "",
                        }
                    )
                    continue
                verdict = row.verdict if row.verdict in MARKERS else "missing"
                reason = row.error if verdict == ERROR else row.reason
                entries.append(
                    {
                        "verdict": verdict,
                        "marker": MARKERS[verdict],
                        "value": "" if verdict == ERROR else _format_value(row.value),
                        "delta": _format_delta(row),
                        "n": "" if _missing(row.n) else int(row.n),
                        "reason": reason if isinstance(reason, str) else "",
                        "kl": _kl_note(row),
                        "aa": _aa_note(row),
                    }
                )
            bits = bits_of.get(recipe)
            rows.append(
                {
                    "method": method,
                    "method_rows": len(recipes) if index == 0 else 0,
                    "recipe": recipe,
                    "bits": "" if _missing(bits) else f"{bits:g}",
                    "cells": entries,
                }
            )
    return rows


def _kl_note(row) -> str:
    kl = getattr(row, "kl_mean", None)
    if _missing(kl) or row.verdict in ("baseline", ERROR):
        return ""
    unit = "nats/token" if getattr(row, "divergence_kind", None) == "token" else "nats/doc"
    return f"KL {kl:.3g} {unit}"


def _aa_note(row) -> str:
    if getattr(row, "aa_nonzero", None) is not True:
        return ""
    delta = getattr(row, "aa_delta", None)
    return "A/A differs" if _missing(delta) else f"A/A Δ {delta:+.2g}"


def divergence_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per compared cell: its verdict and delta beside its divergence figures, the A/A control's and both batch sizes.

    Example:
        >>> row = {"recipe": "w4", "task": "t", "verdict": "lossless", "metric": "acc", "delta": 0.0, "ci_low": -0.01,
        ...        "ci_high": 0.01, "divergence_kind": "options", "kl_mean": 0.002, "kl_p99": 0.03, "kl_stderr": None,
        ...        "top1_agreement": 0.99, "prob_delta_mean": None, "divergence_error": None, "aa_delta": 0.0,
        ...        "aa_kl_mean": 1e-12, "aa_nonzero": False, "batch_size_used": 32, "baseline_batch_size_used": 32,
        ...        "batch_size_mismatch": False, "control": None}
        >>> divergence_table(pd.DataFrame([row]))[["recipe", "KL", "same top-1"]].values.tolist()
        [['w4', '0.002', '99.0%']]
    """
    have = cells[cells["divergence_kind"].notna()] if "divergence_kind" in cells else cells.iloc[0:0]
    if have.empty:
        return pd.DataFrame()

    def number(value, spec=".3g"):
        return "" if _missing(value) else format(float(value), spec)

    return pd.DataFrame(
        {
            "recipe": have["recipe"],
            "task": have["task"],
            "verdict": have["verdict"],
            "Δ": [_format_delta(row) for row in have.itertuples()],
            "over": have["divergence_kind"].map({"token": "tokens", "options": "options"}),
            "KL": have["kl_mean"].map(number),
            "KL p99": have["kl_p99"].map(number),
            "± (MC)": have["kl_stderr"].map(number),
            "same top-1": have["top1_agreement"].map(_percent),
            "Δ p(correct)": have["prob_delta_mean"].map(lambda v: number(v, "+.3g")),
            "A/A Δ": have["aa_delta"].map(lambda v: number(v, "+.2g")),
            "A/A KL": have["aa_kl_mean"].map(number),
            "batch / baseline's": [
                ""
                if _missing(a)
                else f"{int(a)} / {'?' if _missing(b) else int(b)}" + (" (flagged)" if m is True else "")
                for a, b, m in zip(
                    have["batch_size_used"], have["baseline_batch_size_used"], have["batch_size_mismatch"]
                )
            ],
            "note": have["divergence_error"].fillna(""),
        }
    )


def _aa_table(cells: pd.DataFrame) -> pd.DataFrame:
    if "control" not in cells:
        return pd.DataFrame()
    control = cells[cells["control"] == "aa"]
    return divergence_table(control).drop(columns=["A/A Δ", "A/A KL"], errors="ignore")


def family_summary(cells: pd.DataFrame) -> pd.DataFrame:
    """Per recipe and family: the worst verdict and the mean retained margin above chance.

    The table of :func:`quantsweep.verdicts.summary.family_overview`, the one family summary.

    Example:
        >>> cells = pd.DataFrame([{"recipe": "w4", "family": "mc", "verdict": "lossless", "retained": 0.9},
        ...                       {"recipe": "w4", "family": "mc", "verdict": "degraded", "retained": 0.5}])
        >>> family_summary(cells).iloc[0].to_dict()
        {'recipe': 'w4', 'family': 'mc', 'worst verdict': 'degraded', 'mean retained': 0.7, 'cells': 2}
    """
    rows = family_overview(cells.to_dict("records"))
    return pd.DataFrame(rows, columns=["recipe", "family", "worst verdict", "mean retained", "cells"])


def _table(frame: pd.DataFrame, empty: str) -> str:
    if frame.empty:
        return f'<p class="empty">{empty}</p>'
    return frame.to_html(
        index=False, escape=True, na_rep="", border=0, classes="data", float_format=lambda x: f"{x:.3g}"
    )


def _percent(value) -> str:
    return "" if _missing(value) else f"{100 * value:.1f}%"


def _problems(cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    nonfinite = cells[cells["verdict"] == "non-finite"]
    diagnosis = nonfinite.get("diagnosis", pd.Series([None] * len(nonfinite), index=nonfinite.index))
    nonfinite_table = pd.DataFrame(
        {
            "recipe": nonfinite["recipe"],
            "task": nonfinite["task"],
            "non-finite documents": nonfinite["nonfinite_samples"],
            "n": nonfinite["n"],
            "diagnosis": [_diagnosis_text(d) for d in diagnosis],
            "reason": nonfinite["reason"],
        }
    )
    collapsed = cells[cells["verdict"] == "collapsed"]
    # perplexity cells: compare cross-entropy with the chance cross-entropy, both in nats per token
    nats = collapsed["chance_reference"].notna() & collapsed["cross_entropy_nats"].notna()
    chance_nats = collapsed["chance_unigram_nats"].where(
        collapsed["chance_reference"] == "unigram", collapsed["chance_uniform_nats"]
    )
    collapsed_table = pd.DataFrame(
        {
            "recipe": collapsed["recipe"],
            "task": collapsed["task"],
            "measure": collapsed["metric"].where(~nats, "cross-entropy (nats/token)"),
            "score": collapsed["value"].where(~nats, collapsed["cross_entropy_nats"]),
            "chance": collapsed["chance"].where(~nats, chance_nats),
            "retained": collapsed["retained"],
            "chance reference": collapsed["chance_reference"].fillna(""),
            "reason": collapsed["reason"],
        }
    )
    return nonfinite_table, collapsed_table


def _diagnosis_text(diagnosis) -> str:
    if _missing(diagnosis) or diagnosis in ("", "null"):
        return "no diagnosis recorded"
    data = json.loads(diagnosis) if isinstance(diagnosis, str) else diagnosis
    if not isinstance(data, dict):
        return str(data)
    parts = [f"{key}: {value}" for key, value in data.items() if value not in (None, [], {})]
    return "; ".join(parts) or "no diagnosis recorded"


def _flips(cells: pd.DataFrame) -> pd.DataFrame:
    have = cells[cells["flips_right_to_wrong"].notna()]
    return pd.DataFrame(
        {
            "recipe": have["recipe"],
            "task": have["task"],
            "delta": have["delta"].map(_percent),
            "right → wrong": have["flips_right_to_wrong"].map(_percent),
            "wrong → right": have["flips_wrong_to_right"].map(_percent),
            "interval": have["interval"],
        }
    )


def _documents_needed(cells: pd.DataFrame) -> pd.DataFrame:
    have = cells[(cells["verdict"] == "inconclusive")]
    needed = have["documents_needed"].map(lambda v: "" if _missing(v) else f"about {int(v):,}")
    return pd.DataFrame(
        {
            "recipe": have["recipe"],
            "task": have["task"],
            "n": have["n"],
            "documents that would decide": needed,
            "reason": have["reason"],
        }
    )


def cost_table(records_frame: pd.DataFrame) -> pd.DataFrame:
    """Theory against measured cost per recipe, when any cost field is recorded (else empty).

    Fake-quant recipes run the fp model's kernels on dequantized weights, so their memory
    and speed columns say "memory and speed are the fp model's" instead of a misleading number.

    Example:
        >>> cost_table(pd.DataFrame([{"recipe": "w4", "kernel": "fake-quant", "theoretical_bits_per_weight": 4.25,
        ...     "stored_bytes": None, "peak_eval_bytes": 1e9, "peak_eval_memory_kind": "cpu-rss",
        ...     "prefill_tokens_per_s": None, "decode_tokens_per_s": None}]))["measured"].iloc[0]
        "memory and speed are the fp model's"
    """
    if not any(field in records_frame and records_frame[field].notna().any() for field in _COST_FIELDS):
        return pd.DataFrame()
    rows = []
    for recipe, group in records_frame.groupby("recipe", sort=False):
        first = group.iloc[0]
        kernel = first.get("kernel")
        row = {
            "recipe": recipe,
            "kernel": "" if _missing(kernel) else kernel,
            "theoretical bits/weight": first.get("theoretical_bits_per_weight"),
            "stored MiB": _mib(first.get("stored_bytes")),
        }
        if kernel == "fake-quant":
            row["measured"] = "memory and speed are the fp model's"
        else:
            kind = first.get("peak_eval_memory_kind")
            peak = _mib(first.get("peak_eval_bytes"))
            row["measured"] = "; ".join(
                part
                for part in (
                    f"peak eval {peak} MiB ({'' if _missing(kind) else kind})" if peak != "" else "",
                    _rate("prefill", first.get("prefill_tokens_per_s")),
                    _rate("decode", first.get("decode_tokens_per_s")),
                )
                if part
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _mib(value) -> str:
    return "" if _missing(value) else f"{float(value) / 2**20:,.1f}"


def _rate(name: str, value) -> str:
    return "" if _missing(value) else f"{name} {float(value):,.0f} tokens/s"


def _run_record(records: list[dict[str, Any]], frame: pd.DataFrame, multi: bool = False) -> dict[str, Any]:
    def distinct(key):
        values = [r.get(key) for r in records if r.get(key) is not None]
        return ", ".join(dict.fromkeys(str(v) for v in values)) or "not recorded"

    versions = {
        key.removesuffix("_version"): distinct(key)
        for key in ("quantsweep_version", "torch_version", "transformers_version", "lm_eval_version", "python_version")
    }
    calibration = {}
    for record in records:
        if record.get("calibration"):
            name = f"{record.get('model')} / {record['recipe']}" if multi else record["recipe"]
            calibration.setdefault(name, json.dumps(record["calibration"], sort_keys=True))
    thresholds = next((r["verdict_config"] for r in records if r.get("verdict_config")), {})
    failed = frame[frame["verdict"] == ERROR][(["model"] if multi else []) + ["recipe", "task", "error"]]
    return {
        "model": distinct("model"),
        "fingerprint": distinct("model_fingerprint"),
        "device": distinct("device"),
        "dtype": distinct("dtype"),
        "limit": distinct("limit"),
        "seed": distinct("seed"),
        "versions": versions,
        "calibration": calibration,
        "thresholds": thresholds,
        "failed": _table(failed, "no failed cells"),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "family"


def _view_table(parts: list[tuple[str, pd.DataFrame]], multi: bool) -> pd.DataFrame:
    """One table from each view's part, with a leading ``model`` column (the view's title) when there are several."""
    frames_ = [part.assign(model=title)[["model", *part.columns]] if multi else part for title, part in parts]
    frames_ = [f for f in frames_ if not f.empty]
    return pd.concat(frames_, ignore_index=True) if frames_ else pd.DataFrame()


def _panel(view, index: int, multi: bool) -> dict[str, Any]:
    """Everything the report shows of one view (one model under one setting)."""
    frame = frames.records_frame(view.records)
    cells = frame[primary_or_error_mask(frame)]
    left_out = list(view.left_out)
    duplicated = cells.duplicated(["recipe", "task"], keep="first")
    for row in cells[duplicated].itertuples():  # records without a cell key cannot be told apart: say so
        left_out.append(f"{row.recipe} / {row.task}: a second record of this cell without a cell key, left out")
    cells = cells[~duplicated]
    recipe_groups, task_groups = _recipe_order(cells), _task_order(cells)
    recipes = [r for _, group in recipe_groups for r in group]
    tasks = [t for _, group in task_groups for t in group]
    slug = f"-{_slug(view.title)}" if multi else ""
    figures = {f"report-verdict-map{slug}.png": plots.png_bytes(plots.verdict_heatmap(cells, recipes, tasks))}
    retention = []
    for family, _ in task_groups:
        name = f"report-retention{slug}-{_slug(family)}.png"
        title = f"{view.title}: {family}" if multi else family
        figures[name] = plots.png_bytes(
            plots.retention_vs_bits(cells[cells["family"].fillna("other") == family], title)
        )
        retention.append({"family": title, "uri": _data_uri(figures[name]), "file": name})
    prefix = f"{view.title}: " if multi else ""
    warnings = []
    if not (cells["verdict"] == "baseline").any():
        warnings.append(
            f"{prefix}No baseline result: no cell could be compared, so no cell has a delta or a verdict against "
            "the baseline."
        )
    failed = cells[cells["verdict"] == ERROR]
    if not failed.empty:
        warnings.append(
            f"{prefix}{len(failed)} cell(s) failed and have no result: "
            + ", ".join(f"{r} / {t}" for r, t in zip(failed["recipe"], failed["task"]))
            + "."
        )
    present = set(zip(cells["recipe"], cells["task"]))
    missing = [(r, t) for r in recipes for t in tasks if (r, t) not in present]
    if missing:
        warnings.append(
            f"{prefix}{len(missing)} cell(s) have no record (marked MISSING): "
            + ", ".join(f"{r} / {t}" for r, t in missing[:20])
            + (" ..." if len(missing) > 20 else "")
        )
    if left_out:
        warnings.append(f"{prefix}{len(left_out)} cell(s) left out of this view: " + "; ".join(left_out))
    metric_of = {row.task: row.metric for row in cells.itertuples() if isinstance(row.metric, str)}
    return {
        "id": f"view-{index}",
        "model": str(view.model),
        "title": view.title,
        "frame": frame,
        "cells": cells,
        "figures": figures,
        "retention": retention,
        "warnings": warnings,
        "aa_lines": format_controls(view.records),  # this view's own A/A control: never another model's
        "verdict_map_file": next(iter(figures)),
        "task_groups": [(family, [(t, metric_of.get(t, "")) for t in group]) for family, group in task_groups],
        "map_rows": _map_rows(cells, recipe_groups, task_groups),
        "reasons": [
            {
                "recipe": r.recipe,
                "task": r.task,
                "verdict": r.verdict,
                "reason": (r.error if r.verdict == ERROR else r.reason) or "no reason recorded",
            }
            for r in cells.itertuples()
            if r.verdict not in UNREMARKABLE
        ],
    }


def build_report(records: list[dict[str, Any]], *, title: str | None = None) -> tuple[str, dict[str, bytes]]:
    """The report's HTML text and its figures (file name -> PNG bytes), from result records.

    Each model, and each setting of a model, is one view (:func:`~quantsweep.verdicts.views.split_views`):
    its own verdict map, figures and rows of every table, under its title. With more than
    one view, a figure per task family compares them: retained margin against bits per
    weight, one line per view.

    Example:
        >>> def record(recipe, bits, value, verdict, reason=None):  # a primary accuracy record, as a sweep stores it
        ...     return {"model": "toy", "recipe": recipe, "recipe_config": {"method": "rtn" if bits else "none", "bits": bits},
        ...             "task": "toy_mc4", "family": "knowledge", "metric": "acc", "primary": True, "value": value,
        ...             "verdict": verdict, "reason": reason, "retained": None if bits is None else value / 0.91}
        >>> records = [record("fp", None, 0.91, "baseline"), record("w4-rtn", 4, 0.90, "lossless"),
        ...            record("w1-rtn", 1, 0.26, "collapsed", "accuracy 0.260 is at chance (0.250)")]
        >>> html, figures = build_report(records, title="toy")
        >>> sorted(figures)
        ['report-retention-knowledge.png', 'report-verdict-map.png']
        >>> "<title>toy</title>" in html, "accuracy 0.260 is at chance (0.250)" in html
        (True, True)
        >>> two = records + [{**r, "model": "big", "value": r["value"] + 0.01} for r in records]
        >>> sorted(build_report(two)[1])[:2]
        ['report-models-knowledge.png', 'report-retention-big-knowledge.png']
    """
    import jinja2

    frame = frames.records_frame(records)
    views = split_views(records)
    multi = len(views) > 1
    panels = [_panel(view, index, multi) for index, view in enumerate(views)]
    figures: dict[str, bytes] = {}
    comparison = []
    if multi:
        every = pd.concat([panel["cells"].assign(view=panel["title"]) for panel in panels], ignore_index=True)
        for family in dict.fromkeys(every["family"].fillna("other")):
            name = f"report-models-{_slug(family)}.png"
            figures[name] = plots.png_bytes(
                plots.retention_by_model(every[every["family"].fillna("other") == family], family)
            )
            comparison.append({"family": family, "uri": _data_uri(figures[name]), "file": name})
    for panel in panels:
        figures.update(panel["figures"])
    warnings = []
    settings_per_model: dict[str, list[str]] = {}
    for view in views:
        settings_per_model.setdefault(str(view.model), []).append(view.label)
    for model, labels in settings_per_model.items():
        if len(labels) > 1:
            warnings.append(
                f"Model {model} has results of {len(labels)} settings ({'; '.join(labels)}): each is shown apart "
                "under its label, never merged."
            )
    for panel in panels:
        warnings += panel["warnings"]
    multi_table = lambda part: _view_table([(p["title"], part(p)) for p in panels], multi)  # noqa: E731
    summary = multi_table(lambda p: family_summary(p["cells"]))
    if not summary.empty:
        summary = summary.assign(**{"mean retained": summary["mean retained"].round(3)})
    nonfinite = multi_table(lambda p: _problems(p["cells"])[0])
    collapsed = multi_table(lambda p: _problems(p["cells"])[1])
    costs = multi_table(lambda p: cost_table(p["frame"]))
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("quantsweep.report", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    html = environment.get_template(TEMPLATE).render(
        title=title or f"quantsweep report: {', '.join(dict.fromkeys(frame['model'].dropna().astype(str)))}",
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        colours=plots.VERDICT_COLOURS,
        markers=MARKERS,
        warnings=warnings,
        multi=multi,
        panels=[
            {
                **{
                    k: panel[k]
                    for k in ("id", "model", "title", "task_groups", "map_rows", "reasons", "retention", "aa_lines")
                },
                "verdict_map_uri": _data_uri(figures[panel["verdict_map_file"]]),
                "verdict_map_file": panel["verdict_map_file"],
            }
            for panel in panels
        ],
        comparison_figures=comparison,
        family_table=_table(summary, "no compared cells"),
        nonfinite_table=_table(nonfinite, "no non-finite cells"),
        collapsed_table=_table(collapsed, "no collapsed cells"),
        flips_table=_table(multi_table(lambda p: _flips(p["cells"])), "no per-document 0/1 task was compared"),
        needed_table=_table(multi_table(lambda p: _documents_needed(p["cells"])), "no inconclusive cells"),
        divergence_table=_table(
            multi_table(lambda p: divergence_table(p["cells"])),
            "no divergence measured (no compared perplexity or multiple-choice cell)",
        ),
        aa_table=_table(
            multi_table(lambda p: _aa_table(p["cells"])),
            "no A/A control in this run (spec key aa_control, flag --aa-control)",
        ),
        cost=_table(costs, ""),
        has_cost=not costs.empty,
        run=_run_record(records, pd.concat([p["cells"] for p in panels], ignore_index=True), multi),
    )
    return html, figures


def write_report(results_dir: str | Path, out: str | Path | None = None, *, title: str | None = None) -> Path:
    """Write ``report.html`` (self-contained), ``results.csv``, ``results.parquet`` and the PNGs.

    Args:
        results_dir: a results folder (holding ``results.jsonl``).
        out: the HTML file to write; default ``results_dir/report.html``. The CSV, Parquet
            and PNG files go beside it.
        title: the page title; default names the model(s).

    Returns:
        The path of the HTML file.

    A folder other than ``results_dir`` keeps a list of the files a report wrote there
    (``.quantsweep-report.json``); a report replaces only those, and refuses, before
    writing anything, to replace a ``results.csv`` or PNG it did not write. That list is
    written first, atomically, so a report interrupted at any moment (kill -9, a full disk)
    leaves a folder the next report writes into again.

    Raises:
        FileNotFoundError, ValueError: no results in ``results_dir`` (the message says where it looked),
            a folder for ``out`` that cannot be written, or files there no report wrote.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> def record(recipe, bits, value, verdict, reason=None):  # a primary accuracy record, as a sweep stores it
        ...     return {"model": "toy", "recipe": recipe, "recipe_config": {"method": "rtn" if bits else "none", "bits": bits},
        ...             "task": "toy_mc4", "family": "knowledge", "metric": "acc", "primary": True, "value": value,
        ...             "verdict": verdict, "reason": reason, "retained": None if bits is None else value / 0.91}
        >>> records = [record("fp", None, 0.91, "baseline"), record("w4-rtn", 4, 0.90, "lossless"),
        ...            record("w1-rtn", 1, 0.26, "collapsed", "accuracy 0.260 is at chance (0.250)")]
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in records))
        >>> out = write_report(folder, folder / "html" / "demo.html")
        >>> sorted(p.name for p in out.parent.iterdir())
        ['.quantsweep-report.json', 'demo.html', 'report-retention-knowledge.png', 'report-verdict-map.png', 'results.csv', 'results.parquet']
    """
    records = frames.load_records(results_dir)
    out = Path(results_dir) / "report.html" if out is None else Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out must name an .html file, got {str(out)!r}")
    _check_writable(out.parent)
    html, figures = build_report(records, title=title)
    names = ["results.csv", "results.parquet", *figures]
    _check_not_replacing(out, names, results_dir)
    table = frames.records_frame(records)
    try:
        # The manifest first, and atomically: a report killed at any later moment leaves files the
        # manifest already names, so the next report replaces them instead of refusing them as foreign.
        written = sorted({*_report_files(out.parent), *names})
        atomic_write_text(out.with_name(MANIFEST), json.dumps({"files": written}, indent=1) + "\n")
        out.write_text(html, encoding="utf-8")
        table.to_csv(out.with_name("results.csv"), index=False)
        table.to_parquet(out.with_name("results.parquet"), index=False)
        for name, png in figures.items():
            out.with_name(name).write_bytes(png)
    except OSError as error:
        raise ValueError(f"cannot write the report into {out.parent}: {error.strerror or error}") from None
    logger.info("report written to %s (%d records)", out, len(records))
    return out


MANIFEST = ".quantsweep-report.json"  # the files a report wrote into its folder: the ones it may replace


def _report_files(folder: Path) -> list[str]:
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in files if isinstance(name, str)]


def _check_writable(folder: Path) -> None:
    """Refuse a report folder that cannot be created or written (or has no space left), before the report is built."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_writable(folder)
    except OSError as error:
        raise ValueError(f"cannot write the report into {folder}: {error.strerror or error}") from None


def _check_not_replacing(out: Path, names: list[str], results_dir) -> None:
    """Refuse to replace files beside ``out`` that no report wrote (a results folder's own derived files aside)."""
    folder = out.parent
    if folder.resolve() == Path(results_dir).resolve():
        return  # the results folder itself: its CSV, Parquet and PNGs are derived from its records
    ours = set(_report_files(folder))
    foreign = [name for name in names if (folder / name).exists() and name not in ours]
    if foreign:
        raise ValueError(
            f"--out {out} would replace {', '.join(foreign[:4])}{' ...' if len(foreign) > 4 else ''} in {folder}, "
            "which no quantsweep report wrote there; nothing was written: choose another folder for --out"
        )
