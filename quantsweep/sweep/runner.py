"""Run recipes × tasks on one model: load once, then for each recipe restore FP weights,
quantize, evaluate, judge against the baseline, and store.

The data flow reads left to right: spec → load model once → for each recipe
(restore → quantize → evaluate → verdicts) → results store. A recipe that fails
while quantizing or evaluating is a finding: its error is recorded and the run
goes on. Mistakes that can be found before any work (unknown recipe or task,
a group size that does not divide a layer) are raised up front.

Example:
    >>> spec = RunSpec(model="toy", recipes=["fp", "w4-rtn"], tasks=["toy_mc4"], limit=100)  # doctest: +SKIP
    >>> outcomes = run(spec)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import platform
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from quantsweep.recipes import RecipeConfig, apply_recipe, expand_recipes, get_method

logger = logging.getLogger(__name__)

BASELINE_RECIPE = "fp"


@dataclass
class RunSpec:
    """What to run. Mirrors the options of ``quantsweep run``.

    Example:
        >>> RunSpec(model="toy", recipes=["w8-rtn"], tasks=["toy_mc4"]).baseline
        'fp'
    """

    model: str
    recipes: list[str | RecipeConfig]
    tasks: list[str]
    limit: int | float | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 32
    num_fewshot: int | None = None
    out_dir: str | Path | None = None
    trust_remote_code: bool = False
    include_path: str | Path | list | None = None
    data_dir: str | Path | None = None
    allow_code_execution: bool = False
    calibration_source: str | None = None
    calibration_samples: int = 128
    calibration_seq_len: int = 2048
    calibration_seed: int = 0
    baseline: str = BASELINE_RECIPE
    verdict_config: Any = None
    seed: int = 1234


@dataclass
class RecipeOutcome:
    """One recipe's results: its records (one per task × metric) and any error.

    Example:
        >>> outcome.recipe.name  # doctest: +SKIP
        'w4-rtn'
    """

    recipe: RecipeConfig
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    quantize_seconds: float | None = None
    layer_reports: dict[str, Any] | None = None
    evaluation: Any = None


def preflight(model, recipes: list[RecipeConfig]) -> None:
    """Catch recipe/model mismatches before any weight changes.

    Raises:
        ValueError: a recipe's group size does not divide a target layer's in_features.

    Example:
        >>> preflight(model, [get_recipe("w4-rtn")])  # doctest: +SKIP
    """
    from quantsweep.methods.targets import check_group_sizes

    for recipe in recipes:
        try:
            check_group_sizes(model, recipe)
        except ValueError as error:
            raise ValueError(f"recipe {recipe.name!r}: {error}") from None


def _provenance(spec: RunSpec, device: str, dtype) -> dict[str, Any]:
    import lm_eval
    import torch
    import transformers

    import quantsweep

    return {"quantsweep_version": quantsweep.__version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__, "lm_eval_version": getattr(lm_eval, "__version__", None),
            "python_version": platform.python_version(), "limit": spec.limit, "num_fewshot": spec.num_fewshot,
            "seed": spec.seed, "device": device, "dtype": str(dtype).replace("torch.", "")}


def run(spec: RunSpec, on_outcome: Callable[[RecipeOutcome], None] | None = None) -> list[RecipeOutcome]:
    """Run every recipe of ``spec`` on its tasks and return the outcomes in order.

    The baseline recipe (``fp`` unless ``spec.baseline`` says otherwise) is always
    evaluated first, because verdicts compare every recipe with it.

    Args:
        spec: what to run.
        on_outcome: called after each recipe finishes (e.g. to print a table row).

    Example:
        >>> outcomes = run(RunSpec(model="toy", recipes=["w8-rtn"], tasks=["toy_mc4"], limit=50))  # doctest: +SKIP
        >>> [o.recipe.name for o in outcomes]  # doctest: +SKIP
        ['fp', 'w8-rtn']
    """
    from quantsweep.eval.harness import check_tasks, evaluate
    from quantsweep.eval.judge import VerdictConfig
    from quantsweep.models import load_model
    from quantsweep.snapshot import WeightSnapshot
    from quantsweep.sweep.results import ResultStore

    from quantsweep.eval.suites import check_code_execution, check_data_available, expand_tasks, local_task_configs

    recipes = expand_recipes([spec.baseline, *spec.recipes])
    if not spec.tasks:
        raise ValueError("no tasks given; pass at least one task name")
    tasks = expand_tasks(list(spec.tasks))
    check_code_execution(tasks, spec.allow_code_execution)
    check_data_available(tasks, spec.data_dir)
    # suite tasks get lm-eval configs (local files under --data-dir, renamed tasks); others run by name
    task_configs = local_task_configs(tasks, spec.data_dir)
    check_tasks([t for t in tasks if t not in task_configs], spec.include_path)
    verdict_config = spec.verdict_config or VerdictConfig()
    calibration_needed = [r for r in recipes if get_method(r.method).needs_calibration]
    if calibration_needed and spec.calibration_source is None and spec.model != "toy":
        raise ValueError(
            f"recipes {', '.join(r.name for r in calibration_needed)} need calibration data; pass "
            "--calib-source (a .txt/.jsonl file, or wikitext2/c4/pile when the hub is reachable)"
        )
    store = ResultStore(spec.out_dir) if spec.out_dir is not None else None

    model, tokenizer = load_model(spec.model, device=spec.device, dtype=spec.dtype,
                                  trust_remote_code=spec.trust_remote_code)
    device = str(next(model.parameters()).device)
    dtype = next(model.parameters()).dtype
    preflight(model, recipes)
    calibration = _load_calibration(spec, tokenizer) if calibration_needed else None
    provenance = _provenance(spec, device, dtype)
    vocab_size = int(getattr(model.config, "vocab_size", 0)) or len(tokenizer)
    snapshot = WeightSnapshot(model)
    baseline_eval = None
    outcomes = []
    for recipe in recipes:
        outcome = RecipeOutcome(recipe=recipe)
        snapshot.restore(model)
        needs_data = get_method(recipe.method).needs_calibration
        try:
            started = time.perf_counter()
            quantized = apply_recipe(model, recipe, calibration=calibration if needs_data else None)
            outcome.quantize_seconds = time.perf_counter() - started
            outcome.layer_reports = quantized.report
            outcome.evaluation = evaluate(
                model, tokenizer, tasks, limit=spec.limit, batch_size=spec.batch_size,
                num_fewshot=spec.num_fewshot, include_path=spec.include_path, task_configs=task_configs,
                allow_code_execution=spec.allow_code_execution, seed=spec.seed,
            )
        except Exception as error:  # noqa: BLE001 - a failing recipe is a finding, not a crash
            outcome.error = f"{type(error).__name__}: {error}"
            logger.error("recipe %s failed: %s", recipe.name, outcome.error)
            logger.debug("%s", traceback.format_exc())
        is_baseline = recipe is recipes[0]  # expand_recipes keeps order: the baseline (a name or a path) comes first
        if is_baseline:
            baseline_eval = outcome.evaluation
        diagnosis = None
        if outcome.evaluation is not None and any(t.nonfinite_samples for t in outcome.evaluation.tasks.values()):
            from quantsweep.eval.health import diagnose_nonfinite

            diagnosis = diagnose_nonfinite(model, tokenizer).to_dict()
        record_args = (spec, tasks, recipe, outcome, baseline_eval, is_baseline, vocab_size, verdict_config,
                       provenance, calibration if needs_data else None, diagnosis)
        try:
            outcome.records = _records(*record_args)
        except Exception as error:  # noqa: BLE001 - judging one recipe must not end the sweep
            outcome.error = f"judging failed: {type(error).__name__}: {error}"
            logger.error("recipe %s: %s", recipe.name, outcome.error)
            logger.debug("%s", traceback.format_exc())
            # error records for every task; the per-sample files below are still written
            outcome.records = _records(*record_args[:3], replace(outcome, evaluation=None), *record_args[4:])
        if store is not None:
            for record in outcome.records:
                store.append(record)
            if outcome.evaluation is not None:
                for task in outcome.evaluation.tasks.values():
                    store.write_samples(recipe.name, task.task, (
                        {"doc_id": s.doc_id, "nonfinite": s.nonfinite, "n_choices": s.n_choices,
                         "n_tokens": s.n_tokens, **s.scores} for s in task.samples))
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    snapshot.restore(model)
    if store is not None:
        from quantsweep.sweep.summary import summarize_records

        store.write_json("summary.json", summarize_records(r for o in outcomes for r in o.records))
    return outcomes


def _layer_seconds(reports: dict[str, Any] | None) -> list[float] | None:
    """Quantization wall time of each decoder layer, for methods that work layer by layer."""
    if not reports:
        return None
    return [layer["seconds"] for layer in reports.get("layers", [])]


def _peak_device_bytes(reports: dict[str, Any] | None) -> int | None:
    peaks = [layer.get("peak_device_bytes") for layer in (reports or {}).get("layers", [])]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


def _load_calibration(spec: RunSpec, tokenizer):
    from quantsweep.calibration import load_calibration

    source = spec.calibration_source or "toy"
    return load_calibration(source, tokenizer, n_samples=spec.calibration_samples,
                            seq_len=spec.calibration_seq_len, seed=spec.calibration_seed)


def _records(spec, tasks, recipe, outcome, baseline_eval, is_baseline, vocab_size, verdict_config, provenance,
             calibration, diagnosis) -> list[dict[str, Any]]:
    from quantsweep.eval.judge import judge_all_metrics
    from quantsweep.sweep.summary import task_family

    base = {"model": spec.model, "recipe": recipe.name, "recipe_config": recipe.to_dict(), **provenance,
            "quantize_seconds": outcome.quantize_seconds,
            "layer_seconds": _layer_seconds(outcome.layer_reports),
            "peak_device_bytes": _peak_device_bytes(outcome.layer_reports),
            "calibration": calibration.provenance() if calibration is not None else None,
            "verdict_config": verdict_config.to_dict()}
    if outcome.evaluation is None:
        return [{**base, "task": task, "family": task_family(task), "metric": None, "value": None, "stderr": None, "n": 0,
                 "verdict": "error", "error": outcome.error} for task in tasks]
    records = []
    for task in outcome.evaluation.tasks.values():
        baseline_task = baseline_eval.tasks.get(task.task) if baseline_eval is not None else None
        verdicts = judge_all_metrics(task, baseline_task, vocab_size=vocab_size, config=verdict_config,
                                     is_baseline=is_baseline)
        for metric in task.metrics.values():
            judged = verdicts[metric.metric]
            records.append({**base, "task": task.task, "family": task_family(task.task, task.output_type),
                            "output_type": task.output_type, "metric": metric.metric,
                            "primary": metric.metric == task.primary_metric,
                            "value": metric.value, "stderr": metric.stderr, "n": metric.n,
                            "num_fewshot": task.num_fewshot, "task_version": task.version,
                            "diagnosis": diagnosis, "error": None, **judged})
    return records
