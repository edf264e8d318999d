"""The lm-eval bridge: evaluate a model already in memory, keep every sample's outcome.

``evaluate`` wraps the in-memory model in lm-eval's ``HFLM`` (never saving and
reloading it), loads tasks from this repository's ``tasks/`` folder as well as
lm-eval's own registry, runs each task, and returns per-task metrics with their
standard error and sample count, plus the outcome of every sample so that later
statistics can pair a quantized model with its baseline document by document.

Non-finite outputs are counted per task while it runs:

* log-likelihood tasks (multiple choice, perplexity): a sample is non-finite when
  any of its log-likelihoods is NaN or +-Inf;
* generation tasks: a sample is non-finite when any logits produced while
  generating its answer contain NaN or Inf (a hook on the model's output).

Example:
    >>> model, tokenizer = quantsweep.load_model("toy")  # doctest: +SKIP
    >>> result = quantsweep.evaluate(model, tokenizer, tasks=["toy_mc4"], limit=50)  # doctest: +SKIP
    >>> result.tasks["toy_mc4"].metrics["acc"].value  # doctest: +SKIP
    0.98
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from quantsweep._paths import shipped_dir

logger = logging.getLogger(__name__)

TASKS_DIR = shipped_dir("tasks")

_LOGLIKELIHOOD_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")


class TaskNotFoundError(ValueError):
    """A task name matched nothing in the searched task folders."""


@dataclass(frozen=True)
class MetricResult:
    """One aggregated metric of one task.

    Example:
        >>> MetricResult("acc", 0.9, 0.01, 1000, True).value
        0.9
    """

    metric: str
    value: float
    stderr: float | None
    n: int
    higher_is_better: bool | None


@dataclass
class SampleOutcome:
    """The outcome of one document.

    Attributes:
        doc_id: the document's index in the task's evaluation split.
        scores: per-sample metric values as lm-eval reports them (``acc`` is 0/1;
            perplexity metrics are ``(loglikelihood, weight)`` pairs).
        nonfinite: whether any log-likelihood or logit for this doc was NaN/Inf.
        n_choices: number of answer options (multiple choice only).
        n_tokens: tokens scored (rolling log-likelihood only).
        cluster: the document's cluster (e.g. its subject in MMLU/C-Eval/CMMLU) when the
            task's documents come in groups; None otherwise. Clustered intervals use it.

    Example:
        >>> SampleOutcome(doc_id=0, scores={"acc": 1.0}).nonfinite
        False
    """

    doc_id: int
    scores: dict[str, Any]
    nonfinite: bool = False
    n_choices: int | None = None
    n_tokens: int | None = None
    cluster: str | None = None


@dataclass
class TaskResult:
    """Everything measured for one task.

    ``unigram_chance_nats`` (rolling log-likelihood tasks only): the cross-entropy, in
    nats per token, of the scored tokens under their own unigram distribution
    (:func:`quantsweep.eval.chance.unigram_cross_entropy`); the perplexity chance level.

    Example:
        >>> result.tasks["toy_mc4"].n  # doctest: +SKIP
        800
    """

    task: str
    output_type: str
    metrics: dict[str, MetricResult]
    samples: list[SampleOutcome]
    nonfinite_samples: int
    num_fewshot: int | None
    version: Any = None
    primary_metric: str | None = None
    unigram_chance_nats: float | None = None

    @property
    def n(self) -> int:
        return len(self.samples)


@dataclass
class EvalResult:
    """Per-task results of one :func:`evaluate` call.

    Example:
        >>> sorted(result.tasks)  # doctest: +SKIP
        ['toy_mc4', 'toy_ppl']
    """

    tasks: dict[str, TaskResult] = field(default_factory=dict)
    limit: int | float | None = None

    def metric_rows(self) -> list[dict[str, Any]]:
        """One plain dict per (task, metric): task, metric, value, stderr, n.

        Example:
            >>> result.metric_rows()[0]["metric"]  # doctest: +SKIP
            'acc'
        """
        rows = []
        for task in self.tasks.values():
            for metric in task.metrics.values():
                rows.append({"task": task.task, "metric": metric.metric, "value": metric.value,
                             "stderr": metric.stderr, "n": metric.n,
                             "nonfinite_samples": task.nonfinite_samples})
        return rows


def task_search_paths(include_path: str | Path | list | None = None) -> list[Path]:
    """Folders searched for task YAML, besides lm-eval's own registry.

    This repository's ``tasks/`` folder comes first, then any user folders.

    Example:
        >>> task_search_paths()[0].name
        'tasks'
    """
    paths = [TASKS_DIR]
    extra = include_path if isinstance(include_path, (list, tuple)) else [include_path] if include_path else []
    for entry in extra:
        path = Path(entry)
        if not path.is_dir():
            raise ValueError(f"task folder {str(path)!r} does not exist")
        paths.append(path)
    return paths


_MANAGERS: dict[tuple, Any] = {}


def task_manager(include_path: str | Path | list | None = None, *, include_defaults: bool = True):
    """An lm-eval ``TaskManager`` over this repo's tasks, user folders and (optionally) lm-eval's registry.

    Indexing lm-eval's registry of ~15,000 tasks takes several seconds, so managers
    are cached per process, and :func:`manager_for` only builds the full index
    when a task is not found in this repository's or the user's folders.

    Example:
        >>> "toy_mc4" in task_manager(include_defaults=False).all_tasks
        True
    """
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in task_search_paths(include_path)]
    key = (tuple(paths), include_defaults)
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=paths, include_defaults=include_defaults)
    return _MANAGERS[key]


def manager_for(names: list[str], include_path: str | Path | list | None = None):
    """The cheapest cached ``TaskManager`` that knows every name, or the full one.

    Example:
        >>> manager_for(["toy_mc4"]).include_path[0].endswith("tasks")
        True
    """
    local = task_manager(include_path, include_defaults=False)
    if all(name in local.all_tasks for name in names):
        return local
    return task_manager(include_path, include_defaults=True)


def check_tasks(names: list[str], include_path: str | Path | list | None = None) -> None:
    """Raise :class:`TaskNotFoundError` for a name that no searched folder nor lm-eval defines.

    Example:
        >>> check_tasks(["toy_mc4"])
    """
    manager = manager_for(names, include_path)
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            searched = ", ".join(str(p) for p in task_search_paths(include_path))
            raise TaskNotFoundError(
                f"unknown task {name!r}{hint}; searched {searched} and lm-eval's built-in registry"
            )


class _NonFiniteLogitCounter:
    """Counts generated sequences whose logits contain NaN or Inf (a forward hook on the model)."""

    def __init__(self, model: torch.nn.Module):
        self.row_flags: torch.Tensor | None = None
        self.total = 0
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        logits = getattr(output, "logits", None)
        if logits is None or self.row_flags is None:
            return
        bad = ~torch.isfinite(logits.detach()).reshape(logits.shape[0], -1).all(dim=-1)
        if bad.shape[0] == self.row_flags.shape[0]:
            self.row_flags |= bad.to(self.row_flags.device)
        elif bad.any():  # batch changed shape mid-generation (beam search): count the call
            self.row_flags[:] = True

    @contextlib.contextmanager
    def tracking(self, batch_size: int):
        self.row_flags = torch.zeros(batch_size, dtype=torch.bool)
        try:
            yield
        finally:
            self.total += int(self.row_flags.sum())
            self.row_flags = None

    def close(self) -> None:
        self._handle.remove()


def _make_lm(model, tokenizer, batch_size: int, counter: _NonFiniteLogitCounter):
    from lm_eval.models.huggingface import HFLM

    class _TrackedHFLM(HFLM):
        """HFLM that lets the non-finite counter see each generation batch."""

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            with counter.tracking(context.shape[0]):
                return super()._model_generate(context, max_length, stop, **generation_kwargs)

    lm = _TrackedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    return lm


@contextlib.contextmanager
def _without_environment_report():
    """Skip lm-eval's per-call environment report.

    ``simple_evaluate`` runs ``pip list`` and other subprocesses (about 1-5 s) on
    every call to describe the environment; we call it once per task and record
    our own provenance, so that report is pure overhead here.
    """
    import lm_eval.evaluator as evaluator_module

    original_env, original_git = evaluator_module.add_env_info, evaluator_module.get_git_commit_hash
    evaluator_module.add_env_info = lambda results: None
    evaluator_module.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        evaluator_module.add_env_info, evaluator_module.get_git_commit_hash = original_env, original_git


def _is_finite_response(response) -> bool:
    values = response if isinstance(response, (list, tuple)) else [response]
    for value in values:
        if isinstance(value, (list, tuple)):
            if not _is_finite_response(value):
                return False
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            return False
    return True


def _sample_outcomes(output_type: str, raw_samples: list[dict], metric_names: list[str], tokenizer) -> list[SampleOutcome]:
    outcomes = []
    for sample in raw_samples:
        scores = {name: sample[name] for name in metric_names if name in sample}
        resps = sample.get("resps", [])
        nonfinite = output_type in _LOGLIKELIHOOD_TYPES and not _is_finite_response(resps)
        n_choices = len(resps) if output_type == "multiple_choice" else None
        n_tokens = None
        if output_type == "loglikelihood_rolling":
            text = sample["target"]
            n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        outcomes.append(SampleOutcome(doc_id=int(sample["doc_id"]), scores=scores, nonfinite=nonfinite,
                                      n_choices=n_choices, n_tokens=n_tokens))
    outcomes.sort(key=lambda outcome: outcome.doc_id)
    return outcomes


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def evaluate(
    model,
    tokenizer,
    tasks: list[str] | str,
    limit: int | float | None = None,
    batch_size: int = 32,
    num_fewshot: int | None = None,
    *,
    include_path: str | Path | list | None = None,
    task_configs: dict[str, dict] | None = None,
    allow_code_execution: bool = False,
    seed: int = 1234,
) -> EvalResult:
    """Evaluate an in-memory causal LM on lm-eval tasks and keep every sample's outcome.

    Args:
        model: a Hugging Face causal LM, already on its device (not reloaded).
        tokenizer: its tokenizer.
        tasks: task names (or one comma-separated string) from ``tasks/``, a user
            ``include_path`` or lm-eval's registry.
        limit: evaluate only the first ``limit`` documents of each task.
        batch_size: documents per forward pass.
        num_fewshot: override every task's few-shot count.
        include_path: extra folder(s) of task YAML.
        task_configs: per-task config overrides (e.g. local data files), as
            produced by :mod:`quantsweep.eval.suites`; keys are task names.
        allow_code_execution: let tasks that execute model-written code run
            (HumanEval, MBPP). Off by default.
        seed: seeds lm-eval's samplers, numpy and torch for reproducibility.

    Returns:
        :class:`EvalResult` with metrics (value, stderr, n) and per-sample outcomes.

    Raises:
        TaskNotFoundError: a task name is unknown (the message lists where tasks were searched).

    Example:
        >>> result = evaluate(model, tokenizer, tasks=["toy_mc4"], limit=100)  # doctest: +SKIP
        >>> result.tasks["toy_mc4"].metrics["acc"].n  # doctest: +SKIP
        100
    """
    import lm_eval

    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))
    overrides = task_configs or {}
    check_tasks([n for n in names if n not in overrides], include_path)
    manager = manager_for([n for n in names if n not in overrides], include_path)
    counter = _NonFiniteLogitCounter(model)
    result = EvalResult(limit=limit)
    try:
        lm = _make_lm(model, tokenizer, batch_size, counter)
        for name in names:
            spec = overrides.get(name, name)
            generated_before = counter.total
            logger.info("evaluating task %s%s", name, f" (limit {limit})" if limit else "")
            with _without_environment_report():
                output = lm_eval.simple_evaluate(
                    model=lm, tasks=[spec], limit=limit, num_fewshot=num_fewshot, task_manager=manager,
                    log_samples=True, bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed,
                    torch_random_seed=seed, fewshot_random_seed=seed,
                    confirm_run_unsafe_code=allow_code_execution, verbosity="ERROR",
                )
            result.tasks.update(_task_results(output, tokenizer, counter.total - generated_before))
    finally:
        counter.close()
    return result


def _suite_entry(task_name: str):
    from quantsweep.eval.suites import suite_entry

    return suite_entry(task_name)


def _chosen_filter(config: dict, raw_samples: list[dict], entry) -> str:
    """The lm-eval filter whose scores we keep when a task defines several (e.g. gsm8k)."""
    present = list(dict.fromkeys(sample.get("filter", "none") for sample in raw_samples))
    if entry is not None and getattr(entry, "metric_filter", None) in present:
        return entry.metric_filter
    declared = [f.get("name") for f in config.get("filter_list") or [] if isinstance(f, dict)]
    for name in declared + ["none"]:
        if name in present:
            return name
    return present[0] if present else "none"


def _task_results(output: dict, tokenizer, generated_nonfinite: int) -> dict[str, TaskResult]:
    found = {}
    for task_name, all_samples in output["samples"].items():
        config = output["configs"][task_name]
        entry = _suite_entry(task_name)
        chosen = _chosen_filter(config, all_samples, entry)
        # lm-eval logs one sample per filter; keep one outcome per document
        raw_samples = [s for s in all_samples if s.get("filter", "none") == chosen]
        output_type = config.get("output_type", "")
        metric_names = [m["metric"] for m in config.get("metric_list", [])]
        higher = output.get("higher_is_better", {}).get(task_name, {})
        values = output["results"][task_name]
        n = int(output.get("n-samples", {}).get(task_name, {}).get("effective", len(raw_samples)))
        samples = _sample_outcomes(output_type, raw_samples, metric_names, tokenizer)
        metrics = {}
        for key, value in values.items():
            if "," not in key or key.startswith("alias"):
                continue
            metric, filter_name = key.split(",", 1)
            if metric.endswith("_stderr") or filter_name != chosen:
                continue
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            stderr = _as_float(stderr) if stderr not in (None, "N/A") else None
            metrics[metric] = MetricResult(metric, _as_float(value), stderr, n, higher.get(metric))
        nonfinite = sum(s.nonfinite for s in samples)
        if output_type == "generate_until":
            nonfinite = generated_nonfinite
        preferred = [entry.metric] if entry is not None else []
        found[task_name] = TaskResult(
            task=task_name, output_type=output_type, metrics=metrics, samples=samples,
            nonfinite_samples=nonfinite, num_fewshot=config.get("num_fewshot"),
            version=output.get("versions", {}).get(task_name),
            primary_metric=next((m for m in preferred + metric_names if m in metrics), next(iter(metrics), None)),
        )
    return found
