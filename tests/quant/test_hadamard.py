"""Hadamard matrices: every construction is +-1 with H H^T = n I (checked here, not trusted), the
fast transform equals the dense product, seeds, and clear refusals."""

import pytest
import torch

from quantsweep.quant.hadamard import (
    hadamard_factors,
    hadamard_matrix,
    hadamard_transform,
    has_hadamard,
    random_hadamard,
)

# Powers of two, Paley I (12, 20, 24, 44, 48, 60, 72), Paley II (28, 36), Kronecker products
# (40 = 20 x 2, 576 = 9 x 64 widths, 1536 = openPangu-1B-like width, 240 = 60 x 4).
ORDERS = [1, 2, 4, 8, 12, 20, 24, 28, 36, 40, 44, 48, 60, 72, 128, 240, 576, 1536]


@pytest.mark.parametrize("n", ORDERS)
def test_matrix_is_hadamard(n):
    h = hadamard_matrix(n)
    assert h.shape == (n, n)
    assert bool(((h == 1) | (h == -1)).all())
    torch.testing.assert_close(h @ h.T, n * torch.eye(n, dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.parametrize("n", [8, 12, 28, 96, 576])
def test_fast_transform_equals_dense_product(n):
    x = torch.randn(5, 3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    expected = x @ hadamard_matrix(n) / n**0.5
    torch.testing.assert_close(hadamard_transform(x), expected, rtol=1e-12, atol=1e-12)


def test_transform_of_a_large_non_power_of_two_width_keeps_the_norm():
    # openPangu-Embedded-7B's intermediate size: 12800 = 200 (Paley I, p = 199) x 64.
    assert hadamard_factors(12800) == (200, 64)
    x = torch.randn(2, 12800, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = hadamard_transform(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    # Undo it with the factors, independently of the transform: X = A Y B / sqrt(n) when Y = A^T X B / sqrt(n).
    back = hadamard_matrix(200) @ y.reshape(2, 200, 64) @ hadamard_matrix(64) / 12800**0.5
    torch.testing.assert_close(back.reshape(2, 12800), x, rtol=1e-10, atol=1e-10)


def test_random_hadamard_is_orthogonal_and_seeded():
    q = random_hadamard(576, seed=3)
    torch.testing.assert_close(q @ q.T, torch.eye(576, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(q, random_hadamard(576, seed=3))
    assert not torch.equal(q, random_hadamard(576, seed=4))
    assert bool((q.abs() == 1 / 24).all())  # every entry +-1/sqrt(576): outliers spread evenly


def test_rotation_spreads_an_outlier():
    x = torch.zeros(128, dtype=torch.float64)
    x[7] = 100.0
    y = x @ random_hadamard(128, seed=0)
    assert float(y.abs().max()) == pytest.approx(100 / 128**0.5)


@pytest.mark.parametrize(
    "n, reason",
    [
        (6, "multiples of 4"),
        (100, "100 is not 2\\^k times 1, a Paley order"),
        (11008, "11008"),
        (0, "positive integer"),
    ],
)
def test_unknown_orders_are_refused_with_the_reason(n, reason):
    with pytest.raises(ValueError, match=reason):
        hadamard_matrix(n)
    assert not has_hadamard(n)
