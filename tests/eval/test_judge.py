"""judge_task picks the right comparison for each kind of lm-eval metric."""

from __future__ import annotations

import math

import numpy as np

from quantsweep.eval.harness import MetricResult, SampleOutcome, TaskResult
from quantsweep.eval.judge import judge_task

N = 200


def _lambada_like(loglikelihoods) -> TaskResult:
    """A loglikelihood task whose `perplexity` per document is the continuation's log-likelihood (lm-eval's form)."""
    samples = [SampleOutcome(doc_id=i, scores={"perplexity": float(ll)}) for i, ll in enumerate(loglikelihoods)]
    value = math.exp(-float(np.mean(loglikelihoods)))
    return TaskResult("lambada_like", "loglikelihood", {"perplexity": MetricResult("perplexity", value, None, N, False)},
                      samples, 0, 0)


def test_loglikelihood_perplexity_judges_a_worse_model_as_degraded():
    rng = np.random.default_rng(0)
    base_ll = -rng.uniform(1.0, 4.0, N)
    baseline = _lambada_like(base_ll)
    worse = judge_task(_lambada_like(base_ll - 2.0), baseline, metric="perplexity", vocab_size=1000)
    # reference: mean log-likelihood down 2 nats is perplexity up exp(2) - 1 = 639 %
    assert worse["verdict"] == "degraded"
    assert math.isclose(worse["delta"], -2.0)  # in nats of mean log-likelihood
    same = judge_task(_lambada_like(base_ll.copy()), baseline, metric="perplexity", vocab_size=1000)
    assert same["verdict"] == "lossless"


def test_loglikelihood_perplexity_tolerance_is_the_relative_perplexity_tolerance():
    base_ll = -np.linspace(1.0, 4.0, N)
    baseline = _lambada_like(base_ll)
    # perplexity up 0.5 % (under the 1 % tolerance) and 3 % (over it), on every document alike
    small = judge_task(_lambada_like(base_ll - math.log(1.005)), baseline, metric="perplexity", vocab_size=1000)
    large = judge_task(_lambada_like(base_ll - math.log(1.03)), baseline, metric="perplexity", vocab_size=1000)
    assert small["verdict"] == "lossless"
    assert large["verdict"] == "degraded"


def test_corpus_level_metrics_are_inconclusive_not_a_crash():
    """F1/MCC log a (gold, prediction) pair per document; there is nothing per document to pair."""
    def task(predictions):
        samples = [SampleOutcome(doc_id=i, scores={"f1": (i % 2, p)}) for i, p in enumerate(predictions)]
        return TaskResult("cb_like", "multiple_choice", {"f1": MetricResult("f1", 0.5, None, N, True)}, samples, 0, 0)

    baseline = task([i % 2 for i in range(N)])
    assert judge_task(baseline, None, metric="f1", vocab_size=10, is_baseline=True)["verdict"] == "baseline"
    assert judge_task(task([0] * N), baseline, metric="f1", vocab_size=10)["verdict"] == "inconclusive"
