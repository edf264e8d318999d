"""Chance levels and retention, checked against hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantsweep.verdicts import chance


def test_multiple_choice_chance_is_mean_of_reciprocals():
    counts = [4, 4, 2, 5, 3]
    expected = (0.25 + 0.25 + 0.5 + 0.2 + 1 / 3) / 5
    assert chance.multiple_choice_chance(counts) == pytest.approx(expected)
    assert chance.multiple_choice_chance(np.full(1000, 4)) == 0.25
    assert chance.multiple_choice_chance([2.0, 2.0]) == 0.5


@pytest.mark.parametrize(
    "counts,error", [([], ValueError), ([4, 1], ValueError), ([4, 2.5], TypeError), ([[4, 4]], ValueError)]
)
def test_multiple_choice_chance_rejects_bad_counts(counts, error):
    with pytest.raises(error):
        chance.multiple_choice_chance(counts)


def test_exact_match_chance_floor():
    assert chance.exact_match_chance() == 0.0
    assert chance.exact_match_chance(0.1) == 0.1
    with pytest.raises(ValueError, match="floor"):
        chance.exact_match_chance(1.0)
    with pytest.raises(ValueError, match="floor"):
        chance.exact_match_chance(-0.1)


def test_uniform_model_has_cross_entropy_log_v_and_perplexity_v():
    vocab = 32000
    assert chance.chance_cross_entropy(vocab) == pytest.approx(math.log(vocab))
    assert chance.chance_perplexity(vocab) == 32000.0
    # A uniform model assigns log V nats to every token of every document.
    tokens = np.array([17, 250, 3])
    nll = tokens * math.log(vocab)
    assert chance.cross_entropy(nll, tokens) == pytest.approx(math.log(vocab))
    assert chance.perplexity(nll, tokens) == pytest.approx(vocab)
    with pytest.raises(ValueError, match="vocab_size"):
        chance.chance_cross_entropy(1)
    with pytest.raises(TypeError, match="vocab_size"):
        chance.chance_cross_entropy(3.5)


def test_corpus_cross_entropy_is_token_weighted_not_mean_of_documents():
    nll, tokens = np.array([10.0, 90.0]), np.array([10, 30])
    assert chance.cross_entropy(nll, tokens) == pytest.approx(100.0 / 40.0)
    assert chance.perplexity(nll, tokens) == pytest.approx(math.exp(2.5))
    assert chance.cross_entropy(nll, tokens) != pytest.approx(np.mean(nll / tokens))
    with pytest.raises(ValueError, match="positive"):
        chance.cross_entropy([1.0], [0])


def test_perplexity_overflow_is_inf_not_error():
    assert chance.perplexity([1e6], [1]) == math.inf


def test_retention_formulas_by_hand():
    assert chance.accuracy_retention(0.26, 0.9, 0.25) == pytest.approx(0.01 / 0.65)
    assert chance.accuracy_retention(0.9, 0.9, 0.25) == pytest.approx(1.0)
    assert math.isnan(chance.accuracy_retention(0.3, 0.25, 0.25))
    log_v = math.log(1000)
    assert chance.perplexity_retention(3.0, 2.0, 1000) == pytest.approx((log_v - 3.0) / (log_v - 2.0))
    assert chance.perplexity_retention(log_v, 2.0, 1000) == pytest.approx(0.0)
    assert math.isnan(chance.perplexity_retention(3.0, log_v + 0.1, 1000))
