"""Claims and deaths: which cells this process computes, and cells stored as failed without a result.

A cell is claimed before it is computed (:meth:`~quantsweep.sweep.store.CellStore.claim`).
A claim taken over from a process that died while computing the cell counts that
death; after :data:`MAX_DEATHS` the cell is stored as failed (``error_kind: killed``)
rather than computed again and again.

Example:
    >>> import tempfile, types
    >>> from quantsweep.sweep.store import CellStore
    >>> store = CellStore(tempfile.mkdtemp())
    >>> run = types.SimpleNamespace(started_at=0.0, force=False, retry_failed=False)
    >>> cell = types.SimpleNamespace(key="k")
    >>> claimed = claim_cells(store, [cell], run, batch_size=8, ran_on={})
    >>> list(claimed), claimed["k"].release()
    (['k'], None)
"""

from __future__ import annotations

import logging
from typing import Any

from quantsweep.sweep.records import base_record, failed_record

logger = logging.getLogger(__name__)

MAX_DEATHS = 2  # processes that may die computing one cell (kill -9, the OOM killer) before it is a failed cell


def store_failure(store, cell, ran_on: dict[str, Any], stage: str, error: BaseException, **extra) -> dict[str, Any]:
    """Store ``cell`` as failed while ``stage`` with ``error``; returns the record.

    Example:
        >>> import tempfile
        >>> from types import SimpleNamespace
        >>> from quantsweep.sweep.store import CellStore
        >>> cell = SimpleNamespace(key="k", model=SimpleNamespace(name="toy", path="toy"), task="toy_mc4",
        ...     recipe=SimpleNamespace(name="fp", to_dict=dict), is_baseline=True, baseline_key="k",
        ...     key_fields={"model": "abc"})
        >>> store_failure(CellStore(tempfile.mkdtemp()), cell, {}, "quantizing", ValueError("no"))["status"]
        'failed'
    """
    record = failed_record(base_record(cell, ran_on), stage, error, **extra)
    store.write_cell(record)
    logger.error(
        "cell %s/%s/%s failed while %s: %s", cell.model.name, cell.recipe.name, cell.task, stage, record["error"]
    )
    return record


def claim_cells(store, cells, run, *, batch_size, ran_on: dict[str, Any]) -> dict[str, Any]:
    """Claim every cell of ``cells`` that is not settled in this ``run`` nor held by a live process.

    A cell whose earlier owners died :data:`MAX_DEATHS` times is stored as failed instead.

    Returns:
        key -> :class:`~quantsweep.sweep.store.Claim` of the cells this process computes.

    Example:
        >>> import tempfile, types
        >>> from quantsweep.sweep.store import CellStore
        >>> run = types.SimpleNamespace(started_at=0.0, force=False, retry_failed=False)
        >>> claim_cells(CellStore(tempfile.mkdtemp()), [], run, batch_size=8, ran_on={})
        {}
    """
    claimed = {}
    try:
        for cell in cells:
            _claim_one(store, cell, run, batch_size, ran_on, claimed)
    except BaseException:  # an unreadable store file mid-way: the claims taken so far are not left beating
        for claim in claimed.values():
            claim.release()
        raise
    return claimed


def _claim_one(store, cell, run, batch_size: int, ran_on: dict, claimed: dict) -> None:
    """Claim ``cell`` into ``claimed`` unless it is settled, held elsewhere, or has killed too many processes."""
    if store.is_settled(cell.key, run):
        return
    claim = store.claim(cell.key)
    if claim is None:
        logger.info("cell %s is being computed by another worker; left to it", cell.key)
        return
    claimed[cell.key] = claim  # from here the caller releases it if anything below raises
    if store.is_settled(cell.key, run):  # finished by another worker meanwhile?
        claimed.pop(cell.key).release()
    elif claim.attempts >= MAX_DEATHS:
        error = RuntimeError(
            f"the process computing this cell died {claim.attempts} times without finishing it (killed: by "
            f"kill -9 or the kernel's out-of-memory killer, at batch size {batch_size} or less); rerun with "
            "a smaller --batch-size and --retry-failed"
        )
        store_failure(store, cell, ran_on, "evaluating", error, error_kind="killed", deaths=claim.attempts)
        claimed.pop(cell.key).release()


def store_failed_cells(unit, context, keys, stage: str, error: BaseException) -> None:
    """Store the given cells of ``unit`` as failed with ``error`` (for a unit that died outside any cell).

    Each cell is claimed first and skipped if another process holds it or stored it meanwhile.

    Example:
        >>> import tempfile
        >>> from types import SimpleNamespace
        >>> from quantsweep.sweep.context import UnitContext
        >>> store_failed_cells(SimpleNamespace(cells=()), UnitContext(tempfile.mkdtemp(), {}), [], "running", None)
    """
    from quantsweep.sweep.store import CellStore

    store = CellStore(context.store_dir)
    wanted = set(keys)
    nowhere = {"host": None, "pid": None, "device": None}
    for cell in unit.cells:
        if cell.key not in wanted:
            continue
        claim = store.claim(cell.key)  # never overwrite a cell another process is finishing
        if claim is None:
            continue
        try:
            if not store.is_settled(cell.key, context):
                store_failure(store, cell, nowhere, stage, error)
        finally:
            claim.release()
