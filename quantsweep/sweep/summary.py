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

from typing import Any, Iterable

FALLBACK_FAMILIES = {
    "multiple_choice": "multiple_choice",
    "loglikelihood_rolling": "language_modelling",
    "loglikelihood": "language_modelling",
    "generate_until": "generation",
}


def task_family(task: str, output_type: str | None = None) -> str:
    """The family of a task: from its suite entry, else from its output type.

    Example:
        >>> task_family("my_task", "generate_until")
        'generation'
    """
    try:
        from quantsweep.eval.suites import suite_entry
    except ImportError:  # suites are optional for plain tasks
        suite_entry = None
    entry = suite_entry(task) if suite_entry is not None else None
    if entry is not None:
        return entry.family
    return FALLBACK_FAMILIES.get(output_type or "", "other")


def summarize_records(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-recipe and per-family verdict summaries from result records (primary metrics only).

    Example:
        >>> rows = [{"recipe": "w1", "task": "t", "verdict": "collapsed", "primary": True, "output_type": "generate_until"}]
        >>> summarize_records(rows)["by_recipe"]["w1"]["verdict"]
        'collapsed'
    """
    from quantsweep.eval.verdicts import summarize

    rows = []
    for record in records:
        if not (record.get("primary") or record.get("verdict") == "error"):
            continue
        verdict = record.get("verdict")
        if verdict in (None, "baseline", "error"):
            continue
        rows.append((record["recipe"], record["task"], record.get("family") or task_family(record["task"], record.get("output_type")), verdict))
    if not rows:
        return {"by_recipe": {}, "by_family": {}}
    summary = summarize(rows)
    return {"by_recipe": summary["by_recipe"],
            "by_family": {f"{recipe}/{family}": value for (recipe, family), value in summary["by_family"].items()}}
