"""quantsweep's lm-eval LM: each context computed once, perplexity in bounded memory.

:class:`ContextCachedLM` is lm-eval's ``HFLM`` over a model already in memory, with
two of its scoring loops replaced; lm-eval still owns prompts, tokenisation
(``_encode_pair``), rolling windows, metrics and filters.

* **Log-likelihood** (multiple choice, LAMBADA-style): requests are grouped by their
  context tokens. The context (all but its last token) runs once, batched across
  documents, keeping its KV cache; the cache is expanded along the batch to one row
  per continuation, and the continuations (with the context's last token in front)
  run from it, batched across continuations and documents. ``lm_head`` and the
  log-softmax therefore only see the positions whose log-probability is needed.
  lm-eval runs the whole context again for every multi-token option.
* **Rolling log-likelihood** (perplexity): the decoder's hidden states are taken once
  per window and ``lm_head`` + log-softmax run ``chunk_tokens`` target positions at a
  time, gathering the targets. Memory is bounded by the chunk (chunk x vocab floats),
  not by batch x window x vocab.

Where the fast path cannot apply it falls back to lm-eval's own code, logging the
reason once: a context that must be truncated from the left to fit ``max_length``, a
model whose ``forward`` takes no ``past_key_values`` (or returns no reorderable cache),
or a model whose logits are not ``lm_head(decoder hidden states)`` (logit scaling or
soft-capping, found by a check on the first call); for generation, sampling or other
non-greedy generation kwargs, a ``generation_config`` that changes greedy decoding
(beams, repetition penalty, ...), ``think_end_token``, or a model without a plain
``DynamicCache``.

Example:
    >>> import quantsweep
    >>> from lm_eval.api.instance import Instance
    >>> model, tokenizer = quantsweep.load_model("toy", device="cpu")
    >>> lm = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    >>> requests = [Instance("loglikelihood", {}, ("the", " cat"), 0), Instance("loglikelihood", {}, ("the", " dog"), 1)]
    >>> scores = lm.loglikelihood(requests, disable_tqdm=True)
    >>> len(scores), all(logprob <= 0 for logprob, _ in scores)
    (2, True)
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from quantsweep import device as devices
from quantsweep.eval.divergence import TokenReference, compare_rows, document_key, reference_rows
from quantsweep.eval.generation import (
    CACHE_KWARGS,
    CacheUnsupported,
    GenerationJob,
    GenerationStats,
    cache_kwarg,
    generate_greedy,
)

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_TOKENS = 256  # target positions per lm_head call: 256 x 150k vocab x 4 B = 150 MB
MIN_SHARED_PREAMBLE = 16  # tokens: a shorter common prefix is not worth a separate forward
MAX_AUTO_BATCH_SIZE = 64  # batch_size="auto" starts here and halves on out-of-memory

Request = tuple[Any, list[int], list[int]]  # (cache key, context tokens, continuation tokens)
# generation_config fields that change greedy decoding, at their neutral values
_GREEDY_NEUTRAL = {
    "num_beams": 1,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "guidance_scale": None,
    "watermarking_config": None,
    "stop_strings": None,
}


class _NoReorderableCache(Exception):
    """The model's forward returned no KV cache that can be expanded along the batch."""


def model_positions(model) -> int | None:
    """The number of positions a model was built for, from its config (None if it names none).

    Example:
        >>> import quantsweep
        >>> model_positions(quantsweep.load_model("toy", device="cpu")[0])
        512
    """
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_max_length(max_length, positions: int | None) -> None:
    """Raise ValueError unless ``max_length`` is an integer >= 2 within the model's ``positions``.

    Example:
        >>> check_max_length(4096, 512)
        Traceback (most recent call last):
        ValueError: max_length 4096 exceeds the model's 512 positions
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    if positions is not None and max_length > positions:
        raise ValueError(f"max_length {max_length} exceeds the model's {positions} positions")


def halve_on_out_of_memory(run, batch_size: int, *, device, on_out_of_memory=None):
    """Call ``run(batch_size)``; on out-of-memory free the cache and retry at half the size, down to 1.

    The one out-of-memory policy: the evaluator applies it per batch (``batch_size="auto"``),
    a sweep's cell to a whole evaluation. ``on_out_of_memory(size, error)`` is told of every
    out-of-memory, the last one at size 1 included, after which the error is raised. Any
    other error is raised at once.

    Returns:
        ``(result, batch size used)``.

    Example:
        >>> def run(size):
        ...     if size > 8:
        ...         raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        ...     return size
        >>> halve_on_out_of_memory(run, 32, device="cpu")
        (8, 8)
    """
    while True:
        try:
            return run(batch_size), batch_size
        except Exception as error:  # noqa: BLE001 - only out-of-memory is retried
            if not devices.is_out_of_memory(error):
                raise
            if on_out_of_memory is not None:
                on_out_of_memory(batch_size, error)
            devices.empty_cache(device)
            if batch_size <= 1:
                raise
            batch_size = max(1, batch_size // 2)
            logger.warning("out of memory; retrying at batch size %d", batch_size)


class ContextCachedLM(HFLM):
    """lm-eval ``HFLM`` that computes each context once and scores perplexity in bounded memory.

    Args (besides ``HFLM``'s):
        counter: optional :class:`quantsweep.eval.health.NonFiniteLogitCounter`; it sees
            the generation batches of lm-eval's own path (fallbacks) so that their NaN/Inf
            logits are counted.
        chunk_tokens: target positions per ``lm_head`` call in rolling log-likelihood.
        max_length: the window (tokens); default the model's positions. Above them is an error.
        batch_size: documents per forward, or ``"auto"`` (start at 64, halve on out-of-memory;
            every halving is recorded in :attr:`oom_halvings`).
        divergence: optional :class:`quantsweep.eval.divergence.DivergenceProbe`: rolling
            log-likelihood records the baseline's distributions, or compares with them.
        reverse_order: run the batches of log-likelihood and rolling requests in the reverse
            of the usual order (the A/A control: the same requests, other batch neighbours).

    Attributes:
        rolling_target_counts: task name -> Counter of the token ids scored by rolling
            log-likelihood (the targets of its windows), for the unigram chance level.
        fallbacks: reason -> number of requests sent to lm-eval's own path.
        oom_halvings: ``(from, to)`` batch sizes (rows in flight for generation), one per
            out-of-memory halving.
        generation_stats: :class:`quantsweep.eval.generation.GenerationStats` of all generation.
        nonfinite_generations: task name -> doc ids whose generation met NaN/Inf logits.

    Example:
        >>> import quantsweep
        >>> model, tokenizer = quantsweep.load_model("toy", device="cpu")
        >>> ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=8).batch_size
        8
    """

    def __init__(
        self,
        *args,
        counter=None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        max_length: int | None = None,
        batch_size: int | str = 32,
        divergence=None,
        reverse_order: bool = False,
        **kwargs,
    ):
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
        positions = model_positions(kwargs.get("pretrained", args[0] if args else None))
        if max_length is not None:
            check_max_length(max_length, positions)
        self._auto_batch = batch_size == "auto"
        super().__init__(
            *args, max_length=max_length, batch_size=MAX_AUTO_BATCH_SIZE if self._auto_batch else batch_size, **kwargs
        )
        self._counter = counter
        self.chunk_tokens = chunk_tokens
        self.divergence = divergence
        self.reverse_order = bool(reverse_order)
        self.rolling_target_counts: dict[str, Counter] = {}
        self.fallbacks: Counter = Counter()
        self.oom_halvings: list[tuple[int, int]] = []
        self._cache_reason: str | None | bool = False  # False: not checked yet
        self._reorder_reason: str | None = None  # set when a forward returned no reorderable cache (scoring only)
        self._head_reason: str | None | bool = False
        self._positions = positions
        self.default_max_length = int(self.max_length)
        self.generation_stats = GenerationStats()
        self.nonfinite_generations: dict[str, set[int]] = {}
        self._generation_rows = int(self.batch_size)
        self._generation_reason: str | None = None  # set when the model turned out to fill no DynamicCache

    def use_max_length(self, max_length: int) -> None:
        """Score later requests in windows of ``max_length`` tokens (at most the model's positions).

        Example:
            >>> import quantsweep
            >>> model, tokenizer = quantsweep.load_model("toy", device="cpu")
            >>> lm = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
            >>> lm.use_max_length(64)
            >>> lm.use_max_length(4096)  # beyond the toy's positions
            Traceback (most recent call last):
            ...
            ValueError: max_length 4096 exceeds the model's 512 positions
        """
        check_max_length(max_length, self._positions)
        self._max_length = max_length

    # ------------------------------------------------------------ shared helpers

    def _log_fallback(self, reason: str, count: int) -> None:
        if reason not in self.fallbacks:
            logger.warning("lm-eval's own scoring path used: %s", reason)
        self.fallbacks[reason] += count

    def _no_grad(self):
        autocast = torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(autocast)
        return stack

    def _batches(self, items: list, run) -> list:
        """Run ``run(batch)`` over ``items`` in batches; with ``"auto"``, halving on out-of-memory."""
        out, start = [], 0
        while start < len(items):
            size = int(self.batch_size)
            if not self._auto_batch:
                out.extend(run(items[start : start + size]))
                start += size
                continue
            done, used = halve_on_out_of_memory(
                lambda n: run(items[start : start + n]), size, device=self.device, on_out_of_memory=self._halving
            )
            self.batch_size_per_gpu = used
            out.extend(done)
            start += used
        return out

    def _halving(self, size: int, error: BaseException) -> None:
        if size > 1:
            self.oom_halvings.append((size, size // 2))

    def _cache_unsupported(self) -> str | None:
        if self._cache_reason is False:
            if self.backend != "causal":
                self._cache_reason = f"backend {self.backend!r} is not a causal LM"
            else:
                self._cache_kwarg = cache_kwarg(self.model)
                self._cache_reason = (
                    None if self._cache_kwarg else (f"{type(self.model).__name__}.forward takes no past_key_values")
                )
        return self._cache_reason

    def _keep_last_logits(self) -> dict:
        # the prefix's logits are never used: ask for one position only where the model allows it
        # (the forward's signature is read once, not on every batch)
        if not hasattr(self, "_keep_kwargs"):
            self._keep_kwargs = (
                {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}
            )
        return self._keep_kwargs

    # ------------------------------------------------------------ log-likelihood

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        if not requests:
            return []
        longest = max(len(cont) for _, _, cont in requests)
        if longest > self.max_length:
            raise ValueError(f"max_length {self.max_length} is below the longest continuation ({longest} tokens)")
        reason = self._cache_unsupported() or self._reorder_reason
        if reason is not None:
            self._log_fallback(reason, len(requests))
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        long_ids = [i for i, (_, ctx, cont) in enumerate(requests) if len(ctx) + len(cont) > self.max_length + 1]
        if long_ids:
            self._log_fallback(f"context needs left truncation to fit max_length {self.max_length}", len(long_ids))
            for i, answer in zip(long_ids, super()._loglikelihood_tokens([requests[i] for i in long_ids], True)):
                results[i] = answer
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, ctx, cont) in enumerate(requests):
            if results[i] is None:
                assert ctx and cont, "lm-eval gives every request a context and a continuation"
                groups.setdefault(tuple(ctx), []).append(i)
        # Longest contexts first (out-of-memory shows at once); a batch holds batch_size contexts
        # (documents) and all their continuations.
        ordered = sorted(groups.items(), key=lambda item: (-len(item[0]), item[0]))
        if self.reverse_order:
            ordered.reverse()  # the A/A control: other batch neighbours and padding, the same requests
        with_prefix = [g for g in ordered if len(g[0]) > 1]
        no_prefix = [g for g in ordered if len(g[0]) == 1]  # nothing to cache: a plain forward
        try:
            for subset, preamble in ((with_prefix, self._preamble([ctx for ctx, _ in with_prefix])), (no_prefix, None)):
                order = [i for _, ids in subset for i in ids]
                scored = self._batches(
                    subset,
                    lambda batch: self._score_from_cache(
                        [(ctx, i) for ctx, ids in batch for i in ids], requests, preamble
                    ),
                )
                for i, answer in zip(order, scored, strict=True):
                    results[i] = answer
        except _NoReorderableCache as err:
            self._reorder_reason = str(err)  # scoring's own: generation builds its cache itself
            rest = [i for i, answer in enumerate(results) if answer is None]
            self._log_fallback(self._reorder_reason, len(rest))
            for i, answer in zip(rest, super()._loglikelihood_tokens([requests[i] for i in rest], True)):
                results[i] = answer
        for i, answer in enumerate(results):
            key = requests[i][0]
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def _cached(self, out):
        cache = next((getattr(out, name) for name in CACHE_KWARGS if getattr(out, name, None) is not None), None)
        if cache is None or not hasattr(cache, "reorder_cache"):
            raise _NoReorderableCache(f"{type(self.model).__name__} returned no reorderable KV cache")
        return cache

    def _preamble(self, contexts: list[tuple[int, ...]]):
        """The contexts' longest common token prefix (few-shot examples), run once: ``(length, cache)`` or None."""
        shared = os.path.commonprefix([list(c[:-1]) for c in contexts]) if len(contexts) > 1 else []
        if len(shared) < MIN_SHARED_PREAMBLE:
            return None
        logger.info("shared preamble of %d tokens computed once for %d contexts", len(shared), len(contexts))
        with self._no_grad():
            out = self.model(
                input_ids=torch.tensor([shared], device=self.device), use_cache=True, **self._keep_last_logits()
            )
        return len(shared), self._cached(out)

    def _score_from_cache(self, units: list[tuple[tuple[int, ...], int]], requests: list[Request], preamble=None):
        """Score one batch of (context, request index): each distinct context runs once.

        ``preamble``: ``(length, cache)`` of a token prefix every context starts with; it is
        expanded to the batch and only the rest of each context runs.
        """
        contexts = list(dict.fromkeys(ctx for ctx, _ in units))
        row_of = {ctx: row for row, ctx in enumerate(contexts)}
        device = self.device
        shared, cache, mask_before = 0, None, None
        if preamble is not None:
            shared, cache = preamble[0], copy.deepcopy(preamble[1])
            cache.reorder_cache(torch.zeros(len(contexts), dtype=torch.long, device=device))
            mask_before = torch.ones(len(contexts), shared, dtype=torch.long)
        rest_len = torch.tensor([len(c) - 1 - shared for c in contexts])
        width = int(rest_len.max())
        with self._no_grad():
            if width > 0:
                # right padding (repeating each row's last token): causal attention keeps every real
                # position exact, and the padded slots are masked out for the continuations below
                ids = torch.stack(
                    [torch.tensor(list(c[shared:-1]) + [c[-2]] * (width - int(n))) for c, n in zip(contexts, rest_len)]
                )
                rest_mask = (torch.arange(width)[None, :] < rest_len[:, None]).long()
                mask = rest_mask if mask_before is None else torch.cat([mask_before, rest_mask], dim=1)
                kwargs = (
                    {}
                    if cache is None
                    else {
                        self._cache_kwarg: cache,
                        "position_ids": (shared + torch.arange(width, device=device)).expand(len(contexts), -1),
                    }
                )
                out = self.model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    use_cache=True,
                    **kwargs,
                    **self._keep_last_logits(),
                )
                cache, mask_before = self._cached(out), mask
            if cache is not None:
                rows = torch.tensor([row_of[ctx] for ctx, _ in units], device=device)
                cache.reorder_cache(rows)  # one cache row per continuation
                mask_before = mask_before.to(device)[rows]
            inputs = [[ctx[-1]] + requests[i][2][:-1] for ctx, i in units]
            targets = [requests[i][2] for _, i in units]
            cont_width = max(len(x) for x in inputs)
            ids = torch.tensor([x + [x[-1]] * (cont_width - len(x)) for x in inputs], device=device)
            cont_mask = torch.tensor([[1] * len(x) + [0] * (cont_width - len(x)) for x in inputs], device=device)
            kwargs = {}
            if cache is not None:
                start = torch.tensor([len(ctx) - 1 for ctx, _ in units], device=device)  # position of ctx[-1]
                kwargs = {
                    self._cache_kwarg: cache,
                    "attention_mask": torch.cat([mask_before, cont_mask], dim=1),
                    "position_ids": start[:, None] + torch.arange(cont_width, device=device)[None, :],
                }
            logits = self.model(input_ids=ids, use_cache=cache is not None, **kwargs).logits
            logprobs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        # every row at once; padded positions add exactly 0 and are always "greedy"
        target_ids = torch.tensor([t + [0] * (cont_width - len(t)) for t in targets], device=device)
        valid = cont_mask.bool()
        picked = logprobs.gather(2, target_ids[..., None])[..., 0].masked_fill(~valid, 0.0)
        greedy = ((logprobs.argmax(dim=-1) == target_ids) | ~valid).all(dim=-1)
        return list(zip(picked.sum(dim=-1).tolist(), greedy.tolist()))

    # ------------------------------------------------------------ rolling log-likelihood

    def _decoder_and_head(self):
        prefix = getattr(self.model, "base_model_prefix", "")
        decoder = getattr(self.model, prefix, None) if prefix else None
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        return decoder, head

    def _head_unsupported(self, probe: list[int]) -> str | None:
        """Check once that the model's logits are ``lm_head(decoder(x))`` (no scaling, no soft-cap)."""
        if self._head_reason is False:
            decoder, head = self._decoder_and_head()
            if self.backend != "causal" or decoder is None or head is None:
                self._head_reason = f"{type(self.model).__name__} has no separable decoder and lm_head"
            else:
                ids = torch.tensor([probe[:8]], device=self.device)
                with self._no_grad():
                    full = self.model(input_ids=ids).logits
                    split = head(decoder(input_ids=ids).last_hidden_state)
                same = full.shape == split.shape and torch.allclose(
                    full.float(), split.float(), rtol=1e-4, atol=1e-4, equal_nan=True
                )
                self._head_reason = (
                    None if same else f"{type(self.model).__name__}'s logits are not lm_head(decoder hidden states)"
                )
        return self._head_reason

    def _windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        # lm-eval's own windowing (HFLM.loglikelihood_rolling), so the scored tokens are identical
        return list(
            map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            )
        )

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        per_request = [self._windows(req.args[0]) for req in requests]
        for req, windows in zip(requests, per_request):
            counts = self.rolling_target_counts.setdefault(req.task_name or "", Counter())
            for _, targets in windows:
                counts.update(targets)
        probe = next((ctx + cont for windows in per_request for ctx, cont in windows), None)
        reason = "no windows" if probe is None else self._head_unsupported(probe)
        if reason is not None:
            if probe is not None:
                self._log_fallback(reason, len(requests))
                if self.divergence is not None:
                    for req in requests:
                        self.divergence.problems[req.task_name or ""] = f"divergence not measured: {reason}"
            return super().loglikelihood_rolling(requests, disable_tqdm)
        # each document hashed once, and only when divergence is measured (its key names its stored rows)
        keys = [document_key(req.args[0]) if self.divergence is not None else "" for req in requests]
        references = self._rolling_references(requests, keys, per_request)
        flat = [(r, j, window) for r, windows in enumerate(per_request) for j, window in enumerate(windows)]
        # each window's (document key, window index) seeds its tail draws when recording
        items = [
            (window, None if references is None else references[i], (keys[r], j))
            for i, (r, j, window) in enumerate(flat)
        ]
        totals = [0.0] * len(requests)
        extras: list[list] = [[] for _ in requests]
        order = list(range(len(items)))[:: -1 if self.reverse_order else 1]
        scored = [None] * len(items)
        for i, answer in zip(order, self._batches([items[i] for i in order], self._score_windows)):
            scored[i] = answer
        for (r, _, _), (value, extra) in zip(flat, scored):
            totals[r] += value
            extras[r].append(extra)
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        self._keep_divergence(requests, keys, extras)
        return totals

    def _rolling_references(self, requests, keys, per_request) -> list | None:
        """Each window's slice of the baseline's stored rows (compare mode), else None."""
        probe = self.divergence
        if probe is None or probe.recording:
            return None
        slices = []
        by_task: dict[str, list[int]] = {}
        for r, req in enumerate(requests):
            by_task.setdefault(req.task_name or "", []).append(r)
        docs: dict[int, dict] = {}
        for task, indices in by_task.items():
            lengths = [sum(len(cont) for _, cont in per_request[r]) for r in indices]
            found = probe.reference_for(task, [keys[r] for r in indices], lengths)
            if found is None:
                return None
            docs.update(zip(indices, found))
        for r, windows in enumerate(per_request):
            start = 0
            for _, cont in windows:
                slices.append({name: value[start : start + len(cont)] for name, value in docs[r].items()})
                start += len(cont)
        return slices

    def _keep_divergence(self, requests, keys, extras) -> None:
        probe = self.divergence
        if probe is None:
            return
        for req, key, parts in zip(requests, keys, extras):
            task = req.task_name or ""
            if not parts:  # a document of no tokens has no windows: nothing to record or compare
                continue
            if probe.recording:
                rows = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
                probe.recorded.setdefault(task, TokenReference(k=probe.k, tail_samples=probe.tail_samples)).add(
                    key, rows
                )
            elif parts[0] is not None:
                probe.compared.setdefault(task, []).extend(parts)

    def _score_windows(
        self, items: list[tuple[tuple[list[int], list[int]], dict | None, tuple[str, int]]]
    ) -> list[tuple[float, Any]]:
        """Sum of target log-probabilities per window, lm_head applied chunk_tokens positions at a time.

        ``items``: (window, the baseline's stored rows of its positions or None, (document key,
        window index)). With a :attr:`divergence` probe each window also gets its extra: its
        recorded rows (the baseline; the tail draws seeded per window, so independent of the
        batch), or its comparison with the stored rows (a recipe); else None.
        """
        windows = [window for window, _, _ in items]
        decoder, head = self._decoder_and_head()
        device = self.device
        inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for ctx, cont in windows]
        width = max(len(x) for x in inputs)
        ids = torch.tensor([x + [x[-1]] * (width - len(x)) for x in inputs], device=device)
        rows = torch.cat([torch.full((len(cont),), r) for r, (_, cont) in enumerate(windows)]).to(device)
        cols = torch.cat([torch.arange(len(x) - len(cont), len(x)) for x, (_, cont) in zip(inputs, windows)]).to(device)
        targets = torch.tensor([t for _, cont in windows for t in cont], device=device)
        probe = self.divergence
        recording = probe is not None and probe.recording
        stored = None
        if probe is not None and not recording and all(ref is not None for _, ref, _ in items):
            stored = {
                name: torch.from_numpy(np.concatenate([ref[name] for _, ref, _ in items])) for name in items[0][1]
            }
        uniforms = None
        if recording:
            uniforms = torch.cat([probe.uniforms(key, j, len(cont), device) for (_, cont), _, (key, j) in items])
        parts: list = []
        with self._no_grad():
            # right padding needs no mask under causal attention (lm-eval passes none either)
            hidden = decoder(input_ids=ids).last_hidden_state[rows, cols]  # [targets, hidden]
            del ids
            picked = torch.empty(len(targets), dtype=self.softmax_dtype or hidden.dtype, device=device)
            for start in range(0, len(targets), self.chunk_tokens):
                end = start + self.chunk_tokens
                logprobs = F.log_softmax(head(hidden[start:end]), dim=-1, dtype=self.softmax_dtype)
                picked[start:end] = logprobs.gather(1, targets[start:end, None])[:, 0]
                if recording:
                    chunk = reference_rows(
                        logprobs,
                        targets[start:end],
                        k=probe.k,
                        tail_samples=probe.tail_samples,
                        uniforms=uniforms[start:end],
                    )
                    parts.append({name: value.cpu() for name, value in chunk.items()})
                elif stored is not None:
                    chunk = {name: value[start:end] for name, value in stored.items()}
                    parts.append(compare_rows(logprobs, targets[start:end], chunk))
        sizes = [len(cont) for _, cont in windows]
        sums = [float(part.sum()) for part in torch.split(picked, sizes)]
        if not parts:
            return [(value, None) for value in sums]
        bounds = np.cumsum([0] + sizes)
        if recording:
            joined = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        else:
            joined = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        extras = [{name: value[a:b] for name, value in joined.items()} for a, b in zip(bounds[:-1], bounds[1:])]
        return list(zip(sums, extras))

    # ------------------------------------------------------------ generation

    def _generation_unsupported(self) -> str | None:
        """Why greedy generation cannot go through :func:`generate_greedy` here (None: it can)."""
        reason = self._cache_unsupported()  # not a causal LM, or no KV cache argument
        if reason is not None:
            return reason
        if self.think_end_token is not None:
            return "think_end_token is set"
        if self._generation_reason is not None:
            return self._generation_reason
        config = getattr(self.model, "generation_config", None)
        changed = sorted(
            name
            for name, default in _GREEDY_NEUTRAL.items()
            if config is not None and getattr(config, name, default) not in (default, None)
        )
        if changed:
            return f"the model's generation_config changes greedy decoding ({', '.join(changed)})"
        return None

    def _generation_job(self, context: str, gen_kwargs: dict, eos: str) -> tuple[GenerationJob | None, str | None]:
        """lm-eval's reading of one request (stop strings, token limit, truncated prompt), or why not."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        max_gen_toks = kwargs.pop("max_gen_toks")
        extra = sorted(k for k, v in kwargs.items() if not (k == "do_sample" and v is False or k == "temperature"))
        if kwargs.get("do_sample") is not False or extra:
            return None, f"generation kwargs other than greedy ({', '.join(extra) or 'do_sample'})"
        max_ctx_len = self.max_length - max_gen_toks
        if max_ctx_len <= 0:
            raise ValueError(f"max_gen_toks {max_gen_toks} is not below max_length {self.max_length}")
        ids, _ = self.tok_batch_encode([context], left_truncate_len=max_ctx_len, truncation=self.truncation)
        if ids.shape[1] == 0:
            return None, "empty prompt"
        return GenerationJob(tokens=ids[0].tolist(), until=tuple(until), max_new_tokens=max_gen_toks), None

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """lm-eval's ``generate_until`` (same strings), scheduled so that a finished row frees its slot."""
        if not requests:
            return []
        results: list[str | None] = [None] * len(requests)
        reason = self._generation_unsupported()
        fallback: dict[str, list[int]] = {}
        jobs, job_request = [], []
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        for i, request in enumerate(requests):
            job, why = (None, reason) if reason else self._generation_job(*request.args, eos)
            if job is None:
                fallback.setdefault(why, []).append(i)
            else:
                jobs.append(job)
                job_request.append(i)
        for why, ids in fallback.items():
            self._log_fallback(why, len(ids))
            for i, text in zip(ids, super().generate_until([requests[i] for i in ids], True), strict=True):
                results[i] = text
        done: dict = {}
        if jobs:
            try:
                self._generate_jobs(jobs, done)
            except CacheUnsupported as error:
                self._generation_reason = str(error)
                rest = [job_id for job_id in range(len(jobs)) if job_id not in done]
                self._log_fallback(self._generation_reason, len(rest))
                texts = super().generate_until([requests[job_request[job_id]] for job_id in rest], True)
                for job_id, text in zip(rest, texts, strict=True):
                    results[job_request[job_id]] = text
        for job_id, finished in done.items():
            i = job_request[job_id]
            text = postprocess_generated_text(self.tok_decode(finished.tokens), jobs[job_id].until, None)
            results[i] = text
            request = requests[i]
            if finished.nonfinite:
                self.nonfinite_generations.setdefault(request.task_name or "", set()).add(request.doc_id)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return results

    def _generate_jobs(self, jobs: list[GenerationJob], done: dict) -> None:
        """Fill ``done`` (job index -> Finished), halving the rows in flight on out-of-memory."""
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))

        def run(rows: int):
            with self._no_grad():
                return generate_greedy(
                    self.model,
                    jobs,
                    max_rows=rows,
                    decode=self.tok_decode,
                    eos_ids=eos_ids,
                    done=done,
                    stats=self.generation_stats,
                )

        _, rows = halve_on_out_of_memory(run, self._generation_rows, device=self.device, on_out_of_memory=self._halving)
        self._generation_rows = rows  # later tasks start where out-of-memory left it

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        # lm-eval's own path (a fallback): its rows are counted per batch, not per document
        if self._counter is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        with self._counter.tracking(context.shape[0]):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
