"""Statistical tests and confidence intervals behind quantsweep's verdicts.

Pure numpy/scipy: no torch, no lm-eval. Every function takes plain counts or
arrays, so it can be checked against scipy and against hand computation.

What is here, in plain words:

- :func:`binomial_test_above_chance` -- is an accuracy of ``k`` out of ``n`` higher
  than guessing would give? One-sided exact binomial test.
- :func:`binomial_power` -- if the true accuracy were ``p1``, how likely is that test
  to notice it? Used to refuse a "collapsed" verdict when the test could not have
  told collapse from a working model.
- :func:`clopper_pearson_interval`, :func:`wilson_interval` -- confidence intervals
  for one accuracy.
- :func:`paired_counts`, :func:`mcnemar_exact` -- the same documents scored by two
  models; did one get more right than the other? Exact McNemar test.
- :func:`newcombe_paired_interval` -- confidence interval for the difference of two
  paired accuracies (Newcombe 1998, method 10, "square-and-add" with Wilson limits).
- :func:`paired_bootstrap` -- confidence interval and p-value for any statistic of
  paired per-document data, by resampling documents with replacement.

Example:
    >>> round(binomial_test_above_chance(30, 40, 0.25), 12) < 1e-6
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

# Upper bound on the number of int64 indices drawn at once by the bootstrap
# (4 M indices = 32 MiB); resamples are processed in row chunks of this size.
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer count, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _check_probability(name: str, value: float, *, open_upper: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0.0 or value > 1.0 or (open_upper and value == 1.0):
        bound = "[0, 1)" if open_upper else "[0, 1]"
        raise ValueError(f"{name} must be a probability in {bound}, got {value}")
    return value


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), e.g. 0.95; got {level}")
    return level


def binomial_test_above_chance(k: int, n: int, chance: float) -> float:
    """One-sided exact binomial p-value that an accuracy of ``k``/``n`` beats ``chance``.

    In plain words: if the model were guessing (each answer right with probability
    ``chance``), how often would it get ``k`` or more right out of ``n``? A small value
    means the score is hard to explain by guessing. Identical to
    ``scipy.stats.binomtest(k, n, p=chance, alternative="greater").pvalue``.

    Args:
        k: number of correct answers.
        n: number of questions (n >= 1).
        chance: probability of a correct guess, in [0, 1).

    Example:
        >>> binomial_test_above_chance(5, 5, 0.5)
        0.03125
    """
    k, n = _check_count("k", k), _check_count("n", n)
    if n == 0 or k > n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    chance = _check_probability("chance", chance, open_upper=True)
    return float(_scipy_stats.binomtest(k, n, p=chance, alternative="greater").pvalue)


def binomial_critical_count(n: int, chance: float, alpha: float) -> int | None:
    """Smallest number correct out of ``n`` that the one-sided test calls above chance.

    Returns None when no score can reach significance, not even ``n`` out of ``n``
    (this happens when ``chance ** n > alpha``, e.g. n=4 at chance 0.5): then the
    test has no power at all and a non-significant result says nothing.

    Example:
        >>> binomial_critical_count(5, 0.25, 0.05)
        4
        >>> binomial_critical_count(4, 0.5, 0.05) is None
        True
    """
    n = _check_count("n", n)
    chance = _check_probability("chance", chance, open_upper=True)
    alpha = _check_probability("alpha", alpha)
    if n == 0:
        return None
    # sf(k - 1) = P(X >= k) falls as k grows; find the first k where it is <= alpha.
    tails = _scipy_stats.binom.sf(np.arange(n + 1) - 1, n, chance)
    hits = np.nonzero(tails <= alpha)[0]
    return int(hits[0]) if hits.size else None


def binomial_power(n: int, chance: float, true_accuracy: float, alpha: float) -> float:
    """Probability that the one-sided binomial test rejects chance when the truth is ``true_accuracy``.

    In plain words: if the model really answered right with probability
    ``true_accuracy``, how often would ``n`` questions be enough to show it beats
    guessing at level ``alpha``? Zero when no score can be significant.

    Example:
        >>> round(binomial_power(5, 0.25, 1.0, 0.05), 6)
        1.0
        >>> binomial_power(4, 0.5, 1.0, 0.05)
        0.0
    """
    true_accuracy = _check_probability("true_accuracy", true_accuracy)
    critical = binomial_critical_count(n, chance, alpha)
    if critical is None:
        return 0.0
    return float(_scipy_stats.binom.sf(critical - 1, n, true_accuracy))


def clopper_pearson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided confidence interval for an accuracy ``k``/``n``.

    Conservative: it covers the true accuracy at least ``level`` of the time for
    every n, which is why quantsweep uses it before declaring collapse.
    It is ``scipy.stats.binomtest(k, n).proportion_ci(level, method="exact")``, with input checks.

    Example:
        >>> lo, hi = clopper_pearson_interval(0, 5)
        >>> lo, round(hi, 4)
        (0.0, 0.5218)
    """
    k, n = _check_count("k", k), _check_count("n", n)
    if n == 0 or k > n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = _scipy_stats.binomtest(k, n).proportion_ci(_check_level(level), method="exact")
    return float(ci.low), float(ci.high)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score two-sided confidence interval for an accuracy ``k``/``n``.

    It is ``scipy.stats.binomtest(k, n).proportion_ci(level, method="wilson")``, with input checks.

    Example:
        >>> [round(x, 4) for x in wilson_interval(5, 5)]
        [0.5655, 1.0]
    """
    k, n = _check_count("k", k), _check_count("n", n)
    if n == 0 or k > n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = _scipy_stats.binomtest(k, n).proportion_ci(_check_level(level), method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class PairedCounts:
    """The 2x2 table of two models scored on the same documents.

    Attributes:
        both_correct: documents both models got right.
        only_quantized: right for the quantized model, wrong for the baseline (McNemar's b).
        only_baseline: right for the baseline, wrong for the quantized model (McNemar's c).
        both_wrong: documents both got wrong.

    Example:
        >>> PairedCounts(8, 1, 3, 2).n
        14
    """

    both_correct: int
    only_quantized: int
    only_baseline: int
    both_wrong: int

    @property
    def n(self) -> int:
        return self.both_correct + self.only_quantized + self.only_baseline + self.both_wrong


def _binary_array(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-document 0/1 scores, got shape {array.shape}")
    if not np.isin(array, (0.0, 1.0)).all():
        bad = array[~np.isin(array, (0.0, 1.0))][:3].tolist()
        raise ValueError(f"{name} must contain only 0 and 1 (per-document correctness), found {bad}")
    return array.astype(bool)


def paired_counts(quantized, baseline) -> PairedCounts:
    """Cross-tabulate per-document correctness (0/1) of two models on the same documents.

    Example:
        >>> paired_counts([1, 1, 0, 0], [1, 0, 1, 1])
        PairedCounts(both_correct=1, only_quantized=1, only_baseline=2, both_wrong=0)
    """
    q, b = _binary_array("quantized", quantized), _binary_array("baseline", baseline)
    if q.shape != b.shape:
        raise ValueError(f"paired arrays must have the same length, got {q.size} and {b.size}")
    return PairedCounts(
        both_correct=int(np.sum(q & b)),
        only_quantized=int(np.sum(q & ~b)),
        only_baseline=int(np.sum(~q & b)),
        both_wrong=int(np.sum(~q & ~b)),
    )


def mcnemar_exact(only_quantized: int, only_baseline: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs.

    In plain words: look only at documents where the two models disagree. If
    quantization changed nothing, each disagreement is equally likely to favour
    either model, so the number favouring the quantized model is
    Binomial(b + c, 1/2). The p-value is twice the smaller tail, capped at 1;
    with no disagreements at all it is 1.

    Example:
        >>> mcnemar_exact(0, 5)
        0.0625
    """
    b, c = _check_count("only_quantized", only_quantized), _check_count("only_baseline", only_baseline)
    m = b + c
    if m == 0:
        return 1.0
    return float(_scipy_stats.binomtest(b, m, 0.5).pvalue)


def newcombe_paired_interval(counts: PairedCounts, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval for ``acc_quantized - acc_baseline`` on paired documents.

    Newcombe (1998), method 10: take a Wilson interval for each accuracy, then
    combine the distances from each estimate to its limits by "square and add",
    allowing for the correlation ``phi`` between the two models' answers. Unlike
    the Wald interval it stays sensible at accuracies near 0 or 1 and with few
    disagreements. ``phi`` uses Newcombe's continuity adjustment
    (``ad - bc`` reduced by ``n/2`` when positive, 0 when between 0 and ``n/2``).

    Example:
        >>> lo, hi = newcombe_paired_interval(PairedCounts(59, 6, 16, 80))
        >>> round(lo, 4), round(hi, 4)
        (-0.1186, -0.0046)
    """
    level = _check_level(level)
    n = counts.n
    if n == 0:
        raise ValueError("newcombe_paired_interval needs at least one document")
    a, b, c, d = counts.both_correct, counts.only_quantized, counts.only_baseline, counts.both_wrong
    k_q, k_b = a + b, a + c
    p_q, p_b = k_q / n, k_b / n
    low_q, high_q = wilson_interval(k_q, n, level)
    low_b, high_b = wilson_interval(k_b, n, level)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    else:
        phi = cross / math.sqrt(margins)
    dq_low, dq_high = p_q - low_q, high_q - p_q
    db_low, db_high = p_b - low_b, high_b - p_b
    delta = p_q - p_b
    # max(0, .) guards a tiny negative under the root from rounding when phi ~ 1.
    lower = delta - math.sqrt(max(0.0, dq_low**2 - 2 * phi * dq_low * db_high + db_high**2))
    upper = delta + math.sqrt(max(0.0, dq_high**2 - 2 * phi * dq_high * db_low + db_low**2))
    return max(-1.0, lower), min(1.0, upper)


@dataclass(frozen=True)
class BootstrapResult:
    """Outcome of a paired bootstrap.

    Attributes:
        estimate: the statistic on the original data.
        ci_low, ci_high: percentile confidence interval.
        p_value: two-sided bootstrap p-value against ``null`` (see :func:`bootstrap_p_value`).
        resamples: the resampled statistics, shape (resamples,).

    Example:
        >>> r = paired_bootstrap(lambda x: x.mean(axis=-1), [1.0, 2.0, 3.0], resamples=200, seed=0)
        >>> r.estimate
        2.0
    """

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    resamples: np.ndarray


def bootstrap_distribution(
    statistic: Callable[..., np.ndarray],
    arrays: Sequence[np.ndarray],
    resamples: int,
    seed: int,
) -> np.ndarray:
    """Resampled values of ``statistic``, resampling documents (rows) with replacement.

    All ``arrays`` are indexed by the same document indices in every resample,
    which is what keeps the comparison paired. ``statistic(*resampled)`` receives
    arrays of shape ``(m, n)`` (m resamples of n documents) and must return shape
    ``(m,)`` or ``(m, k)`` for k statistics at once. Deterministic given ``seed``.

    Example:
        >>> d = bootstrap_distribution(lambda x: x.mean(axis=-1), [np.arange(4.0)], 5, seed=1)
        >>> d.shape
        (5,)
    """
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    if not arrays:
        raise ValueError("bootstrap_distribution needs at least one array")
    n = arrays[0].shape[0]
    if n == 0 or any(a.ndim != 1 or a.shape[0] != n for a in arrays):
        raise ValueError(f"paired arrays must be non-empty, 1-D and of equal length, got {[a.shape for a in arrays]}")
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    chunks = []
    for start in range(0, resamples, rows_per_chunk):
        rows = min(rows_per_chunk, resamples - start)
        index = rng.integers(0, n, size=(rows, n))
        chunks.append(np.asarray(statistic(*(a[index] for a in arrays)), dtype=float))
    return np.concatenate(chunks, axis=0)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided percentile interval of bootstrap samples (NaN samples are an error).

    Example:
        >>> percentile_interval(np.arange(101.0), 0.5)
        (25.0, 75.0)
    """
    tail = (1.0 - _check_level(level)) / 2.0
    samples = np.asarray(samples, dtype=float)
    if np.isnan(samples).any():
        raise ValueError("bootstrap samples contain NaN; the statistic is undefined on some resamples")
    # Interpolating between two infinite samples (e.g. an overflowed perplexity ratio)
    # computes inf - inf; the limit is then NaN, which the verdict rules treat as unknown.
    with np.errstate(invalid="ignore"):
        low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_p_value(samples: np.ndarray, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value of "the statistic equals ``null``".

    In plain words: the share of resampled statistics on the far side of ``null``,
    doubled (the smallest two-sided level at which the percentile interval would
    exclude ``null``), with the usual +1 correction so it is never exactly 0:
    ``min(1, 2 * min(1 + #{s <= null}, 1 + #{s >= null}) / (B + 1))``.

    Example:
        >>> bootstrap_p_value(np.zeros(100))
        1.0
        >>> round(bootstrap_p_value(np.arange(1.0, 100.0)), 4)
        0.02
    """
    samples = np.asarray(samples, dtype=float)
    total = samples.size + 1
    below = (1 + np.sum(samples <= null)) / total
    above = (1 + np.sum(samples >= null)) / total
    return float(min(1.0, 2.0 * min(below, above)))


def paired_bootstrap(
    statistic: Callable[..., np.ndarray],
    *arrays,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    null: float = 0.0,
) -> BootstrapResult:
    """Paired bootstrap over documents: estimate, percentile CI and p-value of ``statistic``.

    ``statistic(*arrays)`` works on arrays of shape ``(m, n)`` along the last axis and
    returns shape ``(m,)``; for the estimate it is called once on the original
    data (m = 1). Use it for the difference of any per-document metric between
    the quantized model and the baseline.

    Example:
        >>> q, b = np.array([0.5, 0.7, 0.9]), np.array([0.5, 0.7, 0.9])
        >>> r = paired_bootstrap(lambda x, y: (x - y).mean(axis=-1), q, b, resamples=100, seed=0)
        >>> (r.ci_low, r.ci_high, r.p_value)
        (0.0, 0.0, 1.0)
    """
    columns = [np.asarray(a, dtype=float) for a in arrays]
    estimate = float(np.asarray(statistic(*(a[None, :] for a in columns)), dtype=float).reshape(-1)[0])
    samples = bootstrap_distribution(statistic, columns, resamples, seed)
    low, high = percentile_interval(samples, level)
    return BootstrapResult(estimate, low, high, bootstrap_p_value(samples, null), samples)


@dataclass(frozen=True)
class ClusteredDifference:
    """Cluster-robust paired difference of two models' per-document scores.

    Attributes:
        estimate: mean over documents of ``quantized - baseline``.
        standard_error: cluster-robust (CR1) standard error of that mean.
        ci_low, ci_high: two-sided interval, Student t with ``n_clusters - 1`` degrees of freedom.
        p_value: two-sided t test of "no difference", same degrees of freedom.
        n_clusters: number of distinct clusters.

    Example:
        >>> r = cluster_robust_paired_difference([1, 0, 1, 1], [1, 1, 1, 1], ["a", "a", "b", "b"])
        >>> r.estimate, r.n_clusters
        (-0.25, 2)
    """

    estimate: float
    standard_error: float
    ci_low: float
    ci_high: float
    p_value: float
    n_clusters: int


def cluster_robust_paired_difference(quantized, baseline, clusters, level: float = 0.95) -> ClusteredDifference:
    """Mean paired difference with a standard error that allows for correlation within clusters.

    In plain words: documents of one subject (an MMLU subject, say) are not independent,
    so the usual standard error, which counts every document as new evidence, is too small.
    Following Miller (2024), "Adding Error Bars to Evals", the per-document differences
    ``d_i = quantized_i - baseline_i`` are summed within each cluster and the variance is
    taken over the cluster sums:
    ``SE^2 = G / (G - 1) * sum_g (sum_{i in g} (d_i - mean d))^2 / n^2`` (the CR1 estimator,
    what ``statsmodels`` OLS of ``d`` on a constant gives with ``cov_type="cluster"``).
    The interval and the p-value use Student t with ``G - 1`` degrees of freedom.

    Args:
        quantized, baseline: per-document scores on the same documents, in the same order.
        clusters: one label per document (any hashable); at least two distinct labels.
        level: two-sided confidence level.

    Example:
        >>> r = cluster_robust_paired_difference([0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1])
        >>> round(r.standard_error, 4)
        0.5
    """
    level = _check_level(level)
    q, b = np.asarray(quantized, dtype=float), np.asarray(baseline, dtype=float)
    labels = np.asarray(list(clusters), dtype=object)
    if q.ndim != 1 or q.shape != b.shape or labels.shape != q.shape or q.size == 0:
        raise ValueError(
            f"quantized, baseline and clusters must be 1-D with one entry per document, "
            f"got {q.shape}, {b.shape}, {labels.shape}"
        )
    if not (np.isfinite(q).all() and np.isfinite(b).all()):
        raise ValueError("per-document scores must be finite for a clustered interval")
    _, group = np.unique(labels.astype(str), return_inverse=True)
    n_clusters = int(group.max()) + 1
    if n_clusters < 2:
        raise ValueError(f"a clustered interval needs at least 2 clusters, got {n_clusters}")
    d = q - b
    n = d.size
    estimate = float(d.mean())
    cluster_sums = np.bincount(group, weights=d - estimate, minlength=n_clusters)
    variance = n_clusters / (n_clusters - 1) * float(np.sum(cluster_sums**2)) / n**2
    se = math.sqrt(variance)
    t = _scipy_stats.t(df=n_clusters - 1)
    half = float(t.ppf(0.5 + level / 2)) * se
    if se > 0:
        p_value = float(2 * t.sf(abs(estimate) / se))
    else:
        p_value = 1.0 if estimate == 0 else 0.0
    return ClusteredDifference(estimate, se, estimate - half, estimate + half, p_value, n_clusters)


def documents_needed_paired_proportions(
    discordance: float, difference: float, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Documents a paired (McNemar) comparison needs to detect an accuracy change of ``difference``.

    Connor (1987): with ``psi`` the share of discordant documents (right for one model,
    wrong for the other) and ``delta`` the true difference of accuracies,
    ``n = (z_{1-alpha/2} sqrt(psi) + z_power sqrt(psi - delta^2))^2 / delta^2``.
    ``discordance`` is floored at ``difference`` (a change of ``delta`` needs at least that
    share of documents to change), so a cell with no disagreements still gets an answer.

    Args:
        discordance: observed share of documents on which the two models disagree, in [0, 1].
        difference: the accuracy change to detect (the tolerance), in (0, 1).
        alpha: two-sided significance level.
        power: probability of detecting it.

    Example:
        >>> round(documents_needed_paired_proportions(0.1, 0.02))
        1960
    """
    psi = _check_probability("discordance", discordance)
    delta = float(difference)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"difference must be in (0, 1), got {difference}")
    alpha = _check_probability("alpha", alpha)
    power = _check_probability("power", power)
    psi = max(psi, delta)
    z_alpha = float(_scipy_stats.norm.ppf(1 - alpha / 2))
    z_power = float(_scipy_stats.norm.ppf(power))
    return (z_alpha * math.sqrt(psi) + z_power * math.sqrt(max(0.0, psi - delta**2))) ** 2 / delta**2


def documents_needed_from_interval(
    n: int,
    ci_low: float,
    ci_high: float,
    difference: float,
    level: float = 0.95,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """Documents a paired comparison needs to detect ``difference``, from an interval measured on ``n``.

    The interval's half-width gives the standard error at ``n`` documents,
    ``se = (ci_high - ci_low) / (2 z_{(1+level)/2})``, so the per-document standard
    deviation is ``se sqrt(n)``; a two-sided z test at ``alpha`` then needs
    ``n' = ((z_{1-alpha/2} + z_power) sd / difference)^2`` documents (the one-sample
    normal power formula, as ``statsmodels.stats.power.NormalIndPower`` with ``ratio=0``).

    Example:
        >>> round(documents_needed_from_interval(100, -0.196, 0.196, 0.1))
        785
    """
    n = _check_count("n", n)
    level = _check_level(level)
    if n == 0 or not (math.isfinite(ci_low) and math.isfinite(ci_high)) or ci_high < ci_low:
        raise ValueError(f"need n >= 1 and a finite interval, got n={n}, [{ci_low}, {ci_high}]")
    if not (math.isfinite(difference) and difference > 0):
        raise ValueError(f"difference must be a positive number, got {difference}")
    se = (ci_high - ci_low) / (2 * float(_scipy_stats.norm.ppf(0.5 + level / 2)))
    sd = se * math.sqrt(n)
    z = float(_scipy_stats.norm.ppf(1 - _check_probability("alpha", alpha) / 2)) + float(
        _scipy_stats.norm.ppf(_check_probability("power", power))
    )
    return (z * sd / difference) ** 2
