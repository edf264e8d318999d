"""The cell, written once: restore -> quantize -> evaluate -> store, for every backend.

:func:`run_unit` is what a worker runs (in this process for the local backend, in a
Ray worker for the cluster one): it loads one model once, and for each recipe of the
unit restores the full-precision weights, quantizes, evaluates each of the recipe's
cells and writes each cell file as soon as it is finished. Workers never judge: the
driver judges from the store (:mod:`quantsweep.sweep.judging`).

A failing cell is a finding: an exception while quantizing or evaluating, a model
that cannot be read on this node, or an out-of-memory that persists at batch size 1
is stored as a ``failed`` cell with its error, and the unit goes on. An
out-of-memory first retries with half the batch size, down to 1; the batch size
actually used is recorded.

Example:
    >>> summaries = run_unit(unit, UnitContext.from_plan(plan, "out"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from quantsweep.sweep.plan import CellPlan, WorkUnit

logger = logging.getLogger(__name__)

CELL_FORMAT = 1
SPEED_PROMPT_TOKENS, SPEED_NEW_TOKENS = 512, 128  # the measure step's prefill prompt and decode length, batch 1
MAX_DEATHS = 2  # processes that may die computing one cell (kill -9, the OOM killer) before it is a failed cell
_LOGGED_PACKAGES = ("quantsweep", "lm_eval", "lm-eval")


@dataclass(frozen=True)
class UnitContext:
    """The sweep settings a worker needs besides its cells (plain data, so it pickles to Ray).

    Example:
        >>> UnitContext.from_plan(plan, "out").batch_size  # doctest: +SKIP
        32
    """

    store_dir: str
    task_configs: dict
    limit: Any = None
    num_fewshot: int | None = None
    seed: int = 1234
    batch_size: int = 32
    include_path: tuple = ()
    allow_code_execution: bool = False
    measure: bool = False
    started_at: float = 0.0  # when the driver began this run (epoch s); cells written since are this run's
    force: bool = False  # recompute cells stored before this run
    retry_failed: bool = False  # compute cells stored as failed before this run again (else they are kept)
    max_length: int | None = None

    @classmethod
    def from_plan(cls, plan, store_dir, *, force: bool = False, retry_failed: bool = False) -> UnitContext:
        """The context of a :class:`~quantsweep.sweep.plan.SweepPlan` writing into ``store_dir``.

        Example:
            >>> UnitContext.from_plan(plan, "out").store_dir  # doctest: +SKIP
            'out'
        """
        spec = plan.spec
        return cls(
            store_dir=str(store_dir),
            task_configs=dict(plan.tasks.configs),
            limit=spec.limit,
            num_fewshot=spec.num_fewshot,
            seed=spec.seed,
            batch_size=spec.batch_size,
            include_path=tuple(spec.include_path),
            allow_code_execution=spec.allow_code_execution,
            measure=spec.measure,
            started_at=time.time(),
            force=force,
            retry_failed=retry_failed,
            max_length=spec.max_length,
        )


# ---------------------------------------------------------------------- serialisation
def task_result_to_dict(task) -> dict[str, Any]:
    """A :class:`~quantsweep.eval.harness.TaskResult` as plain data (metrics and every document).

    Example:
        >>> task_result_to_dict(result.tasks["toy_mc4"])["task"]  # doctest: +SKIP
        'toy_mc4'
    """
    data = asdict(task)
    data["samples"] = [asdict(s) for s in task.samples]
    return data


def task_result_from_dict(data: dict[str, Any]):
    """Rebuild a :class:`~quantsweep.eval.harness.TaskResult` stored by :func:`task_result_to_dict`.

    Non-finite numbers were stored as null/"inf"; they come back as NaN/Inf.

    Example:
        >>> task_result_from_dict(task_result_to_dict(task)).n == task.n  # doctest: +SKIP
        True
    """
    import dataclasses

    from quantsweep.eval.harness import MetricResult, SampleOutcome, TaskResult

    def number(value):
        if value is None:
            return float("nan")
        if value in ("inf", "-inf"):
            return float(value)
        return value

    def restore(value):
        if isinstance(value, list):
            return [restore(v) for v in value]
        return number(value) if value is None or value in ("inf", "-inf") else value

    sample_fields = {f.name for f in dataclasses.fields(SampleOutcome)}
    task_fields = {f.name for f in dataclasses.fields(TaskResult)}
    metrics = {name: MetricResult(**{**m, "value": number(m["value"])}) for name, m in data["metrics"].items()}
    samples = [
        SampleOutcome(
            **{
                **{k: v for k, v in s.items() if k in sample_fields},
                "scores": {k: restore(v) for k, v in s["scores"].items()},
            }
        )
        for s in data["samples"]
    ]
    rest = {k: v for k, v in data.items() if k in task_fields and k not in ("metrics", "samples")}
    return TaskResult(**rest, metrics=metrics, samples=samples)


# ---------------------------------------------------------------------- logging
class _AsBefore(logging.Filter):
    """Keeps a handler showing exactly what it showed before a cell lowered the logger levels."""

    def __init__(self, levels: dict[str, int]):
        super().__init__()
        self.levels = levels

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".", 1)[0]
        return record.levelno >= self.levels.get(top, logging.NOTSET)


@contextlib.contextmanager
def cell_log(path):
    """Send quantsweep's and lm-eval's log records (INFO and up) to ``path`` for the duration of a cell.

    Handlers that existed before (the console) keep showing only what they showed before.

    Example:
        >>> with cell_log(store.log_path(key)):  # doctest: +SKIP
        ...     evaluate(...)
    """
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in _LOGGED_PACKAGES]
    levels = [lg.level for lg in loggers]
    keep = _AsBefore({lg.name: lg.getEffectiveLevel() for lg in loggers})
    others = {h for lg in [logging.getLogger(), *loggers] for h in lg.handlers}
    for other in others:
        other.addFilter(keep)
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        for other in others:
            other.removeFilter(keep)
        handler.close()


# ---------------------------------------------------------------------- one unit
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}".rstrip(": ")


class _UnitState:
    """What one unit holds while it runs: the store, the model, calibration, where it runs."""

    def __init__(self, unit: WorkUnit, context: UnitContext, device: str | None):
        from quantsweep.sweep.store import CellStore

        self.unit, self.context = unit, context
        self.store = CellStore(context.store_dir)
        self.device = device or unit.model.device
        self.model = self.tokenizer = self.snapshot = None
        self.calibration = None
        self.ran_on = {"host": socket.gethostname(), "pid": os.getpid(), "device": None}

    def base_record(self, cell: CellPlan) -> dict[str, Any]:
        return {
            "format": CELL_FORMAT,
            "key": cell.key,
            "model": cell.model.name,
            "model_path": cell.model.path,
            "model_fingerprint": cell.key_fields["model"],
            "recipe": cell.recipe.name,
            "recipe_config": cell.recipe.to_dict(),
            "task": cell.task,
            "is_baseline": cell.is_baseline,
            "baseline_key": cell.baseline_key,
            "key_fields": cell.key_fields,
            "ran_on": dict(self.ran_on),
        }

    def fail(self, cell: CellPlan, stage: str, error: BaseException, **extra) -> dict[str, Any]:
        record = {
            **self.base_record(cell),
            "status": "failed",
            "stage": stage,
            "error": _error_text(error),
            "traceback": "".join(traceback.format_exception(error))[-4000:],
            "finished_at": _now(),
            **extra,
        }
        self.store.write_cell(record)
        logger.error(
            "cell %s/%s/%s failed while %s: %s", cell.model.name, cell.recipe.name, cell.task, stage, record["error"]
        )
        return record


def cell_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The short form of a cell record that progress displays and callbacks get.

    Example:
        >>> cell_summary({"key": "k", "status": "done"})["status"]
        'done'
    """
    return {k: record.get(k) for k in ("key", "status", "model", "recipe", "task", "error", "ran_on", "stage")}


def store_failed_cells(unit: WorkUnit, context: UnitContext, keys, stage: str, error: BaseException) -> None:
    """Store the given cells of ``unit`` as failed with ``error`` (for a unit that died outside any cell).

    Each cell is claimed first and skipped if another process holds it or stored it meanwhile.

    Example:
        >>> store_failed_cells(unit, context, [cell.key], "running on Ray", error)  # doctest: +SKIP
    """
    state = _UnitState(unit, context, device=None)
    state.ran_on = {"host": None, "pid": None, "device": None}
    wanted = set(keys)
    for cell in unit.cells:
        if cell.key not in wanted:
            continue
        claim = state.store.claim(cell.key)  # never overwrite a cell another process is finishing
        if claim is None:
            continue
        try:
            if not is_settled(state.store, cell.key, context):
                state.fail(cell, stage, error)
        finally:
            claim.release()


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
        >>> [s["status"] for s in run_unit(unit, context)]  # doctest: +SKIP
        ['done', 'done']
    """
    state = _UnitState(unit, context, device)
    done: list[dict[str, Any]] = []
    try:
        for recipe in unit.recipes:
            cells = [c for c in unit.cells if c.recipe.name == recipe.name]
            claimed = _claim_cells(state, cells)
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
        if state.snapshot is not None:
            state.snapshot.restore(state.model)
    return done


def is_settled(store, key: str, context: UnitContext) -> bool:
    """Whether a cell needs no computing in this run.

    It is settled when it is stored and either it was written during this run
    (``context.started_at`` or later), or it is a stored result the run keeps: a done
    cell unless ``--force``, a failed cell unless ``--retry-failed`` or ``--force``.
    So a cell that fails again during a retry is final for that run, never retried forever.

    Example:
        >>> is_settled(store, cell.key, context)  # doctest: +SKIP
        True
    """
    status = store.status(key)
    if status is None:
        return False
    try:
        written_now = store.cell_path(key).stat().st_mtime >= context.started_at
    except FileNotFoundError:
        return False
    if written_now:
        return True
    if context.force:
        return False
    return status == "done" or not context.retry_failed


def _store_killed(store, state, cell: CellPlan, deaths: int) -> None:
    error = RuntimeError(
        f"the process computing this cell died {deaths} times without finishing it (killed: by kill -9 or the "
        f"kernel's out-of-memory killer, at batch size {state.context.batch_size} or less); rerun with a smaller "
        "--batch-size and --retry-failed"
    )
    state.fail(cell, "evaluating", error, error_kind="killed", deaths=deaths)


def _claim_cells(state, cells: list[CellPlan]) -> dict[str, Any]:
    store, unit_state = state.store, state
    claimed = {}
    for cell in cells:
        if is_settled(store, cell.key, state.context):
            continue
        claim = store.claim(cell.key)
        if claim is None:
            logger.info("cell %s is being computed by another worker; left to it", cell.key)
            continue
        if is_settled(store, cell.key, state.context):  # finished by another worker meanwhile
            claim.release()
            continue
        if claim.attempts >= MAX_DEATHS:
            _store_killed(store, unit_state, cell, claim.attempts)
            claim.release()
            continue
        claimed[cell.key] = claim
    return claimed


def _ensure_model(state: _UnitState) -> None:
    if state.model is not None:
        return
    from quantsweep.models.loading import load_model
    from quantsweep.models.snapshot import WeightSnapshot

    spec = state.unit.model
    state.model, state.tokenizer = load_model(
        spec.path, device=state.device, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code
    )
    state.ran_on["device"] = str(next(state.model.parameters()).device)
    state.snapshot = WeightSnapshot(state.model)


def _calibration(state: _UnitState):
    if state.calibration is None:
        from quantsweep.calibration import load_calibration

        spec = state.unit.model.calibration
        state.calibration = load_calibration(
            spec.source, state.tokenizer, n_samples=spec.samples, seq_len=spec.seq_len, seed=spec.seed
        )
    return state.calibration


def _run_recipe(state: _UnitState, recipe, claimed: dict, on_cell) -> list[dict[str, Any]]:
    from quantsweep.recipes import apply_recipe

    cells = [c for c in state.unit.cells if c.key in claimed]
    summaries = []

    def finish(record):
        claimed[record["key"]].release()  # as soon as its file is written: a kill later leaves no claim on it
        summaries.append(cell_summary(record))
        if on_cell is not None:
            on_cell(summaries[-1])

    try:
        _ensure_model(state)
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
            state.snapshot.restore(state.model)
            calibration = _calibration(state) if cells[0].needs_calibration else None
            quantized = apply_recipe(state.model, recipe, calibration=calibration)
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
    calibration = state.calibration.provenance() if cells[0].needs_calibration else None
    cost = _cost_fields(state, recipe, quantized)
    quantized.packed.clear()  # only the cost needs the packed codes; free them before evaluating
    if state.context.measure:
        cost.update(_speed_fields(state, quantized))
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


def _cost_fields(state: _UnitState, recipe, quantized) -> dict[str, Any]:
    """What the recipe costs: the kernel label now, measured fields where a measure module provides them."""
    try:
        from quantsweep.measure.cost import cost_fields
    except ImportError:
        return {"kernel": quantized.kernel}
    try:
        return cost_fields(state.model, recipe, quantized)
    except Exception as error:  # noqa: BLE001 - a cost we cannot measure is recorded as such
        logger.warning("cost of %s not measured: %s", recipe.name, error)
        return {"kernel": quantized.kernel, "cost_error": _error_text(error)}


def _speed_fields(state: _UnitState, quantized) -> dict[str, Any]:
    """Prefill/decode speed and peak memory of a recipe with a real kernel; none for fake-quant.

    A fake-quant model is the fp model with rounded weights: its speed and memory are the
    fp model's, so no number is recorded for it, only that label.
    """
    if quantized.kernel == "fake-quant":
        return {"speed_measured": False, "speed_note": "fake-quant: memory and speed are the fp model's"}
    from quantsweep.measure.step import timed

    prompt_tokens, new_tokens = SPEED_PROMPT_TOKENS, SPEED_NEW_TOKENS
    positions = getattr(state.model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and prompt_tokens + new_tokens > positions:  # e.g. the toy's 512 positions
        prompt_tokens, new_tokens = positions * 3 // 4, positions // 8
    try:
        measured = timed(state.model, state.tokenizer, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
    except Exception as error:  # noqa: BLE001 - a timing we could not take is recorded as such
        return {"speed_measured": False, "speed_note": f"not measured: {_error_text(error)}"}
    keep = (
        "prefill_tokens_per_s",
        "prefill_relative_spread",
        "decode_tokens_per_s",
        "decode_relative_spread",
        "prompt_tokens",
        "new_tokens",
        "repeats",
    )
    return {
        "speed_measured": True,
        **{k: measured.get(k) for k in keep},
        "speed_device": measured.get("device"),
        "speed_threads": measured.get("threads"),
        "speed_peak_memory_bytes": measured.get("peak_memory_bytes"),
        "speed_peak_memory_kind": measured.get("peak_memory_kind"),
    }


def _evaluate_cell(state: _UnitState, cell: CellPlan, quantize: dict, calibration, cost: dict) -> dict[str, Any]:
    from quantsweep import device as devices
    from quantsweep.eval.harness import evaluate
    from quantsweep.measure.memory import PeakMemory
    from quantsweep.sweep.store import fault_point

    context = state.context
    batch_size = context.batch_size
    retries: list[dict[str, Any]] = []
    device = state.ran_on["device"]
    overrides = {cell.task: context.task_configs[cell.task]} if cell.task in context.task_configs else None
    started = time.perf_counter()
    fault_point(f"{cell.recipe.name}/{cell.task}")
    while True:
        try:
            with PeakMemory(device) as peak:
                result = evaluate(
                    state.model,
                    state.tokenizer,
                    [cell.task],
                    limit=context.limit,
                    batch_size=batch_size,
                    num_fewshot=context.num_fewshot,
                    include_path=list(context.include_path) or None,
                    task_configs=overrides,
                    allow_code_execution=context.allow_code_execution,
                    seed=context.seed,
                    max_length=context.max_length,
                )
            break
        except Exception as error:  # noqa: BLE001 - only out-of-memory is retried
            if not devices.is_out_of_memory(error):
                raise
            retries.append({"batch_size": batch_size, "error": _error_text(error)})
            devices.empty_cache(device)
            if batch_size == 1:
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
            batch_size = max(1, batch_size // 2)
            logger.warning("%s/%s: out of memory; retrying at batch size %d", cell.recipe.name, cell.task, batch_size)
    tasks = {name: task_result_to_dict(task) for name, task in result.tasks.items()}
    diagnosis = None
    if any(task.nonfinite_samples for task in result.tasks.values()):
        from quantsweep.eval.health import diagnose_nonfinite

        diagnosis = diagnose_nonfinite(state.model, state.tokenizer).to_dict()
    model = state.model
    record = {
        **state.base_record(cell),
        "status": "done",
        "error": None,
        "tasks": tasks,
        "vocab_size": int(getattr(model.config, "vocab_size", 0)) or len(state.tokenizer),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "provenance": {
            **cell.key_fields["versions"],
            "limit": context.limit,
            "num_fewshot": context.num_fewshot,
            "seed": context.seed,
            "device": device,
        },
        "evaluate": {
            "seconds": time.perf_counter() - started,
            "batch_size_requested": context.batch_size,
            "batch_size_used": batch_size,
            "oom_retries": retries,
            **peak.eval_fields(),
        },
        "quantize": quantize,
        "calibration": calibration,
        "cost": cost,
        "diagnosis": diagnosis,
        "finished_at": _now(),
    }
    state.store.write_cell(record)
    return record
