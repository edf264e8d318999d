"""KL divergence and top-1 agreement between two models' next-token distributions (pure tensor math).

``KL(P || Q) = sum_v p_v (log p_v - log q_v)`` in nats, per position, where P is the
reference (full-precision) model and Q the quantized one: the expected extra code
length of Q's predictions on text the reference model would write. Zero when the two
distributions are equal; NaN when Q's logits are not finite.

Example:
    >>> import torch
    >>> reference = torch.log_softmax(torch.tensor([[[2.0, 0.0, -1.0]]]), dim=-1)
    >>> per_position, same_top = next_token_divergence(reference, torch.tensor([[[2.0, 0.0, -1.0]]]))
    >>> float(per_position.abs().max()) < 1e-6, bool(same_top.all())
    (True, True)
"""

from __future__ import annotations

import torch


def next_token_divergence(reference_logprobs: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position ``KL(reference || model)`` in nats and whether the top-1 tokens agree.

    Args:
        reference_logprobs: log-probabilities of the reference model, ``[..., vocab]`` (float32).
        logits: the other model's logits at the same positions, ``[..., vocab]`` (any float dtype).

    Returns:
        ``(kl, same_top1)``: float32 ``[...]`` and bool ``[...]``. A position where the model's
        logits are not finite gets a NaN KL.

    Example:
        >>> import torch
        >>> reference = torch.log_softmax(torch.tensor([[0.0, 0.0]]), dim=-1)  # uniform over 2 tokens
        >>> kl, same = next_token_divergence(reference, torch.tensor([[0.0, -30.0]]))
        >>> round(float(kl[0]), 4)  # 0.5 * log(0.5 / 1) + 0.5 * log(0.5 / e^-30) ~ 0.5 * 30 - log 2
        14.3069
    """
    if reference_logprobs.shape != logits.shape:
        raise ValueError(
            f"reference log-probabilities {tuple(reference_logprobs.shape)} and logits {tuple(logits.shape)} differ in shape"
        )
    reference = reference_logprobs.float()
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    probs = reference.exp()
    # 0 * log 0 = 0: tokens the reference gives no mass to contribute nothing
    terms = torch.where(probs > 0, probs * (reference - logprobs), torch.zeros_like(probs))
    kl = terms.sum(dim=-1)
    finite = torch.isfinite(logits).all(dim=-1)
    kl = torch.where(finite, kl.clamp(min=0.0), torch.full_like(kl, float("nan")))
    same_top1 = reference.argmax(dim=-1) == logprobs.argmax(dim=-1)
    return kl, same_top1 & finite
