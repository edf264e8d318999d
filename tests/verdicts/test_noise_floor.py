"""The A/A control's difference in the ladder: neither lossless nor degraded may rest on it."""

from __future__ import annotations

import numpy as np
import pytest

from quantsweep.verdicts.config import VerdictConfig
from quantsweep.verdicts.judge import judge_accuracy
from quantsweep.verdicts.rules import Comparison, decide


def _decide(low, high, floor, p=0.001):
    return decide(
        Comparison(500, low, high, 0.01, p, "drop", "McNemar"), VerdictConfig(), lambda: None, noise_floor=floor
    )


def test_floor_takes_lossless_and_degraded_away_only_when_it_matters():
    assert _decide(-0.004, 0.006, 0.0)[0] == "lossless"
    assert _decide(-0.004, 0.006, 0.003)[0] == "lossless"  # 0.006 + 0.003 <= 0.01
    verdict, reason = _decide(-0.004, 0.006, 0.005)
    assert verdict == "inconclusive" and "A/A difference" in reason
    assert _decide(0.02, 0.05, 0.0)[0] == "degraded"
    assert _decide(0.02, 0.05, 0.019)[0] == "degraded"
    verdict, reason = _decide(0.02, 0.05, 0.03)
    assert verdict == "inconclusive" and "A/A difference" in reason


def test_floor_zero_is_the_plain_ladder_and_negative_is_refused():
    for low, high in ((-0.004, 0.006), (0.02, 0.05), (-0.03, 0.04)):
        c = Comparison(500, low, high, 0.01, 0.001, "drop", "McNemar")
        assert decide(c, VerdictConfig(), lambda: None) == decide(c, VerdictConfig(), lambda: None, noise_floor=0.0)
    with pytest.raises(ValueError, match="noise_floor"):
        _decide(0.0, 0.0, -0.1)


def test_judge_accuracy_passes_the_floor_to_the_ladder():
    base = np.r_[np.ones(900), np.zeros(100)]
    worse = base.copy()
    worse[:30] = 0  # a 3-point drop
    assert judge_accuracy(worse, base, chance=0.25).verdict == "degraded"
    judged = judge_accuracy(worse, base, chance=0.25, noise_floor=0.05)  # batching alone moved it 5 points
    assert judged.verdict == "inconclusive" and "A/A" in judged.reason


def test_lower_bound_above_the_floor_without_significance_says_so():
    # the interval clears the A/A difference but the paired test does not: the reason must say
    # exactly that (the floor ladder once fell through to "neither ... nor above the A/A difference")
    verdict, reason = _decide(0.02, 0.05, 0.01, p=0.2)
    assert verdict == "inconclusive"
    assert reason == "lower bound of the drop 2% > A/A difference 1% but McNemar p = 0.2 >= alpha = 0.05"
    plain = _decide(0.02, 0.05, 0.0, p=0.2)
    assert plain == ("inconclusive", "lower bound of the drop 2% > 0 but McNemar p = 0.2 >= alpha = 0.05")
