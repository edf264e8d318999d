"""Verdicts on cases with known ground truth; statistics cross-checked with scipy."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from quantsweep.verdicts import rules as V
from quantsweep.verdicts.config import VerdictConfig
from quantsweep.verdicts.judge import judge_accuracy, judge_perplexity, judge_scores
from quantsweep.verdicts.rules import Verdict
from quantsweep.verdicts.summary import summarize

FAST = VerdictConfig(bootstrap_resamples=500)


def paired(both: int, only_q: int, only_base: int, neither: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-document 0/1 arrays (quantized, baseline) with the given 2x2 table, shuffled."""
    q = np.r_[np.ones(both), np.ones(only_q), np.zeros(only_base), np.zeros(neither)]
    b = np.r_[np.ones(both), np.zeros(only_q), np.ones(only_base), np.zeros(neither)]
    order = np.random.default_rng(seed).permutation(q.size)
    return q[order], b[order]


# ---------------------------------------------------------------- config and record


def test_config_defaults_and_round_trip():
    config = VerdictConfig()
    d = config.to_dict()
    assert d == {
        "alpha": 0.05,
        "ci_level": 0.95,
        "accuracy_tolerance": 0.01,
        "perplexity_relative_tolerance": 0.01,
        "collapse_retention": 0.15,
        "collapse_power": 0.8,
        "min_samples": 20,
        "bootstrap_resamples": 2000,
        "seed": 0,
    }
    assert VerdictConfig.from_dict(json.loads(json.dumps(d))) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.alpha = 0.1


@pytest.mark.parametrize(
    "field,value",
    [
        ("alpha", 0.0),
        ("alpha", 1.5),
        ("ci_level", 1.0),
        ("accuracy_tolerance", -0.01),
        ("collapse_retention", 1.0),
        ("collapse_power", 0.0),
        ("min_samples", 0),
        ("bootstrap_resamples", 10),
        ("seed", -1),
        ("seed", 1.5),
        ("alpha", True),
    ],
)
def test_config_rejects_bad_values_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        VerdictConfig(**{field: value})


def test_config_from_dict_names_unknown_key():
    with pytest.raises(ValueError, match="alpah.*allowed"):
        VerdictConfig.from_dict({"alpah": 0.05})


def test_verdict_to_dict_has_exactly_the_fields_and_is_json():
    v = Verdict("non-finite", chance=0.25, nonfinite_samples=3, n=100)
    d = v.to_dict()
    assert list(d) == [
        "verdict",
        "chance",
        "nonfinite_samples",
        "delta",
        "ci_low",
        "ci_high",
        "p_value",
        "retained",
        "n",
        "reason",
        "interval",
        "documents_needed",
    ]
    assert d["delta"] is None and d["p_value"] is None and d["chance"] == 0.25
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    inf = Verdict("degraded", delta=math.inf, n=3).to_dict()
    assert inf["delta"] is None
    again = Verdict.from_dict(d)
    assert again.verdict == "non-finite" and again.nonfinite_samples == 3 and math.isnan(again.delta)
    with pytest.raises(ValueError, match="unknown verdict"):
        Verdict("fine")


# ---------------------------------------------------------------- accuracy: ground truth


def test_identical_to_baseline_is_lossless():
    q, b = paired(900, 0, 0, 100)
    v = judge_accuracy(q.copy(), b, chance=0.25)
    assert v.verdict == "lossless"
    assert v.delta == 0.0 and v.p_value == 1.0 and v.n == 1000
    assert v.ci_low <= 0.0 <= v.ci_high and -v.ci_low <= 0.01
    # The very same array object is still a comparison, not a baseline row.
    assert judge_accuracy(b, b, chance=0.25).verdict == "lossless"


def test_clearly_worse_is_degraded_with_mcnemar_and_interval():
    q, b = paired(680, 20, 220, 80)  # acc 0.70 vs 0.90
    v = judge_accuracy(q, b, chance=0.25)
    assert v.verdict == "degraded"
    assert v.delta == pytest.approx(0.70 - 0.90)
    assert v.p_value == pytest.approx(sps.binomtest(20, 240, 0.5).pvalue)
    assert v.ci_low < v.delta < v.ci_high < 0
    assert v.retained == pytest.approx((0.70 - 0.25) / (0.90 - 0.25))


def test_near_chance_is_collapsed():
    q, b = paired(240, 20, 660, 80)  # acc 0.26 on 4-way vs baseline 0.90
    v = judge_accuracy(q, b, chance=0.25)
    assert sps.binomtest(260, 1000, 0.25, alternative="greater").pvalue > 0.05
    assert v.verdict == "collapsed"
    assert v.retained == pytest.approx(0.01 / 0.65)


def test_collapse_by_retention_even_when_significantly_above_chance():
    # 0.30 on 4-way at n=5000 beats chance (p << 0.05) but keeps ~8% of the margin, confidently < 15%.
    q, b = paired(1400, 100, 3100, 400)
    assert sps.binomtest(1500, 5000, 0.25, alternative="greater").pvalue < 1e-10
    assert judge_accuracy(q, b, chance=0.25).verdict == "collapsed"


def test_small_real_drop_within_tolerance_is_lossless():
    # A significant drop of 0.3 points, but its upper bound stays below the 1-point tolerance.
    q, b = paired(17700, 300, 360, 1640)  # 18000 vs 18060 of 20000
    v = judge_accuracy(q, b, chance=0.25)
    assert v.p_value < 0.05 and v.ci_high < 0
    assert v.verdict == "lossless"


def test_better_than_baseline_is_lossless():
    q, b = paired(800, 100, 20, 80)
    assert judge_accuracy(q, b, chance=0.25).verdict == "lossless"


def test_moderate_drop_with_wide_interval_is_inconclusive():
    q, b = paired(70, 6, 10, 14)  # n=100, acc 0.76 vs 0.80: could be either
    v = judge_accuracy(q, b, chance=0.25)
    assert v.ci_low < -0.01 and v.ci_high > 0
    assert v.verdict == "inconclusive"


# ---------------------------------------------------------------- accuracy: small samples and power


@pytest.mark.parametrize("chance", [0.0, 0.2, 0.25, 0.5])
@pytest.mark.parametrize(
    "quantized,baseline",
    [([0] * 5, [0] * 5), ([1] * 5, [1] * 5), ([0] * 5, [1] * 5), ([1, 0, 1, 0, 0], [1, 1, 1, 1, 0])],
    ids=["all-wrong", "all-right", "base-right-q-wrong", "mixed"],
)
def test_five_documents_are_inconclusive(chance, quantized, baseline):
    # With the default floor of 20 documents, and also from the rules alone (floor lowered to 1).
    assert judge_accuracy(quantized, baseline, chance).verdict == "inconclusive"
    assert judge_accuracy(quantized, baseline, chance, config=VerdictConfig(min_samples=1)).verdict == "inconclusive"


@pytest.mark.parametrize("chance", [0.0, 0.2, 0.25, 1 / 3, 0.5])
def test_rules_alone_never_call_five_documents_collapsed_or_degraded(chance):
    config = VerdictConfig(min_samples=1)
    for table in itertools.product(range(6), repeat=4):
        if sum(table) != 5:
            continue
        q, b = paired(*table)
        assert judge_accuracy(q, b, chance, config=config).verdict not in ("collapsed", "degraded"), table


def test_binomial_rule_needs_power():
    # 0.30 on 4-way vs baseline 0.90: not significantly above chance at n=40 and n=200 alike,
    # but only n=200 has the power to tell collapse from keeping 15% of the margin.
    threshold = 0.25 + 0.15 * (0.90 - 0.25)
    for n, expected in ((40, "degraded"), (200, "collapsed")):
        k, k_base = int(0.3 * n), int(0.9 * n)
        assert sps.binomtest(k, n, 0.25, alternative="greater").pvalue > 0.05
        critical = next(i for i in range(n + 1) if sps.binom.sf(i - 1, n, 0.25) <= 0.05)
        power = sps.binom.sf(critical - 1, n, threshold)
        assert (power >= 0.8) == (expected == "collapsed")
        q, b = paired(k, 0, k_base - k, n - k_base)
        assert judge_accuracy(q, b, chance=0.25).verdict == expected


def test_no_collapse_when_baseline_is_not_above_chance():
    q, b = paired(200, 60, 50, 690)  # both ~0.25 on 4-way
    v = judge_accuracy(q, b, chance=0.25)
    assert v.verdict in ("lossless", "inconclusive")
    assert math.isnan(v.retained)


# ---------------------------------------------------------------- non-finite and baseline rows


def test_nonfinite_beats_chance_level_collapse():
    q, b = paired(240, 20, 660, 80)  # would be collapsed
    assert judge_accuracy(q, b, 0.25, nonfinite_samples=1000).verdict == "non-finite"
    assert judge_accuracy(q, b, 0.25, metric_value=float("nan")).verdict == "non-finite"
    assert judge_accuracy(q, b, 0.25, metric_value=float("inf")).verdict == "non-finite"
    q_nan = q.copy()
    q_nan[:7] = np.nan
    v = judge_accuracy(q_nan, b, 0.25)
    assert v.verdict == "non-finite" and v.nonfinite_samples == 7
    assert v.to_dict()["delta"] is None


def test_nonfinite_baseline_row_is_nonfinite():
    assert judge_accuracy([1, 0, 1], None, 0.25, nonfinite_samples=2).verdict == "non-finite"


def test_baseline_row_carries_chance_test():
    q, _ = paired(900, 0, 0, 100)
    v = judge_accuracy(q, None, chance=0.25)
    assert v.verdict == "baseline"
    assert v.p_value == pytest.approx(sps.binomtest(900, 1000, 0.25, alternative="greater").pvalue)
    assert v.delta == pytest.approx(0.65)
    ci = sps.binomtest(900, 1000).proportion_ci(0.95, method="exact")
    assert (v.ci_low, v.ci_high) == pytest.approx((ci.low - 0.25, ci.high - 0.25))
    flagged = judge_accuracy(q, q, chance=0.25, is_baseline=True)
    assert flagged.verdict == "baseline" and flagged.p_value == v.p_value


@pytest.mark.parametrize(
    "quantized,baseline,chance,error",
    [
        ([1, 0], [1], 0.25, "paired"),
        ([1, 2], [1, 1], 0.25, "0 or 1"),
        ([1, 0], [1, 0], 1.0, "chance"),
        ([], None, 0.25, "non-empty"),
        ([1, 0], [1, 0.5], 0.25, "0 or 1"),
    ],
)
def test_accuracy_input_errors(quantized, baseline, chance, error):
    with pytest.raises(ValueError, match=error):
        judge_accuracy(quantized, baseline, chance)


def test_config_type_is_checked():
    with pytest.raises(TypeError, match="VerdictConfig"):
        judge_accuracy([1, 0], None, 0.25, config={"alpha": 0.05})


# ---------------------------------------------------------------- perplexity


def _corpus(n: int = 300, seed: int = 0, per_token: float = 3.0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(50, 400, size=n)
    nll = tokens * per_token + rng.normal(0, 1.0, size=n) * np.sqrt(tokens) * 2.0
    return np.abs(nll), tokens


def test_perplexity_equal_is_lossless():
    nll, tokens = _corpus()
    v = judge_perplexity(nll.copy(), tokens, nll, tokens, vocab_size=32000, config=FAST)
    assert v.verdict == "lossless"
    assert (v.delta, v.ci_low, v.ci_high, v.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert v.chance == 32000.0


def test_perplexity_formulas_by_hand():
    nll_b, tokens = _corpus()
    nll_q = nll_b + 0.05 * tokens  # +0.05 nats per token
    v = judge_perplexity(nll_q, tokens, nll_b, tokens, vocab_size=1000, config=FAST)
    ce_q, ce_b = nll_q.sum() / tokens.sum(), nll_b.sum() / tokens.sum()
    assert v.delta == pytest.approx(math.exp(ce_q) / math.exp(ce_b) - 1)
    assert v.delta == pytest.approx(math.expm1(0.05))
    assert v.retained == pytest.approx((math.log(1000) - ce_q) / (math.log(1000) - ce_b))
    assert v.verdict == "degraded" and v.ci_low > 0.01


def test_perplexity_close_to_vocab_size_is_collapsed():
    nll_b, tokens = _corpus()
    nll_q = tokens * (math.log(1000) - 0.05)  # ppl ~ 951 with V = 1000
    v = judge_perplexity(nll_q, tokens, nll_b, tokens, vocab_size=1000, config=FAST)
    assert v.verdict == "collapsed"
    assert v.retained < 0.05


def test_perplexity_nonfinite():
    nll, tokens = _corpus()
    bad = nll.copy()
    bad[3] = np.nan
    assert judge_perplexity(bad, tokens, nll, tokens, 1000).verdict == "non-finite"
    assert judge_perplexity(nll, tokens, nll, tokens, 1000, nonfinite_samples=1).verdict == "non-finite"
    assert judge_perplexity(nll, tokens, nll, tokens, 1000, metric_value=math.inf).verdict == "non-finite"
    v = judge_perplexity(np.full(300, np.inf), tokens, nll, tokens, 1000)
    assert v.verdict == "non-finite" and v.nonfinite_samples == 300


def test_perplexity_bootstrap_interval_contains_true_difference():
    # Quantized NLL = baseline + 0.02 nats/token + zero-mean noise: true delta = expm1(0.02).
    truth = math.expm1(0.02)
    covered, trials = 0, 30
    config = VerdictConfig(bootstrap_resamples=400)
    for seed in range(trials):
        nll_b, tokens = _corpus(200, seed)
        noise = np.random.default_rng(1000 + seed).normal(0, 1.0, size=tokens.size) * np.sqrt(tokens)
        v = judge_perplexity(
            nll_b + 0.02 * tokens + noise, tokens, nll_b, tokens, 32000, config=dataclasses.replace(config, seed=seed)
        )
        covered += v.ci_low <= truth <= v.ci_high
    assert covered / trials >= 0.85


def test_perplexity_bootstrap_is_deterministic_given_seed():
    nll_b, tokens = _corpus()
    nll_q = nll_b + np.random.default_rng(5).normal(0.01, 1.0, size=tokens.size) * np.sqrt(tokens)
    nll_q = np.abs(nll_q)
    first = judge_perplexity(nll_q, tokens, nll_b, tokens, 32000, config=FAST)
    second = judge_perplexity(nll_q, tokens, nll_b, tokens, 32000, config=FAST)
    other = judge_perplexity(nll_q, tokens, nll_b, tokens, 32000, config=dataclasses.replace(FAST, seed=1))
    assert first == second
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)


def test_perplexity_small_corpus_is_inconclusive():
    nll_b, tokens = _corpus(5)
    assert judge_perplexity(nll_b * 10, tokens, nll_b, tokens, 32000, config=FAST).verdict == "inconclusive"
    assert judge_perplexity(nll_b.copy(), tokens, nll_b, tokens, 32000, config=FAST).verdict == "inconclusive"


def test_perplexity_baseline_row_and_errors():
    nll, tokens = _corpus()
    v = judge_perplexity(nll, tokens, None, None, 1000, config=FAST)
    ppl = math.exp(nll.sum() / tokens.sum())
    assert v.verdict == "baseline" and v.delta == pytest.approx(ppl - 1000)
    assert v.ci_low <= v.delta <= v.ci_high
    with pytest.raises(ValueError, match="negate"):
        judge_perplexity(-nll, tokens, nll, tokens, 1000)
    with pytest.raises(ValueError, match="paired"):
        judge_perplexity(nll, tokens, nll[:-1], tokens[:-1], 1000)


def test_word_level_chance_cross_entropy():
    nll_b, words = _corpus()
    chance_ce = 4.0  # nats per word of a uniform model, supplied by the caller
    v = judge_perplexity(words * 3.99, words, nll_b, words, 1000, config=FAST, chance_cross_entropy=chance_ce)
    assert v.chance == pytest.approx(math.exp(4.0))
    assert v.verdict == "collapsed"


# ---------------------------------------------------------------- generic scores


def test_scores_equal_is_lossless_and_direction_matters():
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 1, size=400)
    assert judge_scores(s, s.copy(), chance=0.0, config=FAST).verdict == "lossless"
    worse = s - 0.1
    assert judge_scores(worse, s, higher_is_better=True, chance=None, config=FAST).verdict == "degraded"
    # For a lower-is-better score (e.g. an error rate), going down is an improvement.
    assert judge_scores(worse, s, higher_is_better=False, chance=None, config=FAST).verdict == "lossless"
    assert judge_scores(s + 0.1, s, higher_is_better=False, chance=None, config=FAST).verdict == "degraded"


def test_scores_collapse_and_small_sample():
    base = np.r_[np.ones(500), np.zeros(500)]
    assert judge_scores(np.zeros(1000), base, chance=0.0, config=FAST).verdict == "collapsed"
    # Five all-zero exact matches must not be called collapsed.
    assert judge_scores(np.zeros(5), np.ones(5), chance=0.0, config=FAST).verdict == "inconclusive"


def test_scores_bootstrap_matches_hand_resampling():
    q, b = np.linspace(0, 1, 50), np.linspace(0.1, 1, 50)
    config = VerdictConfig(bootstrap_resamples=300, seed=4)
    v = judge_scores(q, b, chance=None, config=config)
    index = np.random.default_rng(4).integers(0, 50, size=(300, 50))
    diffs = q[index].mean(axis=1) - b[index].mean(axis=1)
    assert (v.ci_low, v.ci_high) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    assert v.delta == pytest.approx(q.mean() - b.mean())


def test_scores_tolerance_and_nonfinite():
    s = np.random.default_rng(1).uniform(0, 1, size=400)
    lower = s - 0.05
    assert judge_scores(lower, s, chance=None, config=FAST).verdict == "degraded"
    assert judge_scores(lower, s, chance=None, config=FAST, tolerance=0.1).verdict == "lossless"
    assert judge_scores(s, s, chance=0.0, nonfinite_samples=2).verdict == "non-finite"
    assert judge_scores(np.r_[s[:-1], np.nan], s, chance=0.0).verdict == "non-finite"
    base_row = judge_scores(s, None, chance=0.0, config=FAST)
    assert base_row.verdict == "baseline" and base_row.delta == pytest.approx(s.mean())


# ---------------------------------------------------------------- summaries


def test_summarize_worst_dominant_and_counts():
    rows = [
        ("w4", "arc", "reasoning", Verdict("lossless", n=100)),
        ("w4", "hellaswag", "reasoning", {"verdict": "lossless"}),
        ("w4", "gsm8k", "math", "degraded"),
        ("w2", "arc", "reasoning", "collapsed"),
        ("w2", "wikitext", "perplexity", "non-finite"),
        ("w2", "gsm8k", "math", "collapsed"),
        ("fp16", "arc", "reasoning", "baseline"),
    ]
    s = summarize(rows)
    w4 = s["by_recipe"]["w4"]
    assert w4["verdict"] == "degraded" and w4["dominant"] == "lossless" and w4["worst_tasks"] == ["gsm8k"]
    assert w4["counts"] == {
        "baseline": 0,
        "lossless": 2,
        "degraded": 1,
        "inconclusive": 0,
        "collapsed": 0,
        "non-finite": 0,
    }
    assert w4["n_tasks"] == 3
    w2 = s["by_recipe"]["w2"]
    assert w2["verdict"] == "non-finite" and w2["dominant"] == "collapsed"
    assert s["by_recipe"]["fp16"]["verdict"] == "baseline"
    assert s["by_family"][("w4", "reasoning")]["verdict"] == "lossless"
    assert s["by_family"][("w2", "math")]["worst_tasks"] == ["gsm8k"]
    assert set(s["by_family"]) == {
        ("w4", "reasoning"),
        ("w4", "math"),
        ("w2", "reasoning"),
        ("w2", "perplexity"),
        ("w2", "math"),
        ("fp16", "reasoning"),
    }


def test_summarize_tie_goes_to_more_severe_and_severity_order():
    s = summarize([("r", "a", "f", "lossless"), ("r", "b", "f", "inconclusive")])
    assert s["by_recipe"]["r"]["dominant"] == "inconclusive"
    order = sorted(V.VERDICTS, key=V.SEVERITY.__getitem__, reverse=True)
    assert order == ["non-finite", "collapsed", "degraded", "inconclusive", "lossless", "baseline"]


def test_summarize_rejects_bad_rows():
    with pytest.raises(ValueError, match="unknown verdict"):
        summarize([("r", "t", "f", "great")])
    with pytest.raises(ValueError, match="recipe, task, family, verdict"):
        summarize([("r", "t", "lossless")])


# ---------------------------------------------------------------- docs


def test_docs_page_matches_module_docstring():
    page = (Path(__file__).resolve().parents[2] / "docs" / "verdicts.md").read_text()
    body = V.__doc__.split("\n", 1)[1].split("\nExample:\n")[0].strip()
    assert page.startswith("# How verdicts are decided")
    assert body in page


def test_overflowing_perplexity_is_collapsed_and_json_safe():
    tokens = np.full(50, 10)
    v = judge_perplexity(np.full(50, 1e6), tokens, np.full(50, 20.0), tokens, 1000, config=FAST)
    assert v.verdict == "collapsed" and v.delta == math.inf
    assert json.dumps(v.to_dict(), allow_nan=False)


def test_importing_verdicts_does_not_import_torch_or_lm_eval():
    import subprocess
    import sys

    code = "import sys, quantsweep.verdicts.judge, quantsweep.verdicts.summary; print('torch' in sys.modules, 'lm_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.parametrize("chance,baseline,quoted", [(0.25, 0.9, 148), (0.5, 0.9, 457), (0.25, 0.6, 473)])
def test_documented_power_thresholds(chance, baseline, quoted):
    # The docs quote the smallest n from which the binomial rule has power >= 0.8; recompute with scipy.
    threshold = chance + 0.15 * (baseline - chance)

    def power(n):
        critical = next((k for k in range(n + 1) if sps.binom.sf(k - 1, n, chance) <= 0.05), None)
        return 0.0 if critical is None else sps.binom.sf(critical - 1, n, threshold)

    assert power(quoted) >= 0.8 and power(quoted - 1) < 0.8
    assert f"n >= {quoted}" in " ".join(V.__doc__.split())


# --- every verdict carries its reason ---------------------------------------------------------


def test_every_rule_gives_its_reason_with_the_numbers():
    base = np.r_[np.ones(900), np.zeros(100)]
    tiny = judge_accuracy([1, 0, 1, 1], [1, 1, 1, 1], chance=0.25)
    assert tiny.verdict == "inconclusive" and tiny.reason.startswith("n = 4 < min_samples = 20")
    same = judge_accuracy(base.copy(), base, chance=0.25)
    upper_drop = -same.ci_low
    assert same.verdict == "lossless"
    assert same.reason == f"upper bound of the drop {100 * upper_drop:.3g}% <= tolerance 1%"
    worse = base.copy()
    worse[:200] = 0
    degraded = judge_accuracy(worse, base, chance=0.25)
    assert degraded.verdict == "degraded"
    assert degraded.reason.startswith(f"lower bound of the drop {100 * -degraded.ci_high:.3g}% > 0 and McNemar p = ")
    random = (np.arange(1000) % 4 == 0).astype(float)
    collapsed = judge_accuracy(random, base, chance=0.25)
    assert collapsed.verdict == "collapsed" and "retention CI upper" in collapsed.reason
    broken = judge_accuracy(base, base, chance=0.25, nonfinite_samples=3)
    assert broken.verdict == "non-finite" and broken.reason.startswith("3 of 1000 documents")
    assert judge_accuracy(base, None, chance=0.25).reason.startswith("the reference model")
    for verdict in (tiny, same, degraded, collapsed, broken):
        assert verdict.to_dict()["reason"] == verdict.reason


def test_inconclusive_accuracy_says_how_many_documents_would_decide():
    rng = np.random.default_rng(5)
    base = (rng.uniform(size=300) < 0.8).astype(float)
    quant = base.copy()
    quant[np.flatnonzero(base == 1)[:18]] = 0.0  # 18 answers lost, 12 gained: a small, unclear drop
    quant[np.flatnonzero(base == 0)[:12]] = 1.0
    verdict = judge_accuracy(quant, base, chance=0.25)
    assert verdict.verdict == "inconclusive"
    discordance = np.mean(quant != base)  # reference: Connor (1987), written out here
    z_a, z_b = sps.norm.ppf(0.975), sps.norm.ppf(0.8)
    expected = (z_a * math.sqrt(discordance) + z_b * math.sqrt(discordance - 0.01**2)) ** 2 / 0.01**2
    assert verdict.documents_needed == math.ceil(expected)
    assert verdict.reason.endswith(f"about {math.ceil(expected):,} documents would decide")
    assert judge_accuracy(base.copy(), base, chance=0.25).documents_needed is None  # decided cells need none


def test_inconclusive_perplexity_reports_documents_needed_and_the_interval():
    rng = np.random.default_rng(6)
    tokens = np.full(40, 100)
    base_nll = 300.0 * rng.uniform(0.5, 1.5, 40)
    quant_nll = base_nll * rng.uniform(0.95, 1.06, 40)  # per-token NLL up about 0.5%, noisily
    verdict = judge_perplexity(quant_nll, tokens, base_nll, tokens, vocab_size=1000)
    assert verdict.verdict == "inconclusive" and verdict.interval == "paired bootstrap"
    se = (verdict.ci_high - verdict.ci_low) / (2 * sps.norm.ppf(0.975))
    expected = ((sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * se * math.sqrt(40) / 0.01) ** 2
    assert verdict.documents_needed == max(math.ceil(expected), 41)
    assert "perplexity increase" in verdict.reason
