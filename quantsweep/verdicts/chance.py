"""Chance levels: what a model that knows nothing would score, and how much of the margin is kept.

- Multiple choice: a uniform guess is right with probability ``1/k`` on a question
  with ``k`` choices, so chance accuracy is the mean of ``1/k`` over the questions
  actually asked (computed from the data, since tasks mix 2-, 4- and 5-way items).
- Exact-match generation: 0, since guessing an exact answer string almost never
  succeeds; a documented ``floor`` can be passed for tasks with a tiny answer set.
- Perplexity: a model that spreads probability uniformly over a vocabulary of
  ``V`` tokens has cross-entropy ``log V`` nats per token, i.e. perplexity ``V``.

Retention is the share of the baseline's margin above chance that the quantized
model keeps: 1 means nothing was lost, 0 means it is at chance.

Example:
    >>> multiple_choice_chance([4, 4, 2])
    0.3333333333333333
    >>> round(chance_cross_entropy(32000), 4)
    10.3735
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def multiple_choice_chance(choice_counts: Sequence[int]) -> float:
    """Chance accuracy of uniform guessing: mean over samples of ``1 / number_of_choices``.

    Args:
        choice_counts: for each evaluated sample, how many answer options it had (>= 2).

    Example:
        >>> multiple_choice_chance([4] * 10)
        0.25
    """
    counts = np.asarray(list(choice_counts))
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError("choice_counts must be a non-empty list with one choice count per sample")
    if not np.issubdtype(counts.dtype, np.integer):
        if (
            not np.issubdtype(counts.dtype, np.floating)
            or not np.all(np.isfinite(counts))
            or np.any(counts != np.round(counts))
        ):
            raise TypeError(f"choice_counts must be integers, got values like {counts[:3].tolist()}")
    if np.any(counts < 2):
        raise ValueError(f"every sample needs at least 2 choices, got {int(counts.min())}")
    return float(np.mean(1.0 / counts.astype(float)))


def exact_match_chance(floor: float = 0.0) -> float:
    """Chance level of exact-match generation: 0 unless a ``floor`` in [0, 1) is given.

    A floor is for tasks whose answers come from a tiny closed set (e.g. "yes"/"no"
    scored by exact match), where guessing can succeed; document the reason where
    you pass one.

    Example:
        >>> exact_match_chance()
        0.0
        >>> exact_match_chance(0.5)
        0.5
    """
    floor = float(floor)
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"exact-match chance floor must be in [0, 1), got {floor}")
    return floor


def _check_vocab_size(vocab_size: int) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise TypeError(f"vocab_size must be an integer, got {type(vocab_size).__name__}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    return int(vocab_size)


def chance_cross_entropy(vocab_size: int) -> float:
    """Cross-entropy of the uniform distribution over the vocabulary: ``log V`` nats per token.

    Example:
        >>> chance_cross_entropy(2) == math.log(2)
        True
    """
    return math.log(_check_vocab_size(vocab_size))


def chance_perplexity(vocab_size: int) -> float:
    """Perplexity of the uniform distribution over the vocabulary: ``V``.

    Example:
        >>> chance_perplexity(50257)
        50257.0
    """
    return float(_check_vocab_size(vocab_size))


def cross_entropy(nll, counts) -> float:
    """Corpus cross-entropy in nats per unit: ``sum(nll) / sum(counts)``.

    Args:
        nll: per-document summed negative log-likelihood, in nats.
        counts: per-document number of tokens (or words, bytes) the NLL is summed over.

    Example:
        >>> cross_entropy([6.0, 2.0], [3, 1])
        2.0
    """
    nll, counts = np.asarray(nll, dtype=float), np.asarray(counts, dtype=float)
    if nll.shape != counts.shape or nll.ndim != 1 or nll.size == 0:
        raise ValueError(
            f"nll and counts must be non-empty 1-D arrays of equal length, got {nll.shape} and {counts.shape}"
        )
    total = counts.sum()
    if not total > 0:
        raise ValueError(f"the total token count must be positive, got {total}")
    return float(nll.sum() / total)


def perplexity(nll, counts) -> float:
    """Corpus perplexity ``exp(sum(nll) / sum(counts))`` (inf if it overflows float64).

    Example:
        >>> round(perplexity([math.log(4.0) * 10], [10]), 6)
        4.0
    """
    ce = cross_entropy(nll, counts)
    # exp overflows float64 above ~709 nats per unit; such a model is far past collapse.
    return math.exp(ce) if ce < 709.0 else math.inf


def accuracy_retention(score: float, baseline_score: float, chance: float) -> float:
    """Share of the baseline's margin above chance kept: ``(score - chance) / (baseline - chance)``.

    NaN when the baseline is not above chance (there is no margin to keep).

    Example:
        >>> accuracy_retention(0.625, 1.0, 0.25)
        0.5
    """
    margin = baseline_score - chance
    if not margin > 0:
        return math.nan
    return (score - chance) / margin


def perplexity_retention(cross_entropy_nats: float, baseline_cross_entropy_nats: float, vocab_size: int) -> float:
    """Share of the baseline's margin below chance cross-entropy kept: ``(log V - CE) / (log V - CE_base)``.

    Cross-entropies are in nats per token. NaN when the baseline is not below ``log V``.

    Example:
        >>> round(perplexity_retention(math.log(1000) - 1.0, math.log(1000) - 4.0, 1000), 6)
        0.25
    """
    chance_ce = chance_cross_entropy(vocab_size)
    margin = chance_ce - baseline_cross_entropy_nats
    if not margin > 0:
        return math.nan
    return (chance_ce - cross_entropy_nats) / margin


def unigram_cross_entropy(token_counts) -> float:
    """Cross-entropy, in nats per token, of the scored text under its own unigram distribution.

    ``-sum_i (c_i / N) log(c_i / N)`` over the distinct tokens ``i`` with counts ``c_i``
    (``N = sum c_i``): the best any model that ignores context can do on this text.
    It is the "near-random" level of a perplexity task (the uniform ``log V`` is a
    much lower bar). Counts are of the tokens actually scored, under the model's
    tokenizer.

    Args:
        token_counts: a mapping token id -> count, or a sequence of counts.

    Example:
        >>> round(unigram_cross_entropy({1: 2, 2: 2}), 6) == round(math.log(2), 6)
        True
    """
    values = list(token_counts.values()) if hasattr(token_counts, "values") else list(token_counts)
    counts = np.asarray(values, dtype=float)
    if counts.ndim != 1 or counts.size == 0 or np.any(counts < 0) or not counts.sum() > 0:
        raise ValueError("token_counts must hold non-negative counts with a positive total")
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------- chance rules of tasks


def chance_rule(task: str, output_type: str | None = None) -> tuple[str, float]:
    """The chance rule and floor for a task: its suite entry's, else inferred from lm-eval's output type.

    Tasks outside any suite: multiple choice -> ``choices``; rolling log-likelihood
    (perplexity) -> ``uniform_vocab``; generation and single-continuation
    log-likelihood (scored by exact match) -> ``zero``.

    Returns:
        ``(rule, floor)``; the floor only matters for ``zero``.

    Raises:
        ValueError: the task is in no suite and its output type is unknown.

    Example:
        >>> chance_rule("hellaswag")
        ('choices', 0.0)
        >>> chance_rule("toy_ppl", "loglikelihood_rolling")
        ('uniform_vocab', 0.0)
    """
    from quantsweep.eval.suites import suite_entry
    from quantsweep.eval.tasks import OUTPUT_TYPES

    rules = {name: kind.chance for name, kind in OUTPUT_TYPES.items()}
    entry = suite_entry(task)
    if entry is not None:
        return entry.chance, float(entry.chance_floor)
    if output_type not in rules:
        raise ValueError(
            f"task {task!r} is in no suite and its output type {output_type!r} has no chance rule; "
            f"known output types: {', '.join(rules)}"
        )
    return rules[output_type], 0.0


def chance_level(task_result, vocab_size: int | None = None) -> float:
    """Chance level of one evaluated task, in the units of its verdict metric, computed from its samples.

    * ``choices``: mean over the evaluated samples of 1 / (their number of choices),
      from ``SampleOutcome.n_choices`` (never hard-coded).
    * ``zero``: the entry's documented floor (0 by default).
    * ``uniform_vocab``: the perplexity per token of the uniform distribution, ``V``
      (cross-entropy ``log V`` nats). Pass ``vocab_size`` = the size of the model's
      output distribution (its logits' last dimension, e.g. ``model.config.vocab_size``),
      which may exceed ``len(tokenizer)`` when the embedding table is padded.

    Args:
        task_result: a :class:`quantsweep.eval.harness.TaskResult`.
        vocab_size: needed for ``uniform_vocab`` only.

    Example:
        >>> from quantsweep.eval.harness import TaskResult, SampleOutcome
        >>> result = TaskResult("arc_easy", "multiple_choice", {}, [SampleOutcome(0, {}, n_choices=4),
        ...     SampleOutcome(1, {}, n_choices=5)], 0, 0)
        >>> chance_level(result)
        0.225
    """
    rule, floor = chance_rule(task_result.task, task_result.output_type)
    if rule == "choices":
        counts = [sample.n_choices for sample in task_result.samples]
        if not counts or any(count is None for count in counts):
            raise ValueError(
                f"task {task_result.task!r}: chance rule 'choices' needs every sample's n_choices "
                f"(output type {task_result.output_type!r})"
            )
        return multiple_choice_chance(counts)
    if rule == "zero":
        return exact_match_chance(floor)
    if vocab_size is None:
        raise ValueError(f"task {task_result.task!r}: chance rule 'uniform_vocab' needs vocab_size")
    return chance_perplexity(vocab_size)
