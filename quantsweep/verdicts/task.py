"""Judging one evaluated task: its result (and its baseline's) -> verdict records, per metric.

This is the glue between :mod:`quantsweep.eval.harness` (per-sample outcomes)
and :mod:`quantsweep.verdicts.judge` (the statistics). It pairs documents by
``doc_id``, picks the right test for the metric, and computes the chance level
from the data:

* per-document 0/1 metrics (``acc``, ``acc_norm``, ``exact_match``): exact
  McNemar against the baseline and a one-sided binomial test against chance,
  where chance is the mean of 1/(number of choices) for multiple choice and 0
  for generation;
* rolling log-likelihood metrics (``word_perplexity``, ``byte_perplexity``,
  ``bits_per_byte``): a paired bootstrap of corpus perplexity per token. Chance is
  the unigram cross-entropy of the scored tokens (``TaskResult.unigram_chance_nats``,
  the best a model that ignores context can do) when the task has it, else the
  uniform distribution over the vocabulary (log V); the record says which
  (``chance_reference``), keeps both (``chance_unigram_nats``, ``chance_uniform_nats``)
  and the cell's own ``cross_entropy_nats`` in the same units;
* ``perplexity`` of a ``loglikelihood`` task (e.g. LAMBADA): a paired bootstrap of
  the mean per-document log-likelihood, which lm-eval logs for that metric;
* any other per-document score: a paired bootstrap of the mean; metrics with no
  per-document number (F1, MCC, BLEU score the corpus) are ``inconclusive``.

Every compared cell of a per-document 0/1 metric also records its answer flips
(Dutta et al. 2024): ``flips_right_to_wrong`` and ``flips_wrong_to_right``, the
shares of paired documents the baseline got right and the recipe wrong, and the
reverse (``flips_n`` documents). When every paired document has a
``SampleOutcome.cluster``, the interval is cluster-robust (``interval`` says so).

Example:
    >>> from quantsweep.eval.harness import MetricResult, SampleOutcome, TaskResult
    >>> def multiple_choice(correct):  # a 4-way multiple-choice task: one 0/1 answer per document
    ...     samples = [SampleOutcome(i, {"acc": float(c)}, n_choices=4) for i, c in enumerate(correct)]
    ...     metric = MetricResult("acc", sum(correct) / len(correct), None, len(correct), True)
    ...     return TaskResult("toy_mc4", "multiple_choice", {"acc": metric}, samples, 0, 0)
    >>> baseline_task = multiple_choice([1] * 900 + [0] * 100)
    >>> task = multiple_choice([1] * 900 + [0] * 100)
    >>> judged = judge_task(task, baseline_task, metric="acc", vocab_size=512)
    >>> judged["verdict"], judged["flips_n"]
    ('lossless', 1000)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from quantsweep.verdicts import chance as chance_levels
from quantsweep.verdicts import stats
from quantsweep.verdicts.config import VerdictConfig
from quantsweep.verdicts.judge import judge_accuracy, judge_perplexity, judge_scores
from quantsweep.verdicts.rules import Verdict

logger = logging.getLogger(__name__)

PERPLEXITY_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity")


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _is_binary(values: list) -> bool:
    return all(
        isinstance(v, (int, float)) and (v in (0, 1) or (isinstance(v, float) and math.isnan(v))) for v in values
    )


def _pairs(task, baseline_task) -> tuple[list, list]:
    if baseline_task is None:
        return task.samples, []
    baseline_by_doc = {s.doc_id: s for s in baseline_task.samples}
    shared = [s for s in task.samples if s.doc_id in baseline_by_doc]
    return shared, [baseline_by_doc[s.doc_id] for s in shared]


def _scores(samples, metric: str) -> list:
    return [float("nan") if s.nonfinite else s.scores.get(metric) for s in samples]


def _chance(task) -> float:
    """Chance level from the task's suite entry (or output type) and its samples."""
    return chance_levels.chance_level(task)


def judge_task(
    task,
    baseline_task,
    *,
    metric: str,
    vocab_size: int,
    config: VerdictConfig | None = None,
    is_baseline: bool = False,
    noise_floor: float = 0.0,
) -> dict[str, Any]:
    """Verdict fields for one (task, metric) of a recipe, compared with the baseline's.

    Args:
        task: the :class:`~quantsweep.eval.harness.TaskResult` being judged.
        baseline_task: the baseline's result on the same task (None if the baseline failed).
        metric: which metric of the task.
        vocab_size: model vocabulary size (chance cross-entropy is log V).
        config: verdict thresholds.
        is_baseline: this is the baseline itself.
        noise_floor: the A/A control's difference, in the drop's units (0: none).

    Returns:
        ``chance, verdict, nonfinite_samples, delta, ci_low, ci_high, p_value, retained``
        (and ``n``) as JSON-friendly values.

    Example:
        >>> from quantsweep.eval.harness import MetricResult, SampleOutcome, TaskResult
        >>> samples = [SampleOutcome(i, {"acc": float(i % 4 != 0)}, n_choices=4) for i in range(40)]
        >>> task = TaskResult("toy_mc4", "multiple_choice", {"acc": MetricResult("acc", 0.75, None, 40, True)},
        ...                   samples, 0, 0)
        >>> judge_task(task, None, metric="acc", vocab_size=512, is_baseline=True)["verdict"]
        'baseline'
    """
    config = config or VerdictConfig()
    value = task.metrics[metric].value
    if baseline_task is None and not is_baseline:
        # the baseline failed: nothing to pair with, so no comparison can be claimed
        nonfinite = task.nonfinite_samples > 0 or not math.isfinite(value)
        reason = (
            "no baseline to compare with: the baseline has no result for this task"
            if not nonfinite
            else f"{task.nonfinite_samples} of {task.n} documents, or the metric, non-finite"
        )
        return Verdict(
            "non-finite" if nonfinite else "inconclusive",
            nonfinite_samples=task.nonfinite_samples,
            n=task.n,
            reason=reason,
        ).to_dict()
    samples, base_samples = _pairs(task, None if is_baseline else baseline_task)
    baseline_arg = None if is_baseline else base_samples
    common = dict(
        nonfinite_samples=task.nonfinite_samples,
        config=config,
        is_baseline=is_baseline,
        metric_value=value,
        noise_floor=noise_floor,
    )
    if task.output_type == "loglikelihood_rolling" and metric in PERPLEXITY_METRICS:
        chance_fields = perplexity_chance(task, baseline_task, vocab_size)
        verdict = judge_perplexity(
            _nll(samples, metric),
            [s.n_tokens for s in samples],
            None if baseline_arg is None else _nll(baseline_arg, metric),
            None if baseline_arg is None else [s.n_tokens for s in baseline_arg],
            vocab_size,
            **common,
            # None keeps the uniform chance perplexity exactly V (exp(log V) would round)
            chance_cross_entropy=chance_fields["chance_nats"]
            if chance_fields["chance_reference"] == "unigram"
            else None,
        )
        return {**verdict.to_dict(), **chance_fields, "cross_entropy_nats": _cross_entropy(samples, metric)}
    values = _scores(samples, metric)
    if not all(_is_number(v) for v in values):
        # e.g. f1/mcc/bleu: lm-eval logs (reference, prediction) per document and scores the corpus,
        # so there is no per-document number to pair with the baseline's
        logger.warning(
            "%s/%s: per-document values are not numbers; no paired comparison, verdict inconclusive", task.task, metric
        )
        reason = (
            f"lm-eval scores {metric} on the whole corpus: there is no per-document number to pair with the baseline's"
        )
        return Verdict(
            "baseline" if is_baseline else "inconclusive",
            nonfinite_samples=task.nonfinite_samples,
            n=task.n,
            reason=reason,
        ).to_dict()
    if task.output_type == "loglikelihood" and metric == "perplexity":
        # lm-eval logs each document's log-likelihood for this metric (higher is better) and reports
        # exp(-mean). Judge the mean log-likelihood; a drop of log(1 + tolerance) nats is a perplexity
        # increase of exactly the relative tolerance. delta is in nats per document.
        verdict = judge_scores(
            np.asarray(values, dtype=float),
            None if baseline_arg is None else np.asarray(_scores(baseline_arg, metric), dtype=float),
            higher_is_better=True,
            chance=None,
            tolerance=math.log1p(config.perplexity_relative_tolerance),
            show=lambda nats: f"{nats:.3g} nats",
            **common,
        )
        return verdict.to_dict()
    if _is_binary(values):
        baseline_values = None if baseline_arg is None else _scores(baseline_arg, metric)
        verdict = judge_accuracy(values, baseline_values, _chance(task), clusters=_clusters(samples), **common)
        if baseline_values is not None:
            return {**verdict.to_dict(), **answer_flips(values, baseline_values)}
    else:
        higher = task.metrics[metric].higher_is_better
        verdict = judge_scores(
            np.asarray(values, dtype=float),
            None if baseline_arg is None else np.asarray(_scores(baseline_arg, metric), dtype=float),
            higher_is_better=True if higher is None else bool(higher),
            chance=None,
            clusters=_clusters(samples),
            **common,
        )
    return verdict.to_dict()


def _clusters(samples) -> list | None:
    """Cluster labels of the paired documents, or None unless every document has one."""
    labels = [s.cluster for s in samples]
    return labels if labels and all(label is not None for label in labels) else None


def answer_flips(quantized, baseline) -> dict[str, Any]:
    """Shares of documents whose 0/1 answer changed: right to wrong and wrong to right.

    Accuracy can stay the same while many answers change (Dutta et al. 2024, "Accuracy is
    Not All You Need"); flips show it. Documents where either value is NaN are left out.

    Example:
        >>> answer_flips([1, 0, 1, 1], [1, 1, 0, 1])
        {'flips_right_to_wrong': 0.25, 'flips_wrong_to_right': 0.25, 'flips_n': 4}
    """
    q, b = np.asarray(quantized, dtype=float), np.asarray(baseline, dtype=float)
    keep = np.isfinite(q) & np.isfinite(b)
    if not keep.any():
        return {"flips_right_to_wrong": None, "flips_wrong_to_right": None, "flips_n": 0}
    counts = stats.paired_counts(q[keep], b[keep])
    n = counts.n
    return {
        "flips_right_to_wrong": counts.only_baseline / n,
        "flips_wrong_to_right": counts.only_quantized / n,
        "flips_n": n,
    }


def perplexity_chance(task, baseline_task, vocab_size: int) -> dict[str, Any]:
    """The chance cross-entropy of a perplexity task, and both references it is chosen from.

    The unigram cross-entropy of the scored tokens (``unigram_chance_nats`` of the task, or
    of the baseline's result on it) is the reference when known: a model that knows only
    how often each token occurs reaches it, so a model worse than that is near-random.
    Otherwise the uniform ``log V``, which is a much lower bar.

    Returns:
        ``chance_nats`` (the one used), ``chance_reference`` ("unigram" or "uniform"),
        ``chance_unigram_nats`` (None when unknown) and ``chance_uniform_nats``.

    Example:
        >>> from quantsweep.eval.harness import TaskResult
        >>> task = TaskResult("toy_ppl", "loglikelihood_rolling", {}, [], 0, 0, unigram_chance_nats=4.5)
        >>> perplexity_chance(task, None, 512)["chance_reference"]
        'unigram'
        >>> perplexity_chance(TaskResult("toy_ppl", "loglikelihood_rolling", {}, [], 0, 0), None, 512)["chance_reference"]
        'uniform'
    """
    uniform = chance_levels.chance_cross_entropy(vocab_size)
    unigram = getattr(task, "unigram_chance_nats", None)
    if unigram is None and baseline_task is not None:
        unigram = getattr(baseline_task, "unigram_chance_nats", None)
    if unigram is not None and not (math.isfinite(float(unigram)) and float(unigram) > 0):
        raise ValueError(f"{task.task}: unigram_chance_nats must be a positive number of nats, got {unigram}")
    used = uniform if unigram is None else float(unigram)
    return {
        "chance_nats": used,
        "chance_reference": "uniform" if unigram is None else "unigram",
        "chance_unigram_nats": None if unigram is None else float(unigram),
        "chance_uniform_nats": uniform,
    }


def _cross_entropy(samples, metric: str) -> float | None:
    """The cell's corpus cross-entropy in nats per token (None when non-finite): comparable with its chance."""
    nll = np.asarray(_nll(samples, metric), dtype=float)
    tokens = np.asarray([s.n_tokens or 0 for s in samples], dtype=float)
    if not (np.isfinite(nll).all() and tokens.sum() > 0):
        return None
    return float(nll.sum() / tokens.sum())


def _nll(samples, metric: str) -> list[float]:
    """Per-document summed negative log-likelihood (nats) from lm-eval's (loglikelihood, weight) pairs."""
    out = []
    for s in samples:
        pair = s.scores.get(metric)
        loglikelihood = pair[0] if isinstance(pair, (list, tuple)) else float("nan")
        out.append(float("nan") if s.nonfinite else -float(loglikelihood))
    return out


def judge_all_metrics(
    task,
    baseline_task,
    *,
    vocab_size: int,
    config: VerdictConfig | None = None,
    is_baseline: bool = False,
    noise_floors: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`judge_task` for every metric of a task, by metric name.

    The perplexity metrics of one task (word, byte, bits per byte) are all judged on
    the same per-token cross-entropy, so their bootstrap runs once and is shared.
    ``noise_floors``: metric -> the A/A control's difference in the drop's units
    (:func:`quantsweep.verdicts.rules.decide`); a metric not named has none.

    Example:
        >>> from quantsweep.eval.harness import MetricResult, SampleOutcome, TaskResult
        >>> samples = [SampleOutcome(i, {m: (-2.0 * (10 + i % 3), 10) for m in ("word_perplexity", "bits_per_byte")},
        ...                          n_tokens=10 + i % 3) for i in range(30)]
        >>> metrics = {m: MetricResult(m, 7.4, None, 30, False) for m in ("word_perplexity", "bits_per_byte")}
        >>> task = TaskResult("toy_ppl", "loglikelihood_rolling", metrics, samples, 0, 0)
        >>> judged = judge_all_metrics(task, None, vocab_size=512, is_baseline=True)
        >>> sorted(judged), judged["bits_per_byte"] == judged["word_perplexity"]
        (['bits_per_byte', 'word_perplexity'], True)
    """
    judged: dict[str, dict[str, Any]] = {}
    shared_perplexity = None
    for metric in task.metrics:
        is_perplexity = task.output_type == "loglikelihood_rolling" and metric in PERPLEXITY_METRICS
        if is_perplexity and shared_perplexity is not None:
            judged[metric] = dict(shared_perplexity)
            continue
        judged[metric] = judge_task(
            task,
            baseline_task,
            metric=metric,
            vocab_size=vocab_size,
            config=config,
            is_baseline=is_baseline,
            noise_floor=(noise_floors or {}).get(metric, 0.0),
        )
        if is_perplexity:
            shared_perplexity = judged[metric]
    return judged
