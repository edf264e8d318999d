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
  generating its answer contain NaN or Inf (checked per row by the generation
  scheduler; on lm-eval's own fallback path a hook counts rows per task).

Example:
    >>> import quantsweep
    >>> model, tokenizer = quantsweep.load_model("toy", device="cpu")
    >>> result = quantsweep.evaluate(model, tokenizer, tasks=["toy_mc4"], limit=16)
    >>> result.tasks["toy_mc4"].metrics["acc"].value > 0.5
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantsweep.eval.health import NonFiniteLogitCounter
from quantsweep.eval.settings import EvalSettings
from quantsweep.eval.suites import SuiteEntry, suite_entry
from quantsweep.eval.tasks import (  # noqa: F401
    LOGLIKELIHOOD_TYPES,
    TASKS_DIR,
    TaskNotFoundError,
    check_tasks,
    manager_for,
    task_manager,
    task_search_paths,
)
from quantsweep.verdicts.chance import unigram_cross_entropy

logger = logging.getLogger(__name__)


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
        loglikelihoods: each option's log-likelihood (multiple choice only), for the
            divergence over options (:func:`quantsweep.eval.divergence.choice_kl`).

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
    loglikelihoods: list[float] | None = None


@dataclass
class TaskResult:
    """Everything measured for one task.

    ``unigram_chance_nats`` (rolling log-likelihood tasks only): the cross-entropy, in
    nats per token, of the scored tokens under their own unigram distribution
    (:func:`quantsweep.verdicts.chance.unigram_cross_entropy`); the perplexity chance level.
    ``max_length``: the window (tokens) log-likelihoods were scored in.
    ``divergence`` (rolling log-likelihood tasks compared with a stored baseline): the token
    figures of :func:`quantsweep.eval.divergence.summarize`, or ``{"error": reason}`` when
    they could not be measured; None when not asked for.

    Example:
        >>> TaskResult("t", "multiple_choice", {}, [SampleOutcome(doc_id=0, scores={"acc": 1.0})], 0, 0).n
        1
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
    max_length: int | None = None
    divergence: dict[str, Any] | None = None

    @property
    def n(self) -> int:
        return len(self.samples)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (metrics and every document), as a store keeps it; :meth:`from_dict` reads it back.

        Example:
            >>> task = TaskResult("t", "multiple_choice", {"acc": MetricResult("acc", 1.0, 0.0, 1, True)},
            ...                   [SampleOutcome(doc_id=0, scores={"acc": 1.0})], 0, 0)
            >>> TaskResult.from_dict(task.to_dict()) == task
            True
        """
        data = dataclasses.asdict(self)
        data["samples"] = [dataclasses.asdict(s) for s in self.samples]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        """Rebuild a task result stored by :meth:`to_dict`.

        Non-finite numbers were stored as null/"inf"; they come back as NaN/Inf.

        Example:
            >>> TaskResult.from_dict({"task": "t", "output_type": "loglikelihood_rolling", "nonfinite_samples": 0,
            ...     "num_fewshot": 0, "metrics": {"ppl": {"metric": "ppl", "value": "inf", "stderr": None, "n": 1,
            ...     "higher_is_better": False}}, "samples": []}).metrics["ppl"].value
            inf
        """

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
        task_fields = {f.name for f in dataclasses.fields(cls)}
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
        return cls(**rest, metrics=metrics, samples=samples)


@dataclass
class EvalResult:
    """Per-task results of one :func:`evaluate` call.

    ``batch_size_halvings``: ``(from, to)`` for every out-of-memory halving of
    ``batch_size="auto"``; ``fallbacks``: reason -> requests scored by lm-eval's own path.

    Example:
        >>> sorted(EvalResult(tasks={"toy_ppl": None, "toy_mc4": None}).tasks)
        ['toy_mc4', 'toy_ppl']
    """

    tasks: dict[str, TaskResult] = field(default_factory=dict)
    limit: int | float | None = None
    batch_size_halvings: list[tuple[int, int]] = field(default_factory=list)
    fallbacks: dict[str, int] = field(default_factory=dict)

    def metric_rows(self) -> list[dict[str, Any]]:
        """One plain dict per (task, metric): task, metric, value, stderr, n.

        Example:
            >>> task = TaskResult("t", "multiple_choice", {"acc": MetricResult("acc", 0.5, 0.1, 4, True)}, [], 0, 0)
            >>> EvalResult(tasks={"t": task}).metric_rows()[0]["metric"]
            'acc'
        """
        rows = []
        for task in self.tasks.values():
            for metric in task.metrics.values():
                rows.append(
                    {
                        "task": task.task,
                        "metric": metric.metric,
                        "value": metric.value,
                        "stderr": metric.stderr,
                        "n": metric.n,
                        "nonfinite_samples": task.nonfinite_samples,
                    }
                )
        return rows


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


def _cluster_of(sample: dict, entry: SuiteEntry | None, subtask_of_group: str | None) -> str | None:
    """The document's cluster: the entry's ``cluster_column``, else its ``subject``, else its subtask."""
    doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
    column = entry.cluster_column if entry is not None and entry.cluster_column else None
    if column is not None:
        if column not in doc:
            raise ValueError(
                f"task {entry.task!r}: cluster_column {column!r} is not a document column; "
                f"columns: {', '.join(map(str, doc)) or 'none'}"
            )
        return str(doc[column])
    if "subject" in doc:
        return str(doc["subject"])
    return subtask_of_group


def _sample_outcomes(
    output_type: str,
    raw_samples: list[dict],
    metric_names: list[str],
    tokenizer,
    entry: SuiteEntry | None = None,
    subtask_of_group: str | None = None,
) -> list[SampleOutcome]:
    outcomes = []
    for sample in raw_samples:
        scores = {name: sample[name] for name in metric_names if name in sample}
        resps = sample.get("resps", [])
        nonfinite = output_type in LOGLIKELIHOOD_TYPES and not _is_finite_response(resps)
        n_choices = len(resps) if output_type == "multiple_choice" else None
        loglikelihoods = _option_loglikelihoods(resps) if output_type == "multiple_choice" else None
        n_tokens = None
        if output_type == "loglikelihood_rolling":
            text = sample["target"]
            n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        outcomes.append(
            SampleOutcome(
                doc_id=int(sample["doc_id"]),
                scores=scores,
                nonfinite=nonfinite,
                n_choices=n_choices,
                n_tokens=n_tokens,
                cluster=_cluster_of(sample, entry, subtask_of_group),
                loglikelihoods=loglikelihoods,
            )
        )
    outcomes.sort(key=lambda outcome: outcome.doc_id)
    return outcomes


def _option_loglikelihoods(resps) -> list[float] | None:
    """Each option's log-likelihood from lm-eval's multiple-choice responses ``[[(ll, greedy)], ...]``."""
    try:
        return [float(resp[0][0]) for resp in resps]
    except (TypeError, ValueError, IndexError):
        return None


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _task_window(lm, entry: SuiteEntry | None, max_length: int | None, positions: int | None) -> int:
    """The scoring window for one task: the caller's ``max_length``, else the suite's, capped by the model."""
    if max_length is not None:
        return max_length
    if entry is not None and entry.max_length is not None:
        if positions is not None and entry.max_length > positions:
            logger.info(
                "task %s: suite window %d exceeds the model's %d positions; using %d",
                entry.task,
                entry.max_length,
                positions,
                positions,
            )
            return positions
        return entry.max_length
    return lm.default_max_length


def evaluate(
    model,
    tokenizer,
    tasks: list[str] | str,
    limit: int | float | None = None,
    batch_size: int | str | None = None,
    num_fewshot: int | None = None,
    *,
    include_path: str | Path | list | None = None,
    task_configs: dict[str, dict] | None = None,
    allow_code_execution: bool | None = None,
    seed: int | None = None,
    max_length: int | None = None,
    data_dir: str | Path | None = None,
    settings: EvalSettings | None = None,
    divergence=None,
    reverse_order: bool = False,
) -> EvalResult:
    """Evaluate an in-memory causal LM on lm-eval tasks and keep every sample's outcome.

    Scoring goes through :class:`quantsweep.eval.lm.ContextCachedLM`: each
    multiple-choice context is computed once, and perplexity runs in bounded memory,
    with the same numbers as lm-eval's ``HFLM``.

    The settings are one :class:`~quantsweep.eval.settings.EvalSettings` (a sweep passes
    its spec's); each keyword argument given (not None) replaces that field of it.

    Args:
        model: a Hugging Face causal LM, already on its device (not reloaded).
        tokenizer: its tokenizer.
        tasks: task names (or one comma-separated string) from ``tasks/``, a user
            ``include_path`` or lm-eval's registry.
        limit: evaluate only the first ``limit`` documents of each task.
        batch_size: documents per forward pass (default 32), or ``"auto"`` (start at 64
            and halve on out-of-memory; halvings are recorded in ``EvalResult.batch_size_halvings``).
        num_fewshot: override every task's few-shot count.
        include_path: extra folder(s) of task YAML.
        task_configs: per-task config overrides (e.g. local data files), as
            produced by :mod:`quantsweep.eval.suites`; keys are task names. Default: made
            from ``data_dir`` for suite tasks that have local data there.
        allow_code_execution: let tasks that execute model-written code run
            (HumanEval, MBPP). Off by default.
        seed: seeds lm-eval's samplers, numpy and torch for reproducibility (default 1234).
        max_length: the scoring window in tokens for every task (default: a suite
            entry's ``max_length``, else the model's positions). Above the model's
            positions, or below a task's longest continuation, is an error.
        data_dir: folder of local dataset files for suite tasks (offline).
        settings: all of the above as one object (default: :class:`EvalSettings` defaults).
        divergence: a :class:`quantsweep.eval.divergence.DivergenceProbe`: record the model's
            distributions on rolling tasks (the baseline; ``probe.recorded``), or compare with
            stored ones (a recipe; ``TaskResult.divergence``).
        reverse_order: run log-likelihood batches in reverse order (the A/A control).

    Returns:
        :class:`EvalResult` with metrics (value, stderr, n) and per-sample outcomes.

    Raises:
        TaskNotFoundError: a task name is unknown (the message lists where tasks were searched).
        ValueError: bad ``batch_size`` or ``max_length`` (naming the numbers).

    Example:
        >>> import quantsweep
        >>> model, tokenizer = quantsweep.load_model("toy", device="cpu")
        >>> result = evaluate(model, tokenizer, tasks=["toy_mc4"], limit=8, batch_size=8)
        >>> result.tasks["toy_mc4"].metrics["acc"].n
        8
    """
    import lm_eval

    from quantsweep.eval.lm import ContextCachedLM, check_max_length, model_positions

    settings = (settings or EvalSettings()).replace(
        limit=limit,
        batch_size=batch_size,
        num_fewshot=num_fewshot,
        include_path=include_path,
        allow_code_execution=allow_code_execution,
        seed=seed,
        max_length=max_length,
        data_dir=data_dir,
    )
    limit, batch_size, num_fewshot, seed = settings.limit, settings.batch_size, settings.num_fewshot, settings.seed
    max_length = settings.max_length
    include_path = list(settings.include_path) or None
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    positions = model_positions(model)
    if max_length is not None:
        check_max_length(max_length, positions)  # before any task is loaded
    os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))
    if task_configs is None and settings.data_dir is not None:
        from quantsweep.eval.offline import local_task_configs

        task_configs = local_task_configs(names, settings.data_dir)
    overrides = task_configs or {}
    check_tasks([n for n in names if n not in overrides], include_path)
    manager = manager_for([n for n in names if n not in overrides], include_path)
    entries = {name: suite_entry(name) for name in names}
    counter = NonFiniteLogitCounter(model)
    result = EvalResult(limit=limit)
    try:
        lm = ContextCachedLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            counter=counter,
            max_length=max_length,
            divergence=divergence,
            reverse_order=reverse_order,
        )
        for name in names:
            spec = overrides.get(name, name)
            generated_before = counter.total
            window = _task_window(lm, entries[name], max_length, positions)
            lm.use_max_length(window)
            lm.rolling_target_counts.clear()
            lm.nonfinite_generations.clear()
            logger.info("evaluating task %s%s", name, f" (limit {limit})" if limit else "")
            with _without_environment_report():
                output = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=[spec],
                    limit=limit,
                    num_fewshot=num_fewshot,
                    task_manager=manager,
                    log_samples=True,
                    bootstrap_iters=1000,
                    random_seed=seed,
                    numpy_random_seed=seed,
                    torch_random_seed=seed,
                    fewshot_random_seed=seed,
                    confirm_run_unsafe_code=settings.allow_code_execution,
                    verbosity="ERROR",
                )
            found = _task_results(
                output, tokenizer, counter.total - generated_before, entries.get(name), lm.nonfinite_generations
            )
            for task_name, task_result in found.items():
                task_result.max_length = window
                counts = lm.rolling_target_counts.get(task_name)
                if task_result.output_type == "loglikelihood_rolling" and counts:
                    task_result.unigram_chance_nats = unigram_cross_entropy(counts)
                if divergence is not None and task_result.output_type == "loglikelihood_rolling":
                    task_result.divergence = _token_divergence(divergence, task_name)
            result.tasks.update(found)
        result.batch_size_halvings = list(lm.oom_halvings)
        result.fallbacks = dict(lm.fallbacks)
    finally:
        counter.close()
    return result


def _token_divergence(probe, task: str) -> dict[str, Any] | None:
    """A rolling task's figures from the probe (compare mode), ``{"error": ...}``, or None (recording)."""
    if task in probe.problems:
        return {"error": probe.problems[task]}
    if probe.recording:
        return None
    if task not in probe.references:  # the scorer never asked: fetching now could only wait for nothing
        return {"error": "no document of this task was compared with the baseline (none had scored tokens)"}
    return probe.summary(task)


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


def _task_results(
    output: dict,
    tokenizer,
    generated_nonfinite: int,
    requested_entry: SuiteEntry | None = None,
    nonfinite_docs: dict[str, set[int]] | None = None,
) -> dict[str, TaskResult]:
    """Task results from lm-eval's output.

    ``generated_nonfinite``: generation rows with NaN/Inf logits on lm-eval's own path (not
    traceable to a document); ``nonfinite_docs``: task -> doc ids whose generation met NaN/Inf
    on quantsweep's path.
    """
    found = {}
    in_group = {sub for subs in (output.get("group_subtasks") or {}).values() for sub in subs}
    for task_name, all_samples in output["samples"].items():
        config = output["configs"][task_name]
        entry = requested_entry if requested_entry is not None and requested_entry.task == task_name else None
        chosen = _chosen_filter(config, all_samples, entry)
        # lm-eval logs one sample per filter; keep one outcome per document
        raw_samples = [s for s in all_samples if s.get("filter", "none") == chosen]
        output_type = config.get("output_type", "")
        metric_names = [m["metric"] for m in config.get("metric_list", [])]
        higher = output.get("higher_is_better", {}).get(task_name, {})
        values = output["results"][task_name]
        n = int(output.get("n-samples", {}).get(task_name, {}).get("effective", len(raw_samples)))
        samples = _sample_outcomes(
            output_type, raw_samples, metric_names, tokenizer, entry, task_name if task_name in in_group else None
        )
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
        if output_type == "generate_until":
            flagged = (nonfinite_docs or {}).get(task_name, set())
            for sample in samples:
                sample.nonfinite = sample.doc_id in flagged
        nonfinite = sum(s.nonfinite for s in samples)
        if output_type == "generate_until":
            nonfinite += generated_nonfinite
        preferred = [entry.metric] if entry is not None else []
        found[task_name] = TaskResult(
            task=task_name,
            output_type=output_type,
            metrics=metrics,
            samples=samples,
            nonfinite_samples=nonfinite,
            num_fewshot=config.get("num_fewshot"),
            version=output.get("versions", {}).get(task_name),
            primary_metric=next((m for m in preferred + metric_names if m in metrics), next(iter(metrics), None)),
        )
    return found
