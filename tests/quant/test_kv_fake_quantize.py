"""fake_quantize_kv: per (batch, head, token) min-max groups along head_dim, checked against the test's own quantizer."""

from __future__ import annotations

import pytest
import torch

from quantsweep.quant.kv_cache import fake_quantize_kv


def reference_kv(states: torch.Tensor, bits: int, group_size: int | None, symmetric: bool) -> torch.Tensor:
    """The test's own quantizer: a Python loop over every (batch, head, token, group) vector."""
    batch, heads, tokens, head_dim = states.shape
    size = group_size or head_dim
    out = torch.empty_like(states)
    for b in range(batch):
        for h in range(heads):
            for t in range(tokens):
                for start in range(0, head_dim, size):
                    group = states[b, h, t, start : start + size]
                    if symmetric:
                        scale = max(float(group.abs().max()) / (2 ** (bits - 1) - 1), 1e-12)
                        codes = torch.clamp(torch.round(group / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
                        out[b, h, t, start : start + size] = codes * scale
                    else:
                        lo, hi = min(float(group.min()), 0.0), max(float(group.max()), 0.0)
                        scale = torch.tensor(max((hi - lo) / (2**bits - 1), 1e-12))
                        zero = torch.round(-lo / scale)
                        codes = torch.clamp(torch.round(group / scale) + zero, 0, 2**bits - 1)
                        out[b, h, t, start : start + size] = (codes - zero) * scale
    return out


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, None, False), (2, 8, False), (8, 16, True), (3, None, True)])
def test_matches_the_reference_quantizer(bits, group_size, symmetric):
    states = torch.randn(2, 3, 5, 32, generator=torch.Generator().manual_seed(bits)) * 3
    mine = fake_quantize_kv(states, bits, group_size, symmetric)
    torch.testing.assert_close(mine, reference_kv(states, bits, group_size, symmetric), rtol=0, atol=1e-6)
    levels = 2**bits
    for row in mine.reshape(-1, group_size or 32):  # at most 2**bits distinct values per group
        assert row.unique().numel() <= levels


def test_each_token_is_quantized_on_its_own():
    """A token's quantized vector does not depend on the other tokens, heads or sequences: bit for bit."""
    states = torch.randn(3, 2, 9, 32, generator=torch.Generator().manual_seed(0))
    whole = fake_quantize_kv(states, 4, 16)
    assert torch.equal(whole[:, :, :4], fake_quantize_kv(states[:, :, :4].contiguous(), 4, 16))  # a prefix (cache)
    assert torch.equal(whole[:, :, 4:], fake_quantize_kv(states[:, :, 4:].contiguous(), 4, 16))  # the tokens after it
    assert torch.equal(whole[1:2], fake_quantize_kv(states[1:2], 4, 16))  # one sequence of the batch
    assert torch.equal(whole[:, :, 5:6], fake_quantize_kv(states[:, :, 5:6].contiguous(), 4, 16))  # one token
    assert torch.equal(whole[:, 1:2], fake_quantize_kv(states[:, 1:2], 4, 16))  # one head


def test_error_falls_with_bits_and_dtype_is_kept():
    states = torch.randn(1, 2, 64, 32, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    errors = [float((fake_quantize_kv(states, bits).float() - states.float()).norm()) for bits in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2] > 0
    assert fake_quantize_kv(states, 4).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        ({"bits": 1}, ValueError, "KV-cache bits must be one of"),
        ({"bits": 16}, ValueError, "got 16"),
        ({"bits": "4"}, TypeError, "must be an integer"),
        ({"bits": True}, TypeError, "must be an integer"),
        ({"bits": 4, "group_size": 0}, ValueError, "group_size must be a positive integer or None"),
        ({"bits": 4, "group_size": 12}, ValueError, "KV-cache group_size 12 does not divide head_dim 32"),
        ({"bits": 4, "symmetric": "yes"}, TypeError, "symmetric must be true or false"),
    ],
)
def test_bad_settings_are_named(kwargs, error, words):
    with pytest.raises(error, match=words):
        fake_quantize_kv(torch.zeros(1, 1, 1, 32), **kwargs)
