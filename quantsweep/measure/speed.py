"""Prefill and decode speed of a model in memory, batch 1, with warm-up and repeats.

* Prefill: one forward pass over a ``prompt_tokens``-token prompt (with the KV cache
  on), in prompt tokens per second.
* Decode: ``new_tokens`` greedy steps, one token each, reading the KV cache the
  prefill built, in generated tokens per second. A hand-written loop rather than
  ``generate`` so that nothing stops early at an end-of-sequence token and no
  sampling logic is timed.

Each repeat times both; ``warmup`` repeats run first and are discarded. The record
holds the median, min and max of each, the relative spread ``(max - min) / median``,
and where it ran (device, threads), since times from one machine say nothing about
another's. Timing must not share the machine with other work: ``quantsweep measure``
runs it as its own step.

Example:
    >>> import quantsweep
    >>> model, tokenizer = quantsweep.load_model("toy")
    >>> record = measure_speed(model, tokenizer, prompt_tokens=16, new_tokens=4, repeats=3)
    >>> record["decode_tokens_per_s"] > 0 and record["prefill_tokens_per_s"] > 0  # times vary; rates are positive
    True
    >>> record["decode_tokens_per_s_min"] <= record["decode_tokens_per_s"] <= record["decode_tokens_per_s_max"]
    True
"""

from __future__ import annotations

import inspect
import os
import platform
import statistics
import time

import torch

from quantsweep import device as devices


def _summary(prefix: str, rates: list[float]) -> dict:
    median = statistics.median(rates)
    return {
        f"{prefix}_tokens_per_s": median,
        f"{prefix}_tokens_per_s_min": min(rates),
        f"{prefix}_tokens_per_s_max": max(rates),
        f"{prefix}_relative_spread": (max(rates) - min(rates)) / median if median > 0 else None,
        f"{prefix}_tokens_per_s_all": rates,
    }


def _check(prompt_tokens: int, new_tokens: int, repeats: int, warmup: int, model) -> None:
    for name, value, low in (
        ("prompt_tokens", prompt_tokens, 1),
        ("new_tokens", new_tokens, 1),
        ("repeats", repeats, 1),
        ("warmup", warmup, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and prompt_tokens + new_tokens > limit:
        raise ValueError(
            f"prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds the model's "
            f"max_position_embeddings {limit}; use a shorter prompt or fewer new tokens"
        )


def _cache_argument(model) -> str:
    # transformers 5 renamed the KV-cache argument and output from past_key_values to cache.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _one_run(model, prompt: torch.Tensor, new_tokens: int, device: str) -> tuple[float, float]:
    cache_name = _cache_argument(model)
    devices.synchronize(device)
    start = time.perf_counter()
    output = model(input_ids=prompt, use_cache=True)
    devices.synchronize(device)
    prefill_s = time.perf_counter() - start
    past = output[cache_name]
    token = output.logits[:, -1:].argmax(dim=-1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        output = model(input_ids=token, use_cache=True, **{cache_name: past})
        past = output[cache_name]
        token = output.logits[:, -1:].argmax(dim=-1)
    devices.synchronize(device)
    decode_s = time.perf_counter() - start
    return prefill_s, decode_s


def where_measured(device: str) -> dict:
    """Where a measurement ran: device, its name, threads, torch version and machine.

    Example:
        >>> where_measured("cpu")["device"]
        'cpu'
    """
    return {
        "device": device,
        "device_name": devices.describe(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch_version": torch.__version__,
    }


def measure_speed(
    model,
    tokenizer=None,
    *,
    prompt_tokens: int = 512,
    new_tokens: int = 128,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
) -> dict:
    """Prefill and decode tokens/s of ``model`` at batch 1 (median, min, max, spread).

    Args:
        model: a causal LM in memory (fp, fake-quant, bitsandbytes or a loaded export).
        tokenizer: used only for the vocabulary size when the config has none.
        prompt_tokens: prompt length of the prefill (random token ids, seeded).
        new_tokens: greedy decode steps after the prefill.
        repeats: timed runs; ``warmup``: untimed runs before them.

    Returns:
        ``prefill_tokens_per_s``, ``decode_tokens_per_s`` (medians) with ``_min``, ``_max``,
        ``_relative_spread`` and ``_all`` for each, the settings, and :func:`where_measured`.

    Raises:
        ValueError: a non-positive count, or a prompt longer than the model's positions.

    Example:
        >>> import quantsweep
        >>> model, tokenizer = quantsweep.load_model("toy")
        >>> record = measure_speed(model, tokenizer, prompt_tokens=8, new_tokens=2, repeats=2, warmup=0)
        >>> record["repeats"], len(record["decode_tokens_per_s_all"])
        (2, 2)
    """
    _check(prompt_tokens, new_tokens, repeats, warmup, model)
    device = str(next(model.parameters()).device)
    vocab = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (1, prompt_tokens), generator=generator).to(device)
    prefill, decode = [], []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for run in range(warmup + repeats):
            prefill_s, decode_s = _one_run(model, prompt, new_tokens, device)
            if run >= warmup:
                prefill.append(prompt_tokens / prefill_s)
                decode.append(new_tokens / decode_s)
    model.train(was_training)
    return {
        **_summary("prefill", prefill),
        **_summary("decode", decode),
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "batch_size": 1,
        "repeats": repeats,
        "warmup": warmup,
        **where_measured(device),
    }
