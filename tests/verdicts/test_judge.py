"""judge_task picks the right comparison for each kind of lm-eval metric."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from quantsweep.eval.harness import MetricResult, SampleOutcome, TaskResult
from quantsweep.verdicts.task import judge_task

N = 200


def _lambada_like(loglikelihoods) -> TaskResult:
    """A loglikelihood task whose `perplexity` per document is the continuation's log-likelihood (lm-eval's form)."""
    samples = [SampleOutcome(doc_id=i, scores={"perplexity": float(ll)}) for i, ll in enumerate(loglikelihoods)]
    value = math.exp(-float(np.mean(loglikelihoods)))
    return TaskResult(
        "lambada_like",
        "loglikelihood",
        {"perplexity": MetricResult("perplexity", value, None, N, False)},
        samples,
        0,
        0,
    )


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


# --- perplexity chance from the unigram distribution -------------------------------------------


def _rolling(per_doc_nll, tokens_per_doc, unigram=None) -> TaskResult:
    samples = [
        SampleOutcome(doc_id=i, scores={"word_perplexity": (-float(nll), 10)}, n_tokens=int(t))
        for i, (nll, t) in enumerate(zip(per_doc_nll, tokens_per_doc))
    ]
    ce = float(np.sum(per_doc_nll) / np.sum(tokens_per_doc))
    metric = MetricResult("word_perplexity", math.exp(ce), None, len(samples), False)
    return TaskResult(
        "ppl_like", "loglikelihood_rolling", {"word_perplexity": metric}, samples, 0, 0, unigram_chance_nats=unigram
    )


def test_perplexity_collapse_is_judged_against_the_unigram_chance_of_the_scored_tokens():
    rng = np.random.default_rng(1)
    vocab = 5000
    # the scored text: 60 documents of 50 tokens drawn from a Zipf-like distribution over 300 ids
    weights = 1.0 / np.arange(1, 301)
    text = rng.choice(300, size=(60, 50), p=weights / weights.sum())
    counts = Counter(text.ravel().tolist())
    total = sum(counts.values())
    unigram = -sum(c / total * math.log(c / total) for c in counts.values())  # reference, written here
    assert 3.0 < unigram < math.log(vocab) - 2
    tokens = np.full(60, 50)
    base_nll = 2.0 * tokens * rng.uniform(0.9, 1.1, 60)  # fp: about 2 nats per token
    worse_nll = (unigram + 0.5) * tokens * rng.uniform(0.98, 1.02, 60)  # worse than a frequency table
    baseline_task = _rolling(base_nll, tokens, unigram)
    judged = judge_task(_rolling(worse_nll, tokens, unigram), baseline_task, metric="word_perplexity", vocab_size=vocab)
    assert judged["verdict"] == "collapsed"
    assert judged["chance_reference"] == "unigram"
    assert judged["chance_unigram_nats"] == pytest.approx(unigram)
    assert judged["chance_uniform_nats"] == pytest.approx(math.log(vocab))
    assert judged["chance"] == pytest.approx(math.exp(unigram))
    assert "retention CI upper" in judged["reason"]
    assert judged["cross_entropy_nats"] == pytest.approx(worse_nll.sum() / tokens.sum())
    # the same cell judged against log V keeps a large share of the margin: only degraded
    uniform = judge_task(
        _rolling(worse_nll, tokens), _rolling(base_nll, tokens), metric="word_perplexity", vocab_size=vocab
    )
    assert uniform["verdict"] == "degraded"
    assert uniform["chance_reference"] == "uniform" and uniform["chance_unigram_nats"] is None
    assert uniform["chance"] == vocab
    expected_retained = (math.log(vocab) - worse_nll.sum() / tokens.sum()) / (
        math.log(vocab) - base_nll.sum() / tokens.sum()
    )
    assert uniform["retained"] == pytest.approx(expected_retained)


def test_unigram_chance_of_the_baseline_is_used_when_the_recipe_lacks_it():
    tokens = np.full(30, 20)
    baseline_task = _rolling(np.full(30, 40.0), tokens, unigram=4.0)
    judged = judge_task(_rolling(np.full(30, 41.0), tokens), baseline_task, metric="word_perplexity", vocab_size=1000)
    assert judged["chance_reference"] == "unigram" and judged["chance_unigram_nats"] == 4.0


# --- answer flips and clustered intervals -------------------------------------------------------


def _binary(correct, clusters=None) -> TaskResult:
    clusters = clusters if clusters is not None else [None] * len(correct)
    samples = [
        SampleOutcome(doc_id=i, scores={"acc": float(c)}, n_choices=4, cluster=g)
        for i, (c, g) in enumerate(zip(correct, clusters))
    ]
    metric = MetricResult("acc", float(np.mean(correct)), None, len(samples), True)
    return TaskResult("mc_like", "multiple_choice", {"acc": metric}, samples, 0, 0)


def test_answer_flips_count_both_directions_even_when_accuracy_is_unchanged():
    rng = np.random.default_rng(2)
    base = (rng.uniform(size=400) < 0.8).astype(float)
    quant = base.copy()
    right, wrong = np.flatnonzero(base == 1)[:30], np.flatnonzero(base == 0)[:30]
    quant[right], quant[wrong] = 0.0, 1.0  # 30 answers lost, 30 gained: same accuracy
    judged = judge_task(_binary(quant), _binary(base), metric="acc", vocab_size=10)
    assert judged["delta"] == 0.0
    assert judged["flips_right_to_wrong"] == pytest.approx(30 / 400)
    assert judged["flips_wrong_to_right"] == pytest.approx(30 / 400)
    assert judged["flips_n"] == 400
    assert judged["interval"] == "newcombe"


def test_clustered_documents_get_a_cluster_robust_interval_recorded_as_such():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(4)
    subjects = np.repeat(np.arange(12), 25)
    base = np.ones(300)
    lost_subjects = rng.choice(12, 3, replace=False)
    quant = np.where(np.isin(subjects, lost_subjects) & (rng.uniform(size=300) < 0.8), 0.0, 1.0)
    labels = [f"subject_{s}" for s in subjects]
    judged = judge_task(_binary(quant, labels), _binary(base, labels), metric="acc", vocab_size=10)
    ref = sm.OLS(quant - base, np.ones((300, 1))).fit(cov_type="cluster", cov_kwds={"groups": subjects}, use_t=True)
    assert judged["interval"] == "cluster-robust (12 clusters)"
    assert (judged["ci_low"], judged["ci_high"]) == pytest.approx(tuple(ref.conf_int(0.05)[0]), rel=1e-9)
    assert judged["p_value"] == pytest.approx(ref.pvalues[0], rel=1e-9)
    # three whole subjects lost is weak evidence with 12 subjects: the independent interval would call it
    # degraded, the clustered one cannot tell, and says how many documents would
    independent = judge_task(_binary(quant), _binary(base), metric="acc", vocab_size=10)
    assert independent["verdict"] == "degraded" and independent["interval"] == "newcombe"
    assert judged["verdict"] == "inconclusive"
    assert judged["ci_high"] - judged["ci_low"] > 2 * (independent["ci_high"] - independent["ci_low"])
    assert judged["documents_needed"] > independent["n"]
    assert f"about {judged['documents_needed']:,} documents would decide" in judged["reason"]


def test_clustered_per_document_scores_use_the_cluster_robust_interval_too():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(7)
    subjects = np.repeat(np.arange(8), 30)
    base = rng.uniform(0.2, 0.9, 240)
    quant = np.clip(base + rng.normal(0, 0.05, 8)[subjects] + rng.normal(0, 0.02, 240), 0, 1)

    def task(values):
        samples = [
            SampleOutcome(doc_id=i, scores={"f1_doc": float(v)}, cluster=f"s{g}")
            for i, (v, g) in enumerate(zip(values, subjects))
        ]
        return TaskResult(
            "f1_like",
            "generate_until",
            {"f1_doc": MetricResult("f1_doc", float(np.mean(values)), None, 240, True)},
            samples,
            0,
            0,
        )

    judged = judge_task(task(quant), task(base), metric="f1_doc", vocab_size=10)
    ref = sm.OLS(quant - base, np.ones((240, 1))).fit(cov_type="cluster", cov_kwds={"groups": subjects}, use_t=True)
    assert judged["interval"] == "cluster-robust (8 clusters)"
    assert (judged["ci_low"], judged["ci_high"]) == pytest.approx(tuple(ref.conf_int(0.05)[0]), rel=1e-9)
