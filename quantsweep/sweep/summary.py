"""Verdict summaries of a sweep: one per recipe, and one per (recipe, task family).

The openPangu study's findings differ by family (4-bit hurt 1B on reasoning, math
and code but not on language modelling), so a single verdict per recipe hides
too much; both levels are reported. A summary's headline verdict is the worst
verdict among its tasks (non-finite > collapsed > degraded > inconclusive >
lossless), with counts of each.

Example:
    >>> summary = summarize_records(records)  # doctest: +SKIP
    >>> summary["by_recipe"]["w1-rtn"]["verdict"]  # doctest: +SKIP
    'collapsed'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def task_family(task: str, output_type: str | None = None) -> str:
    """The family of a task: from its suite entry, else from its output type.

    Example:
        >>> task_family("my_task", "generate_until")
        'generation'
    """
    from quantsweep.eval.suites import suite_entry

    entry = suite_entry(task)
    if entry is not None:
        return entry.family
    from quantsweep.eval.tasks import OUTPUT_TYPES

    kind = OUTPUT_TYPES.get(output_type or "")
    return kind.family if kind is not None else "other"


def summarize_records(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-recipe and per-family verdict summaries from result records (primary metrics only).

    Recipes that failed have no verdict; ``failed`` maps each to its error. ``reasons``
    maps ``recipe/task`` of every primary cell that is not lossless to its verdict and
    reason, and ``documents_needed`` maps each inconclusive cell to the documents that
    would decide it (when known), e.g. "inconclusive: about 2,400 documents would decide".

    Example:
        >>> rows = [{"recipe": "w1", "task": "t", "verdict": "collapsed", "primary": True, "output_type": "generate_until"}]
        >>> summarize_records(rows)["by_recipe"]["w1"]["verdict"]
        'collapsed'
    """
    from quantsweep.eval.verdicts import summarize

    rows, failed, reasons, needed = [], {}, {}, {}
    for record in records:
        verdict = record.get("verdict")
        if verdict == "error":
            failed.setdefault(record["recipe"], record.get("error"))
        elif record.get("primary") and verdict not in (None, "baseline"):
            family = record.get("family") or task_family(record["task"], record.get("output_type"))
            rows.append((record["recipe"], record["task"], family, verdict))
            cell = f"{record['recipe']}/{record['task']}"
            if verdict != "lossless":
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
    }
