"""Fake-quant primitives against references written here."""

import pytest
import torch

from quantsweep.quant import binarize, check_group_size, compute_qparams, fake_quantize, fake_quantize_activation


def fp16(scale: float) -> float:
    """Weight scales are stored as float16 (what a GPTQ checkpoint holds)."""
    return float(torch.tensor(scale).clamp(2.0**-24, 65504.0).half().float())


def reference_fake_quantize(weight, bits, group_size, symmetric):
    """Element-by-group loop written independently of the library."""
    out = torch.empty_like(weight)
    rows, cols = weight.shape
    size = cols if group_size is None else group_size
    for r in range(rows):
        for g in range(0, cols, size):
            block = weight[r, g : g + size].double()
            if symmetric:
                qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
                scale = fp16(max(block.abs().max().item() / qmax, 1e-12))
                q = torch.clamp(torch.round(block / scale), qmin, qmax)
                out[r, g : g + size] = (q * scale).to(weight.dtype)
            else:
                lo, hi = min(block.min().item(), 0.0), max(block.max().item(), 0.0)
                scale = fp16(max((hi - lo) / (2**bits - 1), 1e-12))
                zero = round(-lo / scale)
                q = torch.clamp(torch.round(block / scale) + zero, 0, 2**bits - 1)
                out[r, g : g + size] = ((q - zero) * scale).to(weight.dtype)
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quantize_matches_reference(bits, group_size, symmetric):
    torch.manual_seed(bits)
    weight = torch.randn(6, 64)
    ours = fake_quantize(weight, bits, group_size, symmetric)
    ref = reference_fake_quantize(weight, bits, group_size, symmetric)
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_levels_per_group_within_budget(bits):
    weight = torch.randn(4, 128)
    quantized = fake_quantize(weight, bits, 64, symmetric=False)
    for row in quantized:
        for group in row.split(64):
            assert group.unique().numel() <= 2**bits


def test_error_shrinks_as_bits_grow():
    torch.manual_seed(0)
    weight = torch.randn(64, 256)
    errors = [(fake_quantize(weight, b, 128, False) - weight).pow(2).mean().item() for b in (2, 3, 4, 5, 6, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("bits,floor_db", [(8, 38.0), (4, 15.0), (3, 9.0), (2, 3.0)])
def test_signal_to_noise_floor(bits, floor_db):
    """SQNR of Gaussian weights: about 6 dB per bit minus a clipping/range loss."""
    torch.manual_seed(1)
    weight = torch.randn(128, 512)
    noise = fake_quantize(weight, bits, 128, symmetric=False) - weight
    sqnr = 10 * torch.log10(weight.pow(2).mean() / noise.pow(2).mean()).item()
    assert sqnr >= floor_db, f"{bits}-bit SQNR {sqnr:.1f} dB below floor {floor_db} dB"


def test_binarize_is_sign_times_mean_abs():
    weight = torch.tensor([[1.0, -3.0, 2.0, -2.0, 0.5, -0.5, 0.0, 4.0]])
    per_channel = binarize(weight)
    mean_abs = weight.abs().mean()
    expected = torch.where(weight >= 0, mean_abs, -mean_abs)
    assert torch.equal(per_channel, expected)
    grouped = binarize(weight, group_size=4)
    assert torch.allclose(grouped[0, :4].abs(), torch.full((4,), 2.0))
    assert torch.allclose(grouped[0, 4:].abs(), torch.full((4,), 1.25))


def test_binary_snr_floor():
    torch.manual_seed(2)
    weight = torch.randn(128, 512)
    noise = binarize(weight) - weight
    sqnr = 10 * torch.log10(weight.pow(2).mean() / noise.pow(2).mean()).item()
    assert sqnr >= 4.0  # sign x mean|w| keeps 2/pi of Gaussian energy: about 4.4 dB


def test_group_size_must_divide_and_error_names_layer():
    with pytest.raises(
        ValueError, match=r"group_size 100 does not divide in_features 256 of layer 'model.layers.0.mlp.up_proj'"
    ):
        fake_quantize(torch.randn(4, 256), 4, 100, layer_name="model.layers.0.mlp.up_proj")
    assert check_group_size(256, None) == 256


@pytest.mark.parametrize("bits", [1, 9, 0])
def test_integer_bits_outside_range_rejected(bits):
    with pytest.raises(ValueError, match="bits must be an integer from 2 to 8"):
        fake_quantize(torch.randn(2, 8), bits)


def test_zero_group_is_stable():
    weight = torch.zeros(2, 8)
    assert torch.equal(fake_quantize(weight, 4), weight)
    assert torch.isfinite(compute_qparams(weight, 4).scale).all()


def test_activation_fake_quant_is_per_token():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 16)
    x[0, 0] *= 100  # one outlier token must not change other tokens' scale
    ours = fake_quantize_activation(x, 8)
    for b in range(2):
        for t in range(5):
            token = x[b, t]
            scale = token.abs().max() / 127
            ref = torch.clamp(torch.round(token / scale), -128, 127) * scale
            assert torch.allclose(ours[b, t], ref, atol=1e-5)


def test_activation_fake_quant_propagates_nonfinite():
    x = torch.tensor([[1.0, float("inf"), 2.0]])
    assert not torch.isfinite(fake_quantize_activation(x, 4)).all()


def test_quantize_weight_is_binary_at_one_bit_and_integer_above():
    from quantsweep.quant import quantize_weight

    torch.manual_seed(0)
    w = torch.randn(8, 128)
    groups = w.reshape(8, 2, 64)
    reference_binary = (torch.where(groups >= 0, 1.0, -1.0) * groups.abs().mean(-1, keepdim=True)).reshape(8, 128)
    assert torch.equal(quantize_weight(w, 1, 64), reference_binary)
    assert torch.equal(quantize_weight(w, 3, 64, False, "l"), fake_quantize(w, 3, 64, False, "l"))


@pytest.mark.parametrize("symmetric", [True, False])
def test_activation_clip_ratio_one_is_plain_min_max_and_a_smaller_ratio_saturates(symmetric):
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(2)) * 3
    assert torch.equal(
        fake_quantize_activation(x, 4, symmetric, clip_ratio=1.0), fake_quantize_activation(x, 4, symmetric)
    )
    ratio, bits = 0.8, 4
    flat = x.reshape(-1, 64).double()
    if symmetric:  # the range of each token shrunk by the ratio, then plain per-token RTN with saturation
        qmax = 2 ** (bits - 1) - 1
        scale = (flat.abs().amax(dim=1, keepdim=True) * ratio / qmax).clamp(min=1e-12)
        expected = torch.clamp(torch.round(flat / scale), -qmax - 1, qmax) * scale
    else:
        lo = (flat.amin(dim=1, keepdim=True).clamp(max=0)) * ratio
        hi = (flat.amax(dim=1, keepdim=True).clamp(min=0)) * ratio
        scale = ((hi - lo) / (2**bits - 1)).clamp(min=1e-12)
        zero = torch.round(-lo / scale)
        expected = (torch.clamp(torch.round(flat / scale) + zero, 0, 2**bits - 1) - zero) * scale
    ours = fake_quantize_activation(x, bits, symmetric, clip_ratio=ratio).reshape(-1, 64).double()
    assert torch.allclose(ours, expected, atol=1e-5)
    with pytest.raises(ValueError, match="clip_ratio"):
        fake_quantize_activation(x, 4, clip_ratio=0.0)


def test_an_inf_weight_under_finite_params_keeps_a_non_finite_code():
    """GPTQ applies params set from the original weight to updated columns: an Inf there must not become qmax."""
    from quantsweep.quant.primitives import compute_qparams, quantize_to_int

    finite = torch.tensor([[-1.0, 0.5, 2.0, 1.0]])
    params = compute_qparams(finite, bits=4)
    broken = torch.tensor([[-1.0, float("inf"), float("-inf"), float("nan")]])
    codes = quantize_to_int(broken, params).flatten()
    assert codes[0].item() == quantize_to_int(finite, params).flatten()[0].item()
    assert not torch.isfinite(codes[1:]).any()
