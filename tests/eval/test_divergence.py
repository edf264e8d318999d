"""Token divergence from the baseline against the exact KL computed here from full logits.

The rolling scorer records the baseline's top-k + tail draws (:mod:`quantsweep.eval.divergence`),
then compares a perturbed model with them. The reference in each test runs both models'
full forward passes on the same windows (lm-eval's own windowing) and computes the exact
per-position KL(P || Q), top-1 agreement and correct-token probability change.

Documented error (module docstring): ``kl_mean`` is unbiased with Monte Carlo standard error
``kl_stderr`` (checked within 4 standard errors plus float32 round-off), ``kl_lower`` never
exceeds the exact KL, top-1 agreement and the probability change are exact.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance
from transformers import LlamaConfig, LlamaForCausalLM

import quantsweep
from quantsweep.eval.divergence import (
    DivergenceProbe,
    TokenReference,
    bytes_per_token,
    choice_divergence,
    choice_kl,
    reference_rows,
)
from quantsweep.eval.lm import ContextCachedLM

ROUND_OFF = 2e-5  # nats: float32 log-softmax of two models, summed over a few hundred positions


def _texts(n=12):
    words = "the cat sat on a mat while dogs ran in the park and birds sang".split()
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, size=int(rng.integers(20, 60)))) for _ in range(n)]


def _requests(texts, task="toy_ppl"):
    return [Instance("loglikelihood_rolling", {}, (text,), i, (task, i, 1)) for i, text in enumerate(texts)]


def _exact(base, recipe, lm, texts):
    """Exact per-position KL(P||Q), top-1 agreement and probability change, from full logits."""
    kls, same, delta = [], [], []
    with torch.no_grad():
        for text in texts:
            for ctx, cont in lm._windows(text):
                ids = torch.tensor([(ctx + cont)[-(lm.max_length + 1) :][:-1]])
                p = torch.log_softmax(base(input_ids=ids).logits[0, -len(cont) :].double(), -1)
                q = torch.log_softmax(recipe(input_ids=ids).logits[0, -len(cont) :].double(), -1)
                kls.append((p.exp() * (p - q)).sum(-1))
                same.append(p.argmax(-1) == q.argmax(-1))
                t = torch.tensor(cont)
                delta.append(q[torch.arange(len(cont)), t].exp() - p[torch.arange(len(cont)), t].exp())
    return torch.cat(kls).numpy(), torch.cat(same).numpy(), torch.cat(delta).numpy()


def _measured(base, recipe, tokenizer, texts, k=16, tail_samples=8, batch_size=4):
    recorder = DivergenceProbe(record=True, k=k, tail_samples=tail_samples)
    lm = ContextCachedLM(pretrained=base, tokenizer=tokenizer, batch_size=batch_size, divergence=recorder)
    base_totals = lm.loglikelihood_rolling(_requests(texts), disable_tqdm=True)
    stored = TokenReference.from_bytes(recorder.recorded["toy_ppl"].to_bytes())  # through the store's bytes
    comparer = DivergenceProbe(references={"toy_ppl": stored})
    lm_q = ContextCachedLM(pretrained=recipe, tokenizer=tokenizer, batch_size=batch_size, divergence=comparer)
    totals = lm_q.loglikelihood_rolling(_requests(texts), disable_tqdm=True)
    assert not lm.fallbacks and not lm_q.fallbacks
    return comparer.summary("toy_ppl"), lm, base_totals, totals, stored


def _check(summary, exact_kl, exact_same, exact_delta):
    assert summary["positions"] == exact_kl.size
    assert abs(summary["kl_mean"] - exact_kl.mean()) <= 4 * summary["kl_stderr"] + ROUND_OFF, summary
    assert summary["kl_lower"] <= exact_kl.mean() + ROUND_OFF
    assert summary["top1_agreement"] == pytest.approx(exact_same.mean(), abs=1e-12)
    assert summary["prob_delta_mean"] == pytest.approx(exact_delta.mean(), abs=1e-6)


def test_toy_divergence_matches_full_logits():
    base, tokenizer = quantsweep.load_model("toy", device="cpu")
    recipe = quantsweep.quantize(copy.deepcopy(base), "w3-rtn")
    texts = _texts()
    summary, lm, base_totals, totals, stored = _measured(base, recipe, tokenizer, texts)
    exact_kl, same, delta = _exact(base, recipe, lm, texts)
    assert exact_kl.mean() > 1e-3  # w3 really moves the toy's distributions
    _check(summary, exact_kl, same, delta)
    assert summary["kl_p99"] == pytest.approx(np.percentile(exact_kl, 99), rel=0.25)
    assert stored.positions() == exact_kl.size
    assert base_totals != totals  # the scores themselves are untouched by the probe (other models differ)


def test_identical_model_has_zero_divergence():
    base, tokenizer = quantsweep.load_model("toy", device="cpu")
    summary, *_ = _measured(base, base, tokenizer, _texts(4))
    assert abs(summary["kl_mean"]) < 1e-6 and summary["top1_agreement"] == 1.0
    assert summary["prob_delta_mean"] == 0.0


def _large_vocab_model(vocab=50_257, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # peaked next-token distributions, like a trained LM's
    return model


def test_large_vocabulary_divergence_matches_full_logits():
    _, tokenizer = quantsweep.load_model("toy", device="cpu")
    base = _large_vocab_model()
    recipe = copy.deepcopy(base)
    with torch.no_grad():
        for layer in recipe.model.layers:  # a 4-bit-like perturbation of every decoder weight
            for module in (layer.self_attn.q_proj, layer.mlp.down_proj, layer.mlp.up_proj):
                w = module.weight
                step = w.abs().amax(dim=1, keepdim=True) / 7
                module.weight.copy_(torch.round(w / step) * step)
    texts = _texts(6)
    summary, lm, *_ = _measured(base, recipe, tokenizer, texts, batch_size=2)
    exact_kl, same, delta = _exact(base, recipe, lm, texts)
    assert base.config.vocab_size >= 50_000 and exact_kl.mean() > 1e-4
    _check(summary, exact_kl, same, delta)


def test_reference_misses_a_document_and_says_so():
    base, tokenizer = quantsweep.load_model("toy", device="cpu")
    recorder = DivergenceProbe(record=True)
    lm = ContextCachedLM(pretrained=base, tokenizer=tokenizer, batch_size=4, divergence=recorder)
    lm.loglikelihood_rolling(_requests(_texts(2)), disable_tqdm=True)
    comparer = DivergenceProbe(references=recorder.recorded)
    lm = ContextCachedLM(pretrained=base, tokenizer=tokenizer, batch_size=4, divergence=comparer)
    lm.loglikelihood_rolling(_requests(_texts(3)), disable_tqdm=True)
    assert comparer.summary("toy_ppl") is None and "missing" in comparer.problems["toy_ppl"]


def test_choice_kl_matches_scipy():
    from scipy.special import softmax
    from scipy.stats import entropy

    rng = np.random.default_rng(1)
    p, q = rng.normal(size=5) * 3, rng.normal(size=5) * 3
    assert choice_kl(p, q) == pytest.approx(entropy(softmax(p), softmax(q)), rel=1e-10)
    figures = choice_divergence([(p, q), (p, p)])
    assert figures["kl_mean"] == pytest.approx(entropy(softmax(p), softmax(q)) / 2, rel=1e-10)
    with pytest.raises(ValueError, match="different options"):
        choice_kl([0.0, 1.0], [0.0])


def test_bytes_per_token_is_what_is_stored():
    base, tokenizer = quantsweep.load_model("toy", device="cpu")
    recorder = DivergenceProbe(record=True)
    lm = ContextCachedLM(pretrained=base, tokenizer=tokenizer, batch_size=4, divergence=recorder)
    lm.loglikelihood_rolling(_requests(_texts(4)), disable_tqdm=True)
    reference = recorder.recorded["toy_ppl"]
    arrays = sum(a.nbytes for doc in reference.documents.values() for a in doc.values())
    assert arrays == bytes_per_token() * reference.positions()


@pytest.mark.slow  # five quantized toys, two tasks each: about 20 s on 2 idle cores
def test_toy_kl_orders_rtn_recipes_by_bits():
    """Token KL and option KL both grow as the bits fall: w8 < w4 < w3 < w2 < w1 (toy, CPU fp32)."""
    from quantsweep.eval.divergence import divergence_fields

    base, tokenizer = quantsweep.load_model("toy", device="cpu")
    tasks = ["toy_ppl", "toy_mc4"]
    recorder = DivergenceProbe(record=True)
    baseline = quantsweep.evaluate(base, tokenizer, tasks, limit=24, divergence=recorder)
    references = {"toy_ppl": TokenReference.from_bytes(recorder.recorded["toy_ppl"].to_bytes())}
    token, options = [], []
    for bits in (8, 4, 3, 2, 1):
        model = quantsweep.quantize(copy.deepcopy(base), f"w{bits}-rtn")
        result = quantsweep.evaluate(
            model, tokenizer, tasks, limit=24, divergence=DivergenceProbe(references=references)
        )
        token.append(result.tasks["toy_ppl"].divergence["kl_mean"])
        options.append(divergence_fields(result.tasks["toy_mc4"], baseline.tasks["toy_mc4"])["kl_mean"])
    assert token == sorted(token) and len(set(token)) == 5, token
    assert options == sorted(options) and len(set(options)) == 5, options


def test_a_non_finite_baseline_row_is_stored_as_nan_not_an_error():
    """A baseline with NaN log-probabilities (a broken checkpoint) still records its cell; the row compares as NaN."""
    logprobs = torch.log_softmax(torch.randn(2, 10), dim=-1)
    logprobs[0] = float("nan")
    rows = reference_rows(logprobs, torch.tensor([1, 2]), k=3, tail_samples=4)
    assert torch.isnan(rows["top_logp"][0]).all() and torch.isfinite(rows["top_logp"][1]).all()
    assert rows["tail_ids"].shape == (2, 4)


def test_choice_divergence_leaves_out_documents_whose_options_are_not_finite():
    finite = ([-1.0, -2.0], [-1.5, -0.5])
    assert choice_divergence([([None, -1.0], [-1.0, -2.0]), finite])["documents"] == 1
    assert choice_divergence([finite])["kl_mean"] == pytest.approx(choice_kl(*finite))
    assert choice_divergence([([float("inf"), -1.0], [-1.0, -2.0])]) is None


def test_an_empty_document_is_neither_recorded_nor_missing():
    base, tokenizer = quantsweep.load_model("toy", device="cpu")
    recipe = quantsweep.quantize(copy.deepcopy(base), "w3-rtn")
    texts = _texts(3)
    with_empty = [texts[0], "", texts[1], texts[2]]
    summary, lm, base_totals, totals, stored = _measured(base, recipe, tokenizer, with_empty)
    assert base_totals[1] == 0.0 and totals[1] == 0.0 and len(stored.documents) == 3
    exact_kl, same, delta = _exact(base, recipe, lm, texts)  # the same figures as without the empty text
    assert summary["positions"] == stored.positions() == exact_kl.size
    _check(summary, exact_kl, same, delta)


def test_reference_rows_do_not_depend_on_the_batch():
    base, tokenizer = quantsweep.load_model("toy", device="cpu")
    texts = _texts(5)
    references = []
    for batch_size, order in ((1, texts), (4, texts), (8, texts[::-1])):
        recorder = DivergenceProbe(record=True)
        lm = ContextCachedLM(pretrained=base, tokenizer=tokenizer, batch_size=batch_size, divergence=recorder)
        lm.loglikelihood_rolling(_requests(order), disable_tqdm=True)
        references.append(recorder.recorded["toy_ppl"].documents)
    first = references[0]
    assert len(first) == 5 and all(doc["tail_ids"].shape[1] == 8 for doc in first.values())
    for other in references[1:]:
        assert other.keys() == first.keys()
        for key, doc in first.items():
            for name in ("top_ids", "tail_ids"):
                np.testing.assert_array_equal(np.asarray(other[key][name]), np.asarray(doc[name]))
            np.testing.assert_allclose(np.asarray(other[key]["tail_logp"]), np.asarray(doc["tail_logp"]), atol=1e-5)


def test_inverse_cdf_draws_follow_the_tail_distribution():
    from scipy import stats

    logp = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0, 0.5, 0.0, -1.0]]), dim=-1)
    rows = reference_rows(
        logp.expand(4000, -1),
        torch.zeros(4000, dtype=torch.long),
        k=2,
        tail_samples=5,
        generator=torch.Generator().manual_seed(1),
    )
    counts = np.bincount(rows["tail_ids"].numpy().ravel(), minlength=6)
    assert counts[:2].sum() == 0  # never a top-k token
    tail = logp[0, 2:].double().exp().numpy()
    expected = tail / tail.sum() * counts.sum()
    assert stats.chisquare(counts[2:], expected).pvalue > 1e-3


def test_a_task_the_scorer_never_asked_about_does_not_fetch_its_reference():
    """Every document empty: nothing was compared, so the baseline is not fetched (it could mean a 30-minute wait)."""
    from quantsweep.eval.divergence import DivergenceProbe
    from quantsweep.eval.harness import _token_divergence

    asked = []
    probe = DivergenceProbe(load_reference=lambda task: asked.append(task) or "never reached")
    figures = _token_divergence(probe, "toy_ppl")
    assert asked == [] and "no document of this task was compared" in figures["error"]
    probe.reference("toy_ppl")  # the scorer asks once; its answer is kept, never asked again
    probe.reference("toy_ppl")
    assert asked == ["toy_ppl"] and _token_divergence(probe, "toy_ppl") == {"error": "never reached"}


def test_a_tail_draw_rounded_onto_a_token_of_no_weight_takes_the_last_token_of_weight():
    """u = 1 (or u * total rounded up to the total) points past every weight: the draw is the row's last real token."""
    from quantsweep.eval.divergence import _inverse_cdf

    weights = torch.tensor([[1.0, 2.0, 0.0, 0.0], [1.0, 0.0, 2.0, 0.0]])  # the top-k ids carry no tail weight
    ids = _inverse_cdf(weights, torch.tensor([[1.0, 0.0, 0.4], [1.0, 0.0, 0.4]]))
    assert ids.tolist() == [[1, 0, 1], [2, 0, 2]]
    assert bool((weights.gather(1, ids) > 0).all())  # never a token of no weight


def test_tied_top_tokens_agree_whatever_order_the_baseline_stored_them_in():
    """bf16 logits tie: an unchanged model must show top-1 agreement 1 (an A/A control on the H200 showed 0.99)."""
    from quantsweep.eval.divergence import compare_rows, reference_rows

    logits = torch.tensor([[5.0, 5.0, 1.0, 0.0, -1.0], [0.0, 3.0, 3.0, 3.0, 1.0], [4.0, 1.0, 0.0, 0.0, 0.0]])
    logp = torch.log_softmax(logits, dim=-1)
    targets = torch.zeros(3, dtype=torch.long)
    rows = reference_rows(logp, targets, k=3)
    ids = rows["top_ids"].clone()  # the baseline stored the tied best ids in reverse order of index
    ids[0, :2] = torch.tensor([1, 0], dtype=ids.dtype)
    ids[1, :3] = torch.tensor([3, 2, 1], dtype=ids.dtype)
    swapped = {**rows, "top_ids": ids}  # their log-probabilities are equal, so top_logp holds as stored
    assert compare_rows(logp, targets, swapped)["top1"].tolist() == [True, True, True]
    moved = torch.log_softmax(logits + torch.tensor([0.0, 0.0, 0.0, 0.0, 9.0]), dim=-1)  # a new winner: id 4
    assert compare_rows(moved, targets, swapped)["top1"].tolist() == [False, False, False]
    # id 2 alone on top: one of row 1's tied best, but not row 0's nor row 2's
    broken_tie = torch.log_softmax(logits + torch.tensor([0.0, 0.0, 4.5, 0.0, 0.0]), dim=-1)
    assert compare_rows(broken_tie, targets, swapped)["top1"].tolist() == [False, True, False]
