"""Fake-quantization primitives for weights and activations.

Conventions (shared by every method):

* A weight is ``[out_features, in_features]``. Groups run along ``in_features``:
  ``group_size=None`` means one group per output channel (per-channel).
* Symmetric k-bit: integers in ``[-2**(k-1), 2**(k-1) - 1]``, zero point 0,
  ``scale = max|w| / (2**(k-1) - 1)``.
* Asymmetric k-bit: integers in ``[0, 2**k - 1]``,
  ``scale = (max - min) / (2**k - 1)``, ``zero = round(-min / scale)``.
* Binary: ``sign(w) * mean|w|`` per group (sign(0) is taken as +1).
* Non-finite weights stay non-finite: a NaN or Inf weight gives a non-finite scale and
  non-finite outputs for its group, never a large finite number (a broken checkpoint must
  not look repaired by quantization). Finite weights are unaffected by this rule.

Example:
    >>> import torch
    >>> w = torch.randn(8, 256)
    >>> w4 = fake_quantize(w, bits=4, group_size=128, symmetric=False)
    >>> w4.shape
    torch.Size([8, 256])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_EPS = 1e-12
_FP16_TINY = 2.0**-24  # the smallest positive float16 (a subnormal)
_FP16_MAX = 65504.0


@dataclass(frozen=True)
class QuantParams:
    """Per-group scale and zero point, shaped ``[out, n_groups, 1]``."""

    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    symmetric: bool

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1


def check_group_size(in_features: int, group_size: int | None, layer_name: str = "<tensor>") -> int:
    """Return the effective group size, or raise if it does not divide ``in_features``.

    Example:
        >>> check_group_size(256, 128)
        128
        >>> check_group_size(256, None)
        256
    """
    if group_size is None or group_size == -1:
        return in_features
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive integer or None, got {group_size!r}")
    if in_features % group_size != 0:
        raise ValueError(
            f"group_size {group_size} does not divide in_features {in_features} of layer "
            f"{layer_name!r}; choose a group size that divides {in_features}, or None for per-channel"
        )
    return group_size


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 2 to 8 for integer quantization, got {bits!r}")


def _grouped(weight: torch.Tensor, group_size: int | None, layer_name: str) -> torch.Tensor:
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight for {layer_name!r}, got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    size = check_group_size(in_features, group_size, layer_name)
    return weight.reshape(out_features, in_features // size, size)


def compute_qparams(
    weight: torch.Tensor,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = True,
    layer_name: str = "<tensor>",
    *,
    storable_scales: bool = True,
    clip_ratio: float = 1.0,
) -> QuantParams:
    """Min-max scale and zero point for each group of a 2-D weight.

    Weight scales are rounded to float16 (``storable_scales``), the dtype checkpoint formats
    store them in (GPTQ's ``scales``): the weights a recipe evaluates are then exactly the
    weights its exported checkpoint decodes to. The rounding moves a scale by at most a
    relative 2^-11. Activation scales (computed on the fly, never stored) are not rounded.

    ``clip_ratio`` scales each group's range (max |w|, or min and max) before the scale
    is set; 1.0 (the default) leaves it as is.

    Example:
        >>> p = compute_qparams(torch.tensor([[-1.0, 0.5, 2.0, 1.0]]), bits=4)
        >>> round(float(p.scale.flatten()[0]), 4)  # 2.0 / 7, rounded to float16
        0.2856
    """
    _check_bits(bits)
    groups = _grouped(weight, group_size, layer_name).float()
    if symmetric:
        absmax = groups.abs().amax(dim=-1, keepdim=True)
        if clip_ratio != 1.0:
            absmax = absmax * clip_ratio
        scale = (absmax / (2 ** (bits - 1) - 1)).clamp_min(_EPS)
        scale = _storable(scale) if storable_scales else scale
        zero = torch.zeros_like(scale)
    else:
        wmin = groups.amin(dim=-1, keepdim=True).clamp_max(0)
        wmax = groups.amax(dim=-1, keepdim=True).clamp_min(0)
        if clip_ratio != 1.0:
            wmin, wmax = wmin * clip_ratio, wmax * clip_ratio
        scale = ((wmax - wmin) / (2**bits - 1)).clamp_min(_EPS)
        scale = _storable(scale) if storable_scales else scale
        zero = torch.round(-wmin / scale)
    return QuantParams(scale=scale, zero=zero, bits=bits, symmetric=symmetric)


def _storable(scale: torch.Tensor) -> torch.Tensor:
    """Scales as float16 holds them (kept in float32): what a GPTQ checkpoint stores.

    Finite scales are clamped to float16's range; a NaN or Inf scale (from a non-finite
    weight) stays as it is, so the broken weight is not turned into a large finite one.
    """
    stored = scale.clamp(_FP16_TINY, _FP16_MAX).to(torch.float16).to(torch.float32)
    return torch.where(torch.isfinite(scale), stored, scale)


def quantize_to_int(weight: torch.Tensor, params: QuantParams, group_size: int | None = None) -> torch.Tensor:
    """Integer codes (as a float tensor) of ``weight`` under ``params``, grouped ``[out, G, g]``.

    Example:
        >>> w = torch.tensor([[-1.0, 0.5, 2.0, 1.0]])
        >>> quantize_to_int(w, compute_qparams(w, bits=4)).flatten().tolist()
        [-4.0, 2.0, 7.0, 4.0]
    """
    groups = _grouped(weight, group_size, "<tensor>").float()
    q = torch.round(groups / params.scale) + params.zero
    # Clamping would turn an Inf code into qmax. Params computed from another tensor (GPTQ's, set
    # before error feedback updates the columns) can meet an Inf weight: keep NaN/Inf codes as they are.
    return torch.where(torch.isfinite(q), q.clamp(params.qmin, params.qmax), q)


def dequantize(codes: torch.Tensor, params: QuantParams, shape: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Map integer codes back to real values and to the weight's 2-D ``shape``.

    Example:
        >>> w = torch.tensor([[-1.0, 0.5, 2.0, 1.0]])
        >>> p = compute_qparams(w, bits=8)
        >>> torch.allclose(dequantize(quantize_to_int(w, p), p, w.shape), w, atol=0.01)
        True
    """
    return ((codes - params.zero) * params.scale).reshape(shape)


def fake_quantize(
    weight: torch.Tensor,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = True,
    layer_name: str = "<tensor>",
) -> torch.Tensor:
    """Round-to-nearest k-bit quantize then dequantize; returns the weight's dtype.

    Example:
        >>> w = torch.randn(4, 128)
        >>> (fake_quantize(w, 8) - w).abs().max() < (fake_quantize(w, 2) - w).abs().max()
        tensor(True)
    """
    params = compute_qparams(weight, bits, group_size, symmetric, layer_name)
    codes = quantize_to_int(weight, params, group_size)
    return dequantize(codes, params, weight.shape).to(weight.dtype)


def binarize(weight: torch.Tensor, group_size: int | None = None, layer_name: str = "<tensor>") -> torch.Tensor:
    """1-bit weights: ``sign(w) * mean|w|`` per output channel or per group.

    Example:
        >>> binarize(torch.tensor([[1.0, -3.0, 2.0, -2.0]])).tolist()
        [[2.0, -2.0, 2.0, -2.0]]
    """
    groups = _grouped(weight, group_size, layer_name).float()
    scale = groups.abs().mean(dim=-1, keepdim=True)
    sign = torch.where(groups >= 0, 1.0, -1.0)
    return (sign * scale).reshape(weight.shape).to(weight.dtype)


def quantize_weight(
    weight: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True, layer_name: str = "<tensor>"
) -> torch.Tensor:
    """Round-to-nearest weights at ``bits`` bits: :func:`binarize` for 1 bit, else :func:`fake_quantize`.

    ``symmetric`` has no effect at 1 bit (binary weights are always ``±scale``).

    Example:
        >>> quantize_weight(torch.tensor([[1.0, -3.0, 2.0, -2.0]]), bits=1).tolist()
        [[2.0, -2.0, 2.0, -2.0]]
    """
    if bits == 1:
        return binarize(weight, group_size, layer_name)
    return fake_quantize(weight, bits, group_size, symmetric, layer_name)


def fake_quantize_activation(
    x: torch.Tensor, bits: int, symmetric: bool = True, clip_ratio: float = 1.0
) -> torch.Tensor:
    """Dynamic per-token fake quantization of activations along the last dimension.

    Each token (row of the last dim) gets its own scale, computed on the fly. No
    clamping of the scale is applied beyond a tiny epsilon, so an overflow in a
    low-precision dtype propagates as Inf/NaN rather than being hidden.

    ``clip_ratio`` in (0, 1] shrinks each token's range (its max |x|, or its min and
    max when asymmetric) before the scale is set, as QuaRot does for W4A4 (0.9);
    values outside the shrunk range saturate. 1.0 is plain min-max.

    Example:
        >>> x = torch.randn(2, 3, 16)
        >>> fake_quantize_activation(x, bits=8).shape
        torch.Size([2, 3, 16])
        >>> float(fake_quantize_activation(torch.tensor([[1.0, -0.5, 0.25]]), bits=4, clip_ratio=0.5).max())
        0.5
    """
    _check_bits(bits)
    if not 0.0 < clip_ratio <= 1.0:
        raise ValueError(f"clip_ratio must be in (0, 1], got {clip_ratio!r}")
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    params = compute_qparams(flat, bits, None, symmetric, storable_scales=False, clip_ratio=clip_ratio)
    codes = quantize_to_int(flat, params, None)
    return dequantize(codes, params, flat.shape).reshape(shape).to(x.dtype)
