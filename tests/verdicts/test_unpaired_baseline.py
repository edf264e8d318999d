"""A baseline with non-finite per-document values cannot be paired: the cell is judged against chance alone."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats as scipy_stats

from quantsweep.verdicts.config import VerdictConfig
from quantsweep.verdicts.judge import judge_accuracy, judge_perplexity, judge_scores

BROKEN_BASELINE = np.full(1600, np.nan)  # what a checkpoint with an Inf weight gives


def _correct(k: int, n: int) -> np.ndarray:
    return np.r_[np.ones(k), np.zeros(n - k)]


def _margin(reason: str) -> tuple[float, float, float]:
    """The margin above chance and its interval, as the reason writes them (4 significant digits)."""
    found = re.search(r"margin above chance (\S+) \(\d+% CI (\S+) to (\S+)\)", reason)
    assert found, reason
    return tuple(float(x) for x in found.groups())


def _no_paired_fields(verdict) -> bool:
    """An unpaired cell has no recipe-minus-baseline difference: delta and its interval are NaN."""
    return all(math.isnan(x) for x in (verdict.delta, verdict.ci_low, verdict.ci_high))


@pytest.mark.parametrize(
    ("k", "n", "expected"), [(411, 1600, "collapsed"), (960, 1600, "inconclusive"), (6, 24, "inconclusive")]
)
def test_accuracy_against_chance_alone(k, n, expected):
    config, chance = VerdictConfig(), 0.25
    verdict = judge_accuracy(_correct(k, n), BROKEN_BASELINE[:n], chance=chance)
    # Reference from scipy: the exact (Clopper-Pearson) interval of the accuracy.
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=config.ci_level, method="exact")
    # updated: the margin used to be written into delta / ci_low / ci_high (read as recipe minus
    # baseline in the report); it is now in the reason, and those fields are NaN
    assert _no_paired_fields(verdict)
    margin, low, high = _margin(verdict.reason)
    assert margin == pytest.approx(k / n - chance, rel=6e-4)
    assert low == pytest.approx(ci.low - chance, rel=6e-4)
    assert high == pytest.approx(ci.high - chance, rel=6e-4)
    rule = ci.low - chance <= 0 and ci.high - chance <= config.collapse_retention * (1 - chance)
    assert (verdict.verdict == "collapsed") == rule
    assert verdict.verdict == expected
    assert "could not be paired" in verdict.reason


def test_perplexity_against_chance_alone():
    vocab, tokens = 1000, np.full(200, 50)
    rng = np.random.default_rng(0)
    at_chance = tokens * (math.log(vocab) + rng.normal(0, 0.05, tokens.size))  # about log V nats per token
    verdict = judge_perplexity(at_chance, tokens, np.full(200, np.nan), tokens, vocab_size=vocab)
    assert verdict.verdict == "collapsed"
    assert "could not be paired" in verdict.reason and "at chance" in verdict.reason
    good = tokens * 2.0  # 2 nats per token, far better than log(1000) = 6.9
    verdict = judge_perplexity(good, tokens, np.full(200, np.nan), tokens, vocab_size=vocab)
    assert verdict.verdict == "inconclusive"
    assert _no_paired_fields(verdict)  # updated: the margin was in delta, it is now in the reason
    assert _margin(verdict.reason)[0] == pytest.approx(math.log(vocab) - 2.0, rel=6e-4)
    assert "could not be paired" in verdict.reason


def test_scores_against_chance_alone():
    zeros, broken = np.zeros(300), np.full(300, np.nan)
    assert judge_scores(zeros, broken, chance=0.0).verdict == "collapsed"
    half = np.r_[np.ones(150), np.zeros(150)]
    assert judge_scores(half, broken, chance=0.0).verdict == "inconclusive"
    no_chance = judge_scores(half, broken, chance=None)
    assert no_chance.verdict == "inconclusive" and "could not be paired" in no_chance.reason


def test_too_few_documents_stay_inconclusive():
    verdict = judge_accuracy(np.zeros(10), np.full(10, np.nan), chance=0.25)
    assert verdict.verdict == "inconclusive" and "min_samples" in verdict.reason


def test_a_finite_baseline_is_still_paired():
    base = _correct(1200, 1600)
    assert judge_accuracy(base.copy(), base, chance=0.25).verdict == "lossless"
