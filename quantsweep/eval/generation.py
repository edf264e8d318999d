"""Greedy generation in which a finished row frees its slot for a waiting request.

lm-eval's ``HFLM.generate_until`` pads a batch, calls ``model.generate`` and stops the batch
only when every row has finished, so a row whose answer ended after 40 tokens keeps decoding
until the slowest row reaches ``max_gen_toks``. :func:`generate_greedy` keeps up to
``max_rows`` requests in flight instead. After each decode step a row that produced an
end-of-sequence token, reached its token limit or whose text now holds one of its stop strings
leaves the batch (its KV-cache row is dropped), and waiting requests are prefilled and join it.
Requests are taken longest prompt first, so rows of similar lengths travel together (and an
out-of-memory shows at once).

The batch is a left-padded ``DynamicCache`` with an attention mask and per-row position ids,
exactly what ``model.generate`` builds for a padded batch: a joining row's cache is padded on
the left to the batch's length (or the batch to the row's), and columns that are padding in
every row are cut off, so the cache is as long as the longest row in flight.

Why not transformers' continuous batching (``generate_batch`` / ``ContinuousBatchingManager``,
transformers 5.25)? It was checked on this CPU with the toy model: it runs and gives the same
greedy tokens, but it does not serve here. It stops rows on end-of-sequence ids and token limits
only, not on stop strings (stopping on ``until`` would mean cancelling requests from a second
thread while its background loop keeps decoding them); it packs all rows into one flat
sequence, so a NaN cannot be traced to the document whose logits held it; it sizes its paged
cache and its concurrency itself, so there is no row count to lower on out-of-memory; it needs
a paged attention implementation of the model; and its first call took about 13 s for two
8-token prompts on the toy model (cache sizing and warm-up). The loop below is about 150 lines
and uses only ``forward`` with a KV cache.

Example:
    >>> import quantsweep
    >>> model, tokenizer = quantsweep.load_model("toy", device="cpu")
    >>> prompts = [tokenizer("the color of po ba fe is")["input_ids"], tokenizer("the home of po ba fe")["input_ids"]]
    >>> jobs = [GenerationJob(tokens=p, until=("\\n",), max_new_tokens=4) for p in prompts]
    >>> done = generate_greedy(model, jobs, max_rows=2, decode=tokenizer.decode, eos_ids={tokenizer.eos_token_id})
    >>> [len(done[i].tokens) <= 4 for i in range(2)]
    [True, True]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

STOP_LOOKBACK = 2  # tokens beyond a stop string's own length looked at, as lm-eval's MultiTokenEOSCriteria
CACHE_KWARGS = ("cache", "past_key_values")  # transformers 5.2x names the KV cache `cache`, older ones not


class CacheUnsupported(TypeError):
    """The model takes or fills no plain ``DynamicCache``; the caller should generate another way."""


@dataclass(frozen=True)
class GenerationJob:
    """One greedy generation request.

    Attributes:
        tokens: the prompt's token ids (already truncated to fit).
        until: stop strings; the row leaves once its decoded text holds one.
        max_new_tokens: the most tokens generated.

    Example:
        >>> GenerationJob(tokens=[1, 2], until=("\\n",), max_new_tokens=8).max_new_tokens
        8
    """

    tokens: list[int]
    until: tuple[str, ...]
    max_new_tokens: int


@dataclass
class Finished:
    """The generated tokens of one job and whether any of its logits was NaN or Inf.

    Example:
        >>> Finished(tokens=[5, 6]).nonfinite
        False
    """

    tokens: list[int]
    nonfinite: bool = False


@dataclass
class GenerationStats:
    """What the scheduler spent.

    Attributes:
        model_calls: forward passes (prefills and decode steps).
        decode_steps: forward passes that decode one token for each row in flight.
        slots: rows summed over all forward passes, each of which yields one token.
        tokens: tokens generated into finished jobs (``slots`` minus work lost to out-of-memory).
        longest: the most tokens one job generated.

    Example:
        >>> GenerationStats().model_calls
        0
    """

    model_calls: int = 0
    decode_steps: int = 0
    slots: int = 0
    tokens: int = 0
    longest: int = 0


@dataclass
class _Batch:
    """The rows in flight: job index, KV cache, mask, next position and next input token per row."""

    jobs: list[int] = field(default_factory=list)
    cache: DynamicCache | None = None
    mask: torch.Tensor | None = None  # [rows, cache length], 1 = a real token
    positions: torch.Tensor | None = None  # [rows]: position id of the next input token
    next_tokens: torch.Tensor | None = None  # [rows]: the last token generated, not yet fed

    def __len__(self) -> int:
        return len(self.jobs)


def cache_kwarg(model) -> str | None:
    """The name under which ``model.forward`` takes a KV cache (None if it takes none).

    Example:
        >>> import quantsweep
        >>> cache_kwarg(quantsweep.load_model("toy", device="cpu")[0]) in CACHE_KWARGS
        True
    """
    params = inspect.signature(model.forward).parameters
    return next((name for name in CACHE_KWARGS if name in params), None)


def stopped(tokens: list[int], until: tuple[str, ...], decode: Callable[[list[int]], str], lookback: int) -> bool:
    """Whether the decoded ``tokens`` hold one of the stop strings ``until``.

    The last ``lookback`` tokens are decoded first (cheap); only a hit there is confirmed on
    the whole text, so that a row never stops on a string its full text does not contain.

    Example:
        >>> stopped([72, 105, 10], ("\\n",), lambda ids: bytes(ids).decode(), lookback=3)
        True
    """
    stops = [s for s in until if s]
    if not stops:
        return False
    tail = decode(tokens[-lookback:])
    if not any(s in tail for s in stops):
        return False
    text = decode(tokens)
    return any(s in text for s in stops)


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = list(getattr(cache, "layers", []))
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        raise CacheUnsupported(f"{type(cache).__name__} is not a plain DynamicCache (sliding or quantized layers)")
    return layers


def _merge(batch: _Batch, new: _Batch) -> _Batch:
    """One batch from two: both padded on the left to the longer cache, rows concatenated."""
    if not batch.jobs:
        return new
    length = max(batch.mask.shape[1], new.mask.shape[1])
    for old_layer, new_layer in zip(_layers(batch.cache), _layers(new.cache), strict=True):
        old_layer.keys = torch.cat([_pad_left(old_layer.keys, length, 2), _pad_left(new_layer.keys, length, 2)])
        old_layer.values = torch.cat([_pad_left(old_layer.values, length, 2), _pad_left(new_layer.values, length, 2)])
    batch.jobs = batch.jobs + new.jobs
    batch.mask = torch.cat([_pad_left(batch.mask, length, 1), _pad_left(new.mask, length, 1)])
    batch.positions = torch.cat([batch.positions, new.positions])
    batch.next_tokens = torch.cat([batch.next_tokens, new.next_tokens])
    return batch


def _keep(batch: _Batch, rows: list[int]) -> None:
    """Keep only ``rows``; then cut the columns that are padding in every remaining row."""
    index = torch.tensor(rows, dtype=torch.long, device=batch.mask.device)
    batch.jobs = [batch.jobs[r] for r in rows]
    batch.mask, batch.positions, batch.next_tokens = batch.mask[index], batch.positions[index], batch.next_tokens[index]
    if not rows:
        batch.cache = None
        return
    real = batch.mask.any(dim=0)
    first = int(real.float().argmax())  # the first column some row uses
    for layer in _layers(batch.cache):
        layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]
    batch.mask = batch.mask[:, first:]


class _Run:
    """One pass of the scheduler at a fixed number of rows (see :func:`generate_greedy`)."""

    def __init__(self, model, jobs, max_rows, decode, eos_ids, done, stats):
        self.model, self.jobs, self.max_rows, self.decode = model, jobs, max_rows, decode
        self.eos_ids, self.done, self.stats = set(eos_ids), done, stats
        self.device = next(model.parameters()).device
        self.kwarg = cache_kwarg(model)
        if self.kwarg is None:
            raise CacheUnsupported(f"{type(model).__name__}.forward takes no KV cache")
        params = inspect.signature(model.forward).parameters
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.generated: dict[int, list[int]] = {}
        self.nonfinite: dict[int, bool] = {}

    def _forward(self, ids, mask, positions, cache) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self.kwarg: cache},
            **self.keep,
        )
        returned = getattr(out, self.kwarg, None)
        returned = returned if returned is not None else getattr(out, "past_key_values", None)
        if returned is not cache:
            raise CacheUnsupported(f"{type(self.model).__name__} did not fill the DynamicCache it was given")
        self.stats.model_calls += 1
        self.stats.slots += ids.shape[0]
        return out.logits[:, -1, :].float()  # as model.generate: greedy on float32 scores

    def _prefill(self, job_ids: list[int]) -> _Batch:
        prompts = [self.jobs[j].tokens for j in job_ids]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[p[0]] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as model.generate derives them
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache)
        _layers(cache)
        batch = _Batch(job_ids, cache, mask, mask.sum(-1), None)
        return self._take(batch, logits)

    def _take(self, batch: _Batch, logits: torch.Tensor) -> _Batch:
        """Record each row's greedy token, and its non-finite logits; remove the rows that are done."""
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        tokens = logits.argmax(dim=-1)
        batch.next_tokens = tokens
        keep = []
        for row, (job_id, token, ok) in enumerate(zip(batch.jobs, tokens.tolist(), finite)):
            job = self.jobs[job_id]
            generated = self.generated.setdefault(job_id, [])
            generated.append(token)
            self.nonfinite[job_id] = self.nonfinite.get(job_id, False) or not ok
            # a token decodes to at least one byte and a character is at most 4 bytes (UTF-8)
            lookback = 4 * max((len(s) for s in job.until), default=0) + STOP_LOOKBACK
            if (
                token in self.eos_ids
                or len(generated) >= job.max_new_tokens
                or stopped(generated, job.until, self.decode, lookback)
            ):
                self.done[job_id] = Finished(generated, self.nonfinite[job_id])
                self.stats.tokens += len(generated)
                self.stats.longest = max(self.stats.longest, len(generated))
            else:
                keep.append(row)
        if len(keep) < len(batch):
            _keep(batch, keep)
        return batch

    def _step(self, batch: _Batch) -> _Batch:
        ones = batch.mask.new_ones(len(batch), 1)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        logits = self._forward(batch.next_tokens[:, None], batch.mask, batch.positions[:, None], batch.cache)
        self.stats.decode_steps += 1
        batch.positions = batch.positions + 1
        return self._take(batch, logits)

    def run(self) -> None:
        waiting = [j for j in range(len(self.jobs)) if j not in self.done]
        waiting.sort(key=lambda j: -len(self.jobs[j].tokens))  # longest first: similar lengths together
        batch = _Batch()
        while waiting or batch.jobs:
            free = self.max_rows - len(batch)
            # a freed slot is taken at once: joining in groups (one prefill for several rows)
            # saved few calls and cost decode steps when measured (benchmarks/generation.py)
            if waiting and free > 0:
                joining, waiting = waiting[:free], waiting[free:]
                new = self._prefill(joining)
                batch = _merge(batch, new) if new.jobs else batch
                continue
            batch = self._step(batch)


def generate_greedy(
    model,
    jobs: list[GenerationJob],
    *,
    max_rows: int,
    decode: Callable[[list[int]], str],
    eos_ids=(),
    done: dict[int, Finished] | None = None,
    stats: GenerationStats | None = None,
) -> dict[int, Finished]:
    """Greedy-decode every job with at most ``max_rows`` rows in flight; a finished row frees its slot.

    A row finishes when it generates one of ``eos_ids`` (kept, as ``model.generate`` keeps
    it), reaches ``max_new_tokens``, or its decoded text holds one of its stop strings. Call
    it under ``torch.no_grad()`` (and the autocast the caller wants).

    Args:
        model: a causal LM whose ``forward`` fills a ``DynamicCache``.
        jobs: the requests.
        max_rows: the most rows decoded together.
        decode: token ids -> text (the tokenizer's decode, as lm-eval decodes).
        eos_ids: end-of-sequence token ids.
        done: results already finished (job index -> :class:`Finished`); they are skipped,
            and new ones are added to it as they finish, so that a run stopped by
            out-of-memory loses only the rows in flight.
        stats: counters to add to.

    Returns:
        ``done``: job index -> :class:`Finished`, for every job.

    Raises:
        CacheUnsupported: the model's forward takes or fills no plain ``DynamicCache`` (raised
            at its first forward; jobs finished before stay in ``done``).

    Example:
        >>> import quantsweep
        >>> model, tokenizer = quantsweep.load_model("toy", device="cpu")
        >>> ids = tokenizer("the color of po ba fe is")["input_ids"]
        >>> stats = GenerationStats()
        >>> with torch.no_grad():
        ...     done = generate_greedy(model, [GenerationJob(ids, (), 3)], max_rows=4, decode=tokenizer.decode,
        ...                            stats=stats)
        >>> reference = model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)[0, len(ids):]
        >>> done[0].tokens == reference.tolist(), stats.model_calls
        (True, 3)
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be an integer >= 1, got {max_rows!r}")
    done = {} if done is None else done
    _Run(model, jobs, max_rows, decode, eos_ids, done, stats if stats is not None else GenerationStats()).run()
    return done
