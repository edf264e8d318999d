"""Hadamard matrices of power-of-two and Kronecker (non-power-of-two) orders, and a fast transform.

A Hadamard matrix ``H`` of order ``n`` has entries +-1 and ``H H^T = n I``, so
``H / sqrt(n)`` is orthogonal. Rotating a residual stream by it spreads each
outlier channel evenly over all channels (QuaRot, arXiv:2404.00456), which is
what makes 4-bit activations workable.

Which orders are built here (all +-1 matrices, checked ``H H^T = n I`` on construction):

* ``n = 2^k``: Sylvester, ``H_2k = [[H_k, H_k], [H_k, -H_k]]``.
* Paley I: ``n = p + 1`` for a prime ``p = 3 (mod 4)`` (4, 8, 12, 20, 24, 32, 44, 48, 60, 72, ...).
* Paley II: ``n = 2 (p + 1)`` for a prime ``p = 1 (mod 4)`` (12, 28, 36, 60, 76, 84, 108, ...).
* ``n = m * 2^k`` (and ``m = a * b``) by Kronecker products of the above:
  e.g. 576 = 36 x 16, 1536 = 12 x 128, openPangu-7B's intermediate 12800 = 200 x 64
  (Paley I with p = 199).

Only prime ``p`` is used (no finite-field arithmetic), so some orders that are known
in the literature (e.g. 92, 116, 156, or 100 via GF(49)) are refused here, with a
:class:`ValueError` that names the order and the reason. Every order that is not
1, 2 or a multiple of 4 has no Hadamard matrix at all.

The matrix ``hadamard_matrix(n) = kron(H_m, H_2^k)`` with ``m`` the non-power-of-two
base, so :func:`hadamard_transform` applies it in ``O(n log n + n m)`` without building
it: a butterfly over the ``2^k`` part and a dense ``m x m`` product.

Example:
    >>> h = hadamard_matrix(12)
    >>> bool((h @ h.T == 12 * torch.eye(12, dtype=h.dtype)).all())
    True
    >>> q = random_hadamard(576, seed=0)
    >>> bool(torch.allclose(q @ q.T, torch.eye(576, dtype=q.dtype), atol=1e-10))
    True
"""

from __future__ import annotations

import functools
import math

import torch

# Largest dense non-power-of-two base accepted; the transform multiplies by it densely.
MAX_BASE = 4096


def _is_prime(p: int) -> bool:
    if p < 2:
        return False
    if p % 2 == 0:
        return p == 2
    return all(p % d for d in range(3, math.isqrt(p) + 1, 2))


def _quadratic_character(p: int) -> torch.Tensor:
    """``chi[a]`` for ``a = 0..p-1``: 0 at 0, +1 on nonzero squares mod p, -1 otherwise."""
    chi = -torch.ones(p, dtype=torch.float64)
    chi[0] = 0
    for x in range(1, p):
        chi[(x * x) % p] = 1
    return chi


def _jacobsthal(p: int) -> torch.Tensor:
    """The Jacobsthal matrix ``Q[i, j] = chi(j - i mod p)``."""
    index = torch.arange(p)
    return _quadratic_character(p)[(index[None, :] - index[:, None]) % p]


def _paley_one(p: int) -> torch.Tensor:
    """Paley construction I, order ``p + 1``, for a prime ``p = 3 mod 4``: ``H = I + S``."""
    n = p + 1
    s = torch.zeros(n, n, dtype=torch.float64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(p)
    return torch.eye(n, dtype=torch.float64) + s


def _paley_two(p: int) -> torch.Tensor:
    """Paley construction II, order ``2 (p + 1)``, for a prime ``p = 1 mod 4``."""
    n = p + 1
    c = torch.zeros(n, n, dtype=torch.float64)  # symmetric conference matrix
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _jacobsthal(p)
    plus = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    minus = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, plus) + torch.kron(torch.eye(n, dtype=torch.float64), minus)


def _paley(m: int) -> torch.Tensor | None:
    """A Paley Hadamard matrix of order ``m`` from a prime, or None."""
    if m % 4:
        return None
    if (m - 1) % 4 == 3 and _is_prime(m - 1):
        return _paley_one(m - 1)
    if (m // 2 - 1) % 4 == 1 and _is_prime(m // 2 - 1):
        return _paley_two(m // 2 - 1)
    return None


@functools.lru_cache(maxsize=64)
def _base(m: int) -> torch.Tensor | None:
    """A Hadamard matrix of order ``m`` (1, Paley, or a Kronecker product of two Paley orders), checked once."""
    base = _construct_base(m)
    # Internal invariant, checked once per order (cached): the construction is a Hadamard matrix.
    # Sylvester's doubling and the Kronecker product keep the property, so larger orders need no check.
    assert base is None or torch.equal(base @ base.T, m * torch.eye(m, dtype=torch.float64)), m
    return base


def _construct_base(m: int) -> torch.Tensor | None:
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    direct = _paley(m)
    if direct is not None:
        return direct
    for a in range(4, math.isqrt(m) + 1, 4):
        if m % a == 0:
            left, right = _paley(a), _paley(m // a)
            if left is not None and right is not None:
                return torch.kron(left, right)
    return None


def hadamard_factors(n: int) -> tuple[int, int]:
    """``(m, 2^k)`` with ``n = m * 2^k``, the smallest base ``m`` this module can build.

    Raises:
        ValueError: ``n`` is not a positive integer, or no Hadamard matrix of order ``n``
            can be built here (with the reason).

    Example:
        >>> hadamard_factors(4096), hadamard_factors(576), hadamard_factors(12800)
        ((1, 4096), (36, 16), (200, 64))
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"Hadamard order must be a positive integer, got {n!r}")
    if n > 2 and n % 4:
        raise ValueError(f"no Hadamard matrix of order {n} exists: orders above 2 must be multiples of 4")
    power = n & -n  # the largest power of two dividing n
    while power >= 1:
        m = n // power
        if m <= MAX_BASE and _base(m) is not None:
            return m, power
        power //= 2
    raise ValueError(
        f"no Hadamard matrix of order {n} is known to quantsweep: {n} is not 2^k times 1, a Paley order "
        "(p + 1 for a prime p = 3 mod 4, 2(p + 1) for a prime p = 1 mod 4) or a product of two Paley orders"
    )


def has_hadamard(n: int) -> bool:
    """Whether :func:`hadamard_matrix` can build order ``n``.

    Example:
        >>> has_hadamard(576), has_hadamard(100), has_hadamard(6)
        (True, False, False)
    """
    try:
        hadamard_factors(n)
    except ValueError:
        return False
    return True


def _sylvester(power: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < power:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard_matrix(n: int) -> torch.Tensor:
    """The +-1 Hadamard matrix of order ``n`` (float64, ``H H^T = n I``), ``kron(H_m, H_2^k)``.

    Raises:
        ValueError: no construction of order ``n`` is known here (see :func:`hadamard_factors`).

    Example:
        >>> hadamard_matrix(2)
        tensor([[ 1.,  1.],
                [ 1., -1.]], dtype=torch.float64)
    """
    m, power = hadamard_factors(n)
    return torch.kron(_base(m), _sylvester(power))


def random_signs(n: int, seed: int) -> torch.Tensor:
    """``n`` seeded random +-1 values (float64), the same for the same seed on every machine.

    Example:
        >>> random_signs(4, seed=0).abs().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1


def random_hadamard(n: int, seed: int = 0) -> torch.Tensor:
    """A seeded randomized Hadamard rotation ``Q = diag(s) H / sqrt(n)`` (float64, orthogonal).

    The random signs ``s`` make the rotation differ between seeds while keeping
    ``Q Q^T = I``; a row vector ``x`` is rotated as ``x @ Q``.

    Example:
        >>> q = random_hadamard(8, seed=1)
        >>> bool(torch.allclose(q.T @ q, torch.eye(8, dtype=q.dtype)))
        True
        >>> torch.equal(q, random_hadamard(8, seed=1)), torch.equal(q, random_hadamard(8, seed=2))
        (True, False)
    """
    return random_signs(n, seed)[:, None] * hadamard_matrix(n) / math.sqrt(n)


def _butterfly(x: torch.Tensor) -> torch.Tensor:
    """``x @ H_2^k`` (Sylvester, unnormalized) along the last dimension, in ``k`` passes."""
    shape = x.shape
    size = shape[-1]
    half = 1
    while half < size:
        pairs = x.reshape(*shape[:-1], size // (2 * half), 2, half)
        x = torch.stack([pairs[..., 0, :] + pairs[..., 1, :], pairs[..., 0, :] - pairs[..., 1, :]], dim=-2)
        x = x.reshape(shape)
        half *= 2
    return x


@functools.lru_cache(maxsize=16)
def _base_transposed(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _base(m).T.contiguous().to(dtype=dtype, device=device)


def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """``x @ hadamard_matrix(n) / sqrt(n)`` along the last dimension, without building the matrix.

    Computed in ``x``'s dtype (callers pass fp32 for accuracy). With ``H = kron(A, B)``
    (``A`` the ``m x m`` base, ``B`` Sylvester of order ``2^k``), each row reshaped to
    ``X [m, 2^k]`` becomes ``A^T X B``.

    Raises:
        ValueError: no Hadamard matrix of the last dimension's order is known here.

    Example:
        >>> x = torch.randn(3, 24, dtype=torch.float64)
        >>> bool(torch.allclose(hadamard_transform(x), x @ hadamard_matrix(24) / 24**0.5))
        True
    """
    n = x.shape[-1]
    m, power = hadamard_factors(n)
    shape = x.shape
    rows = x.reshape(-1, m, power)
    if power > 1:
        rows = _butterfly(rows.reshape(-1, power)).reshape(-1, m, power)
    if m > 1:
        rows = _base_transposed(m, x.dtype, x.device) @ rows
    return (rows / math.sqrt(n)).reshape(shape)
