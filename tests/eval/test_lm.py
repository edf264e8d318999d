"""ContextCachedLM gives lm-eval's own numbers: every per-document log-likelihood within 1e-4 nats.

Each test runs lm-eval's ``HFLM`` and quantsweep's :class:`ContextCachedLM` on the same
model and the same requests (fp32) and compares every response: log-likelihoods within
``TOLERANCE_NATS``, ``is_greedy`` flags, accuracies and generated text identical.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import lm_eval
import pytest
import torch
from helpers.checkpoints import pangu_shaped_llama
from helpers.suite_data import tiny_model_and_tokenizer, write_suite_data
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

import quantsweep
from quantsweep.eval import offline
from quantsweep.eval.lm import ContextCachedLM
from quantsweep.eval.tasks import manager_for

TOLERANCE_NATS = 1e-4
TOY_TASKS = ["toy_mc4", "toy_mc2", "toy_ppl", "toy_gen"]
OFFLINE_TASKS = ["arc_easy", "hellaswag", "piqa", "winogrande", "lambada_openai", "gsm8k", "wikitext"]


def _responses(lm, tasks, limit, task_configs=None):
    specs = [task_configs.get(t, t) for t in tasks] if task_configs else tasks
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=specs,
        limit=limit,
        log_samples=True,
        verbosity="ERROR",
        bootstrap_iters=0,
        task_manager=manager_for([t for t in tasks if t not in (task_configs or {})]),
    )
    samples = {
        task: sorted(rows, key=lambda r: (r["doc_id"], r.get("filter", ""))) for task, rows in output["samples"].items()
    }
    return samples, output["results"]


def _flat(value):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flat(item)
    else:
        yield value


def assert_same_numbers(
    model, tokenizer, tasks, limit, task_configs=None, batch_size=4, expect_fallback=False, **kwargs
):
    """Run both LMs and compare every response; returns how many numbers were compared."""
    theirs, their_metrics = _responses(
        HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs), tasks, limit, task_configs
    )
    lm = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)
    ours, our_metrics = _responses(lm, tasks, limit, task_configs)
    assert bool(lm.fallbacks) == expect_fallback, lm.fallbacks  # the fast path really ran
    assert sorted(ours) == sorted(theirs)
    compared = 0
    for task in theirs:
        assert len(ours[task]) == len(theirs[task]) > 0, task
        for mine, reference in zip(ours[task], theirs[task]):
            assert mine["doc_id"] == reference["doc_id"]
            for a, b in zip(_flat(mine["resps"]), _flat(reference["resps"]), strict=True):
                if isinstance(b, float):
                    assert math.isfinite(b), (task, b)
                    assert abs(a - b) <= TOLERANCE_NATS, (task, mine["doc_id"], a, b)
                    compared += 1
                else:  # is_greedy flags and generated text
                    assert a == b, (task, mine["doc_id"], a, b)
        for key, value in their_metrics[task].items():
            if (
                key.endswith(",none")
                and "stderr" not in key
                and key.split(",")[0] in ("acc", "acc_norm", "exact_match")
            ):
                assert our_metrics[task][key] == value, (task, key)
    return compared


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    model, tokenizer = quantsweep.load_model("toy", device="cpu", dtype="float32")
    return model, tokenizer


@pytest.fixture(scope="module")
def pangu_shaped(toy):
    """A random 2-layer openPangu-Embedded-shaped Llama (q/k/v/o bias, 4 heads over 2 KV heads) on the toy vocab."""
    _, tokenizer = toy
    model = pangu_shaped_llama(tokenizer, bias_std=0.5)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    return model, tokenizer


# ---------------------------------------------------------------- identical numbers


def test_every_toy_task_matches_lm_eval(toy):
    model, tokenizer = toy
    assert assert_same_numbers(model, tokenizer, TOY_TASKS, limit=40) > 200


def test_random_pangu_shaped_model_matches_lm_eval(pangu_shaped):
    """Padding across documents of different lengths, q/k/v/o biases and grouped KV heads."""
    model, tokenizer = pangu_shaped
    assert assert_same_numbers(model, tokenizer, ["toy_mc4", "toy_mc2", "toy_ppl"], limit=30, batch_size=7) > 150


def test_offline_suite_data_matches_lm_eval(tmp_path):
    torch.set_num_threads(1)
    model, tokenizer = tiny_model_and_tokenizer()
    configs = offline.local_task_configs(OFFLINE_TASKS, write_suite_data(tmp_path))
    assert assert_same_numbers(model, tokenizer, OFFLINE_TASKS, limit=3, task_configs=configs) > 40


def _trailing_space_model():
    """A byte-level BPE whose words carry their leading space (GPT-2 style), and a random model over it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["The capital of France is Paris and the capital of Italy is Rome ."] * 20
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def _instances(pairs):
    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


def _direct_loglikelihood(model, context: list[int], continuation: list[int]) -> float:
    """Reference: one plain forward over context + continuation[:-1], summed target log-probabilities."""
    with torch.no_grad():
        logits = model(torch.tensor([context + continuation[:-1]])).logits[0, len(context) - 1 :]
    return float(logits.log_softmax(-1).gather(1, torch.tensor(continuation)[:, None]).sum())


def test_tokenizer_that_moves_a_trailing_space():
    """lm-eval's ``_encode_pair`` moves a context's trailing space into the continuation.

    The reference is ``HFLM(logits_cache=False)`` and a plain forward written here: with
    these requests lm-eval 0.4.13's one-token-continuation cache (on by default) scores
    " Paris" and " Rome" at the wrong position, because ``("The capital of", " France is
    Paris")`` has the same context+continuation[:-1] tokens as their context and, with its
    longer continuation, is the group's representative; its ``gather`` then reads the
    first of three positions. (Found by this test; the default HFLM gives -5.64 where the
    forward gives -5.55.)
    """
    model, tokenizer = _trailing_space_model()
    pairs = [(f"The capital of {country} is ", city) for country in ("France", "Italy") for city in ("Paris", "Rome")]
    pairs += [("The capital of", " France is Paris"), ("The capital of France is ", "Rome .")]
    ours = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=3)
    encoded = [ours._encode_pair(*pair) for pair in pairs]
    assert tokenizer.convert_ids_to_tokens(encoded[0][1][:1]) == ["ĠParis"]  # the space moved to the continuation
    mine = ours.loglikelihood(_instances(pairs))
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3, logits_cache=False).loglikelihood(
        _instances(pairs)
    )
    for (a, greedy_a), (b, greedy_b), (context, continuation) in zip(mine, theirs, encoded, strict=True):
        assert abs(a - b) <= TOLERANCE_NATS and greedy_a == greedy_b
        assert abs(a - _direct_loglikelihood(model, context, continuation)) <= TOLERANCE_NATS


# ---------------------------------------------------------------- perplexity in chunks


def _rolling(lm, texts):
    return lm.loglikelihood_rolling(
        [
            Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0, metadata=("toy_ppl", i, 1))
            for i, text in enumerate(texts)
        ]
    )


def test_chunked_perplexity_equals_unchunked_and_lm_eval_across_windows(pangu_shaped):
    from quantsweep.toy.tasks import ppl_docs

    model, tokenizer = pangu_shaped
    texts = [doc["text"] for doc in ppl_docs()[:6]]
    window = 24  # several windows per document
    assert max(len(tokenizer(t)["input_ids"]) for t in texts) > 2 * window
    unchunked = _rolling(
        ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=window, chunk_tokens=10**6),
        texts,
    )
    chunked = _rolling(
        ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=window, chunk_tokens=5), texts
    )
    reference = _rolling(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=window), texts)
    for a, b, c in zip(chunked, unchunked, reference, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b)
        assert abs(a - c) <= TOLERANCE_NATS


def test_unigram_chance_counts_the_scored_tokens(toy):
    model, tokenizer = toy
    from quantsweep.toy.tasks import ppl_docs

    result = quantsweep.evaluate(model, tokenizer, ["toy_ppl"], limit=10).tasks["toy_ppl"]
    counts = Counter()
    for doc in ppl_docs()[:10]:  # every token of a document is scored exactly once
        counts.update(tokenizer(doc["text"], add_special_tokens=False)["input_ids"])
    total = sum(counts.values())
    expected = -sum(c / total * math.log(c / total) for c in counts.values())
    assert result.unigram_chance_nats == pytest.approx(expected, rel=1e-12)
    assert result.max_length == 512  # the toy model's positions


# ---------------------------------------------------------------- fallbacks and bad input


@pytest.fixture
def lm_log():
    """Warnings of quantsweep.eval.lm, caught on its own logger (lm-eval reconfigures the root logger)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("quantsweep.eval.lm")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_left_truncation_falls_back_to_lm_eval_and_is_logged(toy, lm_log):
    model, tokenizer = toy
    assert assert_same_numbers(model, tokenizer, ["toy_mc4"], limit=10, max_length=5, expect_fallback=True) > 0
    assert sum("left truncation" in r.getMessage() for r in lm_log) == 1  # logged once


class _NoCacheModel(torch.nn.Module):
    """A causal LM whose forward takes no KV cache (only input ids)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.device, self.dtype = inner, inner.config, inner.device, inner.dtype

    def forward(self, input_ids):
        return self.inner(input_ids=input_ids)

    def tie_weights(self):
        return None


def test_model_without_past_key_values_falls_back_logged_not_crashing(toy, lm_log):
    model, tokenizer = toy
    plain = _NoCacheModel(model)
    lm = ContextCachedLM(pretrained=plain, tokenizer=tokenizer, batch_size=4, backend="causal")
    pairs = [("Q: where does Ada live? A:", " in Paris"), ("Q: where does Ada live? A:", " in Rome")]
    mine = lm.loglikelihood(_instances(pairs))
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4).loglikelihood(_instances(pairs))
    assert [round(a, 4) for a, _ in mine] == [round(b, 4) for b, _ in theirs]
    assert any("takes no past_key_values" in r.getMessage() for r in lm_log)
    assert lm.fallbacks


def test_max_length_above_the_models_positions_names_both_numbers(toy):
    model, tokenizer = toy
    with pytest.raises(ValueError, match="max_length 4096 exceeds the model's 512 positions"):
        quantsweep.evaluate(model, tokenizer, ["toy_mc4"], limit=2, max_length=4096)


def test_max_length_below_the_longest_continuation_names_both_numbers(toy):
    model, tokenizer = toy
    lm = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=2, max_length=2)
    with pytest.raises(ValueError, match=r"max_length 2 is below the longest continuation \(3 tokens\)"):
        lm.loglikelihood(_instances([("Ada lives", " in the city")]))


def test_nan_weights_still_give_nonfinite_loglikelihoods(toy):
    model, tokenizer = toy
    import copy

    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    task = quantsweep.evaluate(broken, tokenizer, ["toy_mc4", "toy_ppl"], limit=5)
    assert task.tasks["toy_mc4"].nonfinite_samples == 5
    assert task.tasks["toy_ppl"].nonfinite_samples == 5


class _CacheLessOutputModel(_NoCacheModel):
    """Takes a ``cache`` argument but returns none (a cache type we cannot expand)."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, **kwargs):
        return self.inner(input_ids=input_ids, use_cache=False)


def test_model_returning_no_cache_falls_back_for_the_remaining_requests(toy, lm_log, monkeypatch):
    model, tokenizer = toy
    lm = ContextCachedLM(pretrained=_CacheLessOutputModel(model), tokenizer=tokenizer, batch_size=2, backend="causal")
    pairs = [
        (f"Q: where does {name} live? A:", f" in {city}") for name in ("Ada", "Bo", "Cy") for city in ("Paris", "Rome")
    ]
    mine = lm.loglikelihood(_instances(pairs))
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2).loglikelihood(_instances(pairs))
    assert max(abs(a - b) for (a, _), (b, _) in zip(mine, theirs)) <= TOLERANCE_NATS
    assert [r.getMessage() for r in lm_log if "reorderable" in r.getMessage()]
    assert lm.fallbacks == {"_CacheLessOutputModel returned no reorderable KV cache": len(pairs)}
    # scoring's reason stays scoring's: generation (which builds its own cache) is not sent down lm-eval's path for it
    assert "reorderable" not in (lm._generation_unsupported() or "")
    retried = []
    real_score = lm._score_from_cache
    monkeypatch.setattr(lm, "_score_from_cache", lambda *a, **k: retried.append(1) or real_score(*a, **k))
    assert lm.loglikelihood(_instances(pairs[:2])) == mine[:2]  # and scoring keeps its fallback,
    assert retried == []  # without trying the cached path again


def test_auto_batch_size_halves_on_out_of_memory_and_records_it(toy, monkeypatch):
    model, tokenizer = toy
    lm = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size="auto")
    score = lm._score_from_cache

    def at_most_two_contexts(units, requests, preamble=None):
        if len({ctx for ctx, _ in units}) > 2:
            raise torch.OutOfMemoryError("simulated")
        return score(units, requests, preamble)

    monkeypatch.setattr(lm, "_score_from_cache", at_most_two_contexts)
    requests = [(None, [10 + doc, 20, 30 + doc], option) for doc in range(5) for option in ([40], [41, 42])]
    mine = lm._loglikelihood_tokens(requests)
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)._loglikelihood_tokens(requests)
    assert max(abs(a - b) for (a, _), (b, _) in zip(mine, theirs)) <= TOLERANCE_NATS
    assert lm.oom_halvings == [(64, 32), (32, 16), (16, 8), (8, 4), (4, 2)]


def test_fixed_batch_size_does_not_hide_out_of_memory(toy, monkeypatch):
    model, tokenizer = toy
    lm = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=4)

    def out_of_memory(units, requests, preamble=None):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(lm, "_score_from_cache", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        lm.loglikelihood(_instances([("Q: where does Ada live? A:", " in Paris")]))


def test_shared_preamble_runs_once_and_gives_the_same_numbers(pangu_shaped):
    """Few-shot style: every context starts with the same 40 tokens; they run in one forward only."""
    model, tokenizer = pangu_shaped
    generator = torch.Generator().manual_seed(0)
    preamble = torch.randint(4, len(tokenizer), (40,), generator=generator).tolist()
    requests = []
    for doc in range(6):  # the rest of the context: 0 to 10 tokens after the preamble's copy
        rest = torch.randint(4, len(tokenizer), (2 * doc,), generator=generator).tolist()
        for option in range(3):
            cont = torch.randint(4, len(tokenizer), (1 + option,), generator=generator).tolist()
            requests.append((None, preamble + rest + [5 + doc], cont))
    lengths = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        mine = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=4)._loglikelihood_tokens(requests)
    finally:
        handle.remove()
    assert lengths.count(40) == 1 and max(lengths) == 40  # the preamble once; everything else is shorter
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, logits_cache=False)._loglikelihood_tokens(
        requests
    )
    for (a, greedy_a), (b, greedy_b), request in zip(mine, theirs, requests, strict=True):
        assert abs(a - b) <= TOLERANCE_NATS and greedy_a == greedy_b
        assert abs(a - _direct_loglikelihood(model, request[1], request[2])) <= TOLERANCE_NATS
