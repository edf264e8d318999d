"""The derived files of a store: verdict records judged from stored cells, paired with their stored baseline.

The driver judges; workers only evaluate. A recipe's cell is paired with the
baseline cell of the same model, task and settings (its ``baseline_key``) document
by document, exactly as if both had run in one process, so a cell evaluated on
another node or yesterday is judged the same. Changing the verdict thresholds
re-judges without evaluating anything (``quantsweep judge DIR --alpha 0.01``).

The derived files are rebuilt from every cell in the store: ``results.jsonl`` (one
record per model, recipe, task and metric) and ``summary.json``. Each record names
its ``cell_key`` and ``settings`` (a hash of limit, few-shot, max_length, seed,
dtype, device type and versions), so results of two settings are never mixed:
``summary.json`` holds one summary per model and setting
(:func:`~quantsweep.verdicts.summary.summarize_views`), each labelled, and says what
it left out and why.

Example:
    >>> import tempfile
    >>> from quantsweep.verdicts.config import VerdictConfig
    >>> from quantsweep.sweep.store import CellStore
    >>> DerivedFiles(CellStore(tempfile.mkdtemp()), VerdictConfig()).rebuild()
    []
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from quantsweep.sweep.fingerprint import text_fingerprint
from quantsweep.sweep.store import jsonable

logger = logging.getLogger(__name__)

# File times come from the kernel's coarse clock, up to one tick (1-10 ms) behind time.time_ns().
CLOCK_SLACK_NS = 50_000_000

_SETTINGS_FIELDS = (
    "limit",
    "num_fewshot",
    "max_length",
    "seed",
    "dtype",
    "device_type",
    "versions",
    "trust_remote_code",
)


def settings_id(cell: dict[str, Any]) -> str:
    """A short hash of the settings a cell shares with its baseline (not its recipe or model).

    Example:
        >>> settings_id({"key_fields": {"limit": 100}}) == settings_id({"key_fields": {"limit": 100}})
        True
    """
    fields = cell.get("key_fields", {})
    return text_fingerprint({name: fields.get(name) for name in _SETTINGS_FIELDS})[:8]


def _base(cell: dict[str, Any], verdict_config) -> dict[str, Any]:
    quantize = cell.get("quantize") or {}
    evaluate = cell.get("evaluate") or {}
    fields = cell.get("key_fields", {})
    provenance = cell.get("provenance") or {}
    versions = {f"{name}_version": value for name, value in (fields.get("versions") or {}).items()}
    return {
        "model": cell["model"],
        "model_fingerprint": cell.get("model_fingerprint"),
        "recipe": cell["recipe"],
        "recipe_config": cell.get("recipe_config"),
        "weight_bits": cell.get("weight_bits"),
        "activation_bits": cell.get("activation_bits"),
        "kv_cache_bits": cell.get("kv_cache_bits"),
        "cell_key": cell["key"],
        "settings": settings_id(cell),
        "status": cell["status"],
        **versions,
        "limit": fields.get("limit"),
        "num_fewshot": fields.get("num_fewshot"),
        "max_length": fields.get("max_length"),
        "seed": fields.get("seed"),
        "device_type": fields.get("device_type"),
        "finished_at": cell.get("finished_at"),
        "device": provenance.get("device") or (cell.get("ran_on") or {}).get("device"),
        "dtype": cell.get("dtype") or fields.get("dtype"),
        "ran_on": cell.get("ran_on"),
        "quantize_seconds": quantize.get("seconds"),
        "layer_seconds": quantize.get("layer_seconds"),
        "peak_device_bytes": quantize.get("peak_device_bytes"),
        "batch_size_used": evaluate.get("batch_size_used"),
        "oom_retries": evaluate.get("oom_retries") or None,
        "evaluate_seconds": evaluate.get("seconds"),
        "baseline_wait_seconds": evaluate.get("baseline_wait_seconds"),
        "peak_eval_bytes": evaluate.get("peak_eval_bytes"),
        "peak_eval_memory_kind": evaluate.get("peak_eval_memory_kind"),
        **(cell.get("cost") or {}),
        "calibration": cell.get("calibration"),
        "verdict_config": verdict_config.to_dict(),
    }


def checkpoint_note(cell: dict[str, Any]) -> str | None:
    """The cell's checkpoint diagnosis in words (its model's own NaN/Inf weights), or None.

    Example:
        >>> checkpoint_note({"diagnosis": {"checkpoint_nonfinite_weights": {"lm_head.weight": "1 Inf of 8"}}})
        'the checkpoint itself has non-finite weights in lm_head.weight (1 Inf of 8)'
        >>> checkpoint_note({"diagnosis": None}) is None
        True
    """
    from quantsweep.quant.finite import describe

    found = (cell.get("diagnosis") or {}).get("checkpoint_nonfinite_weights")
    return f"the checkpoint itself has non-finite weights in {describe(found)}" if found else None


def _error_records(cell: dict[str, Any], base: dict[str, Any], error: str) -> list[dict[str, Any]]:
    from quantsweep.eval.suites import task_family

    note = checkpoint_note(cell)
    if note and "non-finite weights" not in error:
        error = f"{error} ({note})"
    return [
        {
            **base,
            "task": cell["task"],
            "family": task_family(cell["task"]),
            "metric": None,
            "value": None,
            "stderr": None,
            "n": 0,
            "primary": True,
            "verdict": "error",
            "error": error,
            "stage": cell.get("stage"),
            "diagnosis": cell.get("diagnosis"),
        }
    ]


def aa_fields(control_records: list[dict[str, Any]] | None, metric: str | None) -> dict[str, Any]:
    """What the A/A control of a (model, task) says of one metric: its difference from the baseline.

    ``aa_delta`` is the control's ``delta`` (its metric against the baseline's, in the
    verdict's units), ``aa_flips`` the share of documents whose 0/1 answer changed either
    way, ``aa_kl_mean`` its divergence; ``aa_nonzero`` is true when the delta or the flips
    are not exactly zero: then ``aa_noise_floor`` (the delta's size) enters the ladder
    (:func:`quantsweep.verdicts.rules.decide`).

    Example:
        >>> aa_fields([{"metric": "acc", "delta": -0.01, "flips_right_to_wrong": 0.02,
        ...             "flips_wrong_to_right": 0.01, "kl_mean": 1e-4}], "acc")["aa_noise_floor"]
        0.01
        >>> aa_fields(None, "acc")["aa_nonzero"] is None
        True
    """
    empty = {"aa_delta": None, "aa_flips": None, "aa_kl_mean": None, "aa_nonzero": None, "aa_noise_floor": 0.0}
    control = next((r for r in control_records or [] if r.get("metric") == metric), None)
    if control is None or control.get("verdict") in ("error", "non-finite"):
        return empty
    delta = control.get("delta")
    flips = None
    if control.get("flips_right_to_wrong") is not None:
        flips = control["flips_right_to_wrong"] + control.get("flips_wrong_to_right", 0.0)
    size = abs(delta) if isinstance(delta, (int, float)) and delta == delta else 0.0
    nonzero = size > 0 or bool(flips)
    return {
        "aa_delta": delta,
        "aa_flips": flips,
        "aa_kl_mean": control.get("kl_mean"),
        "aa_nonzero": nonzero,
        "aa_noise_floor": size if nonzero else 0.0,
    }


def cell_records(
    cell: dict[str, Any],
    baseline: dict[str, Any] | None,
    verdict_config,
    control: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The records of one stored cell, judged against its stored baseline cell.

    A failed cell gives one ``error`` record carrying its error; a judging failure
    gives the same, saying "judging failed", and never stops the others.

    Every record carries its divergence from the baseline
    (:func:`quantsweep.eval.divergence.divergence_fields`) and, when ``control`` (the
    records of the A/A control cell of its model and task) is given, the control's
    difference (:func:`aa_fields`), which the ladder takes into account. Both batch sizes
    are recorded (``batch_size_used``, ``baseline_batch_size_used``); ``batch_size_mismatch``
    flags a pair that ran at different batch sizes when the A/A control shows that
    batching changes results.

    Example:
        >>> from quantsweep.verdicts.config import VerdictConfig
        >>> failed = {"key": "k", "model": "toy", "recipe": "w1-rtn", "task": "toy_mc4", "status": "failed",
        ...           "error": "RuntimeError: boom"}
        >>> cell_records(failed, None, VerdictConfig())[0]["verdict"]
        'error'
    """
    from quantsweep.eval.divergence import divergence_fields
    from quantsweep.eval.harness import TaskResult
    from quantsweep.eval.suites import task_family
    from quantsweep.verdicts.task import judge_all_metrics

    base = _base(cell, verdict_config)
    if cell["status"] != "done":
        return _error_records(cell, base, cell.get("error") or "failed")
    is_baseline = bool(cell.get("is_baseline"))
    baseline_tasks = {}
    if baseline is not None and baseline.get("status") == "done" and not is_baseline:
        baseline_tasks = {name: TaskResult.from_dict(t) for name, t in baseline["tasks"].items()}
    records = []
    is_control = bool(cell.get("control"))
    own_batch = (cell.get("evaluate") or {}).get("batch_size_used")
    baseline_batch = ((baseline or {}).get("evaluate") or {}).get("batch_size_used") if not is_baseline else own_batch
    try:
        for name, stored in cell["tasks"].items():
            task = TaskResult.from_dict(stored)
            aa = {metric: aa_fields(control, metric) for metric in task.metrics}
            verdicts = judge_all_metrics(
                task,
                baseline_tasks.get(name),
                vocab_size=cell["vocab_size"],
                config=verdict_config,
                is_baseline=is_baseline,
                noise_floors=None if is_control else {m: fields["aa_noise_floor"] for m, fields in aa.items()},
            )
            divergence = divergence_fields(task, None if is_baseline else baseline_tasks.get(name))
            for metric in task.metrics.values():
                batching = aa[metric.metric]
                mismatch = (
                    None
                    if batching["aa_nonzero"] is None or own_batch is None or baseline_batch is None
                    else bool(batching["aa_nonzero"] and own_batch != baseline_batch and not is_control)
                )
                records.append(
                    {
                        **base,
                        "task": task.task,
                        "family": task_family(task.task, task.output_type),
                        "output_type": task.output_type,
                        "metric": metric.metric,
                        "primary": metric.metric == task.primary_metric,
                        "value": metric.value,
                        "stderr": metric.stderr,
                        "n": metric.n,
                        "num_fewshot": task.num_fewshot,
                        "task_version": task.version,
                        "diagnosis": cell.get("diagnosis"),
                        "error": None,
                        "control": "aa" if is_control else None,
                        "baseline_batch_size_used": baseline_batch,
                        "batch_size_mismatch": mismatch,
                        **verdicts[metric.metric],
                        **divergence,
                        **({} if is_control else batching),
                    }
                )
    except Exception as error:  # noqa: BLE001 - judging one cell must not end the sweep
        logger.error("judging %s/%s failed: %s", cell["recipe"], cell["task"], error, exc_info=True)
        return _error_records(cell, base, f"judging failed: {type(error).__name__}: {error}")
    if baseline is None and not is_baseline:
        for record in records:
            record["baseline_missing"] = True
    note = checkpoint_note(cell)
    if note:  # the model's own diagnosis shows in every one of its cells, whatever the verdict
        for record in records:
            record["reason"] = f"{record['reason']}; {note}" if record.get("reason") else note
    return records


class DerivedFiles:
    """The files derived from a store (``results.jsonl``, ``summary.json``), kept current from its cells.

    Records are judged per cell and cached (by the versions of the cell, its baseline and its control),
    so rebuilding after every finished cell costs one judgement, not a re-judgement of
    the whole store. The thresholds used are recorded in the store's own metadata
    (``store.json``), the source :func:`quantsweep.judge` starts from.

    Example:
        >>> import tempfile
        >>> from quantsweep.verdicts.config import VerdictConfig
        >>> from quantsweep.sweep.store import CellStore
        >>> store = CellStore(tempfile.mkdtemp())
        >>> DerivedFiles(store, VerdictConfig()).rebuild()
        []
        >>> store.verdict_thresholds()["alpha"]
        0.05
    """

    def __init__(self, store, verdict_config, plan=None):
        self.store, self.verdict_config = store, verdict_config
        self._cache: dict[str, tuple[tuple, list[dict[str, Any]]]] = {}
        # The current sweep decides which cell is its baseline and what its model and recipe are
        # called; stored cells keep what the sweep that wrote them said, for cells outside the plan.
        self._plan_cells = {cell.key: cell for cell in plan.cells} if plan is not None else {}
        self._scanned: dict[str, str | None] = {}  # key -> its baseline's key when it is an A/A control

    def _stamp(self, key: str | None) -> tuple[int, int, int] | None:
        """The version of a cell file (modification time, size, inode), or None when absent.

        The inode changes with every atomic replacement, so two versions written within one
        tick of the file system's clock still differ.
        """
        if not key:
            return None
        try:
            stat = self.store.cell_path(key).stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def records(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Judged records of the given cells (default: every stored cell), in the order given.

        Example:
            >>> import tempfile
            >>> from quantsweep.verdicts.config import VerdictConfig
            >>> from quantsweep.sweep.store import CellStore
            >>> DerivedFiles(CellStore(tempfile.mkdtemp()), VerdictConfig()).records(["absent"])
            []
        """
        return self._records(list(keys) if keys is not None else self.store.keys(), self._controls())

    def _records(self, keys: list[str], controls: dict[str, str]) -> list[dict[str, Any]]:
        """:meth:`records` with the A/A controls (baseline key -> control key) found once by the caller."""
        out = []
        for key in keys:
            stamp = self._stamp(key)  # every stamp is taken before its file is read, so a later write is seen
            if stamp is None:
                continue
            cached = self._cache.get(key)
            if cached is not None and cached[0] == self._versions(stamp, *cached[1], controls):
                out += cached[2]
                continue
            cell = self.store.read_cell(key)
            if cell is None:
                continue
            planned = self._plan_cells.get(key)
            if planned is not None:
                cell = {
                    **cell,
                    "is_baseline": planned.is_baseline,
                    "baseline_key": planned.baseline_key,
                    "model": planned.model.name,
                    "recipe": planned.recipe.name,
                }
            baseline_key = None if cell.get("is_baseline") else cell.get("baseline_key")
            # A worker may store the baseline (or the control) while this driver judges: stamped
            # after the read, a cell judged without its baseline would be cached as if it had one.
            baseline_stamp = self._stamp(baseline_key)
            baseline = self.store.read_cell(baseline_key) if baseline_key else None
            group = None if cell.get("control") else (cell.get("baseline_key") or key)  # whose control it takes
            control_key = controls.get(group)
            control_stamp = self._stamp(control_key)
            control = self._records([control_key], controls) if control_key else None
            records = cell_records(cell, baseline, self.verdict_config, control)
            versions = (stamp, baseline_key, baseline_stamp, control_key, control_stamp)
            self._cache[key] = (versions, (baseline_key, group), records)
            out += records
        return out

    def _versions(self, stamp, baseline_key, group, controls) -> tuple:
        """What a cell's records were judged from now: its version, its baseline's, and its control's (if any).

        A control stored after the cell was judged changes the control key, so the cell is judged again.
        """
        control_key = controls.get(group)
        return (stamp, baseline_key, self._stamp(baseline_key), control_key, self._stamp(control_key))

    def _controls(self) -> dict[str, str]:
        """Baseline key -> the key of its A/A control cell, for every stored control (each new cell read once)."""
        for key in self.store.keys():
            if key in self._scanned:
                continue
            planned = self._plan_cells.get(key)
            if planned is not None:  # the plan says it: no need to read the cell
                self._scanned[key] = planned.baseline_key if planned.control is not None else None
                continue
            cell = self.store.read_cell(key)
            if cell is None:
                continue
            self._scanned[key] = cell.get("baseline_key") if cell.get("control") else None
        return {baseline: key for key, baseline in self._scanned.items() if baseline}

    def rebuild(self) -> list[dict[str, Any]]:
        """Rewrite ``results.jsonl`` and ``summary.json`` from every stored cell; returns the records.

        The thresholds are recorded in the store's metadata first. A lock file serialises
        rebuilds, so two writers cannot leave an older list last. ``results.jsonl`` is dated
        when its cells were listed (less the file system's clock slack), so a cell a worker
        stores during the rebuild is newer, and :func:`~quantsweep.sweep.api.refresh_derived`
        judges again after a driver killed before its next rebuild.

        Example:
            >>> import tempfile
            >>> from quantsweep.verdicts.config import VerdictConfig
            >>> from quantsweep.sweep.store import CellStore
            >>> DerivedFiles(CellStore(tempfile.mkdtemp()), VerdictConfig()).rebuild()
            []
        """
        import fcntl

        with open(self.store.directory / ".derived.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.store.record_verdict_thresholds(self.verdict_config.to_dict())
            listed_at = time.time_ns() - CLOCK_SLACK_NS
            records = _write_derived(self.store, self.records())
            os.utime(self.store.directory / "results.jsonl", ns=(listed_at, listed_at))
            return records


def _write_derived(store, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from quantsweep.verdicts.summary import summarize_views

    baseline_first = sorted(
        records,
        key=lambda r: (r["model"], not _is_baseline_record(r), r["recipe"], r.get("task") or "", str(r.get("metric"))),
    )
    store.write_derived("results.jsonl", "".join(json.dumps(jsonable(r)) + "\n" for r in baseline_first))
    summary = summarize_views(baseline_first)
    store.write_derived("summary.json", json.dumps(jsonable(summary), indent=2) + "\n")
    return baseline_first


def _is_baseline_record(record: dict[str, Any]) -> bool:
    return record.get("verdict") == "baseline"
