"""Fake quantization of attention keys and values: per head, per token, in groups along ``head_dim``.

Keys and values reach the KV cache shaped ``[batch, kv_heads, tokens, head_dim]``. Every
``head_dim`` vector (one head of one token of one sequence) is quantized on its own: it
is cut into groups of ``group_size`` channels, and each group gets a min-max scale (and,
asymmetric by default, a zero point) from its own values only. So a token's quantized
key never depends on the other tokens, the batch it ran in, or whether it was computed
now or read back from a cache. Scales are computed on the fly in float32 and not rounded
to a storable dtype (nothing is stored).

The model surgery that calls this (hooks on the attention modules) lives in
:mod:`quantsweep.methods.kv_cache`.

Example:
    >>> import torch
    >>> keys = torch.randn(1, 2, 5, 32)  # [batch, kv_heads, tokens, head_dim]
    >>> fake_quantize_kv(keys, bits=4, group_size=16).shape
    torch.Size([1, 2, 5, 32])
"""

from __future__ import annotations

import torch

from quantsweep.quant.primitives import compute_qparams, dequantize, quantize_to_int

KV_CACHE_BITS = (2, 3, 4, 5, 6, 7, 8)


def check_kv_settings(bits: int, group_size: int | None = None, symmetric: bool = False) -> None:
    """Raise TypeError / ValueError naming the setting unless ``bits``, ``group_size``, ``symmetric`` are valid.

    ``group_size`` is checked against ``head_dim`` separately (it must divide it).

    Example:
        >>> check_kv_settings(4, 64)
        >>> check_kv_settings(16)
        Traceback (most recent call last):
        ValueError: KV-cache bits must be one of [2, 3, 4, 5, 6, 7, 8], got 16
    """
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"KV-cache bits must be an integer, got {type(bits).__name__} {bits!r}")
    if bits not in KV_CACHE_BITS:
        raise ValueError(f"KV-cache bits must be one of {list(KV_CACHE_BITS)}, got {bits}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"KV-cache group_size must be a positive integer or None (whole head), got {group_size!r}")
    if not isinstance(symmetric, bool):
        raise TypeError(f"KV-cache symmetric must be true or false, got {symmetric!r}")


def check_kv_group_size(head_dim: int, group_size: int | None, where: str = "keys and values") -> int:
    """The effective group size (``head_dim`` for None), or ValueError unless ``group_size`` divides ``head_dim``.

    Example:
        >>> check_kv_group_size(128, 64), check_kv_group_size(128, None)
        (64, 128)
        >>> check_kv_group_size(32, 24, "model.layers.0.self_attn")
        Traceback (most recent call last):
        ValueError: KV-cache group_size 24 does not divide head_dim 32 of model.layers.0.self_attn; choose a divisor of 32, or None for one scale per head
    """
    if group_size is None:
        return head_dim
    if head_dim % group_size:
        raise ValueError(
            f"KV-cache group_size {group_size} does not divide head_dim {head_dim} of {where}; "
            f"choose a divisor of {head_dim}, or None for one scale per head"
        )
    return group_size


def fake_quantize_kv(
    states: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = False
) -> torch.Tensor:
    """Quantize-dequantize keys or values ``[..., head_dim]``, each ``head_dim`` vector on its own.

    Args:
        states: keys (after RoPE) or values; the last dimension is ``head_dim``. Every
            other index (batch, head, token) is an independent vector.
        bits: 2..8.
        group_size: channels per scale along ``head_dim`` (must divide it); None: one
            scale for the whole head.
        symmetric: symmetric integers around zero, or (default) asymmetric with a zero point.

    Returns:
        A tensor of the same shape and dtype.

    Raises:
        TypeError / ValueError: a bad setting, or a ``group_size`` that does not divide ``head_dim``.

    Example:
        >>> x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
        >>> fake_quantize_kv(x, bits=2).tolist()  # 4 levels: 0, 1, 2, 3
        [[0.0, 1.0, 2.0, 3.0]]
        >>> fake_quantize_kv(x, bits=2, group_size=3)
        Traceback (most recent call last):
        ValueError: KV-cache group_size 3 does not divide head_dim 4 of keys and values; choose a divisor of 4, or None for one scale per head
    """
    check_kv_settings(bits, group_size, symmetric)
    head_dim = states.shape[-1]
    size = check_kv_group_size(head_dim, group_size)
    flat = states.reshape(-1, head_dim)  # one row per (batch, head, token)
    params = compute_qparams(flat, bits, size, symmetric, storable_scales=False)
    codes = quantize_to_int(flat, params, size)
    return dequantize(codes, params, flat.shape).reshape(states.shape).to(states.dtype)
