"""QuantizedWeight: codes, scales, zeros and g_idx reproduce the primitives' fake-quant exactly."""

from __future__ import annotations

import pytest
import torch

from quantsweep.quant import binarize, fake_quantize
from quantsweep.quant.packed import QuantizedWeight, pack_dequantized, rtn_pack


def reference_dequantize(codes, scales, zeros, g_idx):
    """The test's own decoder: column c uses group g_idx[c]."""
    out = torch.empty(codes.shape, dtype=torch.float32)
    for c in range(codes.shape[1]):
        g = int(g_idx[c])
        out[:, c] = (codes[:, c].float() - zeros[:, g]) * scales[:, g]
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 32])
def test_rtn_pack_dequantizes_to_fake_quant_exactly(bits, symmetric, group_size):
    weight = torch.randn(6, 64, generator=torch.Generator().manual_seed(bits))
    packed = rtn_pack(weight, bits, group_size, symmetric)
    assert torch.equal(packed.dequantize(), fake_quantize(weight, bits, group_size, symmetric))
    assert torch.equal(
        reference_dequantize(packed.codes, packed.scales, packed.zeros, packed.g_idx), packed.dequantize()
    )
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    assert int(packed.codes.min()) >= low and int(packed.codes.max()) <= high
    assert packed.codes.dtype == torch.int16 and packed.g_idx.dtype == torch.int32


def test_binary_pack_is_sign_times_mean_abs():
    weight = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    packed = rtn_pack(weight, 1, 16, True)
    assert set(packed.codes.unique().tolist()) <= {0, 1}
    assert torch.equal(packed.dequantize(), binarize(weight, 16))


def test_bf16_weight_round_trips_through_its_dtype():
    weight = torch.randn(4, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    packed = rtn_pack(weight, 4, 32, False)
    assert torch.equal(packed.dequantize(torch.bfloat16), fake_quantize(weight, 4, 32, False))


def test_pack_dequantized_recovers_codes_with_a_permuted_g_idx():
    torch.manual_seed(3)
    out_features, in_features, n_groups = 5, 12, 3
    g_idx = torch.randperm(in_features) % n_groups  # act-order style, not contiguous
    scales = torch.rand(out_features, n_groups) + 0.1
    zeros = torch.randint(0, 16, (out_features, n_groups)).float()
    codes = torch.randint(0, 16, (out_features, in_features))
    weight = reference_dequantize(codes, scales, zeros, g_idx)
    packed = pack_dequantized(weight, scales, zeros, (4,) * n_groups, symmetric=False, group_size=None, g_idx=g_idx)
    assert torch.equal(packed.codes.long(), codes)
    with pytest.raises(ValueError, match="do not reproduce"):
        pack_dequantized(weight + 0.01, scales, zeros, (4,) * n_groups, symmetric=False, group_size=None, g_idx=g_idx)


def test_theoretical_bytes_count_codes_scales_and_zeros():
    packed = rtn_pack(torch.randn(8, 64), 4, 32, False)
    # 8 x 64 codes at 4 bits + 8 x 2 groups x (fp16 scale + 4-bit zero)
    assert packed.nbytes_theoretical() == (8 * 64 * 4 + 8 * 2 * (16 + 4)) / 8
    assert isinstance(packed, QuantizedWeight) and packed.uniform_bits == 4
