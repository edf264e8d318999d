"""Statistical tests and intervals against scipy and independent hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from quantsweep.verdicts import stats


@pytest.mark.parametrize(
    "k,n,chance",
    [
        (0, 5, 0.25),
        (5, 5, 0.25),
        (260, 1000, 0.25),
        (700, 1000, 0.25),
        (12, 40, 0.5),
        (3, 7, 0.2),
        (0, 3, 0.0),
        (2, 3, 0.0),
    ],
)
def test_binomial_p_value_equals_scipy(k, n, chance):
    expected = sps.binomtest(k, n, p=chance, alternative="greater").pvalue
    assert stats.binomial_test_above_chance(k, n, chance) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_binomial_p_value_by_hand():
    # P(X >= 4 | n=5, p=0.25) = 5 * 0.25^4 * 0.75 + 0.25^5
    assert stats.binomial_test_above_chance(4, 5, 0.25) == pytest.approx(5 * 0.25**4 * 0.75 + 0.25**5)


@pytest.mark.parametrize("k,n", [(6, 5), (1, 0), (-1, 5)])
def test_binomial_rejects_bad_counts(k, n):
    with pytest.raises(ValueError):
        stats.binomial_test_above_chance(k, n, 0.25)


def test_binomial_rejects_bad_chance():
    with pytest.raises(ValueError, match="chance"):
        stats.binomial_test_above_chance(3, 5, 1.0)


@pytest.mark.parametrize(
    "n,chance,alpha",
    [(5, 0.25, 0.05), (5, 0.5, 0.05), (4, 0.5, 0.05), (40, 0.25, 0.05), (200, 0.25, 0.01), (3, 0.0, 0.05)],
)
def test_critical_count_is_the_first_significant_score(n, chance, alpha):
    critical = stats.binomial_critical_count(n, chance, alpha)
    pvalues = [sps.binomtest(k, n, chance, alternative="greater").pvalue for k in range(n + 1)]
    significant = [k for k, p in enumerate(pvalues) if p <= alpha]
    assert critical == (significant[0] if significant else None)


def test_no_power_when_a_perfect_score_cannot_be_significant():
    # 4/4 at chance 0.5 has p = 0.0625 > 0.05: the test can never reject.
    assert stats.binomial_critical_count(4, 0.5, 0.05) is None
    assert stats.binomial_power(4, 0.5, 1.0, 0.05) == 0.0


def test_power_matches_simulation():
    n, chance, alpha, truth = 120, 0.25, 0.05, 0.35
    power = stats.binomial_power(n, chance, truth, alpha)
    draws = np.random.default_rng(0).binomial(n, truth, size=20000)
    pvalues = sps.binom.sf(draws - 1, n, chance)  # P(X >= k) under chance
    assert power == pytest.approx(np.mean(pvalues <= alpha), abs=0.015)


@pytest.mark.parametrize("k,n", [(0, 5), (5, 5), (3, 10), (260, 1000), (999, 1000)])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_intervals_equal_scipy(k, n, level):
    result = sps.binomtest(k, n)
    exact = result.proportion_ci(level, method="exact")
    wilson = result.proportion_ci(level, method="wilson")
    assert stats.clopper_pearson_interval(k, n, level) == pytest.approx((exact.low, exact.high), abs=1e-10)
    assert stats.wilson_interval(k, n, level) == pytest.approx((wilson.low, wilson.high), abs=1e-10)


def test_clopper_pearson_by_hand_at_zero_successes():
    # With k = 0 the upper limit solves (1 - p)^n = alpha/2.
    assert stats.clopper_pearson_interval(0, 5)[1] == pytest.approx(1 - 0.025 ** (1 / 5))


def test_paired_counts():
    q = [1, 1, 0, 0, 1, 0]
    b = [1, 0, 1, 0, 1, 1]
    c = stats.paired_counts(q, b)
    assert (c.both_correct, c.only_quantized, c.only_baseline, c.both_wrong, c.n) == (2, 1, 2, 1, 6)
    with pytest.raises(ValueError, match="0 and 1"):
        stats.paired_counts([0.5, 1], [1, 1])
    with pytest.raises(ValueError, match="same length"):
        stats.paired_counts([1, 1], [1])


def _mcnemar_by_hand(b: int, c: int) -> float:
    # Exact conditional McNemar: X ~ Binomial(b + c, 1/2); two-sided = 2 * smaller tail, capped.
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(sps.binom.pmf(i, m, 0.5) for i in range(0, min(b, c) + 1))
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("b,c", [(0, 5), (5, 0), (3, 3), (0, 0), (10, 25), (0, 200), (47, 61), (1, 0)])
def test_mcnemar_equals_scipy_and_hand_formula(b, c):
    p = stats.mcnemar_exact(b, c)
    assert p == pytest.approx(_mcnemar_by_hand(b, c), rel=1e-10)
    if b + c > 0:
        assert p == pytest.approx(sps.binomtest(b, b + c, 0.5).pvalue, rel=1e-10)


def test_newcombe_matches_published_example():
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables", ch. 8:
    # Cavo et al. (2012) table [[59, 6], [16, 80]]: Newcombe square-and-add 95% CI -0.1186 to -0.0046.
    lo, hi = stats.newcombe_paired_interval(stats.PairedCounts(59, 6, 16, 80))
    assert (round(lo, 4), round(hi, 4)) == (-0.1186, -0.0046)


def test_newcombe_matches_independent_formula():
    # phi without continuity correction when ad - bc < 0 (Newcombe 1998, method 10).
    a, b, c, d = 12, 9, 4, 2
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    w1 = sps.binomtest(a + b, n).proportion_ci(0.95, method="wilson")
    w2 = sps.binomtest(a + c, n).proportion_ci(0.95, method="wilson")
    phi = (a * d - b * c) / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    lower = (p1 - p2) - math.sqrt((p1 - w1.low) ** 2 - 2 * phi * (p1 - w1.low) * (w2.high - p2) + (w2.high - p2) ** 2)
    upper = (p1 - p2) + math.sqrt((w1.high - p1) ** 2 - 2 * phi * (w1.high - p1) * (p2 - w2.low) + (p2 - w2.low) ** 2)
    assert stats.newcombe_paired_interval(stats.PairedCounts(a, b, c, d)) == pytest.approx((lower, upper), abs=1e-12)


def test_newcombe_coverage_by_simulation():
    # Correlated paired answers; true acc_q - acc_base = P(only q) - P(only base) = 0.05.
    rng = np.random.default_rng(1)
    n, trials, covered = 300, 400, 0
    probs = np.array([0.80, 0.10, 0.05, 0.05])  # both right, only q, only base, both wrong
    true_delta = probs[1] - probs[2]
    for _ in range(trials):
        a, b, c, d = rng.multinomial(n, probs)
        lo, hi = stats.newcombe_paired_interval(stats.PairedCounts(int(a), int(b), int(c), int(d)))
        covered += lo <= true_delta <= hi
    assert covered / trials >= 0.92


def test_bootstrap_is_deterministic_given_seed():
    x = np.random.default_rng(3).normal(size=50)
    y = x + np.random.default_rng(4).normal(scale=0.1, size=50)
    stat = lambda a, b: (a - b).mean(axis=-1)  # noqa: E731
    r1 = stats.paired_bootstrap(stat, x, y, resamples=300, seed=7)
    r2 = stats.paired_bootstrap(stat, x, y, resamples=300, seed=7)
    r3 = stats.paired_bootstrap(stat, x, y, resamples=300, seed=8)
    np.testing.assert_array_equal(r1.resamples, r2.resamples)
    assert (r1.ci_low, r1.ci_high, r1.p_value) == (r2.ci_low, r2.ci_high, r2.p_value)
    assert not np.array_equal(r1.resamples, r3.resamples)


def test_bootstrap_is_paired_and_matches_manual_resampling():
    # The same document indices must be used for both arrays: reproduce by hand.
    x, y = np.arange(10.0), np.arange(10.0) ** 2
    samples = stats.bootstrap_distribution(lambda a, b: (a - b).sum(axis=-1), [x, y], resamples=20, seed=5)
    index = np.random.default_rng(5).integers(0, 10, size=(20, 10))
    np.testing.assert_allclose(samples, (x[index] - y[index]).sum(axis=1))


def test_bootstrap_chunking_does_not_change_results(monkeypatch):
    x = np.random.default_rng(0).normal(size=64)
    full = stats.bootstrap_distribution(lambda a: a.mean(axis=-1), [x], 50, seed=2)
    monkeypatch.setattr(stats, "_BOOTSTRAP_CHUNK_ELEMENTS", 64 * 7)
    chunked = stats.bootstrap_distribution(lambda a: a.mean(axis=-1), [x], 50, seed=2)
    # Row chunks draw the same random stream, so the resamples are identical.
    np.testing.assert_array_equal(full, chunked)


def test_bootstrap_ci_contains_true_difference_in_simulation():
    rng = np.random.default_rng(11)
    n, true_diff, covered, trials = 200, 0.3, 0, 60
    for t in range(trials):
        base = rng.normal(1.0, 1.0, size=n)
        quant = base + true_diff + rng.normal(0.0, 0.5, size=n)
        r = stats.paired_bootstrap(lambda a, b: (a - b).mean(axis=-1), quant, base, resamples=500, seed=t)
        covered += r.ci_low <= true_diff <= r.ci_high
        assert r.p_value < 0.01
    assert covered / trials >= 0.88


def test_bootstrap_p_value_formula():
    samples = np.array([-1.0, 0.5, 1.0, 2.0])
    # below: (1 + 1) / 5, above: (1 + 3) / 5 -> p = 2 * 0.4 = 0.8
    assert stats.bootstrap_p_value(samples) == pytest.approx(0.8)
    assert stats.bootstrap_p_value(np.zeros(10)) == 1.0


def test_percentile_interval_equals_numpy_quantile():
    s = np.random.default_rng(0).normal(size=999)
    assert stats.percentile_interval(s, 0.95) == pytest.approx(tuple(np.quantile(s, [0.025, 0.975])))
    with pytest.raises(ValueError, match="NaN"):
        stats.percentile_interval(np.array([1.0, np.nan]))


# --- clustered intervals and documents needed --------------------------------------------------


def test_cluster_robust_paired_difference_matches_statsmodels_ols_with_clustered_errors():
    sm = pytest.importorskip("statsmodels.api")
    from quantsweep.verdicts.stats import cluster_robust_paired_difference

    rng = np.random.default_rng(3)
    n, groups = 400, rng.integers(0, 15, 400)
    subject_skill = rng.uniform(0.3, 0.9, 15)[groups]  # documents of one subject are correlated
    baseline = (rng.uniform(size=n) < subject_skill).astype(float)
    quantized = np.where(rng.uniform(size=n) < 0.2, 1 - baseline, baseline)
    ours = cluster_robust_paired_difference(quantized, baseline, [f"s{g}" for g in groups], level=0.9)
    ref = sm.OLS(quantized - baseline, np.ones((n, 1))).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    assert ours.n_clusters == 15
    assert ours.estimate == pytest.approx(ref.params[0], abs=1e-12)
    assert ours.standard_error == pytest.approx(ref.bse[0], rel=1e-10)
    assert (ours.ci_low, ours.ci_high) == pytest.approx(tuple(ref.conf_int(0.1)[0]), rel=1e-10)
    assert ours.p_value == pytest.approx(ref.pvalues[0], rel=1e-10)


def test_cluster_robust_interval_is_wider_than_the_independent_one_when_clusters_move_together():
    from quantsweep.verdicts.stats import cluster_robust_paired_difference

    # whole subjects flip together: 10 subjects of 20 documents, 3 subjects lose every answer
    clusters = np.repeat(np.arange(10), 20)
    baseline = np.ones(200)
    quantized = np.where(np.isin(clusters, [0, 1, 2]), 0.0, 1.0)
    clustered = cluster_robust_paired_difference(quantized, baseline, clusters)
    d = quantized - baseline
    independent_se = d.std(ddof=1) / np.sqrt(d.size)
    assert clustered.standard_error > 3 * independent_se


def test_cluster_robust_needs_two_clusters_and_matching_lengths():
    from quantsweep.verdicts.stats import cluster_robust_paired_difference

    with pytest.raises(ValueError, match="at least 2 clusters"):
        cluster_robust_paired_difference([1, 0], [1, 1], ["a", "a"])
    with pytest.raises(ValueError, match="one entry per document"):
        cluster_robust_paired_difference([1, 0], [1, 1], ["a"])


def test_documents_needed_for_mcnemar_gives_80_percent_power_by_simulation():
    from quantsweep.verdicts.stats import documents_needed_paired_proportions

    discordance, tolerance = 0.12, 0.03
    n = int(np.ceil(documents_needed_paired_proportions(discordance, tolerance, alpha=0.05, power=0.8)))
    # reference: simulate the 2x2 table at that n with the true drop equal to the tolerance and run
    # the exact McNemar test (two-sided binomial on the discordant pairs) on every replicate
    rng = np.random.default_rng(0)
    p_lost, p_gained = (discordance + tolerance) / 2, (discordance - tolerance) / 2

    def power_at(size, reps=4000):
        tables = rng.multinomial(size, [p_lost, p_gained, 1 - discordance], size=reps)
        lost, gained = tables[:, 0], tables[:, 1]
        m = lost + gained
        tail = sps.binom.cdf(np.minimum(lost, gained), m, 0.5)
        p = np.minimum(1.0, 2 * tail)
        return float(np.mean(p < 0.05))

    assert 0.75 <= power_at(n) <= 0.85
    assert power_at(n // 3) < 0.5  # a third of the documents is clearly not enough


def test_documents_needed_from_interval_matches_statsmodels_normal_power():
    power_module = pytest.importorskip("statsmodels.stats.power")
    from quantsweep.verdicts.stats import documents_needed_from_interval

    n, sd, difference = 250, 0.4, 0.02
    half = sps.norm.ppf(0.975) * sd / np.sqrt(n)
    ours = documents_needed_from_interval(n, 0.01 - half, 0.01 + half, difference, level=0.95, alpha=0.05, power=0.8)
    ref = power_module.NormalIndPower().solve_power(effect_size=difference / sd, alpha=0.05, power=0.8, ratio=0)
    # statsmodels also counts the (negligible) far tail of the two-sided test: agreement to ~1e-5
    assert ours == pytest.approx(ref, rel=1e-4)
    assert ours > 3000  # sd 0.4 against a 0.02 difference needs thousands of documents
