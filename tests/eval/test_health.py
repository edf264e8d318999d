"""Known ground truth for non-finite detection and collapse, on a random-weight toy-shaped model."""

import pytest
import torch
from transformers import LlamaForCausalLM

from quantsweep.eval.harness import evaluate
from quantsweep.eval.health import diagnose_nonfinite
from quantsweep.verdicts.task import judge_task


@pytest.fixture(scope="module")
def random_toy():
    from quantsweep.toy.tokenizer import build_tokenizer
    from quantsweep.toy.train import TrainConfig, model_config

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config(TrainConfig(), len(tokenizer))).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def random_baseline(random_toy):
    model, tokenizer = random_toy
    return evaluate(model, tokenizer, ["toy_mc4"], limit=300).tasks["toy_mc4"]


def test_random_weights_are_collapsed_against_a_real_baseline(random_toy, random_baseline):
    """Random weights on toy_mc4 answer at chance; judged against a perfect baseline that is collapse."""
    import dataclasses

    baseline = dataclasses.replace(
        random_baseline, samples=[dataclasses.replace(s, scores={"acc": 1.0}) for s in random_baseline.samples]
    )
    judged = judge_task(random_baseline, baseline, metric="acc", vocab_size=random_toy[0].config.vocab_size)
    assert abs(random_baseline.metrics["acc"].value - 0.25) < 0.08
    assert judged["chance"] == pytest.approx(0.25)
    assert judged["verdict"] == "collapsed"


def test_inf_weight_is_nonfinite_and_diagnosed(random_toy, random_baseline):
    model, tokenizer = random_toy
    target = model.model.layers[2].mlp.up_proj.weight
    saved = target.detach().clone()
    try:
        with torch.no_grad():
            target[3, 5] = float("inf")
        task = evaluate(model, tokenizer, ["toy_mc4"], limit=300).tasks["toy_mc4"]
        assert task.nonfinite_samples == 300
        judged = judge_task(task, random_baseline, metric="acc", vocab_size=model.config.vocab_size)
        # lm-eval's argmax over NaN picks option 0 and looks "near chance"; we must say non-finite
        assert judged["verdict"] == "non-finite" and judged["nonfinite_samples"] == 300
        report = diagnose_nonfinite(model, tokenizer)
        assert report.first_layer == 2
        assert report.first_module == "model.layers.2.mlp.up_proj"
        assert report.nonfinite_weights == ["model.layers.2.mlp.up_proj.weight"]
        assert report.logits_finite is False
    finally:
        with torch.no_grad():
            target.copy_(saved)


def test_finite_model_diagnosis_is_clean(random_toy):
    model, tokenizer = random_toy
    report = diagnose_nonfinite(model, tokenizer)
    assert report.logits_finite and report.first_module is None and report.nonfinite_weights == []


def test_generation_nonfinite_counted_per_sample(random_toy):
    model, tokenizer = random_toy
    bias = model.model.layers[0].self_attn.q_proj.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias[0] = float("nan")
        task = evaluate(model, tokenizer, ["toy_gen"], limit=25).tasks["toy_gen"]
        assert task.nonfinite_samples == 25
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def test_perplexity_metrics_share_one_judgement(random_toy):
    """word/byte/bits-per-byte perplexity are judged once on per-token cross-entropy, identically."""
    from quantsweep.verdicts.task import judge_all_metrics

    model, tokenizer = random_toy
    task = evaluate(model, tokenizer, ["toy_ppl"], limit=25).tasks["toy_ppl"]
    judged = judge_all_metrics(task, task, vocab_size=model.config.vocab_size)
    assert set(judged) == set(task.metrics) and len(judged) == 3
    reference = judge_task(task, task, metric="byte_perplexity", vocab_size=model.config.vocab_size)
    assert all(verdict == reference for verdict in judged.values())
