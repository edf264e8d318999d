"""Plain-text tables of results: rows are recipes, columns are tasks.

Each cell shows the task's primary metric and a marker for its verdict; under
the table, every cell that is not lossless (or the baseline) gets a line saying
why, in words with the numbers (the verdict's ``reason``).

Example:
    >>> def record(recipe, bits, value, verdict, reason=None):  # a primary accuracy record, as a sweep stores it
    ...     return {"model": "toy", "recipe": recipe, "recipe_config": {"method": "rtn" if bits else "none", "bits": bits},
    ...             "task": "toy_mc4", "family": "knowledge", "metric": "acc", "primary": True, "value": value,
    ...             "verdict": verdict, "reason": reason, "retained": None if bits is None else value / 0.91}
    >>> records = [record("fp", None, 0.91, "baseline"), record("w4-rtn", 4, 0.90, "lossless"),
    ...            record("w1-rtn", 1, 0.26, "collapsed", "accuracy 0.260 is at chance (0.250)")]
    >>> print(format_table(records))
    recipe  toy_mc4 (acc)
    ------  ---------------
    fp      0.910 base
    w4-rtn  0.900 ok
    w1-rtn  0.260 COLLAPSED
    <BLANKLINE>
    why:
      w1-rtn / toy_mc4: collapsed: accuracy 0.260 is at chance (0.250)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from quantsweep._text import safe_text
from quantsweep.verdicts.rules import UNREMARKABLE, VERDICT_MARKERS, is_error, is_primary_or_error
from quantsweep.verdicts.views import split_views

LEGEND = (
    "verdicts: base = baseline, ok = lossless, ? = inconclusive, DEGRADED = significantly worse, "
    "COLLAPSED = near-random, NON-FINITE = NaN/Inf outputs, ERROR = recipe failed"
)


def format_cell(record: dict[str, Any]) -> str:
    """One table cell: the value with its verdict marker (``ERROR`` for a failed recipe).

    Example:
        >>> format_cell({"value": 0.5, "verdict": "collapsed"})
        '0.500 COLLAPSED'
    """
    marker = VERDICT_MARKERS.get(record.get("verdict") or "", record.get("verdict") or "")
    value = record.get("value")
    if is_error(record):
        return VERDICT_MARKERS["error"]
    if value is None or value in ("inf", "-inf"):
        text = "nan" if value is None else str(value)
    elif isinstance(value, (int, float)):
        text = f"{value:.3f}" if abs(value) < 1000 else f"{value:.3g}"
    else:
        text = str(value)
    return f"{text} {marker}".strip()


def primary_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of each (recipe, task)'s primary metric, or its error record.

    Example:
        >>> primary_records([{"recipe": "fp", "task": "t", "metric": "acc", "primary": True}])[0]["metric"]
        'acc'
    """
    return [r for r in records if is_primary_or_error(r)]


def format_reasons(records: Iterable[dict[str, Any]]) -> list[str]:
    """One line per primary cell that is not lossless or the baseline: ``recipe / task: verdict: reason``.

    Failed recipes give their error instead of a reason.

    Example:
        >>> format_reasons([{"recipe": "w2", "task": "t", "primary": True, "verdict": "inconclusive",
        ...                  "reason": "n = 4 < min_samples = 20"}])
        ['w2 / t: inconclusive: n = 4 < min_samples = 20']
    """
    lines = []
    for record in primary_records(records):
        verdict = record.get("verdict")
        if verdict in UNREMARKABLE:
            continue
        why = record.get("error") if is_error(record) else record.get("reason")
        evidence = divergence_text(record)
        lines.append(
            f"{record['recipe']} / {record['task']}: {verdict}: {why or 'no reason recorded'}"
            + (f" ({evidence})" if evidence else "")
        )
    return lines


def divergence_text(record: dict[str, Any]) -> str:
    """A record's divergence from the baseline in words: evidence beside the verdict, not a rung.

    Example:
        >>> divergence_text({"divergence_kind": "token", "kl_mean": 0.0407, "kl_p99": 0.31, "top1_agreement": 0.899})
        'KL 0.0407 nats/token (p99 0.31), same top-1 89.9%'
        >>> divergence_text({"divergence_kind": "options", "kl_mean": 0.0635, "top1_agreement": 0.96})
        'KL over options 0.0635 nats, same answer 96.0%'
    """
    kind, kl = record.get("divergence_kind"), record.get("kl_mean")
    if kind is None:
        return ""
    if record.get("divergence_error"):
        return f"divergence not measured: {record['divergence_error']}"
    if not isinstance(kl, (int, float)):
        return ""
    top1 = record.get("top1_agreement")
    share = f"{100 * top1:.1f}%" if isinstance(top1, (int, float)) else "?"
    if kind == "token":
        p99 = record.get("kl_p99")
        tail = f" (p99 {p99:.3g})" if isinstance(p99, (int, float)) else ""
        return f"KL {kl:.3g} nats/token{tail}, same top-1 {share}"
    return f"KL over options {kl:.3g} nats, same answer {share}"


def format_controls(records: Iterable[dict[str, Any]]) -> list[str]:
    """Lines on the A/A control: each task where evaluating the baseline again changed something, and the
    cells run at another batch size than their baseline while batching matters there.

    Example:
        >>> format_controls([{"recipe": "w4", "task": "t", "primary": True, "verdict": "lossless", "aa_nonzero": True,
        ...                   "aa_delta": -0.01, "aa_flips": 0.02, "batch_size_mismatch": True,
        ...                   "batch_size_used": 16, "baseline_batch_size_used": 32}])
        ['A/A control differs from the baseline on t: delta -0.01, 2.0% of answers flipped; verdicts of t take it into account', 'w4 / t: batch size 16, baseline 32, and the A/A control shows that batching changes results']
    """
    rows = primary_records(records)
    lines, seen = [], set()
    for record in rows:
        if record.get("aa_nonzero") and record["task"] not in seen:
            seen.add(record["task"])
            flips = record.get("aa_flips")
            flipped = f", {100 * flips:.1f}% of answers flipped" if isinstance(flips, (int, float)) else ""
            delta = record.get("aa_delta")
            shown = f"{delta:.3g}" if isinstance(delta, (int, float)) else "?"
            lines.append(
                f"A/A control differs from the baseline on {record['task']}: delta {shown}"
                f"{flipped}; verdicts of {record['task']} take it into account"
            )
    for record in rows:
        if record.get("batch_size_mismatch"):
            lines.append(
                f"{record['recipe']} / {record['task']}: batch size {record.get('batch_size_used')}, baseline "
                f"{record.get('baseline_batch_size_used')}, and the A/A control shows that batching changes results"
            )
    return lines


def format_table(records: Iterable[dict[str, Any]], tasks: list[str] | None = None, *, reasons: bool = True) -> str:
    """Render recipes × tasks as an aligned text table of primary metrics with verdicts.

    With ``reasons`` (the default), the reason of every cell that is not lossless
    follows the table (:func:`format_reasons`). Records of several models, or of one
    model under several settings, give one table per model and setting, each under its
    title (:func:`~quantsweep.verdicts.views.split_views`), never one merged table; a
    cell a table leaves out is named under it, with why.

    Example:
        >>> print(format_table([{"recipe": "fp", "task": "toy_mc4", "metric": "acc", "value": 0.91,
        ...                      "primary": True, "verdict": "baseline"}]))
        recipe  toy_mc4 (acc)
        ------  -------------
        fp      0.910 base
        >>> print(format_table([{"model": m, "recipe": "fp", "task": "t", "metric": "acc", "value": v,
        ...                      "primary": True, "verdict": "baseline"} for m, v in (("1b", 0.5), ("7b", 0.7))]))
        model 1b
        recipe  t (acc)
        ------  ----------
        fp      0.500 base
        <BLANKLINE>
        model 7b
        recipe  t (acc)
        ------  ----------
        fp      0.700 base
    """
    views = split_views(records)
    if len(views) == 1 and not views[0].left_out:
        return _one_table(views[0].records, tasks, reasons=reasons)
    blocks = []
    for view in views:
        block = [f"model {safe_text(view.title)}", _one_table(view.records, tasks, reasons=reasons)]
        block += [f"  left out: {safe_text(line)}" for line in view.left_out]
        blocks.append("\n".join(block))
    return "\n\n".join(blocks)


def _one_table(records: Iterable[dict[str, Any]], tasks: list[str] | None, *, reasons: bool) -> str:
    rows = [{**r, "recipe": safe_text(r["recipe"]), "task": safe_text(r["task"])} for r in primary_records(records)]
    tasks = tasks or list(dict.fromkeys(r["task"] for r in rows))
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    metric_of = {r["task"]: r["metric"] for r in rows if r.get("metric")}
    header = ["recipe"] + [f"{t} ({metric_of[t]})" if t in metric_of else t for t in tasks]
    # "*": the A/A control of this task differs from the baseline (the block under the table says by how much)
    cells = {(r["recipe"], r["task"]): format_cell(r) + (" *" if r.get("aa_nonzero") else "") for r in rows}
    body = [[recipe] + [cells.get((recipe, task), "-") for task in tasks] for recipe in recipes]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip()
        for line in [header, ["-" * w for w in widths]] + body
    ]
    why = format_reasons(rows) if reasons else []
    if why:
        lines += ["", "why:"] + [f"  {line}" for line in why]
    controls = format_controls(rows) if reasons else []
    if controls:
        lines += ["", "A/A control (* in the table: the verdict takes it into account):"]
        lines += [f"  {line}" for line in controls]
    return "\n".join(safe_text(line) for line in lines)
