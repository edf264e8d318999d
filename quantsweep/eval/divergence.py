"""Divergence from the baseline: token KL, top-1 agreement and the correct token's probability.

Accuracy is a coarse instrument (Dutta et al. 2024): a recipe can keep its accuracy and
still change its answers. This module measures how far a recipe's next-token
distribution ``Q`` is from the baseline's ``P`` at every scored position of a rolling
log-likelihood (perplexity) task, and how far its distribution over the options of a
multiple-choice document is.

**The stored baseline** (per scored token, computed once with the baseline cell):

* the ids and log-probabilities of the baseline's ``k`` most likely tokens (the top-k);
* the log of the remaining mass ``r = 1 - sum(top-k probabilities)``;
* ``m`` ids drawn from the baseline's distribution restricted to the rest of the vocabulary
  (the "tail", renormalised), with their log-probabilities;
* the log-probability of the correct next token.

That is ``8 (k + m) + 8`` bytes per token (int32 ids, float32 log-probabilities):
200 bytes with the defaults ``k = 16``, ``m = 8`` (:func:`bytes_per_token`).

**KL(P || Q) per position** splits exactly into the top-k part and the tail part:
``KL = sum_top p (log p - log q) + sum_tail p (log p - log q)``. The top-k part is exact.
The tail part is ``r * E_{x ~ P_tail}[log p(x) - log q(x)]``, estimated by the mean over the
``m`` stored tail draws. So:

* the estimate is **unbiased** for the exact KL (its expectation over the draws is exact);
* its Monte Carlo **standard error** is known: each position's tail term has variance
  ``r^2 var / m``; the mean over ``T`` positions has standard error
  ``sqrt(sum r_i^2 var_i / m) / T``, recorded as ``kl_stderr``;
* ``kl_lower`` (the KL of P and Q coarsened to top-k + "the rest") is a deterministic
  **lower bound** of the exact KL (data processing inequality), exact when the two tails
  have the same shape; the gap is ``r * KL(P_tail || Q_tail)``.

With a peaked baseline (a trained LM) ``r`` is small and both figures sit on the exact KL;
with a flat one (a random-weights model over 50,000 tokens) ``r`` is near 1 and the
unbiased estimate, with its standard error, is what to read. ``docs/verdicts.md`` gives
measured errors against the exact KL.

Top-1 agreement (the baseline's argmax is the first stored id; the recipe's argmax is
taken over its full distribution; a tie counts as agreement when a token is top for both)
and the change in the correct token's probability are exact.

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> p = torch.log_softmax(3 * torch.randn(64, 1000), dim=-1)
    >>> q = torch.log_softmax(p + 0.1 * torch.randn(64, 1000), dim=-1)
    >>> targets = torch.randint(0, 1000, (64,))
    >>> rows = reference_rows(p, targets, generator=torch.Generator().manual_seed(0))
    >>> summary = summarize([compare_rows(q, targets, rows)])
    >>> exact = float((p.exp() * (p - q)).sum(-1).mean())
    >>> abs(summary["kl_mean"] - exact) < 4 * summary["kl_stderr"] + 1e-6
    True
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

TOP_K = 16  # baseline tokens stored exactly per scored position
TAIL_SAMPLES = 8  # draws from the baseline's tail per position (the unbiased tail term)
SEED = 0  # the draws' seed: a baseline's reference is reproducible
REFERENCE_FIELDS = ("top_ids", "top_logp", "tail_logmass", "tail_ids", "tail_logp", "target_logp")
_TINY = 1e-30  # mass floor before a log: a tail of zero mass contributes exactly nothing


def bytes_per_token(k: int = TOP_K, tail_samples: int = TAIL_SAMPLES) -> int:
    """Bytes the stored baseline takes per scored token (int32 ids, float32 log-probabilities).

    Example:
        >>> bytes_per_token(), bytes_per_token(32, 0)
        (200, 264)
    """
    return 8 * (k + tail_samples) + 8


def document_key(text: str) -> str:
    """The key of one rolling document in a reference: a hash of its text.

    Example:
        >>> document_key("hello")
        'aaf4c61ddcc5e8a2'
    """
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _log_rest(logp_top: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(logp_top))) per row, stably; -inf-safe (floored at log of a tiny mass)."""
    top = torch.logsumexp(logp_top.float(), dim=-1).clamp(max=0.0)
    return torch.log((-torch.expm1(top)).clamp(min=_TINY))


def _inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Ids drawn from each row of ``weights`` ``[n, V]`` (not normalised), one per uniform ``[n, m]``."""
    cdf = weights.cumsum(dim=-1)
    ids = torch.searchsorted(cdf, (uniforms * cdf[:, -1:]).contiguous(), right=True).clamp_(max=weights.shape[1] - 1)
    # rounding can land on a token of no weight (u * total rounded up to the total): take the
    # row's last token of positive weight instead
    bad = weights.gather(1, ids) <= 0
    if bad.any():
        last = weights.shape[1] - 1 - (weights > 0).flip(-1).int().argmax(dim=-1)
        ids = torch.where(bad, last[:, None], ids)
    return ids


def reference_rows(
    logprobs: torch.Tensor,
    targets: torch.Tensor,
    *,
    k: int = TOP_K,
    tail_samples: int = TAIL_SAMPLES,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The baseline's stored representation of ``n`` positions, from their log-probabilities ``[n, V]``.

    The tail draws are taken by inverse CDF from uniform numbers ``[n, tail_samples]``, one row
    per position, so a position's draws depend only on its own row of ``uniforms`` (not on
    which other positions share the call).

    Args:
        logprobs: the baseline's log-softmax at each position, ``[n, V]``.
        targets: the correct next token of each position, ``[n]``.
        k: top tokens kept exactly (at most ``V``).
        tail_samples: draws from the rest of the distribution (0: only the lower bound is possible).
        generator: the random generator of the uniforms (on ``logprobs``' device) when
            ``uniforms`` is not given.
        uniforms: the draws' uniform numbers in ``[0, 1)``, ``[n, tail_samples]``.

    Returns:
        The :data:`REFERENCE_FIELDS` as tensors (ids int32, log-probabilities float32).

    Example:
        >>> logp = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -1.0]]), dim=-1)
        >>> rows = reference_rows(logp, torch.tensor([1]), k=2, tail_samples=3)
        >>> rows["top_ids"].tolist(), rows["tail_ids"].shape
        ([[0, 1]], torch.Size([1, 3]))
    """
    logprobs = logprobs.float()
    n, vocab = logprobs.shape
    k = min(k, vocab)
    top_logp, top_ids = torch.topk(logprobs, k, dim=-1)
    rows = {
        "top_ids": top_ids.int(),
        "top_logp": top_logp,
        "tail_logmass": _log_rest(top_logp) if k < vocab else torch.full((n,), -math.inf, device=logprobs.device),
        "target_logp": logprobs.gather(1, targets[:, None].long())[:, 0],
    }
    if tail_samples > 0 and k < vocab:
        weights = logprobs.exp().scatter_(1, top_ids, 0.0)
        # all mass in the top-k, or a non-finite row (NaN sum): any tail token will do; the row's
        # stored log-probabilities carry the NaN, so its comparison is NaN too, never a number
        empty = ~(weights.sum(dim=-1) > 0)
        if empty.any():
            weights[empty] = 1.0
            weights[empty] = weights[empty].scatter_(1, top_ids[empty], 0.0)
        if uniforms is None:
            uniforms = torch.rand(n, tail_samples, generator=generator, device=logprobs.device)
        tail_ids = _inverse_cdf(weights, uniforms.to(weights.device))
        rows["tail_ids"] = tail_ids.int()
        rows["tail_logp"] = logprobs.gather(1, tail_ids)
    else:
        rows["tail_ids"] = torch.zeros(n, 0, dtype=torch.int32, device=logprobs.device)
        rows["tail_logp"] = torch.zeros(n, 0, device=logprobs.device)
    return rows


def compare_rows(logprobs: torch.Tensor, targets: torch.Tensor, rows: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per-position divergence of a recipe's log-probabilities ``[n, V]`` from the stored baseline ``rows``.

    Returns:
        ``kl`` (the unbiased estimate), ``kl_lower`` (the coarsened lower bound),
        ``tail_var`` (variance of the tail term, ``r^2 var / m``), ``top1`` (same top token; ties agree),
        ``prob_delta`` (recipe minus baseline probability of the correct token), ``tail_mass``:
        float64 numpy arrays of length ``n``.

    Example:
        >>> logp = torch.log_softmax(torch.randn(5, 50), dim=-1)
        >>> targets = torch.zeros(5, dtype=torch.long)
        >>> same = compare_rows(logp, targets, reference_rows(logp, targets, k=4))
        >>> float(abs(same["kl"]).max()) < 1e-5, bool(same["top1"].all())
        (True, True)
    """
    device = logprobs.device
    logq = logprobs.float()
    top_ids = rows["top_ids"].to(device).long()
    top_logp = rows["top_logp"].to(device).float()
    tail_logmass = rows["tail_logmass"].to(device).float()
    q_top = logq.gather(1, top_ids)
    top_term = (top_logp.exp() * (top_logp - q_top)).sum(dim=-1)
    tail_mass = tail_logmass.exp()
    q_rest = _log_rest(q_top)
    # the coarsened KL: the tail as one outcome; 0 * log(0 / x) = 0 when the baseline's tail is empty
    bucket = torch.where(tail_mass > 0, tail_mass * (tail_logmass - q_rest), torch.zeros_like(tail_mass))
    lower = top_term + bucket
    tail_ids = rows["tail_ids"].to(device).long()
    m = tail_ids.shape[1]
    kl, tail_var = lower, torch.zeros_like(lower)
    if m > 0:
        # log(p/q) of each tail draw, minus the bucket's log(r_P / r_Q): mean estimates KL(P_tail || Q_tail)
        ratio = rows["tail_logp"].to(device).float() - logq.gather(1, tail_ids)
        shape = ratio - (tail_logmass - q_rest)[:, None]
        has_tail = tail_mass > 0
        kl = lower + torch.where(has_tail, tail_mass * shape.mean(dim=1), torch.zeros_like(lower))
        if m > 1:
            tail_var = torch.where(has_tail, tail_mass**2 * shape.var(dim=1) / m, torch.zeros_like(lower))
    # same top token, ties counted as agreement (bf16 logits tie often, and topk orders tied ids
    # arbitrarily): one stored id is both a baseline argmax and a recipe argmax
    baseline_best = top_logp >= top_logp[:, :1]
    recipe_best = q_top >= logq.max(dim=-1, keepdim=True).values
    top1 = (baseline_best & recipe_best).any(dim=-1)
    target_q = logq.gather(1, targets[:, None].long().to(device))[:, 0]
    prob_delta = target_q.exp() - rows["target_logp"].to(device).float().exp()

    def out(values):
        return values.detach().double().cpu().numpy()

    return {
        "kl": out(kl),
        "kl_lower": out(lower),
        "tail_var": out(tail_var),
        "top1": top1.cpu().numpy(),
        "prob_delta": out(prob_delta),
        "tail_mass": out(tail_mass),
    }


def summarize(compared: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The cell's figures from per-position comparisons (:func:`compare_rows`), or None without positions.

    Returns:
        ``positions``, ``kl_mean`` (nats), ``kl_p99``, ``kl_stderr`` (Monte Carlo standard error
        of ``kl_mean``), ``kl_lower`` (mean lower bound), ``top1_agreement`` (share),
        ``prob_delta_mean`` (mean change of the correct token's probability) and
        ``tail_mass_mean`` (the baseline's mean mass outside its stored top-k).

    Example:
        >>> logp = torch.log_softmax(torch.randn(8, 20), dim=-1)
        >>> t = torch.zeros(8, dtype=torch.long)
        >>> summarize([compare_rows(logp, t, reference_rows(logp, t))])["top1_agreement"]
        1.0
    """
    compared = [c for c in compared if len(c["kl"])]
    if not compared:
        return None

    def joined(name):
        return np.concatenate([c[name] for c in compared])

    kl = joined("kl")
    finite = bool(np.isfinite(kl).all())
    return {
        "positions": int(kl.size),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.percentile(kl, 99)) if finite else float("nan"),
        "kl_stderr": float(math.sqrt(joined("tail_var").sum()) / kl.size),
        "kl_lower": float(joined("kl_lower").mean()),
        "top1_agreement": float(joined("top1").mean()),
        "prob_delta_mean": float(joined("prob_delta").mean()),
        "tail_mass_mean": float(joined("tail_mass").mean()),
    }


@dataclass
class TokenReference:
    """A baseline's stored distributions for one rolling task: document key -> per-position arrays.

    Attributes:
        k, tail_samples: the representation's sizes.
        documents: :func:`document_key` -> {field: numpy array over that document's scored positions}.

    Example:
        >>> ref = TokenReference(k=2, tail_samples=1)
        >>> ref.add("doc", {f: np.zeros((3, 2)) for f in REFERENCE_FIELDS})
        >>> TokenReference.from_bytes(ref.to_bytes()).positions()
        3
    """

    k: int = TOP_K
    tail_samples: int = TAIL_SAMPLES
    documents: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def add(self, key: str, rows: dict[str, Any]) -> None:
        """Store one document's rows (tensors or arrays)."""
        self.documents[key] = {
            name: (value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value))
            for name, value in rows.items()
        }

    def positions(self) -> int:
        """Scored positions stored, over all documents."""
        return sum(len(doc["target_logp"]) for doc in self.documents.values())

    def to_bytes(self) -> bytes:
        """One ``.npz`` (uncompressed): the documents' arrays concatenated, with their keys and offsets."""
        keys = sorted(self.documents)
        lengths = [len(self.documents[key]["target_logp"]) for key in keys]
        arrays = {
            name: np.concatenate([self.documents[key][name] for key in keys])
            if keys
            else np.zeros((0,), dtype=np.float32)
            for name in REFERENCE_FIELDS
        }
        buffer = io.BytesIO()
        np.savez(
            buffer,
            keys=np.array(keys, dtype="U16"),
            lengths=np.array(lengths, dtype=np.int64),
            sizes=np.array([self.k, self.tail_samples], dtype=np.int64),
            **arrays,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TokenReference:
        """Read back :meth:`to_bytes`."""
        with np.load(io.BytesIO(data)) as npz:
            keys, lengths = list(npz["keys"]), npz["lengths"]
            k, tail = (int(v) for v in npz["sizes"])
            arrays = {name: npz[name] for name in REFERENCE_FIELDS}
        reference = cls(k=k, tail_samples=tail)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for i, key in enumerate(keys):
            reference.documents[str(key)] = {
                name: arrays[name][offsets[i] : offsets[i + 1]] for name in REFERENCE_FIELDS
            }
        return reference


def choice_kl(baseline_loglikelihoods, loglikelihoods) -> float:
    """KL(P || Q) of two models' distributions over one document's options (each normalised by softmax).

    Example:
        >>> round(choice_kl([-1.0, -2.0], [-1.0, -2.0]), 12), choice_kl([0.0, -1.0], [-1.0, 0.0]) > 0
        (0.0, True)
    """
    p = np.asarray(baseline_loglikelihoods, dtype=float)
    q = np.asarray(loglikelihoods, dtype=float)
    if p.shape != q.shape or p.size == 0:
        raise ValueError(f"the two models scored different options: {p.size} and {q.size}")
    logp = p - np.logaddexp.reduce(p)
    logq = q - np.logaddexp.reduce(q)
    return float(np.sum(np.exp(logp) * (logp - logq)))


def _finite_options(loglikelihoods) -> bool:
    """Whether one document's option log-likelihoods exist and are all finite (non-finite ones are stored as None)."""
    return loglikelihoods is not None and all(v is not None and math.isfinite(v) for v in loglikelihoods)


def choice_divergence(pairs) -> dict[str, Any] | None:
    """Mean over documents of :func:`choice_kl`, and the share whose most likely option is the same.

    Args:
        pairs: ``(baseline option log-likelihoods, recipe option log-likelihoods)`` per document.
            A document where either side is missing or not finite is left out (its KL is not
            defined); None when no document is left.

    Example:
        >>> choice_divergence([([-1.0, -2.0], [-1.0, -2.0]), ([0.0, -3.0], [-3.0, 0.0])])["top1_agreement"]
        0.5
    """
    pairs = [(p, q) for p, q in pairs if _finite_options(p) and _finite_options(q)]
    if not pairs:
        return None
    kls = np.array([choice_kl(p, q) for p, q in pairs])
    same = np.array([int(np.argmax(p)) == int(np.argmax(q)) for p, q in pairs])
    finite = bool(np.isfinite(kls).all())
    return {
        "documents": len(pairs),
        "kl_mean": float(kls.mean()),
        "kl_p99": float(np.percentile(kls, 99)) if finite else float("nan"),
        "top1_agreement": float(same.mean()),
    }


class DivergenceProbe:
    """What the rolling log-likelihood scorer does with each position's log-probabilities.

    With ``record=True`` (the baseline's cell) it keeps the baseline's rows per task
    (:attr:`recorded`); with ``references`` (a recipe's cell: task -> :class:`TokenReference`)
    it compares with them (:attr:`compared`, summed up by :meth:`summary`). A task that
    cannot be compared (a document missing from the reference, another window) is named in
    :attr:`problems` with the reason, and gets no figures: never a silent partial figure.

    ``load_reference`` fetches a task's reference the first time the scorer needs it (a
    sweep cell: the baseline's stored file, waiting for a baseline still being computed),
    so only a rolling task ever asks; it returns the :class:`TokenReference`, or a string
    saying why there is none (kept in :attr:`problems`).

    Example:
        >>> probe = DivergenceProbe(record=True)
        >>> probe.summary("toy_ppl") is None, probe.recording
        (True, True)
    """

    def __init__(
        self,
        *,
        record: bool = False,
        references: dict[str, TokenReference] | None = None,
        k: int = TOP_K,
        tail_samples: int = TAIL_SAMPLES,
        seed: int = SEED,
        load_reference: Callable[[str], TokenReference | str] | None = None,
    ):
        for name, value in (("k", k), ("tail_samples", tail_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "k" else 0):
                raise ValueError(f"{name} must be an integer >= {1 if name == 'k' else 0}, got {value!r}")
        self.recording = bool(record)
        self.references = dict(references or {})
        self.load_reference = load_reference
        self.k, self.tail_samples, self.seed = k, tail_samples, seed
        self.recorded: dict[str, TokenReference] = {}
        self.compared: dict[str, list[dict[str, Any]]] = {}
        self.problems: dict[str, str] = {}

    def uniforms(self, key: str, window: int, positions: int, device) -> torch.Tensor:
        """The tail draws' uniform numbers ``[positions, tail_samples]`` of one window of one document.

        Seeded from the probe's seed, the document's :func:`document_key` and the window's index,
        so a document's stored reference does not depend on how documents were batched.

        Example:
            >>> probe = DivergenceProbe(record=True, tail_samples=2)
            >>> a = probe.uniforms("doc", 0, 3, "cpu")
            >>> a.shape, bool((a == probe.uniforms("doc", 0, 3, "cpu")).all()), bool((a == probe.uniforms("doc", 1, 3, "cpu")).any())
            (torch.Size([3, 2]), True, False)
        """
        digest = hashlib.sha1(f"{self.seed}:{key}:{window}".encode()).digest()
        generator = torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        return torch.rand(positions, self.tail_samples, generator=generator, device=device)

    def reference(self, task: str) -> TokenReference | None:
        """The stored reference of ``task``: given, or fetched once by ``load_reference``; None without one.

        When ``load_reference`` has none, its reason is kept in :attr:`problems`.

        Example:
            >>> probe = DivergenceProbe(load_reference=lambda task: "the baseline failed")
            >>> probe.reference("toy_ppl"), probe.problems["toy_ppl"]
            (None, 'the baseline failed')
        """
        if task not in self.references and task not in self.problems and self.load_reference is not None:
            found = self.load_reference(task)
            if isinstance(found, TokenReference):
                self.references[task] = found
            else:
                self.problems[task] = str(found)
        return self.references.get(task)

    def reference_for(self, task: str, keys: list[str], lengths: list[int]) -> list[dict[str, np.ndarray]] | None:
        """The stored rows of each document of one call, or None (the reason in :attr:`problems`).

        A document of no scored tokens (an empty text) is never stored; it gets empty rows.

        Example:
            >>> probe = DivergenceProbe(references={"t": TokenReference()})
            >>> probe.reference_for("t", ["empty"], [0])
            [{}]
            >>> probe.reference_for("t", ["absent"], [3]), probe.problems["t"]
            (None, "a document is missing from the baseline's stored distributions")
        """
        reference = self.reference(task)
        if reference is None:
            return None
        out = []
        for key, length in zip(keys, lengths):
            doc = reference.documents.get(key)
            if doc is None and length == 0:
                out.append({})
                continue
            if doc is None:
                self.problems[task] = "a document is missing from the baseline's stored distributions"
                return None
            if len(doc["target_logp"]) != length:
                self.problems[task] = (
                    f"a document has {length} scored tokens here and {len(doc['target_logp'])} in the baseline's "
                    "stored distributions (another tokenizer or window?)"
                )
                return None
            out.append(doc)
        return out

    def summary(self, task: str) -> dict[str, Any] | None:
        """The task's figures (:func:`summarize`) with the representation's sizes, or None."""
        if task in self.problems:
            return None
        figures = summarize(self.compared.get(task, []))
        if figures is None:
            return None
        reference = self.references[task]
        return {**figures, "k": reference.k, "tail_samples": reference.tail_samples}


DIVERGENCE_FIELDS = (
    "divergence_kind",
    "divergence_n",
    "kl_mean",
    "kl_p99",
    "kl_stderr",
    "kl_lower",
    "top1_agreement",
    "prob_delta_mean",
    "divergence_error",
)


def divergence_fields(task, baseline_task) -> dict[str, Any]:
    """The divergence figures of one judged task as flat record fields (all None where undefined).

    * Rolling log-likelihood: the token figures measured while the cell ran
      (``TaskResult.divergence``): ``divergence_kind = "token"``, ``divergence_n`` positions.
    * Multiple choice: KL between the baseline's and the recipe's softmax over each
      document's option log-likelihoods, averaged over the paired documents
      (``divergence_kind = "options"``, ``divergence_n`` documents); ``top1_agreement`` is the
      share whose most likely option is the same.

    Example:
        >>> from quantsweep.eval.harness import SampleOutcome, TaskResult
        >>> def mc(lls):
        ...     return TaskResult("t", "multiple_choice", {}, [SampleOutcome(0, {}, loglikelihoods=lls)], 0, 0)
        >>> fields = divergence_fields(mc([-1.0, -2.0]), mc([-1.0, -2.0]))
        >>> fields["divergence_kind"], round(fields["kl_mean"], 9), fields["top1_agreement"]
        ('options', 0.0, 1.0)
    """
    out: dict[str, Any] = dict.fromkeys(DIVERGENCE_FIELDS)
    if task.output_type == "loglikelihood_rolling" and task.divergence is not None:
        figures = task.divergence
        out["divergence_kind"] = "token"
        if "error" in figures:
            out["divergence_error"] = figures["error"]
            return out
        out["divergence_n"] = figures["positions"]
        for name in ("kl_mean", "kl_p99", "kl_stderr", "kl_lower", "top1_agreement", "prob_delta_mean"):
            out[name] = figures.get(name)
        return out
    if task.output_type == "multiple_choice" and baseline_task is not None:
        base = {s.doc_id: s.loglikelihoods for s in baseline_task.samples}
        pairs = [(base.get(s.doc_id), s.loglikelihoods) for s in task.samples]
        figures = choice_divergence(pairs)
        if figures is not None:
            out.update(
                divergence_kind="options",
                divergence_n=figures["documents"],
                kl_mean=figures["kl_mean"],
                kl_p99=figures["kl_p99"],
                top1_agreement=figures["top1_agreement"],
            )
    return out
