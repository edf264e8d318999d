"""The quantized representation of one weight: integer codes, scales, zero points, group index.

Fake-quantized floats are what evaluation runs; a :class:`QuantizedWeight` is what
export and real kernels use. Methods build one beside the fake-quant weight, and
``QuantizedWeight.dequantize(dtype)`` gives that weight back bit for bit, because
it performs the very arithmetic of :func:`quantsweep.quant.primitives.dequantize`
(``(code - zero) * scale`` in float32, then a cast to the model dtype).

Conventions (those of :mod:`quantsweep.quant.primitives`):

* ``codes`` ``[out, in]`` int16: symmetric codes are signed, in
  ``[-2**(k-1), 2**(k-1) - 1]`` with zero point 0; asymmetric codes lie in
  ``[0, 2**k - 1]`` with an integer zero point.
* ``scales`` and ``zeros`` ``[out, n_groups]`` float32; ``g_idx`` ``[in]`` int32 is
  the group of every input column (``column // group_size`` for contiguous groups).
* ``bits`` ``[n_groups]``: one width per group (SliM-LLM mixes widths). A 1-bit
  group is binary, ``±alpha``: codes 0/1, zero 0.5 and scale ``2 * alpha``, which
  gives ``±alpha`` exactly (halving is exact in floating point).

Example:
    >>> import torch
    >>> from quantsweep.quant import fake_quantize
    >>> w = torch.randn(4, 64)
    >>> packed = rtn_pack(w, bits=4, group_size=32, symmetric=False)
    >>> torch.equal(packed.dequantize(w.dtype), fake_quantize(w, 4, 32, False))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantsweep.quant.primitives import QuantParams, check_group_size, compute_qparams, quantize_to_int

__all__ = ["QuantizedWeight", "pack_dequantized", "rtn_pack"]


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes with per-group scales and zero points for one ``[out, in]`` weight.

    Attributes:
        codes: ``[out, in]`` int16 integer codes (see the module docstring for ranges).
        scales: ``[out, n_groups]`` float32.
        zeros: ``[out, n_groups]`` float32 (integers, except 0.5 for binary groups).
        g_idx: ``[in]`` int32, the group of each input column.
        bits: the width of each group (a tuple of length ``n_groups``).
        symmetric: whether codes are signed around a zero point of 0.
        group_size: input columns per group; None for one group per output row.

    Example:
        >>> packed = rtn_pack(torch.randn(2, 8), bits=8, group_size=None, symmetric=True)
        >>> packed.uniform_bits, packed.n_groups
        (8, 1)
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    bits: tuple[int, ...]
    symmetric: bool
    group_size: int | None

    def __post_init__(self) -> None:
        # Kept on the host: export and cost work there, and a layer's codes must not stay in
        # accelerator memory after the layer itself has moved back (sequential.py's rule).
        for name in ("codes", "scales", "zeros", "g_idx"):
            object.__setattr__(self, name, getattr(self, name).detach().to("cpu"))
        out_features, in_features = self.codes.shape
        assert self.scales.shape == self.zeros.shape == (out_features, len(self.bits)), "scales/zeros/bits disagree"
        assert self.g_idx.shape == (in_features,), "g_idx must have one entry per input column"

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return tuple(self.codes.shape)

    @property
    def n_groups(self) -> int:
        """Groups per output row."""
        return len(self.bits)

    @property
    def uniform_bits(self) -> int | None:
        """The single width of every group, or None for mixed widths (SliM-LLM).

        Example:
            >>> rtn_pack(torch.randn(2, 8), bits=3, group_size=4, symmetric=False).uniform_bits
            3
        """
        widths = set(self.bits)
        return widths.pop() if len(widths) == 1 else None

    def dequantize(self, dtype: torch.dtype = torch.float32, scale_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The real-valued weight ``(code - zero) * scale`` in ``dtype``.

        ``scale_dtype`` rounds the scales first (``torch.float16`` gives what a GPTQ
        checkpoint, which stores fp16 scales, decodes to); None keeps float32,
        which reproduces the fake-quant weight exactly.

        Example:
            >>> from quantsweep.quant import fake_quantize
            >>> w = torch.randn(3, 16)
            >>> torch.equal(rtn_pack(w, 2, 8, True).dequantize(), fake_quantize(w, 2, 8, True))
            True
        """
        scales = self.scales if scale_dtype is None else self.scales.to(scale_dtype).float()
        columns = self.g_idx.long()
        weight = (self.codes.float() - self.zeros[:, columns]) * scales[:, columns]
        return weight.to(dtype)

    def nbytes_theoretical(self, scale_bits: int = 16, zero_bits: int | None = None) -> float:
        """Bits of codes, scales and zero points, in bytes, as a packed format would store them.

        Scales count ``scale_bits`` each (16: fp16, the GPTQ format); zero points count
        the group's width (``zero_bits`` overrides) and nothing when symmetric.

        Example:
            >>> rtn_pack(torch.randn(2, 8), bits=4, group_size=8, symmetric=True).nbytes_theoretical()
            12.0
        """
        out_features = self.codes.shape[0]
        group_columns = torch.bincount(self.g_idx.long(), minlength=self.n_groups).tolist()
        code_bits = sum(width * columns for width, columns in zip(self.bits, group_columns)) * out_features
        zero_bits_total = 0 if self.symmetric else sum(zero_bits or width for width in self.bits) * out_features
        scale_bits_total = scale_bits * self.n_groups * out_features
        return (code_bits + zero_bits_total + scale_bits_total) / 8


def _contiguous_g_idx(in_features: int, group_size: int | None) -> torch.Tensor:
    size = in_features if group_size is None else group_size
    return (torch.arange(in_features) // size).to(torch.int32)


def _from_params(codes: torch.Tensor, params: QuantParams, group_size: int | None) -> QuantizedWeight:
    out_features = codes.shape[0]
    n_groups = params.scale.shape[1]
    codes = codes.reshape(out_features, -1)
    return QuantizedWeight(
        codes=codes.to(torch.int16),
        scales=params.scale.reshape(out_features, n_groups).float(),
        zeros=params.zero.reshape(out_features, n_groups).float(),
        g_idx=_contiguous_g_idx(codes.shape[1], group_size),
        bits=(params.bits,) * n_groups,
        symmetric=params.symmetric,
        group_size=group_size,
    )


def _binary_pack(weight: torch.Tensor, group_size: int | None, layer_name: str) -> QuantizedWeight:
    out_features, in_features = weight.shape
    size = check_group_size(in_features, group_size, layer_name)
    groups = weight.float().reshape(out_features, in_features // size, size)
    alpha = groups.abs().mean(dim=-1)  # [out, G], as binarize() computes it
    codes = (groups >= 0).to(torch.int16).reshape(out_features, in_features)
    return QuantizedWeight(
        codes=codes,
        scales=2 * alpha,
        zeros=torch.full_like(alpha, 0.5),
        g_idx=_contiguous_g_idx(in_features, group_size),
        bits=(1,) * alpha.shape[1],
        symmetric=True,
        group_size=group_size,
    )


def rtn_pack(
    weight: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, layer_name: str = "<tensor>"
) -> QuantizedWeight:
    """Round-to-nearest codes of ``weight``; ``dequantize()`` equals :func:`quantize_weight` exactly.

    Example:
        >>> w = torch.tensor([[-2.0, 1.0, 7.0, 3.0]])
        >>> rtn_pack(w, bits=4, group_size=None, symmetric=True).codes.tolist()
        [[-2, 1, 7, 3]]
    """
    if bits == 1:
        return _binary_pack(weight, group_size, layer_name)
    params = compute_qparams(weight, bits, group_size, symmetric, layer_name)
    return _from_params(quantize_to_int(weight, params, group_size), params, group_size)


def pack_dequantized(
    weight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: tuple[int, ...],
    *,
    symmetric: bool,
    group_size: int | None,
    g_idx: torch.Tensor | None = None,
) -> QuantizedWeight:
    """Recover the codes of an already fake-quantized float32 ``weight`` from its scales and zeros.

    For methods (GPTQ, SliM-LLM) that decide codes column by column: the weight is
    ``(code - zero) * scale`` rounded once to float32, so ``round(w / scale) + zero``
    gives the code back (|code - zero| <= 255 keeps the error far below 0.5).
    Pass the float32 sweep output, not a bf16 cast of it. Binary groups (width 1)
    are recognised by their zero point 0.5.

    Raises:
        ValueError: when a recovered code does not reproduce ``weight`` exactly
            (the inputs do not belong together).

    Example:
        >>> w = torch.randn(2, 8)
        >>> p = rtn_pack(w, 4, 4, False)
        >>> q = pack_dequantized(p.dequantize(), p.scales, p.zeros, p.bits, symmetric=False, group_size=4)
        >>> torch.equal(q.codes, p.codes)
        True
    """
    weight = weight.float()
    in_features = weight.shape[1]
    g_idx = _contiguous_g_idx(in_features, group_size) if g_idx is None else g_idx.to(torch.int32)
    columns = g_idx.long()
    scale, zero = scales.float()[:, columns], zeros.float()[:, columns]
    codes = torch.round(weight / scale + zero)  # binary: ±alpha / (2 alpha) + 0.5 = 1 or 0
    packed = QuantizedWeight(
        codes=codes.to(torch.int16),
        scales=scales.float(),
        zeros=zeros.float(),
        g_idx=g_idx,
        bits=tuple(int(b) for b in bits),
        symmetric=symmetric,
        group_size=group_size,
    )
    # the packed form lives on the host (see QuantizedWeight); the weight may be on an accelerator
    if not torch.equal(packed.dequantize(torch.float32), weight.to(packed.codes.device)):
        raise ValueError("the codes recovered from the fake-quant weight do not reproduce it: scales/zeros mismatch")
    return packed
