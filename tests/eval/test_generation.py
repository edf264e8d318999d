"""Generation scheduled so that finished rows free their slot gives lm-eval's own strings.

Every test runs lm-eval's ``HFLM.generate_until`` and quantsweep's
:class:`ContextCachedLM` (whose ``generate_until`` goes through
:func:`quantsweep.eval.generation.generate_greedy`) on the same model and requests, fp32 on
CPU, and compares every generated string.

Random models rarely write the tasks' own stop strings, so most tests take their stop
strings from the model's own unrestricted output (three characters at a different offset for
each document): each row then stops at a different step, and the batch holds rows of
different prompt lengths (left padding) and different answer lengths.
"""

from __future__ import annotations

import copy
import logging

import lm_eval
import pytest
import torch
from helpers.checkpoints import pangu_shaped_llama
from helpers.suite_data import tiny_model_and_tokenizer, write_suite_data
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import get_task_dict

import quantsweep
from quantsweep.eval import offline
from quantsweep.eval.generation import GenerationJob, generate_greedy
from quantsweep.eval.lm import ContextCachedLM
from quantsweep.eval.tasks import manager_for
from quantsweep.toy.tasks import toy_gen_dataset


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    return quantsweep.load_model("toy", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def pangu_random(toy):
    """A random 2-layer openPangu-Embedded-shaped Llama (q/k/v/o bias, 4 heads over 2 KV heads) on the toy vocab.

    Weights drawn wider than the HF default (std 0.2) so that greedy text varies and sometimes ends in EOS.
    """
    _, tokenizer = toy
    model = pangu_shaped_llama(tokenizer, bias_std=0.1, initializer_range=0.2)
    return model, tokenizer


def _requests(contexts, gen_kwargs, task="t"):
    return [
        Instance("generate_until", {}, (context, dict(gen_kwargs)), 0, metadata=(task, doc_id, 1))
        for doc_id, context in enumerate(contexts)
    ]


def _stops_from_output(model, tokenizer, contexts, max_gen_toks):
    """Three characters of each document's own greedy output, at a different offset per document."""
    free = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=len(contexts)).generate_until(
        _requests(contexts, {"until": [], "do_sample": False, "max_gen_toks": max_gen_toks}), disable_tqdm=True
    )
    stops = []
    for doc_id, text in enumerate(free):
        start = (3 * doc_id) % max(1, len(text) - 3)
        piece = text[start : start + 3]
        if piece.strip() and piece not in stops:
            stops.append(piece)
    assert len(stops) >= 2, free
    return stops


def _same_strings(model, tokenizer, requests, batch_size, **lm_kwargs):
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size).generate_until(
        copy.deepcopy(requests), disable_tqdm=True
    )
    lm = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **lm_kwargs)
    ours = lm.generate_until(copy.deepcopy(requests), disable_tqdm=True)
    assert len(ours) == len(theirs) == len(requests)
    for doc_id, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        assert mine == reference, (doc_id, mine, reference)
    return lm, theirs


def test_toy_gen_task_same_strings_as_lm_eval(toy):
    model, tokenizer = toy
    outputs = []
    for lm in (
        HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8),
        ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=8),
    ):
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=["toy_gen"],
            limit=60,
            log_samples=True,
            verbosity="ERROR",
            bootstrap_iters=0,
            task_manager=manager_for(["toy_gen"]),
        )
        rows = sorted(out["samples"]["toy_gen"], key=lambda r: r["doc_id"])
        outputs.append(([(r["doc_id"], r["resps"]) for r in rows], out["results"]["toy_gen"]["exact_match,none"]))
    assert outputs[0] == outputs[1]
    assert not lm.fallbacks and lm.generation_stats.model_calls > 0  # the new path ran
    assert outputs[1][1] > 0.5  # the toy answers: the strings are not all empty


@pytest.mark.parametrize("batch_size", [3, 16])
def test_rows_stop_at_different_steps_same_strings(toy, batch_size):
    """Mixed prompt lengths, padding, rows leaving and joining (batch 3) or only leaving (batch 16)."""
    model, tokenizer = toy
    data = toy_gen_dataset()["test"]
    # prompts of different lengths: one, two or three toy sentences
    contexts = [
        " .".join(data[i + k]["query"] + data[i + k]["answer"] for k in range(i % 3)) + data[i]["query"]
        for i in range(12)
    ]
    assert len({len(tokenizer(c)["input_ids"]) for c in contexts}) >= 3
    stops = _stops_from_output(model, tokenizer, contexts, max_gen_toks=24)
    requests = _requests(contexts, {"until": stops, "do_sample": False, "max_gen_toks": 24})
    lm, theirs = _same_strings(model, tokenizer, requests, batch_size)
    assert not lm.fallbacks
    stats = lm.generation_stats
    assert stats.slots == stats.tokens  # no decode slot spent on a finished row
    assert stats.tokens < 24 * len(requests)  # and rows did stop early


def test_random_pangu_shaped_model_same_strings(pangu_random):
    model, tokenizer = pangu_random
    data = toy_gen_dataset()["test"]
    contexts = [data[i]["query"] * (1 + i % 4) for i in range(10)]
    stops = _stops_from_output(model, tokenizer, contexts, max_gen_toks=20)
    requests = _requests(contexts, {"until": stops, "do_sample": False, "max_gen_toks": 20})
    lm, _ = _same_strings(model, tokenizer, requests, batch_size=4)
    assert not lm.fallbacks and lm.generation_stats.model_calls > 0


def _suite_requests(tmp_path, tasks, limit=3):
    configs = offline.local_task_configs(tasks, write_suite_data(tmp_path))
    task_dict = get_task_dict([configs.get(t, t) for t in tasks], manager_for([t for t in tasks if t not in configs]))
    requests = []
    for task in task_dict.values():
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        requests.extend(task.instances)
    return requests


def test_gsm8k_mbpp_humaneval_prompts_same_strings(tmp_path):
    """The offline fixtures' 5-shot GSM8K, 3-shot MBPP and HumanEval prompts, each task's own stop strings."""
    torch.set_num_threads(1)
    model, tokenizer = tiny_model_and_tokenizer()
    requests = _suite_requests(tmp_path, ["gsm8k", "mbpp_offline", "humaneval_offline"])
    assert {r.task_name for r in requests} == {"gsm8k", "mbpp_offline", "humaneval_offline"}
    for request in requests:  # keep the test fast: 24 tokens instead of 256 / 1024
        request.arguments[1]["max_gen_toks"] = 24
    lm, _ = _same_strings(model, tokenizer, requests, batch_size=4)
    assert not lm.fallbacks
    # and with the model's own text as stop strings, so that rows stop at different steps
    stops = _stops_from_output(model, tokenizer, [r.args[0] for r in requests], max_gen_toks=24)
    for request in requests:
        request.arguments[1]["until"] = request.arguments[1]["until"] + stops
    lm, _ = _same_strings(model, tokenizer, requests, batch_size=4)
    assert lm.generation_stats.tokens < 24 * len(requests)


def test_nonfinite_logits_counted_per_document():
    """A NaN embedding row for "color": exactly the documents whose prompt holds it are non-finite."""
    torch.set_num_threads(1)
    model, tokenizer = quantsweep.load_model("toy", device="cpu", dtype="float32")
    data = toy_gen_dataset()["test"]
    color = next(t for t in tokenizer(data[2]["query"])["input_ids"] if tokenizer.decode([t]).strip() == "color")
    with torch.no_grad():
        model.get_input_embeddings().weight[color] = float("nan")
    expected = {i for i in range(20) if color in tokenizer(data[i]["query"])["input_ids"]}
    assert 0 < len(expected) < 20
    result = quantsweep.evaluate(model, tokenizer, tasks=["toy_gen"], limit=20, batch_size=8)
    task = result.tasks["toy_gen"]
    assert {s.doc_id for s in task.samples if s.nonfinite} == expected
    assert task.nonfinite_samples == len(expected)
    assert not result.fallbacks


def test_out_of_memory_lowers_the_rows_in_flight_and_records_it(toy):
    """A forward over more than 2 rows raises out-of-memory: rows halve 8 -> 4 -> 2, strings unchanged."""
    model, tokenizer = toy
    data = toy_gen_dataset()["test"]
    contexts = [data[i]["query"] for i in range(10)]
    requests = _requests(contexts, {"until": ["\n"], "do_sample": False, "max_gen_toks": 6})
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8).generate_until(copy.deepcopy(requests), True)

    class OutOfMemoryAboveTwoRows(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config, self.generation_config = inner, inner.config, inner.generation_config

        def forward(self, input_ids=None, cache=None, **kwargs):
            if input_ids.shape[0] > 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.inner(input_ids=input_ids, cache=cache, **kwargs)

    lm = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    lm._model = OutOfMemoryAboveTwoRows(model)
    ours = lm.generate_until(copy.deepcopy(requests), disable_tqdm=True)
    assert ours == theirs
    assert lm.oom_halvings == [(8, 4), (4, 2)]
    assert not lm.fallbacks


def test_fallback_to_lm_eval_is_logged_once_and_counted(toy, caplog):
    model, tokenizer = toy
    data = toy_gen_dataset()["test"]
    requests = _requests(
        [data[i]["query"] for i in range(3)],
        {"until": ["\n"], "do_sample": False, "max_gen_toks": 5, "repetition_penalty": 1.5},
    )
    lm = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="quantsweep.eval.lm"):
        first = lm.generate_until(copy.deepcopy(requests), disable_tqdm=True)
        lm.generate_until(copy.deepcopy(requests), disable_tqdm=True)
    reason = "generation kwargs other than greedy (repetition_penalty)"
    assert dict(lm.fallbacks) == {reason: 6}
    assert sum(reason in r.getMessage() for r in caplog.records) == 1
    assert lm.generation_stats.model_calls == 0
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4).generate_until(copy.deepcopy(requests), True)
    assert first == theirs


def test_max_rows_is_checked():
    with pytest.raises(ValueError, match="max_rows must be an integer >= 1, got 0"):
        generate_greedy(None, [GenerationJob([1], (), 1)], max_rows=0, decode=str)


def test_model_that_fills_no_given_cache_falls_back_once(toy, caplog):
    """A forward that fills a copy of the cache it is given: lm-eval's own path, the same strings, logged once."""
    model, tokenizer = toy

    class CopiesItsCache(type(model)):
        def forward(self, *args, cache=None, **kwargs):
            return super().forward(*args, cache=copy.deepcopy(cache), **kwargs)

    copying = CopiesItsCache(model.config).eval()
    copying.load_state_dict(model.state_dict())
    data = toy_gen_dataset()["test"]
    requests = _requests([data[i]["query"] for i in range(5)], {"until": ["\n"], "do_sample": False, "max_gen_toks": 6})
    with caplog.at_level(logging.WARNING, logger="quantsweep.eval.lm"):
        lm, theirs = _same_strings(copying, tokenizer, requests, batch_size=4)
        lm.generate_until(copy.deepcopy(requests), disable_tqdm=True)
    reason = "CopiesItsCache did not fill the DynamicCache it was given"
    assert dict(lm.fallbacks) == {reason: 10}
    assert sum(reason in r.getMessage() for r in caplog.records) == 1
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4).generate_until(copy.deepcopy(requests), True)
    assert theirs == reference  # the copying model is the toy model, only its cache handling differs
