"""The local backend: every work unit in this process, one after the other.

Each model is one unit: it is loaded once, its baseline runs first, and the
full-precision weights are restored between recipes.

Example:
    >>> import tempfile
    >>> from quantsweep.sweep.plan import plan_sweep
    >>> from quantsweep.sweep.spec import spec_from_dict
    >>> from quantsweep.sweep.store import CellStore
    >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"], "limit": 8})
    >>> store = CellStore(tempfile.mkdtemp())
    >>> plan = plan_sweep(spec, store)
    >>> [s["status"] for s in run_local(plan, UnitContext.from_plan(plan, store.directory))]
    ['done']
"""

from __future__ import annotations

from collections.abc import Callable

from quantsweep.sweep.cell import run_unit
from quantsweep.sweep.context import UnitContext


def run_local(
    plan, context: UnitContext, progress=None, *, on_cell: Callable | None = None, on_recipe: Callable | None = None
) -> list[dict]:
    """Run the plan's units here; returns the summaries of the cells computed.

    ``on_cell`` is called after each cell is stored (the driver rebuilds the derived
    files there), ``on_recipe`` after each recipe.

    Example:
        >>> from types import SimpleNamespace
        >>> run_local(SimpleNamespace(units=list), UnitContext(store_dir="out", task_configs={}))  # no units: nothing
        []
    """
    summaries = []

    def cell_finished(summary):
        if on_cell is not None:
            on_cell(summary)
        if progress is not None:
            progress.finished(summary["status"])

    for unit in plan.units():
        if progress is not None:
            progress.running(1)
        summaries += run_unit(unit, context, on_cell=cell_finished, on_recipe=on_recipe)
        if progress is not None:
            progress.running(0)
    return summaries
