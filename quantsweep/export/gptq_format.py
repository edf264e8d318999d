"""The GPTQ checkpoint format that auto-gptq, GPTQModel and transformers read.

For each quantized Linear ``name`` (``out`` x ``in`` weight, ``k`` bits, ``G`` groups):

* ``name.qweight`` int32 ``[in * k / 32, out]``: the unsigned codes of column
  ``out_j``, as one little-endian bit stream along ``in`` (code ``i`` occupies bits
  ``k*i .. k*i + k - 1``; at 3 bits a code may straddle two words, as in auto-gptq).
* ``name.qzeros`` int32 ``[G, out * k / 32]``: zero points, the same bit stream along
  ``out``. Checkpoint format ``gptq`` (v1) stores ``zero - 1``; ``gptq_v2`` stores
  ``zero``. A zero point of 0 cannot be stored in v1 (it wraps to ``2**k - 1``).
* ``name.scales`` float16 ``[G, out]``; ``name.g_idx`` int32 ``[in]``, the group of
  each input column (act-order checkpoints need it; contiguous groups give ``i // g``).
* ``name.bias`` float16 ``[out]`` when the Linear has a bias (openPangu's q/k/v/o).

Dequantization is ``W[j, i] = (q[i, j] - z[g_idx[i], j]) * s[g_idx[i], j]`` with ``z``
the stored zero plus 1 in v1. Symmetric ``k``-bit codes are stored offset by
``2**(k-1)`` with that as the zero point, which is how GPTQ writes ``sym: true``.

Example:
    >>> import torch
    >>> pack_bits(torch.tensor([[1], [2], [3], [4], [5], [6], [7], [8]]), bits=4).tolist()
    [[-2023406815]]
"""

from __future__ import annotations

import torch

from quantsweep.quant.packed import QuantizedWeight

GPTQ_BITS = (2, 3, 4, 8)
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``values [n, m]`` (< 2**bits) along dim 0 into int32 words ``[n * bits / 32, m]``.

    Raises:
        ValueError: when ``n * bits`` is not a multiple of 32.

    Example:
        >>> pack_bits(torch.full((16, 1), 3), bits=2).tolist()
        [[-1]]
    """
    n, m = values.shape
    if (n * bits) % 32:
        raise ValueError(f"{n} rows of {bits}-bit codes do not fill whole 32-bit words (need n * bits % 32 == 0)")
    values = values.to(torch.int64)
    planes = (values.unsqueeze(-1) >> torch.arange(bits)) & 1  # [n, m, bits], least significant bit first
    stream = planes.permute(1, 0, 2).reshape(m, n * bits // 32, 32)  # bit b of code i is stream bit bits*i + b
    words = (stream << torch.arange(32)).sum(dim=-1)  # [m, words] as unsigned 32-bit values in int64
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.T.contiguous().to(torch.int32)


def unsigned_codes(packed: QuantizedWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and zero points shifted to ``[0, 2**k)`` (symmetric codes get ``+2**(k-1)``).

    Example:
        >>> from quantsweep.quant.packed import rtn_pack
        >>> codes, zeros = unsigned_codes(rtn_pack(torch.randn(2, 8), 4, None, True))
        >>> zeros.unique().tolist()
        [8]
    """
    bits = packed.uniform_bits
    offset = 2 ** (bits - 1) if packed.symmetric else 0
    return packed.codes.to(torch.int64) + offset, packed.zeros.to(torch.int64) + offset


def layer_tensors(
    name: str, packed: QuantizedWeight, bias: torch.Tensor | None, checkpoint_format: str = "gptq"
) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of one quantized Linear ``name``.

    Raises:
        ValueError: mixed widths, a width GPTQ has no kernel for, a shape that does not
            fill whole 32-bit words, or (v1) a zero point of 0.

    Example:
        >>> from quantsweep.quant.packed import rtn_pack
        >>> sorted(layer_tensors("l", rtn_pack(torch.randn(8, 32), 4, 16, False), None))
        ['l.g_idx', 'l.qweight', 'l.qzeros', 'l.scales']
    """
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(f"checkpoint_format must be one of {', '.join(CHECKPOINT_FORMATS)}, got {checkpoint_format!r}")
    bits = packed.uniform_bits
    if bits not in GPTQ_BITS:
        raise ValueError(
            f"{name}: the GPTQ format stores {', '.join(map(str, GPTQ_BITS))}-bit weights of one width; "
            f"this layer has widths {sorted(set(packed.bits))}"
        )
    codes, zeros = unsigned_codes(packed)
    if checkpoint_format == "gptq":
        if bool((zeros == 0).any()):
            raise ValueError(
                f"{name}: a zero point of 0 cannot be stored in GPTQ v1 (it stores zero - 1); "
                "export with checkpoint_format='gptq_v2' (--checkpoint-format gptq_v2)"
            )
        zeros = zeros - 1
    tensors = {
        f"{name}.qweight": pack_bits(codes.T, bits),
        f"{name}.qzeros": pack_bits(zeros, bits).T.contiguous(),
        f"{name}.scales": packed.scales.T.contiguous().to(torch.float16),
        f"{name}.g_idx": packed.g_idx.to(torch.int32).contiguous(),
    }
    if bias is not None:
        tensors[f"{name}.bias"] = bias.detach().to("cpu", torch.float16).contiguous()
    return tensors


def quantize_config(
    *,
    bits: int,
    group_size: int | None,
    desc_act: bool,
    symmetric: bool,
    checkpoint_format: str = "gptq",
    damp_percent: float | None = None,
    true_sequential: bool = True,
) -> dict:
    """``quantize_config.json`` (also the ``quantization_config`` of ``config.json``).

    ``static_groups`` is true with ``desc_act``: quantsweep fixes act-order groups up
    front, so they stay contiguous and ``g_idx[i] = i // group_size``. ``damp_percent``
    is written only for methods that damp a Hessian (None for RTN; loaders reject 0).

    Example:
        >>> quantize_config(bits=4, group_size=None, desc_act=False, symmetric=True)["group_size"]
        -1
    """
    settings = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": -1 if group_size is None else group_size,
        "desc_act": bool(desc_act),
        "static_groups": bool(desc_act and group_size is not None),
        "sym": bool(symmetric),
        "true_sequential": bool(true_sequential),
        "checkpoint_format": checkpoint_format,
        "lm_head": False,
    }
    if damp_percent is not None:
        settings["damp_percent"] = damp_percent
    return settings
