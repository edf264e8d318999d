"""Cell records: what a stored cell file holds, assembled in one place.

A cell record is the base (its key, model, recipe, task, key fields, where it ran)
plus either its results (``status: done``) or its error (``status: failed``).

Example:
    >>> failed_record({"key": "k"}, "quantizing", ValueError("bad group size"))["error"]
    'ValueError: bad group size'
"""

from __future__ import annotations

import traceback
from datetime import datetime, timezone
from typing import Any

CELL_FORMAT = 1


def now() -> str:
    """The current UTC time, to the second, as stored in ``finished_at``.

    Example:
        >>> now().endswith("+00:00")
        True
    """
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def error_text(error: BaseException) -> str:
    """``Type: first line of the message``: how a record names an error.

    Example:
        >>> error_text(RuntimeError("out of memory\\nmore"))
        'RuntimeError: out of memory'
    """
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}".rstrip(": ")


def base_record(cell, ran_on: dict[str, Any]) -> dict[str, Any]:
    """The fields every record of a planned cell has (a :class:`~quantsweep.sweep.plan.CellPlan`).

    Example:
        >>> from types import SimpleNamespace
        >>> cell = SimpleNamespace(key="k", model=SimpleNamespace(name="toy", path="toy"), task="toy_mc4",
        ...     recipe=SimpleNamespace(name="fp", to_dict=lambda: {"method": "none"}), is_baseline=True,
        ...     baseline_key="k", key_fields={"model": "abc"})
        >>> base_record(cell, {"host": "h"})["recipe"]
        'fp'
    """
    return {
        "format": CELL_FORMAT,
        "key": cell.key,
        "model": cell.model.name,
        "model_path": cell.model.path,
        "model_fingerprint": cell.key_fields["model"],
        "recipe": cell.recipe.name,
        "recipe_config": cell.recipe.to_dict(),
        **_precision(cell.recipe),
        "task": cell.task,
        "is_baseline": cell.is_baseline,
        "baseline_key": cell.baseline_key,
        "key_fields": cell.key_fields,
        "ran_on": dict(ran_on),
    }


def _precision(recipe) -> dict[str, Any]:
    """``weight_bits``, ``activation_bits``, ``kv_cache_bits`` of a recipe (None: full precision)."""
    from quantsweep.methods.compose import recipe_precision

    return recipe_precision(recipe)


def failed_record(base: dict[str, Any], stage: str, error: BaseException, **extra) -> dict[str, Any]:
    """A failed cell: its base, the stage that failed, the error and its traceback.

    Example:
        >>> failed_record({"key": "k"}, "evaluating", MemoryError())["stage"]
        'evaluating'
    """
    return {
        **base,
        "status": "failed",
        "stage": stage,
        "error": error_text(error),
        "traceback": "".join(traceback.format_exception(error))[-4000:],
        "finished_at": now(),
        **extra,
    }


def cell_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The short form of a cell record that progress displays and callbacks get.

    Example:
        >>> cell_summary({"key": "k", "status": "done"})["status"]
        'done'
    """
    return {k: record.get(k) for k in ("key", "status", "model", "recipe", "task", "error", "ran_on", "stage")}
