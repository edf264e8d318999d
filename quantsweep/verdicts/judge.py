"""Judging one metric: per-document values of a recipe and its baseline -> one :class:`Verdict`.

One skeleton (:func:`_judge`) does what every metric kind shares, in this order
(the rules are in :mod:`quantsweep.verdicts.rules`):

1. the non-finite check of the recipe's per-document values and its reported metric;
2. the baseline row (no baseline given, or ``is_baseline=True``);
3. pairing with the baseline's documents, and the baseline's own non-finite check: a
   baseline with non-finite per-document values cannot be paired, so the cell is judged
   against chance alone (:func:`_against_chance`: ``collapsed`` when confidently at chance,
   else ``inconclusive``), and its reason says the baseline could not be paired;
4. the ladder (:func:`~quantsweep.verdicts.rules.decide`) on the paired comparison;
5. for an inconclusive cell, the documents that would decide it.

What differs per metric kind is a small strategy: how its values are read and
checked, what its baseline row reports, and how the paired comparison, its
collapse check and its documents-needed estimate are computed:

- :class:`_Accuracy` (:func:`judge_accuracy`): per-document 0/1 correctness; Newcombe
  interval and exact McNemar test (or cluster-robust), binomial and retention collapse rules;
- :class:`_Perplexity` (:func:`judge_perplexity`): per-document summed NLL and token
  counts; paired bootstrap of the corpus perplexity, retention collapse rule;
- :class:`_Scores` (:func:`judge_scores`): any other per-document score (exact match of a
  generation, a log-likelihood); paired bootstrap of the mean (or cluster-robust).

Example:
    >>> import numpy as np
    >>> base = np.r_[np.ones(900), np.zeros(100)]
    >>> judge_accuracy(base.copy(), base, chance=0.25).verdict
    'lossless'
    >>> judge_accuracy(base, None, chance=0.25).verdict
    'baseline'
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantsweep.verdicts import chance as _chance
from quantsweep.verdicts import stats
from quantsweep.verdicts.config import VerdictConfig
from quantsweep.verdicts.rules import Comparison, Verdict, decide

logger = logging.getLogger(__name__)

_BASELINE_NONFINITE = "the baseline has non-finite per-document values, so it could not be paired"

# Power at which "documents needed" is computed for an inconclusive cell.
_DECIDING_POWER = 0.8


# ---------------------------------------------------------------- shared checks


def _config(config: VerdictConfig | None) -> VerdictConfig:
    if config is None:
        return VerdictConfig()
    if not isinstance(config, VerdictConfig):
        raise TypeError(f"config must be a VerdictConfig, got {type(config).__name__}")
    return config


def _nonfinite_count(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"nonfinite_samples must be a non-negative integer, got {value!r}")
    return int(value)


def _metric_is_nonfinite(metric_value) -> bool:
    return metric_value is not None and not math.isfinite(float(metric_value))


def _per_document(name: str, values) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a 1-D sequence of numbers, one per document: {error}") from None
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array with one value per document, got shape {array.shape}")
    return array


def _check_paired(name_q: str, q: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if q.shape != b.shape:
        raise ValueError(
            f"{name_q} and {name_b} must be paired by document (same documents, same order); "
            f"got {q.size} and {b.size} documents"
        )


def _check_binary(name: str, array: np.ndarray) -> None:
    finite = array[np.isfinite(array)]
    bad = finite[(finite != 0.0) & (finite != 1.0)]
    if bad.size:
        raise ValueError(f"{name} must hold per-document correctness 0 or 1, found {bad[:3].tolist()}")


def _nonfinite_verdict(chance: float, nonfinite: int, n: int, metric_value=None) -> Verdict:
    if nonfinite > 0:
        reason = f"{nonfinite} of {n} documents had NaN or Inf log-likelihoods, logits or scores"
    else:
        reason = f"the reported metric is {metric_value}"
    return Verdict("non-finite", chance=chance, nonfinite_samples=nonfinite, n=n, reason=reason)


def _plain(value: float) -> str:
    return f"{value:.3g}"


def _cluster_labels(clusters, n: int) -> list | None:
    """The documents' cluster labels when there are at least two clusters, else None."""
    if clusters is None:
        return None
    labels = list(clusters)
    if len(labels) != n:
        raise ValueError(f"clusters must hold one label per document: {len(labels)} labels for {n} documents")
    return labels if len(set(labels)) >= 2 else None


def _with_documents_needed(verdict: Verdict, needed: float | None) -> Verdict:
    """Add the documents an inconclusive cell would need (80% power) to its fields and its reason."""
    if needed is None or not math.isfinite(needed):
        return verdict
    needed = max(int(math.ceil(needed)), verdict.n + 1)
    reason = f"{verdict.reason}; about {needed:,} documents would decide"
    return dataclasses.replace(verdict, documents_needed=needed, reason=reason)


def _retention_samples(margin_q: np.ndarray, margin_b: np.ndarray) -> np.ndarray:
    """Resampled retention; +inf where the resampled baseline margin is not positive (undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(margin_b > 0, margin_q / np.where(margin_b > 0, margin_b, 1.0), np.inf)


def _retention_collapse(baseline_margin: float, retained_samples: np.ndarray, config: VerdictConfig) -> str | None:
    """Retention rule from bootstrap samples of retention: the reason when collapsed, else None."""
    if not baseline_margin > 0:
        return None
    upper = stats.percentile_interval(retained_samples, config.ci_level)[1]
    if upper <= config.collapse_retention:
        return f"retention CI upper {upper:.2f} <= {config.collapse_retention:g}"
    return None


def _needed_from_interval(n, ci_low, ci_high, tolerance, config: VerdictConfig) -> float | None:
    """Documents that would decide a bootstrap or clustered comparison (None when the interval is undefined)."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return None
    return stats.documents_needed_from_interval(
        n, ci_low, ci_high, tolerance, config.ci_level, config.alpha, _DECIDING_POWER
    )


# ---------------------------------------------------------------- the skeleton


@dataclass(frozen=True)
class _Paired:
    """A metric kind's paired comparison with the baseline: what the skeleton needs to decide."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    retained: float
    interval: str
    comparison: Comparison
    collapse: Callable[[], str | None]  # the collapse rule: its reason, or None
    documents_needed: Callable[[], float | None]  # for an inconclusive cell


def _judge(
    kind,
    quantized,
    baseline,
    nonfinite_samples: int,
    config: VerdictConfig,
    is_baseline: bool,
    metric_value: float | None,
    noise_floor: float = 0.0,
) -> Verdict:
    """The verdict of one metric, whatever its kind: the steps of the module docstring, written once.

    ``kind`` is a strategy (:class:`_Accuracy`, :class:`_Perplexity`, :class:`_Scores`):
    ``chance`` (the verdict's chance field), ``read(quantized)`` and
    ``read_baseline(baseline, q)`` (checked arrays, the per-document values first),
    ``baseline_row(q, n)`` and ``compare(q, b, n)``.
    """
    q = kind.read(quantized)
    n = int(q[0].size)
    nonfinite = max(_nonfinite_count(nonfinite_samples), int(np.sum(~np.isfinite(q[0]))))
    if nonfinite > 0 or _metric_is_nonfinite(metric_value):
        return _nonfinite_verdict(kind.chance, nonfinite, n, metric_value)
    if baseline is None or bool(is_baseline):
        return kind.baseline_row(q, n)
    b = kind.read_baseline(baseline, q)
    if not np.isfinite(b[0]).all():
        logger.warning("baseline has non-finite per-document %s; judging against chance alone", kind.values_name)
        return _against_chance(kind, q, n, config)
    paired = kind.compare(q, b, n)
    verdict, reason = decide(paired.comparison, config, paired.collapse, noise_floor=noise_floor)
    needed = paired.documents_needed() if verdict == "inconclusive" else None
    return _with_documents_needed(
        Verdict(
            verdict,
            kind.chance,
            0,
            paired.delta,
            paired.ci_low,
            paired.ci_high,
            paired.p_value,
            paired.retained,
            n,
            reason,
            paired.interval,
        ),
        needed,
    )


def _against_chance(kind, q, n: int, config: VerdictConfig) -> Verdict:
    """The verdict of a cell whose baseline cannot be paired: chance needs no baseline.

    Below ``min_samples`` documents it is ``inconclusive``, as any cell. Otherwise
    ``kind.margin_interval(q)`` gives the cell's margin above chance (its estimate and
    ``ci_level`` interval, in the metric's own units, higher is better) and the room a
    perfect model would have. The cell is ``collapsed`` when the interval holds 0 (not
    significantly above chance) and its upper end is at most ``collapse_retention`` of
    that room (the data rule out anything but near-chance); otherwise it is
    ``inconclusive``, since there is no baseline to measure a drop from. ``delta``,
    ``ci_low`` and ``ci_high`` stay NaN (they are recipe minus baseline); the margin and its
    interval are written in the reason (4 significant digits).
    """
    if n < config.min_samples:
        reason = f"{_BASELINE_NONFINITE}, and n = {n} < min_samples = {config.min_samples} is too few to judge against chance"
        return Verdict("inconclusive", chance=kind.chance, n=n, reason=reason)
    measured = kind.margin_interval(q) if not math.isnan(kind.chance) else None
    if measured is None:
        return Verdict(
            "inconclusive",
            chance=kind.chance,
            n=n,
            reason=f"{_BASELINE_NONFINITE}, and chance alone cannot settle this metric (no chance level or best score)",
        )
    margin, low, high, room, interval = measured
    ceiling = config.collapse_retention * room
    # the margin is not a recipe-minus-baseline difference: it lives in the reason, never in delta / ci_*
    words = f"margin above chance {margin:.4g} ({config.ci_level:.0%} CI {low:.4g} to {high:.4g})"
    if low <= 0 and high <= ceiling:
        verdict = "collapsed"
        reason = (
            f"at chance {kind.chance:.3g}: {words}, at most {config.collapse_retention:g} of a perfect "
            f"model's margin {room:.3g}; {_BASELINE_NONFINITE}, so it was judged against chance alone"
        )
    else:
        verdict = "inconclusive"
        reason = f"{_BASELINE_NONFINITE}; against chance alone: {words}, which does not settle it"
    return Verdict(verdict, chance=kind.chance, n=n, reason=reason, interval=interval)


# ---------------------------------------------------------------- accuracy


def _accuracy_collapsed(k: int, n: int, chance: float, k_base: int, config: VerdictConfig) -> str | None:
    """Binomial rule (with power) or confident retention rule; see the rules' module docstring, rule 4.

    Returns the reason in words when the cell is collapsed, else None.
    """
    margin = k_base / n - chance
    if not margin > 0:
        return None
    threshold_accuracy = chance + config.collapse_retention * margin
    p_chance = stats.binomial_test_above_chance(k, n, chance)
    power = stats.binomial_power(n, chance, threshold_accuracy, config.alpha)
    binomial_rule = p_chance > config.alpha and power >= config.collapse_power
    # Upper bound of retention: most optimistic quantized accuracy over the most pessimistic
    # baseline margin, so both models' sampling noise is covered at once.
    _, high_q = stats.clopper_pearson_interval(k, n, config.ci_level)
    low_b, _ = stats.clopper_pearson_interval(k_base, n, config.ci_level)
    retained_high = (high_q - chance) / (low_b - chance) if low_b > chance else math.inf
    retention_rule = retained_high <= config.collapse_retention
    logger.debug(
        "collapse check: p_chance=%.3g power=%.3g (vs acc %.4f) retained_high=%.3f -> binomial=%s retention=%s",
        p_chance,
        power,
        threshold_accuracy,
        retained_high,
        binomial_rule,
        retention_rule,
    )
    if retention_rule:
        return f"retention CI upper {retained_high:.2f} <= {config.collapse_retention:g}"
    if binomial_rule:
        return (
            f"not above chance {chance:.3g}: binomial p = {p_chance:.2g} > alpha = {config.alpha:g}, "
            f"with power {power:.2f} >= {config.collapse_power:g}"
        )
    return None


@dataclass(frozen=True)
class _Accuracy:
    """Strategy for per-document 0/1 correctness."""

    chance: float
    clusters: Any
    config: VerdictConfig
    values_name: str = "values"

    def read(self, quantized) -> tuple[np.ndarray]:
        q = _per_document("quantized", quantized)
        _check_binary("quantized", q)
        return (q,)

    def read_baseline(self, baseline, q) -> tuple[np.ndarray]:
        b = _per_document("baseline", baseline)
        _check_paired("quantized", q[0], "baseline", b)
        _check_binary("baseline", b)
        return (b,)

    def margin_interval(self, q) -> tuple[float, float, float, float, str]:
        k, n = int(q[0].sum()), int(q[0].size)
        low, high = stats.clopper_pearson_interval(k, n, self.config.ci_level)
        return k / n - self.chance, low - self.chance, high - self.chance, 1.0 - self.chance, "clopper-pearson"

    def baseline_row(self, q, n: int) -> Verdict:
        k = int(q[0].sum())
        accuracy, chance = k / n, self.chance
        low, high = stats.clopper_pearson_interval(k, n, self.config.ci_level)
        return Verdict(
            "baseline",
            chance=chance,
            nonfinite_samples=0,
            delta=accuracy - chance,
            ci_low=low - chance,
            ci_high=high - chance,
            p_value=stats.binomial_test_above_chance(k, n, chance),
            retained=1.0 if accuracy > chance else math.nan,
            n=n,
            reason=f"the reference model: accuracy {accuracy:.3g} against chance {chance:.3g}",
            interval="clopper-pearson",
        )

    def compare(self, q, b, n: int) -> _Paired:
        (q,), (b,), config, chance = q, b, self.config, self.chance
        k = int(q.sum())
        accuracy = k / n
        counts = stats.paired_counts(q, b)
        baseline_accuracy = float(b.mean())
        labels = _cluster_labels(self.clusters, n)
        if labels is not None:
            clustered = stats.cluster_robust_paired_difference(q, b, labels, config.ci_level)
            ci_low, ci_high, p_value = clustered.ci_low, clustered.ci_high, clustered.p_value
            interval, test = f"cluster-robust ({clustered.n_clusters} clusters)", "cluster-robust t test"
        else:
            ci_low, ci_high = stats.newcombe_paired_interval(counts, config.ci_level)
            p_value = stats.mcnemar_exact(counts.only_quantized, counts.only_baseline)
            interval, test = "newcombe", "McNemar"
            if self.clusters is not None:
                interval = "newcombe (one cluster only)"

        def documents_needed() -> float:
            discordance = (counts.only_quantized + counts.only_baseline) / n
            needed = stats.documents_needed_paired_proportions(
                discordance, config.accuracy_tolerance, config.alpha, _DECIDING_POWER
            )
            if labels is not None and not math.isnan(ci_low):
                # the clustered interval is wider than the independent one: scale by the design effect
                plain_low, plain_high = stats.newcombe_paired_interval(counts, config.ci_level)
                if plain_high > plain_low:
                    needed *= ((ci_high - ci_low) / (plain_high - plain_low)) ** 2
            return needed

        return _Paired(
            delta=accuracy - baseline_accuracy,
            ci_low=ci_low,
            ci_high=ci_high,
            p_value=p_value,
            retained=_chance.accuracy_retention(accuracy, baseline_accuracy, chance),
            interval=interval,
            comparison=Comparison(n, -ci_high, -ci_low, config.accuracy_tolerance, p_value, "drop", test),
            collapse=lambda: _accuracy_collapsed(k, n, chance, int(b.sum()), config),
            documents_needed=documents_needed,
        )


def judge_accuracy(
    quantized,
    baseline,
    chance: float,
    nonfinite_samples: int = 0,
    config: VerdictConfig | None = None,
    *,
    is_baseline: bool = False,
    metric_value: float | None = None,
    clusters=None,
    noise_floor: float = 0.0,
) -> Verdict:
    """Verdict for an accuracy task from per-document correctness, paired with the baseline.

    Args:
        quantized: per-document 0/1 correctness of the model being judged (NaN marks a
            non-finite document).
        baseline: the baseline's per-document 0/1 correctness on the same documents, in
            the same order; None when ``quantized`` is the baseline itself.
        chance: chance accuracy in [0, 1), e.g. from ``multiple_choice_chance``.
        nonfinite_samples: samples whose logits or log-likelihoods held NaN/Inf.
        config: thresholds; defaults to ``VerdictConfig()``.
        is_baseline: mark this row as the baseline even though ``baseline`` is given.
        metric_value: the aggregate metric as reported (e.g. by lm-eval); NaN/Inf makes
            the cell non-finite.
        clusters: one cluster label per document (e.g. its subject), or None. With two or
            more clusters the interval and p-value of the paired difference are
            cluster-robust (:func:`~quantsweep.verdicts.stats.cluster_robust_paired_difference`)
            instead of Newcombe's and McNemar's, and ``interval`` says so.

    Example:
        >>> base = np.r_[np.ones(900), np.zeros(100)]
        >>> worse = base.copy(); worse[:200] = 0
        >>> judge_accuracy(worse, base, chance=0.25).verdict
        'degraded'
    """
    config = _config(config)
    chance = float(chance)
    if not 0.0 <= chance < 1.0:
        raise ValueError(f"chance accuracy must be in [0, 1), got {chance}")
    kind = _Accuracy(chance, clusters, config)
    return _judge(kind, quantized, baseline, nonfinite_samples, config, is_baseline, metric_value, noise_floor)


# ---------------------------------------------------------------- perplexity


def _perplexity_arrays(name: str, nll, tokens) -> tuple[np.ndarray, np.ndarray]:
    nll_array = _per_document(f"{name}_nll", nll)
    token_array = _per_document(f"{name}_tokens", tokens)
    _check_paired(f"{name}_nll", nll_array, f"{name}_tokens", token_array)
    if not np.isfinite(token_array).all() or (token_array < 0).any() or not token_array.sum() > 0:
        raise ValueError(f"{name}_tokens must be finite, non-negative counts with a positive total")
    finite = nll_array[np.isfinite(nll_array)]
    if (finite < 0).any():
        raise ValueError(
            f"{name}_nll must be negative log-likelihoods in nats (>= 0); found {finite[finite < 0][:3].tolist()}. "
            "lm-eval reports log-likelihoods: negate them."
        )
    return nll_array, token_array


def _corpus_cross_entropy(nll: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return nll.sum(axis=-1) / tokens.sum(axis=-1)


@dataclass(frozen=True)
class _Perplexity:
    """Strategy for per-document summed NLL (nats) and token counts."""

    chance: float  # the chance perplexity
    chance_ce: float  # the chance cross-entropy, nats per counted unit
    config: VerdictConfig
    values_name: str = "NLL"

    def read(self, quantized) -> tuple[np.ndarray, np.ndarray]:
        return _perplexity_arrays("quantized", *quantized)

    def read_baseline(self, baseline, q) -> tuple[np.ndarray, np.ndarray]:
        baseline_nll, baseline_tokens = baseline
        if baseline_tokens is None:
            raise ValueError("baseline_tokens is required when baseline_nll is given")
        b = _perplexity_arrays("baseline", baseline_nll, baseline_tokens)
        _check_paired("quantized_nll", q[0], "baseline_nll", b[0])
        return b

    def margin_interval(self, q) -> tuple[float, float, float, float, str]:
        # Margin in nats per unit: chance cross-entropy minus the cell's; a perfect model has all of it.
        q_nll, q_tok = q
        samples = stats.bootstrap_distribution(
            lambda nll, tok: self.chance_ce - _corpus_cross_entropy(nll, tok),
            [q_nll, q_tok],
            self.config.bootstrap_resamples,
            self.config.seed,
        )
        low, high = stats.percentile_interval(samples, self.config.ci_level)
        margin = self.chance_ce - float(q_nll.sum() / q_tok.sum())
        return margin, low, high, self.chance_ce, "bootstrap (nats)"

    def baseline_row(self, q, n: int) -> Verdict:
        q_nll, q_tok = q
        ce_q = float(q_nll.sum() / q_tok.sum())
        samples = stats.bootstrap_distribution(
            lambda nll, tok: np.exp(np.minimum(_corpus_cross_entropy(nll, tok), 709.0)),
            [q_nll, q_tok],
            self.config.bootstrap_resamples,
            self.config.seed,
        )
        low, high = stats.percentile_interval(samples, self.config.ci_level)
        ppl, chance_ppl = _chance.perplexity(q_nll, q_tok), self.chance
        return Verdict(
            "baseline",
            chance_ppl,
            0,
            ppl - chance_ppl,
            low - chance_ppl,
            high - chance_ppl,
            math.nan,
            1.0 if ce_q < self.chance_ce else math.nan,
            n,
            f"the reference model: {ce_q:.3g} nats per token against chance {self.chance_ce:.3g}",
            "paired bootstrap",
        )

    def compare(self, q, b, n: int) -> _Paired:
        (q_nll, q_tok), (b_nll, b_tok), config, chance_ce = q, b, self.config, self.chance_ce
        ce_q = float(q_nll.sum() / q_tok.sum())
        ce_b = float(b_nll.sum() / b_tok.sum())

        def statistic(qn, qt, bn, bt):
            ce_qs, ce_bs = _corpus_cross_entropy(qn, qt), _corpus_cross_entropy(bn, bt)
            with np.errstate(over="ignore"):
                relative_change = np.expm1(ce_qs - ce_bs)
            retained = _retention_samples(chance_ce - ce_qs, chance_ce - ce_bs)
            return np.stack([relative_change, retained], axis=-1)

        samples = stats.bootstrap_distribution(
            statistic, [q_nll, q_tok, b_nll, b_tok], config.bootstrap_resamples, config.seed
        )
        with np.errstate(over="ignore"):
            delta = float(np.expm1(ce_q - ce_b))
        ci_low, ci_high = stats.percentile_interval(samples[:, 0], config.ci_level)
        p_value = stats.bootstrap_p_value(samples[:, 0])
        baseline_margin = chance_ce - ce_b
        tolerance = config.perplexity_relative_tolerance
        return _Paired(
            delta=delta,
            ci_low=ci_low,
            ci_high=ci_high,
            p_value=p_value,
            retained=(chance_ce - ce_q) / baseline_margin if baseline_margin > 0 else math.nan,
            interval="paired bootstrap",
            comparison=Comparison(n, ci_low, ci_high, tolerance, p_value, "perplexity increase", "bootstrap"),
            collapse=lambda: _retention_collapse(baseline_margin, samples[:, 1], config),
            documents_needed=lambda: _needed_from_interval(n, ci_low, ci_high, tolerance, config),
        )


def judge_perplexity(
    quantized_nll,
    quantized_tokens,
    baseline_nll,
    baseline_tokens,
    vocab_size: int,
    nonfinite_samples: int = 0,
    config: VerdictConfig | None = None,
    *,
    is_baseline: bool = False,
    metric_value: float | None = None,
    chance_cross_entropy: float | None = None,
    noise_floor: float = 0.0,
) -> Verdict:
    """Verdict for a perplexity task from per-document summed NLL and token counts.

    The corpus perplexity ``exp(sum NLL / sum tokens)`` is recomputed in every paired
    bootstrap resample; ``delta`` is the relative change ``ppl_q / ppl_base - 1``.
    Collapse uses the retention rule only (rules' module docstring, rule 4).

    Args:
        quantized_nll, baseline_nll: per-document summed negative log-likelihood, nats
            (``baseline_nll`` None for the baseline row).
        quantized_tokens, baseline_tokens: per-document token counts the NLL is summed over.
        vocab_size: vocabulary size V; chance cross-entropy is log V nats per token.
        nonfinite_samples: documents whose log-likelihoods held NaN/Inf.
        config: thresholds; defaults to ``VerdictConfig()``.
        is_baseline: mark this row as the baseline even though a baseline is given.
        metric_value: the perplexity as reported; NaN/Inf makes the cell non-finite.
        chance_cross_entropy: chance level per counted unit when the counts are not tokens
            (e.g. words: ``log V * total_tokens / total_words``); default ``log V``.

    Example:
        >>> nll, tokens = np.full(50, 200.0), np.full(50, 100)
        >>> judge_perplexity(nll, tokens, nll.copy(), tokens, vocab_size=1000).verdict
        'lossless'
    """
    config = _config(config)
    chance_ce = (
        _chance.chance_cross_entropy(vocab_size) if chance_cross_entropy is None else float(chance_cross_entropy)
    )
    if not (math.isfinite(chance_ce) and chance_ce > 0):
        raise ValueError(f"chance_cross_entropy must be a positive number of nats, got {chance_cross_entropy}")
    # Chance perplexity V exactly for token counts (exp(log V) would round).
    chance_ppl = float(vocab_size) if chance_cross_entropy is None else math.exp(chance_ce)
    kind = _Perplexity(chance_ppl, chance_ce, config)
    baseline = None if baseline_nll is None else (baseline_nll, baseline_tokens)
    return _judge(
        kind,
        (quantized_nll, quantized_tokens),
        baseline,
        nonfinite_samples,
        config,
        is_baseline,
        metric_value,
        noise_floor,
    )


# ---------------------------------------------------------------- other per-document scores


@dataclass(frozen=True)
class _Scores:
    """Strategy for any other per-document score, judged by its mean."""

    chance: float  # NaN when the metric has no chance level
    has_chance: bool
    higher_is_better: bool
    tolerance: float
    show: Callable[[float], str]
    clusters: Any
    config: VerdictConfig
    values_name: str = "scores"

    @property
    def sign(self) -> float:
        return 1.0 if self.higher_is_better else -1.0

    def read(self, quantized) -> tuple[np.ndarray]:
        return (_per_document("quantized_scores", quantized),)

    def read_baseline(self, baseline, q) -> tuple[np.ndarray]:
        b = _per_document("baseline_scores", baseline)
        _check_paired("quantized_scores", q[0], "baseline_scores", b)
        return (b,)

    def margin_interval(self, q) -> tuple[float, float, float, float, str] | None:
        (q,), chance_value, sign = q, self.chance, self.sign
        if not (0.0 <= chance_value <= 1.0 and ((q >= 0) & (q <= 1)).all()):
            return None  # no known best score: room above chance is undefined
        result = stats.paired_bootstrap(
            lambda x: sign * (x.mean(axis=-1) - chance_value),
            q,
            resamples=self.config.bootstrap_resamples,
            seed=self.config.seed,
            level=self.config.ci_level,
        )
        room = 1.0 - chance_value if self.higher_is_better else chance_value
        return result.estimate, result.ci_low, result.ci_high, room, "bootstrap"

    def baseline_row(self, q, n: int) -> Verdict:
        if not self.has_chance:
            return Verdict("baseline", n=n, reason="the reference model (no chance level for this metric)")
        (q,), chance_value = q, self.chance
        mean_q = float(q.mean())
        result = stats.paired_bootstrap(
            lambda x: x.mean(axis=-1) - chance_value,
            q,
            resamples=self.config.bootstrap_resamples,
            seed=self.config.seed,
            level=self.config.ci_level,
        )
        above = self.sign * (mean_q - chance_value) > 0
        return Verdict(
            "baseline",
            chance_value,
            0,
            result.estimate,
            result.ci_low,
            result.ci_high,
            math.nan,
            1.0 if above else math.nan,
            n,
            f"the reference model: mean score {mean_q:.3g} against chance {chance_value:.3g}",
            "paired bootstrap",
        )

    def compare(self, q, b, n: int) -> _Paired:
        (q,), (b,), config, chance_value, sign = q, b, self.config, self.chance, self.sign
        has_chance, tolerance = self.has_chance, self.tolerance
        mean_q, mean_b = float(q.mean()), float(b.mean())

        def statistic(qs, bs):
            mq, mb = qs.mean(axis=-1), bs.mean(axis=-1)
            if not has_chance:
                retained = np.full_like(mq, np.inf)
            else:
                retained = _retention_samples(sign * (mq - chance_value), sign * (mb - chance_value))
            return np.stack([mq - mb, retained], axis=-1)

        samples = stats.bootstrap_distribution(statistic, [q, b], config.bootstrap_resamples, config.seed)
        ci_low, ci_high = stats.percentile_interval(samples[:, 0], config.ci_level)
        p_value = stats.bootstrap_p_value(samples[:, 0])
        interval, test = "paired bootstrap", "bootstrap"
        labels = _cluster_labels(self.clusters, n)
        if labels is not None:
            clustered = stats.cluster_robust_paired_difference(q, b, labels, config.ci_level)
            ci_low, ci_high, p_value = clustered.ci_low, clustered.ci_high, clustered.p_value
            interval, test = f"cluster-robust ({clustered.n_clusters} clusters)", "cluster-robust t test"
        baseline_margin = sign * (mean_b - chance_value) if has_chance else math.nan
        # Drop = change for the worse: -delta when higher is better, +delta otherwise.
        drop_high = -ci_low if self.higher_is_better else ci_high
        drop_low = -ci_high if self.higher_is_better else ci_low
        return _Paired(
            delta=mean_q - mean_b,
            ci_low=ci_low,
            ci_high=ci_high,
            p_value=p_value,
            retained=sign * (mean_q - chance_value) / baseline_margin if baseline_margin > 0 else math.nan,
            interval=interval,
            comparison=Comparison(n, drop_low, drop_high, tolerance, p_value, "drop", test, self.show),
            collapse=lambda: _retention_collapse(baseline_margin, samples[:, 1], config),
            documents_needed=lambda: (
                _needed_from_interval(n, ci_low, ci_high, tolerance, config) if tolerance > 0 else None
            ),
        )


def judge_scores(
    quantized_scores,
    baseline_scores,
    higher_is_better: bool = True,
    chance: float | None = None,
    nonfinite_samples: int = 0,
    config: VerdictConfig | None = None,
    *,
    is_baseline: bool = False,
    metric_value: float | None = None,
    tolerance: float | None = None,
    show=None,
    clusters=None,
    noise_floor: float = 0.0,
) -> Verdict:
    """Verdict for any per-document score (exact match, F1, ...) by paired bootstrap of the mean.

    Args:
        quantized_scores: per-document scores of the model being judged.
        baseline_scores: the baseline's scores on the same documents; None for the baseline row.
        higher_is_better: direction of the metric; a "drop" is a change for the worse.
        chance: chance level in the score's units (e.g. 0 for exact match); None skips the
            collapse check.
        nonfinite_samples: samples whose logits or log-likelihoods held NaN/Inf.
        config: thresholds; defaults to ``VerdictConfig()``.
        is_baseline: mark this row as the baseline even though a baseline is given.
        metric_value: the aggregate metric as reported; NaN/Inf makes the cell non-finite.
        tolerance: largest drop still lossless, in the score's units; default
            ``config.accuracy_tolerance``.
        show: formats a drop in the score's units for the verdict's ``reason``
            (default: 3 significant digits).
        clusters: one cluster label per document, or None; with two or more clusters the
            interval and p-value of the difference are cluster-robust, as in :func:`judge_accuracy`.

    Example:
        >>> s = np.r_[np.full(60, 0.8), np.full(40, 0.2)]
        >>> judge_scores(s, s.copy(), chance=0.0).verdict
        'lossless'
    """
    config = _config(config)
    tolerance = config.accuracy_tolerance if tolerance is None else float(tolerance)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a non-negative number, got {tolerance}")
    if chance is not None and not math.isfinite(float(chance)):
        raise ValueError(f"chance must be a finite number or None, got {chance}")
    chance_value = math.nan if chance is None else float(chance)
    kind = _Scores(chance_value, chance is not None, higher_is_better, tolerance, show or _plain, clusters, config)
    return _judge(
        kind, quantized_scores, baseline_scores, nonfinite_samples, config, is_baseline, metric_value, noise_floor
    )
