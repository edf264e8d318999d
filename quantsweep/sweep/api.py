"""The sweep driver: plan from the store, run what is missing, judge from disk, rebuild the derived files.

``quantsweep sweep SPEC`` and ``quantsweep run`` both come here. The data flow reads
left to right: spec -> cells (keyed by content) -> units (load once per model) ->
store (one file per cell) -> judge from the store -> results.jsonl / summary.json.

Running the same command again skips every stored cell and says so; ``retry_failed``
runs failed cells again, ``force`` recomputes everything. Two sweeps into one store
never compute a cell twice at once: a cell claimed by a live process elsewhere is
waited for.

Example:
    >>> import tempfile
    >>> spec = {"models": [{"path": "toy", "device": "cpu"}], "recipes": ["w8-rtn"], "tasks": ["toy_mc4"], "limit": 8}
    >>> frame = sweep(spec, out=tempfile.mkdtemp(), progress=False)
    >>> sorted(set(frame.recipe))
    ['fp', 'w8-rtn']
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantsweep.sweep.spec import absolute_paths, load_spec, verdict_config

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
WAIT_POLL_S = 2.0


@dataclass
class SweepOutcome:
    """What a sweep did: its plan, the records of its cells, and where they are stored.

    Attributes:
        plan: the :class:`~quantsweep.sweep.plan.SweepPlan` (done, failed, to_run).
        records: judged records of this sweep's cells, baseline first.
        out: the store folder.
        computed: summaries of the cells computed by this run.

    Example:
        >>> import tempfile
        >>> spec = {"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"], "limit": 8}
        >>> result = run_sweep(spec, tempfile.mkdtemp(), progress=False)
        >>> result.plan.describe()
        '0 of 1 cells already done; 1 to run'
    """

    plan: Any
    records: list[dict[str, Any]]
    out: Path
    computed: list[dict[str, Any]] = field(default_factory=list)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")


def run_sweep(
    spec_or_path,
    out,
    *,
    backend: str = "local",
    address: str | None = None,
    retry_failed: bool = False,
    force: bool = False,
    progress: bool = True,
    on_plan: Callable | None = None,
    on_recipe: Callable | None = None,
) -> SweepOutcome:
    """Run a sweep into the store ``out`` and return what it did.

    Args:
        spec_or_path: a :class:`SweepSpec`, a mapping, or a YAML path.
        out: the store folder (created if missing; never emptied).
        backend: ``local`` (this process) or ``ray`` (a Ray cluster; ``address`` picks it).
        retry_failed: run failed cells again.
        force: recompute every cell.
        progress: show a progress bar over cells.
        on_plan: called with the plan before any cell runs (e.g. to print "14 of 20 done").
        on_recipe: called with ``(model, recipe, records)`` as each recipe's cells are judged
            (local backend), for a row-per-recipe display.

    Raises:
        ValueError: a bad spec, unknown recipe/task/backend, missing model path or
            calibration source, or an incompatible store: all before any model loads.

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> spec = {"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"], "limit": 8}
        >>> [r["verdict"] for r in run_sweep(spec, out, progress=False).records if r["primary"]]
        ['baseline']
        >>> run_sweep(spec, out, progress=False).plan.describe()  # a rerun computes nothing
        '1 of 1 cells already done; 0 to run'
    """
    from quantsweep.sweep.context import UnitContext
    from quantsweep.sweep.derived import DerivedFiles
    from quantsweep.sweep.names import claim_names
    from quantsweep.sweep.plan import plan_cells, sort_cells
    from quantsweep.sweep.progress import CellProgress
    from quantsweep.sweep.store import CellStore, check_store_writable

    _check_backend(backend)
    spec = absolute_paths(load_spec(spec_or_path))
    out = Path(out).expanduser().resolve()  # a Ray worker starts in another folder than this driver
    verdicts = verdict_config(spec)
    new_store = not out.exists()
    check_store_writable(out)  # an incompatible or unwritable store is refused before any checkpoint is hashed
    planning = {}
    if backend == "ray":  # join the cluster first (a dead --address fails in seconds); key cells by its devices
        from quantsweep.sweep.ray import planning_device_kinds

        planning["device_kind_of"] = planning_device_kinds(address)
    cells = plan_cells(spec, **planning)  # every check passed: only now is a folder created
    store = CellStore(out)
    if new_store:  # only its parent was probed above: probe the folders just made
        store.check_writable()
    claim_names(store, cells)  # one name, one recipe and one model, per store: a clash is refused here
    plan = sort_cells(cells, store, retry_failed=retry_failed, force=force)
    logger.info("%s", plan.describe())
    if on_plan is not None:
        on_plan(plan)
    context = UnitContext.from_plan(plan, store.directory, force=force, retry_failed=retry_failed)
    bar = CellProgress(total=len(plan.to_run), skipped=len(plan.done) + len(plan.failed), enabled=progress)
    computed: list[dict[str, Any]] = []

    derived = DerivedFiles(store, verdicts, plan=plan)

    def judged_recipe(recipe_name, summaries):
        if on_recipe is not None and summaries:
            on_recipe(summaries[0]["model"], recipe_name, derived.records([s["key"] for s in summaries]))

    try:
        pending = list(plan.to_run)
        while pending:
            before = len(pending)
            if backend == "local":
                from quantsweep.sweep.local import run_local

                computed += run_local(
                    _replan(plan, pending), context, bar, on_cell=lambda _: derived.rebuild(), on_recipe=judged_recipe
                )
            else:
                from quantsweep.sweep.ray import run_ray

                computed += run_ray(
                    _replan(plan, pending), context, bar, address=address, on_cell=lambda _: derived.rebuild()
                )
            pending = _wait_for_others(store, [c for c in pending if not store.is_settled(c.key, context)], context)
            if pending and len(pending) >= before:  # a round that stored nothing would repeat forever
                from quantsweep.sweep.claims import store_failed_cells
                from quantsweep.sweep.plan import group_units

                error = RuntimeError(
                    "the backend finished without storing this cell; is the store the same path on "
                    "every node (an absolute path on a shared filesystem)?"
                )
                for unit in group_units(pending):
                    store_failed_cells(unit, context, [c.key for c in unit.cells], "running", error)
                logger.error("%d cells were not stored by the %s backend; recorded as failed", len(pending), backend)
                pending = []
    finally:
        bar.close()
    derived.rebuild()
    records = derived.records([c.key for c in plan.cells])
    return SweepOutcome(plan=plan, records=records, out=store.directory, computed=computed)


def _replan(plan, cells):
    return dataclasses.replace(plan, to_run=list(cells))


def _wait_for_others(store, missing, context) -> list:
    """Wait while cells are computed by another live process; return those left to do here."""
    announced = False
    while missing:
        owned = [c for c in missing if store.claim_owner(c.key) is not None]
        if not owned:
            return missing  # nobody holds them (their owner died): compute them here
        if not announced:
            owners = {f"{o.get('host')}:{o.get('pid')}" for o in (store.claim_owner(c.key) or {} for c in owned)}
            logger.warning(
                "waiting for %d cells being computed by another process (%s)", len(owned), ", ".join(sorted(owners))
            )
            announced = True
        time.sleep(WAIT_POLL_S)
        missing = [c for c in missing if not store.is_settled(c.key, context)]
    return []


def sweep(
    spec_or_path,
    out,
    *,
    backend: str = "local",
    address: str | None = None,
    retry_failed: bool = False,
    force: bool = False,
    progress: bool = True,
):
    """Run a sweep and return its results as a pandas DataFrame, one row per cell and metric.

    The columns are those of ``results.jsonl``: model, recipe, task, family, metric, value,
    stderr, n, verdict, delta, ci_low, ci_high, p_value, retained, chance, ... A rerun into
    the same ``out`` computes only what is missing.

    Example:
        >>> import quantsweep, tempfile
        >>> spec = {"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"], "limit": 8}
        >>> frame = quantsweep.sweep(spec, out=tempfile.mkdtemp(), progress=False)
        >>> frame.query("primary")[["recipe", "task", "verdict"]].values.tolist()
        [['fp', 'toy_mc4', 'baseline']]
    """
    result = run_sweep(
        spec_or_path, out, backend=backend, address=address, retry_failed=retry_failed, force=force, progress=progress
    )
    return records_frame(result.records)


def records_frame(records: list[dict[str, Any]]):
    """Records as a DataFrame: :func:`quantsweep.report.frames.records_frame` (the one conversion).

    Example:
        >>> records_frame([{"recipe": "fp", "value": 1.0}]).loc[0, "recipe"]
        'fp'
    """
    from quantsweep.report.frames import records_frame as frame

    return frame(records)


def refresh_derived(directory) -> bool:
    """Rebuild a store's derived files if a cell is newer than them (a run killed before its rebuild),
    or if ``results.jsonl`` is unreadable (it is set aside as ``results.jsonl.corrupt-<time>``, never lost).

    Returns whether it rebuilt. Nothing is evaluated; the store's last thresholds are kept.

    Example:
        >>> import tempfile
        >>> refresh_derived(tempfile.mkdtemp())  # not a store: nothing to do
        False
    """
    path = Path(directory)
    if not (path / "store.json").is_file():
        return False
    cells = list((path / "cells").glob("*.json"))
    results = path / "results.jsonl"
    if results.is_file() and not _readable_results(results):
        from quantsweep.sweep.store import set_aside

        set_aside(results, "not JSON lines", "it is rebuilt from the cells")
    # results.jsonl is dated when its cells were listed (DerivedFiles.rebuild): a cell stored later is newer
    if not cells or (results.is_file() and results.stat().st_mtime_ns >= max(c.stat().st_mtime_ns for c in cells)):
        return False
    judge(path)
    return True


def _readable_results(path: Path) -> bool:
    """Whether every line of a derived ``results.jsonl`` is a JSON object (UTF-8); True when it is gone.

    An ``OSError`` (permission denied, an I/O error) propagates: a file that cannot be read is not set aside.
    """
    import json

    from quantsweep.sweep.store import PARSE_ERRORS

    try:
        with path.open(encoding="utf-8") as stream:
            for line in stream:
                if line.strip() and not isinstance(json.loads(line), dict):
                    return False
    except FileNotFoundError:
        return True  # nothing to set aside
    except PARSE_ERRORS:
        return False
    return True


def load_results(directory):
    """Every stored cell of a store, judged, as a DataFrame (one row per cell and metric).

    It reads ``results.jsonl``, the file derived from the cells, rebuilding it first if a
    cell is newer (a run killed between a cell and its rebuild loses nothing).

    Raises:
        ValueError: the folder has no results (the message says where it looked).

    Example:
        >>> import quantsweep, tempfile
        >>> out = tempfile.mkdtemp()
        >>> spec = {"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"], "limit": 8}
        >>> _ = run_sweep(spec, out, progress=False)
        >>> list(quantsweep.load_results(out).query("primary").verdict)
        ['baseline']
    """
    from quantsweep.report.frames import load_records

    path = Path(directory)
    refresh_derived(path)
    results = path / "results.jsonl" if path.is_dir() else path
    if not results.is_file():
        raise ValueError(
            f"no results at {str(results)!r}: run `quantsweep sweep` or `quantsweep run` with --out {path} first"
        )
    return records_frame(load_records(path))


def judge(directory, **thresholds) -> list[dict[str, Any]]:
    """Re-judge a store from disk with new verdict thresholds (nothing is evaluated again).

    Rewrites ``results.jsonl`` and ``summary.json`` and returns the records. Thresholds
    not given are the store's own (kept in its ``store.json`` by the last judgement);
    the ones used are recorded there.

    Raises:
        ValueError: not a store, or an unknown threshold name.

    Example:
        >>> import quantsweep, tempfile
        >>> out = tempfile.mkdtemp()
        >>> spec = {"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"], "limit": 8}
        >>> _ = run_sweep(spec, out, progress=False)
        >>> {r["verdict_config"]["alpha"] for r in quantsweep.judge(out, alpha=0.01)}
        {0.01}
    """
    from quantsweep._schema import build
    from quantsweep.sweep.derived import DerivedFiles
    from quantsweep.sweep.store import CellStore
    from quantsweep.verdicts.config import VerdictConfig

    path = Path(directory)
    if not (path / "store.json").is_file():
        raise ValueError(f"{str(path)!r} is not a quantsweep store (no store.json there)")
    store = CellStore(path)
    # start from the thresholds the store was last judged with (the sweep's own), then apply the new ones
    previous = store.verdict_thresholds()
    if previous is None:
        previous = _thresholds_in_results(path)  # a store from before its metadata kept them: read once
    config = build(VerdictConfig, {**previous, **thresholds}, "verdict thresholds")
    return DerivedFiles(store, config).rebuild()  # records the thresholds in the store's metadata


def _thresholds_in_results(path: Path) -> dict[str, Any]:
    """The thresholds on the first record of ``results.jsonl``: where stores before ``store.json`` kept them."""
    import json

    results = path / "results.jsonl"
    if not results.is_file() or not _readable_results(results):
        return {}
    first = next((line for line in results.read_text(encoding="utf-8").splitlines() if line.strip()), None)
    return (json.loads(first).get("verdict_config") or {}) if first else {}
