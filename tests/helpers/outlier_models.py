"""A tiny openPangu-Embedded checkpoint with the activation outliers that break W4A4, and text sampled from it.

Random weights alone give near-uniform predictions and Gaussian activations, which
4-bit activations handle about as well with or without rotation. Real LLMs have a
few outlier channels: large RMSNorm scales on some residual channels (what SmoothQuant
migrates) and a few intermediate channels with large ``down_proj`` inputs (which
SmoothQuant leaves alone; QuaRot's online Hadamard spreads them). This model has both
(4 channels each, x ``norm_outlier`` and x ``up_outlier``), and an output head scaled
so its predictions are sharp (the FP perplexity is far below the vocabulary size).
Perplexity is measured on text sampled from the FP model itself, so quantization
damage shows as a rise (``exp(H(p) + KL(p || q))``).

Example:
    >>> config = write_outlier_pangu(tmp_path / "pangu")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .checkpoints import pangu_tensor_shapes, random_state_dict, tiny_pangu_config, write_pangu_checkpoint


def write_outlier_pangu(
    directory: Path,
    hidden: int = 64,
    norm_outlier: float = 20.0,
    up_outlier: float = 5.0,
    head_scale: float = 3.0,
    seed: int = 0,
) -> dict:
    """Write the 2-layer outlier openPangu checkpoint (GQA, q/k/v/o biases); return its config."""
    config = tiny_pangu_config(
        hidden_size=hidden,
        intermediate_size=hidden * 25 // 8,  # 12800 / 4096, as in openPangu-Embedded-7B
        num_attention_heads=hidden // 32,
        num_key_value_heads=max(hidden // 128, 1),
    )
    state = random_state_dict(pangu_tensor_shapes(config), seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    residual_channels = torch.randperm(hidden, generator=generator)[:4]
    intermediate_channels = torch.randperm(config["intermediate_size"], generator=generator)[:4]
    for name, tensor in state.items():
        if "norm" in name:
            tensor[residual_channels] *= norm_outlier
        elif "up_proj" in name:
            tensor[intermediate_channels] *= up_outlier
    state["lm_head.weight"] *= head_scale
    write_pangu_checkpoint(Path(directory), config=config, state=state)
    return config


@torch.no_grad()
def sample_tokens(model, n_samples: int, length: int, seed: int, low: int = 4) -> torch.Tensor:
    """``[n_samples, length]`` token ids sampled from ``model`` (temperature 1, no cache: tiny models)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(low, vocab, (n_samples, 1), generator=generator)
    for _ in range(length - 1):
        probabilities = torch.softmax(model(ids).logits[:, -1].float(), dim=-1)
        ids = torch.cat([ids, torch.multinomial(probabilities, 1, generator=generator)], dim=1)
    return ids


@torch.no_grad()
def sequence_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood (nats) of each sequence, ``[n_samples]``."""
    logits = model(ids).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return nll.mean(dim=1)


def perplexity(nll: torch.Tensor) -> float:
    """Perplexity over equally long sequences from their mean NLLs."""
    return math.exp(float(nll.mean()))
