"""The cell, written once: restore -> quantize -> evaluate -> store, for every backend.

:func:`run_unit` is what a worker runs (in this process for the local backend, in a
Ray worker for the cluster one): it loads one model once
(:class:`~quantsweep.sweep.prepare.PreparedModel`), and for each recipe of the unit
restores the full-precision weights, quantizes, evaluates each of the recipe's cells
and writes each cell file as soon as it is finished. Workers never judge: the driver
judges from the store (:mod:`quantsweep.sweep.derived`).

A failing cell is a finding: an exception while quantizing or evaluating, a model
that cannot be read on this node, or an out-of-memory that persists at batch size 1
is stored as a ``failed`` cell with its error, and the unit goes on. An
out-of-memory first retries with half the batch size, down to 1
(:func:`quantsweep.eval.lm.halve_on_out_of_memory`); the batch size actually used is
recorded.

A recipe cell of a perplexity task measures its token divergence against the
distributions its baseline cell stored; when the baseline is still being computed (a
cluster runs a model's units at once) the cell waits for it, bounded, and a cell left
without them says why in ``divergence_error`` (:mod:`quantsweep.sweep.reference`).

Example:
    >>> import tempfile
    >>> from quantsweep.sweep.context import UnitContext
    >>> from quantsweep.sweep.plan import plan_sweep
    >>> from quantsweep.sweep.spec import spec_from_dict
    >>> from quantsweep.sweep.store import CellStore
    >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"], "limit": 8})
    >>> store = CellStore(tempfile.mkdtemp())
    >>> plan = plan_sweep(spec, store)
    >>> [s["status"] for s in run_unit(plan.units()[0], UnitContext.from_plan(plan, store.directory))]
    ['done']
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from quantsweep.sweep.claims import claim_cells, store_failure
from quantsweep.sweep.context import UnitContext
from quantsweep.sweep.logs import cell_log
from quantsweep.sweep.plan import CellPlan, WorkUnit
from quantsweep.sweep.records import base_record, cell_summary, error_text, now
from quantsweep.sweep.reference import BaselineReference

logger = logging.getLogger(__name__)


class _UnitState:
    """What one unit holds while it runs: the store, the prepared model, where it runs."""

    def __init__(self, unit: WorkUnit, context: UnitContext, device: str | None):
        from quantsweep.sweep.prepare import PreparedModel
        from quantsweep.sweep.store import CellStore

        self.unit, self.context = unit, context
        self.store = CellStore(context.store_dir)
        self.prepared = PreparedModel(unit.model, device=device)
        self.ran_on = {"host": socket.gethostname(), "pid": os.getpid(), "device": None}
        self.said: set[str] = set()  # baseline keys whose missing distributions were logged already
        self.gave_up: dict[str, str] = {}  # baseline key -> why waiting for it was given up (no second wait)

    def checkpoint_diagnosis(self) -> dict[str, Any] | None:
        """The model's own non-finite weights (found once, at load), or None."""
        found = self.prepared.nonfinite_weights
        return {"checkpoint_nonfinite_weights": dict(found)} if found else None

    def fail(self, cell: CellPlan, stage: str, error: BaseException, **extra) -> dict[str, Any]:
        diagnosis = self.checkpoint_diagnosis()
        if diagnosis is not None:
            extra.setdefault("diagnosis", diagnosis)
        return store_failure(self.store, cell, self.ran_on, stage, error, **extra)


def run_unit(
    unit: WorkUnit,
    context: UnitContext,
    *,
    device: str | None = None,
    on_cell: Callable[[dict], None] | None = None,
    on_recipe: Callable[[str, list[dict]], None] | None = None,
) -> list[dict[str, Any]]:
    """Compute the cells of one work unit and store each as soon as it is finished.

    Cells already stored (by another worker, or before a restart) are skipped; cells
    claimed by a live worker elsewhere are left to it. The model is loaded once and its
    full-precision weights restored between recipes.

    Args:
        unit: one model and its cells, recipe by recipe.
        context: the sweep's settings and the store folder.
        device: where to run (a cluster worker passes what it was given); default the
            model spec's own device.
        on_cell: called with a short summary after each cell is stored.
        on_recipe: called with a recipe's name and its cell summaries when it is finished.

    Returns:
        A summary (key, status, model, recipe, task, error, ran_on) of each cell this call
        computed; cells skipped are not in it.

    Example:
        >>> import tempfile
        >>> from quantsweep.sweep.spec import ModelSpec
        >>> run_unit(WorkUnit(model=ModelSpec(path="toy"), cells=()), UnitContext(tempfile.mkdtemp(), {}))
        []
    """
    state = _UnitState(unit, context, device)
    done: list[dict[str, Any]] = []
    try:
        for recipe in unit.recipes:
            cells = [c for c in unit.cells if c.recipe.name == recipe.name]
            claimed = claim_cells(
                state.store, cells, context, batch_size=context.evaluation.batch_size, ran_on=state.ran_on
            )
            if not claimed:
                continue
            summaries = []
            try:
                summaries = _run_recipe(state, recipe, claimed, on_cell)
            finally:
                for claim in claimed.values():
                    claim.release()
            done += summaries
            if on_recipe is not None:
                on_recipe(recipe.name, summaries)
    finally:
        state.prepared.restore()
    return done


def _run_recipe(state: _UnitState, recipe, claimed: dict, on_cell) -> list[dict[str, Any]]:
    from quantsweep.measure.step import recipe_cost, speed_fields

    cells = [c for c in state.unit.cells if c.key in claimed]
    summaries = []

    def finish(record):
        claimed[record["key"]].release()  # as soon as its file is written: a kill later leaves no claim on it
        summaries.append(cell_summary(record))
        if on_cell is not None:
            on_cell(summaries[-1])

    prepared = state.prepared
    try:
        model, tokenizer = prepared.load()
        state.ran_on["device"] = str(next(model.parameters()).device)
    except Exception as error:  # noqa: BLE001 - e.g. the checkpoint is not readable on this node
        path = state.unit.model.path
        wrapped = (
            type(error)(f"could not load model {path!r} on node {socket.gethostname()}: {error}")
            if isinstance(error, (ValueError, OSError))
            else error
        )
        for cell in cells:
            finish(state.fail(cell, "loading the model", wrapped))
        return summaries
    quantize_log = state.store.log_path(cells[0].key)
    started = time.perf_counter()
    for claim in claimed.values():  # a death while quantizing counts against every cell of the recipe
        claim.mark_running(True)
    try:
        with cell_log(quantize_log):
            quantized = prepared.quantize(recipe)
    except Exception as error:  # noqa: BLE001 - a recipe that cannot be applied is a finding
        for cell in cells:
            finish(state.fail(cell, "quantizing", error))
        return summaries
    quantize = {
        "seconds": time.perf_counter() - started,
        "kernel": quantized.kernel,
        "layer_seconds": quantized.layer_seconds(),
        "peak_device_bytes": quantized.peak_device_bytes(),
        "log": quantize_log.name,
    }
    calibration = prepared.calibration().provenance() if cells[0].needs_calibration else None
    cost = recipe_cost(model, recipe, quantized)
    quantized.packed.clear()  # only the cost needs the packed codes; free them before evaluating
    if state.context.measure:
        cost.update(speed_fields(model, tokenizer, quantized))
    for claim in claimed.values():
        claim.mark_running(False)
    for cell in cells:
        claimed[cell.key].mark_running(True)  # from here a death counts against this cell alone
        try:
            with cell_log(state.store.log_path(cell.key)):
                record = _evaluate_cell(state, cell, quantize, calibration, cost)
        except Exception as error:  # noqa: BLE001 - one cell's failure must not end the unit
            record = state.fail(cell, "evaluating", error, quantize=quantize, calibration=calibration)
        finish(record)
    return summaries


def _evaluate_cell(state: _UnitState, cell: CellPlan, quantize: dict, calibration, cost: dict) -> dict[str, Any]:
    from quantsweep import device as devices
    from quantsweep.eval import harness
    from quantsweep.eval.lm import halve_on_out_of_memory
    from quantsweep.measure.memory import PeakMemory
    from quantsweep.sweep.store import fault_point

    context, settings = state.context, state.context.evaluation
    model, tokenizer = state.prepared.model, state.prepared.tokenizer
    retries: list[dict[str, Any]] = []
    device = state.ran_on["device"]
    overrides = {cell.task: context.task_configs[cell.task]} if cell.task in context.task_configs else None
    started = time.perf_counter()
    fault_point(f"{cell.recipe.name}/{cell.task}")

    baseline_reference = (
        None
        if cell.is_baseline
        else BaselineReference(state.store, cell, context, said=state.said, gave_up=state.gave_up)
    )
    probes: list = []

    def evaluate(batch_size: int):
        from quantsweep.eval.divergence import DivergenceProbe

        probes[:] = [DivergenceProbe(record=cell.is_baseline, load_reference=baseline_reference)]
        with PeakMemory(device) as peak:
            result = harness.evaluate(
                model,
                tokenizer,
                [cell.task],
                batch_size=batch_size,
                task_configs=overrides,
                settings=settings,
                divergence=probes[0],
                reverse_order=cell.control is not None,
            )
        return result, peak

    def out_of_memory(batch_size: int, error: BaseException) -> None:
        retries.append({"batch_size": batch_size, "error": error_text(error)})
        if batch_size > 1:
            logger.warning("%s/%s: out of memory at batch size %d", cell.recipe.name, cell.task, batch_size)

    try:
        requested = settings.batch_size if cell.control is None else cell.control["batch_size"]
        (result, peak), batch_size = halve_on_out_of_memory(
            evaluate, requested, device=device, on_out_of_memory=out_of_memory
        )
    except Exception as error:  # noqa: BLE001 - out-of-memory at batch size 1 is a finding
        if not (retries and devices.is_out_of_memory(error)):
            raise
        return state.fail(
            cell,
            "evaluating",
            error,
            error_kind="out_of_memory",
            oom_retries=retries,
            batch_size_used=1,
            quantize=quantize,
            calibration=calibration,
        )
    tasks = {name: task.to_dict() for name, task in result.tasks.items()}
    stored_reference = _store_references(state.store, cell, probes[0]) if cell.is_baseline else None
    diagnosis = state.checkpoint_diagnosis()
    if any(task.nonfinite_samples for task in result.tasks.values()):
        from quantsweep.eval.health import diagnose_nonfinite

        diagnosis = {**diagnose_nonfinite(model, tokenizer).to_dict(), **(diagnosis or {})}
    waited = baseline_reference.waited if baseline_reference is not None else 0.0
    record = {
        **base_record(cell, state.ran_on),
        "status": "done",
        "error": None,
        "tasks": tasks,
        "vocab_size": int(getattr(model.config, "vocab_size", 0)) or len(tokenizer),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "provenance": {
            **cell.key_fields["versions"],
            "limit": settings.limit,
            "num_fewshot": settings.num_fewshot,
            "seed": settings.seed,
            "device": device,
        },
        "evaluate": {
            "seconds": time.perf_counter() - started - waited,  # the work itself, not the wait for the baseline
            "batch_size_requested": requested,
            "batch_size_used": batch_size,
            "batch_order": "reversed" if cell.control is not None else "default",
            "baseline_wait_seconds": waited if baseline_reference is not None else None,
            "oom_retries": retries,
            **peak.eval_fields(),
        },
        "quantize": quantize,
        "calibration": calibration,
        "cost": cost,
        "diagnosis": diagnosis,
        "control": cell.control,
        "divergence_reference": stored_reference,
        "finished_at": now(),
    }
    state.store.write_cell(record)
    return record


def _store_references(store, cell: CellPlan, probe) -> dict[str, Any] | None:
    """Write the baseline's recorded distributions beside its cell; what the cell record says of them."""
    from quantsweep.eval.divergence import bytes_per_token

    reference = probe.recorded.get(cell.task) if probe is not None else None
    if reference is None:
        return None
    data = reference.to_bytes()
    path = store.write_reference(cell.key, data)
    return {
        "file": f"{path.parent.name}/{path.name}",
        "bytes": len(data),
        "positions": reference.positions(),
        "bytes_per_token": bytes_per_token(reference.k, reference.tail_samples),
        "k": reference.k,
        "tail_samples": reference.tail_samples,
    }
