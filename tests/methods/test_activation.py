"""Per-token dynamic activation fake quantization hooks."""

import pytest
import torch

from quantsweep.methods.activation import activation_bits, attach_activation_quant
from quantsweep.models.snapshot import WeightSnapshot


def reference_per_token(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-token quantization written out token by token."""
    out = torch.empty_like(x)
    qmax = 2 ** (bits - 1) - 1
    rows = x.reshape(-1, x.shape[-1])
    for i, row in enumerate(rows):
        scale = max(float(row.abs().max()) / qmax, 1e-12)
        q = torch.clamp(torch.round(row / scale), -qmax - 1, qmax)
        out.reshape(-1, x.shape[-1])[i] = q * scale
    return out


@pytest.mark.parametrize("bits", [4, 8])
def test_hook_matches_reference_per_token(bits):
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 8)
    x = torch.randn(3, 5, 32) * torch.linspace(0.1, 10, 5).reshape(1, 5, 1)  # tokens of very different range
    attach_activation_quant(linear, bits=bits)
    expected = torch.nn.functional.linear(reference_per_token(x, bits), linear.weight, linear.bias)
    torch.testing.assert_close(linear(x), expected, rtol=1e-5, atol=1e-5)


def test_quantization_changes_output_and_4bit_worse_than_8bit():
    torch.manual_seed(1)
    x = torch.randn(64, 32)
    errors = {}
    for bits in (4, 8):
        linear = torch.nn.Linear(32, 8)
        torch.manual_seed(2)
        linear.reset_parameters()
        exact = linear(x)
        attach_activation_quant(linear, bits=bits)
        with torch.no_grad():
            errors[bits] = float((linear(x) - exact).norm())
    assert 0 < errors[8] < errors[4]


def test_restore_removes_hook():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    x = torch.randn(4, 16)
    exact = model(x)
    snapshot = WeightSnapshot(model)
    attach_activation_quant(model[0], bits=2)
    assert activation_bits(model[0]) == 2
    assert not torch.allclose(model(x), exact)
    snapshot.restore(model)
    assert activation_bits(model[0]) is None
    torch.testing.assert_close(model(x), exact)
    # A fresh hook can be attached after restore.
    attach_activation_quant(model[0], bits=8)
    assert activation_bits(model[0]) == 8


def test_double_attach_and_bad_bits_raise():
    linear = torch.nn.Linear(8, 8)
    with pytest.raises(ValueError, match=r"\[2, 3, 4, 5, 6, 7, 8\]"):
        attach_activation_quant(linear, bits=16)
    attach_activation_quant(linear, bits=8)
    with pytest.raises(ValueError, match="already quantizes"):
        attach_activation_quant(linear, bits=4)


def test_non_finite_input_is_not_hidden():
    linear = torch.nn.Linear(4, 2)
    attach_activation_quant(linear, bits=8)
    x = torch.tensor([[1.0, float("inf"), 0.5, -1.0]])
    assert not torch.isfinite(linear(x)).all()
