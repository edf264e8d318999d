"""The family summary of a sweep, written once: one line per recipe, and one per (recipe, task family).

The openPangu study's findings differ by family (4-bit hurt 1B on reasoning, math
and code but not on language modelling), so a single verdict per recipe hides
too much; both levels are reported. A summary's headline verdict is the worst
verdict among its tasks, by the ladder's severity
(:data:`~quantsweep.verdicts.rules.SEVERITY`: non-finite > collapsed > degraded >
inconclusive > lossless), with counts of each. The text table, the HTML report,
``summary.json`` and the command line all read this one summary.

Example:
    >>> records = [{"recipe": "w1-rtn", "task": "toy_mc4", "verdict": "collapsed", "primary": True,
    ...             "family": "commonsense_reasoning"}]
    >>> summary = summarize_records(records)
    >>> summary["by_recipe"]["w1-rtn"]["verdict"], list(summary["by_family"])
    ('collapsed', ['w1-rtn/commonsense_reasoning'])
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from quantsweep.eval.suites import task_family
from quantsweep.verdicts.rules import SEVERITY, UNREMARKABLE, VERDICTS, is_error, verdict_name, worst
from quantsweep.verdicts.views import split_views


def summarize_verdicts(cells: Iterable[tuple[str, object]]) -> dict:
    """Summary of (task, verdict) pairs: worst and dominant verdict, counts, worst tasks.

    Example:
        >>> summarize_verdicts([("a", "lossless"), ("b", "degraded"), ("c", "lossless")])["verdict"]
        'degraded'
    """
    cells = [(task, verdict_name(v)) for task, v in cells]
    if not cells:
        raise ValueError("cannot summarize an empty list of verdicts")
    counts = Counter(name for _, name in cells)
    headline = worst(counts)
    dominant = max(counts, key=lambda name: (counts[name], SEVERITY[name]))
    return {
        "verdict": headline,
        "dominant": dominant,
        "counts": {name: counts.get(name, 0) for name in VERDICTS},
        "n_tasks": len(cells),
        "worst_tasks": sorted({task for task, name in cells if name == headline}),
    }


def summarize(verdicts: Iterable[tuple[str, str, str, object]]) -> dict:
    """Per-recipe and per-(recipe, family) summaries of verdict cells.

    Args:
        verdicts: rows ``(recipe, task, family, verdict)`` where verdict is a
            :class:`~quantsweep.verdicts.rules.Verdict`, its ``to_dict()``, or a verdict name.

    Returns:
        ``{"by_recipe": {recipe: summary}, "by_family": {(recipe, family): summary}}``; each
        summary holds ``verdict`` (the worst, by :data:`~quantsweep.verdicts.rules.SEVERITY`),
        ``dominant``, ``counts`` (every verdict name), ``n_tasks`` and ``worst_tasks``.

    Example:
        >>> rows = [("w4", "arc", "reasoning", "lossless"), ("w4", "gsm8k", "math", "collapsed")]
        >>> s = summarize(rows)
        >>> s["by_recipe"]["w4"]["verdict"], s["by_family"][("w4", "math")]["worst_tasks"]
        ('collapsed', ['gsm8k'])
    """
    by_recipe: dict[str, list] = {}
    by_family: dict[tuple[str, str], list] = {}
    for row in verdicts:
        if len(row) != 4:
            raise ValueError(f"each row must be (recipe, task, family, verdict), got {row!r}")
        recipe, task, family, verdict = row
        by_recipe.setdefault(recipe, []).append((task, verdict))
        by_family.setdefault((recipe, family), []).append((task, verdict))
    return {
        "by_recipe": {key: summarize_verdicts(cells) for key, cells in by_recipe.items()},
        "by_family": {key: summarize_verdicts(cells) for key, cells in by_family.items()},
    }


def summarize_records(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-recipe and per-family verdict summaries from result records (primary metrics only).

    Recipes that failed have no verdict; ``failed`` maps each to its error. ``reasons``
    maps ``recipe/task`` of every primary cell that is not lossless to its verdict and
    reason, and ``documents_needed`` maps each inconclusive cell to the documents that
    would decide it (when known), e.g. "inconclusive: about 2,400 documents would decide".
    ``divergence`` maps each compared cell with a divergence from the baseline to its
    figures (:mod:`quantsweep.eval.divergence`); ``aa_control`` maps each task with an A/A
    control to the control's difference from the baseline.

    Example:
        >>> rows = [{"recipe": "w1", "task": "t", "verdict": "collapsed", "primary": True, "output_type": "generate_until"}]
        >>> summarize_records(rows)["by_recipe"]["w1"]["verdict"]
        'collapsed'
        >>> summarize_records([{"recipe": "w2", "task": "t", "verdict": "error", "error": "boom"}])["failed"]
        {'w2': 'boom'}
    """
    rows, failed, reasons, needed, divergence, controls = [], {}, {}, {}, {}, {}
    for record in records:
        verdict = record.get("verdict")
        if record.get("primary") and record.get("divergence_kind") and verdict != "baseline":
            divergence[f"{record['recipe']}/{record['task']}"] = {
                name: record.get(name)
                for name in ("divergence_kind", "kl_mean", "kl_p99", "top1_agreement", "prob_delta_mean")
            }
        if record.get("primary") and record.get("aa_nonzero") is not None and record.get("task") not in controls:
            controls[record["task"]] = {
                "nonzero": record["aa_nonzero"],
                "delta": record.get("aa_delta"),
                "flips": record.get("aa_flips"),
                "kl_mean": record.get("aa_kl_mean"),
            }
        if is_error(record):
            failed.setdefault(record["recipe"], record.get("error"))
        elif record.get("primary") and verdict not in (None, "baseline"):
            family = record.get("family") or task_family(record["task"], record.get("output_type"))
            rows.append((record["recipe"], record["task"], family, verdict))
            cell = f"{record['recipe']}/{record['task']}"
            if verdict not in UNREMARKABLE:
                reasons[cell] = {"verdict": verdict, "reason": record.get("reason")}
            if verdict == "inconclusive" and record.get("documents_needed") is not None:
                needed[cell] = f"inconclusive: about {int(record['documents_needed']):,} documents would decide"
    summary = summarize(rows) if rows else {"by_recipe": {}, "by_family": {}}
    return {
        "by_recipe": summary["by_recipe"],
        "by_family": {f"{recipe}/{family}": value for (recipe, family), value in summary["by_family"].items()},
        "failed": failed,
        "reasons": reasons,
        "documents_needed": needed,
        "divergence": divergence,
        "aa_control": controls,
    }


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def family_overview(cells: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (recipe, family) of the report's cells: the worst rung, the mean retained margin, the cell count.

    ``cells`` are the table's cells (one primary or error record per (recipe, task), as
    :func:`~quantsweep.verdicts.rules.is_primary_or_error` keeps); the baseline's are left
    out. Unlike :func:`summarize_records`, a failed cell counts here: it makes its family's
    worst rung ``error``. A cell without a family falls into ``other``; retention is
    averaged over the cells that have one (NaN when none has).

    Example:
        >>> family_overview([{"recipe": "w4", "family": "mc", "verdict": "lossless", "retained": 0.9},
        ...                  {"recipe": "w4", "family": "mc", "verdict": "error", "retained": None}])
        [{'recipe': 'w4', 'family': 'mc', 'worst verdict': 'error', 'mean retained': 0.9, 'cells': 2}]
    """
    groups: dict[tuple[Any, str], list[Mapping[str, Any]]] = {}
    for cell in cells:
        if cell.get("verdict") == "baseline":
            continue
        family = cell.get("family")
        groups.setdefault((cell["recipe"], family if isinstance(family, str) else "other"), []).append(cell)
    rows = []
    for (recipe, family), group in groups.items():
        retained = [float(c["retained"]) for c in group if _finite(c.get("retained"))]
        rows.append(
            {
                "recipe": recipe,
                "family": family,
                "worst verdict": worst(c.get("verdict") for c in group) or "missing",
                "mean retained": sum(retained) / len(retained) if retained else math.nan,
                "cells": len(group),
            }
        )
    return rows


def summarize_views(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``: one :func:`summarize_records` per model and setting, never merged.

    Returns ``{"models": {model: {settings: {"setting": label, "by_recipe": ..., "by_family": ...,
    "failed": ..., "reasons": ..., "documents_needed": ..., "left_out": [...]}}}}``, and
    ``warning`` when a model has several settings or a view left a cell out (see
    :mod:`quantsweep.verdicts.views`).

    Example:
        >>> rows = [{"model": m, "settings": "s", "recipe": "w4", "task": "t", "verdict": v, "primary": True,
        ...          "family": "f", "cell_key": m} for m, v in (("1b", "degraded"), ("7b", "lossless"))]
        >>> {m: s["s"]["by_recipe"]["w4"]["verdict"] for m, s in summarize_views(rows)["models"].items()}
        {'1b': 'degraded', '7b': 'lossless'}
    """
    views = split_views(records)
    models: dict[str, dict[str, Any]] = {}
    notes = []
    for view in views:
        models.setdefault(str(view.model), {})[str(view.settings)] = {
            "setting": view.label,
            **summarize_records(view.records),
            "left_out": view.left_out,
        }
        notes += [f"{view.title}: {line}" for line in view.left_out]
    several = [model for model, settings in models.items() if len(settings) > 1]
    summary: dict[str, Any] = {"models": models}
    warnings = []
    if several:
        warnings.append(
            f"model(s) {', '.join(several)} hold results of more than one setting; each setting is summarised "
            "apart under its label"
        )
    if notes:
        warnings.append(f"{len(notes)} cell(s) left out of the summary: " + "; ".join(notes))
    if warnings:
        summary["warning"] = " ".join(warnings)
    return summary
