"""Pure tensor math of the GPTQ family: Hessians, damped inverse Cholesky, and the OBS sweep.

GPTQ (Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers") quantizes a weight ``W [out, in]`` one input
column at a time and spreads each column's rounding error over the columns not yet
quantized, using the inverse Hessian ``H^-1`` of the layer-wise loss
``||W X - Ŵ X||^2`` with ``H = 2 X X^T / n``. The rows of the upper Cholesky
factor ``U`` of ``H^-1`` (``H^-1 = U^T U``) are exactly the normalised rows of
the inverses of the trailing sub-Hessians, so one factorisation serves every step.

:func:`obs_sweep` is that sweep, with lazy batch updates (blocks of columns; the
rest of the matrix is updated once per block, which turns rank-1 updates into one
matrix product). *What* value a column rounds to is left to a
:class:`ColumnQuantizer`, so GPTQ (uniform k-bit groups), BiLLM (binary codebooks)
and SliM-LLM (mixed bits per group) share it. Passing ``asym_cross`` adds GPTAQ's
asymmetric-calibration term (see :func:`asymmetric_correction`).

Everything here is device-agnostic: tensors stay where they are, except that the
Cholesky factorisation runs on :func:`quantsweep.device.cholesky_device`.

Example:
    >>> import torch
    >>> x = torch.randn(256, 16)
    >>> acc = HessianAccumulator(16)
    >>> acc.add(x)
    >>> torch.allclose(acc.hessian, 2 * x.T @ x / 256, atol=1e-4)
    True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from quantsweep import device as devices
from quantsweep.quant import compute_qparams, dequantize, quantize_to_int
from quantsweep.quant.packed import QuantizedWeight, pack_dequantized
from quantsweep.quant.primitives import QuantParams

logger = logging.getLogger(__name__)

# Damping grows by this factor each time the Cholesky factorisation fails ...
DAMPING_GROWTH = 10.0
# ... until it reaches this fraction of the mean Hessian diagonal (then we give up).
MAX_DAMPENING_FRAC = 10.0


class HessianAccumulator:
    """Running ``H = 2 X^T X / n`` over batches of inputs ``x [tokens, in]``, in float32.

    With ``asymmetric=True`` it also accumulates GPTAQ's cross term
    ``D = 2 (X_fp - X)^T X / n`` from pairs (quantized-stream input, FP-stream input).

    Example:
        >>> acc = HessianAccumulator(4)
        >>> acc.add(torch.ones(3, 4))
        >>> acc.hessian[0, 0].item(), acc.n_tokens
        (2.0, 3)
    """

    def __init__(self, features: int, device: str | torch.device = "cpu", asymmetric: bool = False):
        self.hessian = torch.zeros(features, features, dtype=torch.float32, device=device)
        self.cross = torch.zeros_like(self.hessian) if asymmetric else None
        self.n_tokens = 0

    def add(self, x: torch.Tensor, x_fp: torch.Tensor | None = None) -> None:
        """Fold in one batch of inputs (``[tokens, in]``); ``x_fp`` is needed when asymmetric.

        Example:
            >>> HessianAccumulator(2).add(torch.zeros(5, 2))
        """
        x = x.reshape(-1, x.shape[-1]).to(self.hessian.device, torch.float32)
        tokens = x.shape[0]
        total = self.n_tokens + tokens
        # Running mean keeps the magnitude O(1) whatever the number of tokens.
        self.hessian.mul_(self.n_tokens / total).addmm_(x.T, x, alpha=2.0 / total)
        if self.cross is not None:
            if x_fp is None:
                raise ValueError("an asymmetric HessianAccumulator needs the full-precision input x_fp too")
            delta = x_fp.reshape(-1, x.shape[-1]).to(x.device, torch.float32) - x
            self.cross.mul_(self.n_tokens / total).addmm_(delta.T, x, alpha=2.0 / total)
        self.n_tokens = total


def damped_inverse_cholesky(
    hessian: torch.Tensor,
    dampening_frac: float,
    device: str | torch.device,
    layer_name: str = "<layer>",
    *,
    overwrite: bool = False,
) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + λI)^-1`` with ``λ = frac * mean(diag H)``.

    When the factorisation fails (an indefinite or numerically singular Hessian),
    ``frac`` grows x10 and we retry, up to ``MAX_DAMPENING_FRAC``; each increase is
    logged as a warning. Only the Hessian visits :func:`quantsweep.device.cholesky_device`
    (the CPU on Ascend, where torch-npu has been seen to fall back to the CPU for
    ``torch.linalg.cholesky`` implicitly and slowly); ``U`` comes back on ``device``.

    With ``overwrite=True`` the damping is added to ``hessian`` itself (when it is
    already float32 on the Cholesky device), which then holds ``H + λI``.

    Returns:
        ``(U, frac)``: the factor, and the damping fraction that succeeded.

    Raises:
        ValueError: the Hessian is non-finite, or still not factorisable at the largest damping.

    Example:
        >>> u, frac = damped_inverse_cholesky(torch.eye(3), 0.01, "cpu")
        >>> frac
        0.01
    """
    if not torch.isfinite(hessian).all():
        raise ValueError(f"{layer_name}: the Hessian has non-finite entries (NaN/Inf in the calibration activations)")
    target = devices.cholesky_device(device)
    # Damping goes onto the diagonal in place, of a copy unless the caller handed us
    # its own scratch Hessian (overwrite=True): for in=12800 each copy is 655 MB.
    h = hessian.to(target, torch.float32, copy=not overwrite)
    diagonal = torch.diagonal(h)
    diag_mean = float(diagonal.mean().clamp_min(1e-8))
    frac, added = float(dampening_frac), 0.0
    while True:
        diagonal.add_(frac * diag_mean - added)
        added = frac * diag_mean
        factor, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            factor = torch.cholesky_inverse(factor)  # reuse the name: one n x n buffer fewer alive
            upper, info = torch.linalg.cholesky_ex(factor, upper=True)
            del factor
            if int(info) == 0:
                return upper.to(device), frac
        grown = frac * DAMPING_GROWTH if frac > 0 else 1e-6
        if grown > MAX_DAMPENING_FRAC:
            raise ValueError(
                f"{layer_name}: Cholesky factorisation failed even with dampening_frac={frac:g}; "
                "the calibration Hessian is degenerate"
            )
        logger.warning("%s: Cholesky failed with dampening_frac=%g; retrying with %g", layer_name, frac, grown)
        frac = grown


def asymmetric_correction(cross: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """GPTAQ's ``P`` with ``P[q, F] = D[q, F] (H_FF)^-1`` for the trailing set ``F = {q+1, ...}``.

    When column ``q`` is fixed, the remaining columns must also absorb
    ``w_q (X_q - X̃_q)`` (the part of the full-precision target that the quantized
    stream lost). Its least-squares fix on the remaining inputs is ``w_q P[q, F]``.
    Because ``(H_FF)^-1 = U_FF^T U_FF`` for the upper Cholesky factor ``U`` of
    ``H^-1``, all rows come from one product: ``P = triu(D U^T, 1) U``.

    Example:
        >>> u = torch.eye(3)
        >>> asymmetric_correction(torch.ones(3, 3), u)[0].tolist()
        [0.0, 1.0, 1.0]
    """
    return (cross @ upper.T).triu_(1) @ upper


class ColumnQuantizer:
    """Decides the quantized value of each column during :func:`obs_sweep`.

    ``span`` (or None) asks the sweep to call :meth:`prepare` at every multiple of
    ``span`` columns with the current (error-updated) values of the next ``span``
    columns, e.g. to set a group's scale; :meth:`quantize` then rounds one column.

    Example:
        >>> class Sign(ColumnQuantizer):
        ...     def quantize(self, column, values):
        ...         return values.sign()
        >>> Sign().span is None
        True
    """

    span: int | None = None

    def prepare(self, start: int, values: torch.Tensor) -> None:
        """Called with columns ``[start, start + span)`` before the first of them is quantized."""

    def group_params(self) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]] | None:
        """``(scales [out, G], zeros [out, G], bits per group)`` of contiguous groups, after the sweep.

        None when the quantizer has no integer grid (then no packed form is built).
        """
        return None

    def quantize(self, column: int, values: torch.Tensor) -> torch.Tensor:
        """The quantized value of column ``column`` (position in sweep order), given its current values."""
        raise NotImplementedError


def quantize_column(values: torch.Tensor, params: QuantParams) -> torch.Tensor:
    """Round one column ``[out]`` with per-row params (scale ``[out, 1, 1]``) via the primitives.

    Example:
        >>> w = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
        >>> p = compute_qparams(w, bits=4, symmetric=True)
        >>> quantize_column(w[:, 1], p).tolist()  # float16 scales: 2/7 is not exact
        [0.999755859375, 1.99951171875]
    """
    column = values.unsqueeze(1)
    return dequantize(quantize_to_int(column, params, None), params, column.shape).squeeze(1)


class UniformGroupQuantizer(ColumnQuantizer):
    """k-bit min-max groups whose scale is set from the current weights at each group's start.

    This is GPTQ's usual (dynamic) grouping: the scale of group ``g`` sees the error
    already spread onto it. ``group_size=None`` means one scale per output row, set
    from the whole (original) weight before the sweep.

    Example:
        >>> q = UniformGroupQuantizer(bits=4, group_size=2, symmetric=True)
        >>> q.prepare(0, torch.tensor([[1.0, -0.5]]))
        >>> q.quantize(0, torch.tensor([1.0])).tolist()  # the scale is stored as a float16 value
        [0.999755859375]
    """

    def __init__(self, bits: int, group_size: int | None, symmetric: bool, weight: torch.Tensor | None = None):
        self.bits, self.symmetric = bits, symmetric
        self.span = group_size
        self.params: QuantParams | None = None
        self.history: list[QuantParams] = []  # one entry per group, in column order
        if group_size is None:
            if weight is None:
                raise ValueError("per-channel quantization needs the weight to set its scales")
            self.params = compute_qparams(weight, bits, None, symmetric)
            self.history.append(self.params)

    def prepare(self, start: int, values: torch.Tensor) -> None:
        self.params = compute_qparams(values, self.bits, None, self.symmetric)
        self.history.append(self.params)

    def group_params(self):
        return stack_group_params(self.history)

    def quantize(self, column: int, values: torch.Tensor) -> torch.Tensor:
        return quantize_column(values, self.params)


class StaticGroupQuantizer(ColumnQuantizer):
    """k-bit groups with scales fixed up front from the original weight (for act-order).

    With act-order the sweep visits columns by decreasing Hessian diagonal, so a
    contiguous group is not visited contiguously. Fixing each group's scale from
    the original weight keeps groups contiguous in the stored layout (what
    AutoGPTQ calls ``static_groups``), so no ``g_idx`` permutation is needed.

    Example:
        >>> w = torch.randn(4, 8)
        >>> q = StaticGroupQuantizer(w, bits=4, group_size=4, symmetric=False, order=torch.arange(8))
        >>> q.quantize(5, w[:, 5]).shape
        torch.Size([4])
    """

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int, symmetric: bool, order: torch.Tensor):
        params = compute_qparams(weight, bits, group_size, symmetric)
        self.group_size = group_size
        self.order = order.tolist()
        self.groups = [
            QuantParams(
                scale=params.scale[:, g : g + 1], zero=params.zero[:, g : g + 1], bits=bits, symmetric=symmetric
            )
            for g in range(params.scale.shape[1])
        ]

    def quantize(self, column: int, values: torch.Tensor) -> torch.Tensor:
        return quantize_column(values, self.groups[self.order[column] // self.group_size])

    def group_params(self):
        return stack_group_params(self.groups)


def stack_group_params(groups: list[QuantParams]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Per-group :class:`QuantParams` (scale ``[out, 1, 1]`` each) as ``(scales, zeros, bits)`` ``[out, G]``.

    Example:
        >>> p = compute_qparams(torch.randn(3, 4), bits=4)
        >>> stack_group_params([p, p])[0].shape
        torch.Size([3, 2])
    """
    scales = torch.cat([p.scale.reshape(-1, 1) for p in groups], dim=1)
    zeros = torch.cat([p.zero.reshape(-1, 1) for p in groups], dim=1)
    return scales, zeros, tuple(p.bits for p in groups)


@dataclass
class ColumnPassResult:
    """Output of one OBS column pass (:func:`obs_sweep`): the quantized weight and its loss estimate.

    ``loss`` is ``sum_q ||w_q - q̂_q||^2 / (2 [H^-1]_qq)`` over columns, the
    second-order estimate of the increase in the layer loss.

    Example:
        >>> ColumnPassResult(weight=torch.zeros(2, 4), loss=0.0).weight.shape
        torch.Size([2, 4])
    """

    weight: torch.Tensor
    loss: float


def obs_sweep(
    weight: torch.Tensor,
    upper: torch.Tensor,
    quantizer: ColumnQuantizer,
    *,
    block_size: int = 128,
    asym_cross: torch.Tensor | None = None,
) -> ColumnPassResult:
    """Quantize ``weight [out, in]`` column by column, spreading each error over later columns.

    Args:
        weight: float32 weight ``[out, in]``, already permuted into sweep order (not modified).
        upper: upper Cholesky factor of the damped inverse Hessian, same order.
        quantizer: rounds each column (see :class:`ColumnQuantizer`).
        block_size: columns per lazy batch (GPTQ uses 128).
        asym_cross: GPTAQ's ``P`` from :func:`asymmetric_correction`; None for plain GPTQ.

    Example:
        >>> w = torch.randn(3, 8)
        >>> q = UniformGroupQuantizer(bits=8, group_size=4, symmetric=True)
        >>> out = obs_sweep(w.clone(), torch.eye(8), q, block_size=4)
        >>> torch.allclose(out.weight, w, atol=0.05)
        True
    """
    # Work on W^T so that a column is a contiguous row: the per-column rank-1 updates
    # then stream through memory (about 2.5x faster on CPU than strided columns).
    wt = weight.T.contiguous()  # [in, out]
    columns = wt.shape[0]
    original = wt.clone() if asym_cross is not None else None
    quantized = torch.empty_like(wt)
    loss = torch.zeros((), dtype=torch.float32, device=weight.device)
    span = quantizer.span
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        block = wt[i1:i2].clone()
        errors = torch.zeros_like(block)
        upper_block = upper[i1:i2, i1:i2]
        for i in range(i2 - i1):
            column = i1 + i
            if span is not None and column % span == 0:
                # Current values of this span: in-block ones live in `block`; later ones in
                # `wt` still lack this block's pending (lazy) updates, so apply them here.
                end = min(column + span, columns)
                values = block[i : i + span]
                if end > i2:
                    later = wt[i2:end] - upper[i1:column, i2:end].T @ errors[:i]
                    if asym_cross is not None:
                        later = later + asym_cross[i1:column, i2:end].T @ original[i1:column]
                    values = torch.cat([values, later], dim=0)
                quantizer.prepare(column, values.T)
            w = block[i]
            q = quantizer.quantize(column, w)
            quantized[column] = q
            err = (w - q) / upper_block[i, i]
            # Rank-1 update of the rest of the block (column i itself is done).
            block[i + 1 :].addr_(upper_block[i, i + 1 :], err, alpha=-1.0)
            if asym_cross is not None:
                block[i + 1 :].addr_(asym_cross[column, column + 1 : i2], original[column])
            errors[i] = err
        loss += errors.pow(2).sum() / 2
        wt[i2:] -= upper[i1:i2, i2:].T @ errors
        if asym_cross is not None:
            wt[i2:] += asym_cross[i1:i2, i2:].T @ original[i1:i2]
    quantized = quantized.T.contiguous()
    return ColumnPassResult(weight=quantized, loss=float(loss))


@dataclass
class HessianFactor:
    """A Hessian prepared for the sweep: column order, damped inverse factor, dead inputs.

    ``upper`` and ``correction`` (GPTAQ's ``P``) are in sweep order; ``dead`` and
    ``order`` index the original columns.
    """

    order: torch.Tensor
    upper: torch.Tensor
    dampening_frac: float
    dead: torch.Tensor
    damped: torch.Tensor | None
    correction: torch.Tensor | None = None


def factorize(
    hessian: torch.Tensor,
    dampening_frac: float,
    device: str | torch.device,
    layer_name: str = "<layer>",
    *,
    act_order: bool = False,
    cross: torch.Tensor | None = None,
    cache: dict | None = None,
    keep_damped: bool = False,
) -> HessianFactor:
    """Dead-input masking, act-order permutation and damped inverse Cholesky of one Hessian.

    With ``cache`` (a dict), the result is stored there on first use and returned
    from it afterwards: Linears reading the same input share one factorisation,
    which saves an O(in^3) factorisation per extra Linear (two of q/k/v, one of gate/up).
    ``keep_damped`` also keeps ``H + λI`` (in sweep order) as ``damped``; otherwise None.

    Example:
        >>> factorize(torch.eye(4), 0.01, "cpu").upper.shape
        torch.Size([4, 4])
    """
    if cache is not None and "factor" in cache:
        return cache["factor"]
    h = hessian.detach().to(device, torch.float32).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    d = None
    if cross is not None:
        d = cross.detach().to(device, torch.float32).clone()
        d[dead, :] = 0.0
        d[:, dead] = 0.0
    order = (
        torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(h.shape[0], device=h.device)
    )
    if act_order:
        h = h[order][:, order]
        d = d[order][:, order] if d is not None else None
    same_place = devices.cholesky_device(device) == str(h.device)
    upper, frac = damped_inverse_cholesky(h, dampening_frac, device, layer_name, overwrite=same_place)
    factor = HessianFactor(
        order=order,
        upper=upper,
        dampening_frac=frac,
        dead=dead,
        damped=h if (keep_damped and same_place) else None,
        correction=asymmetric_correction(d, upper) if d is not None else None,
    )
    if keep_damped and not same_place:
        factor.damped = h.add_(torch.eye(h.shape[0], device=h.device), alpha=frac * float(torch.diagonal(h).mean()))
    del h, d
    if cache is not None:
        cache["factor"] = factor
    return factor


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, **options) -> tuple[torch.Tensor, dict]:
    """GPTQ (or, with ``cross``, GPTAQ) fake-quantized copy of ``weight`` given its Hessian.

    The same as :func:`gptq_quantize_packed` without the packed form; see it for the arguments.

    Example:
        >>> x = torch.randn(512, 64)
        >>> q, info = gptq_quantize(torch.randn(8, 64), 2 * x.T @ x / 512, bits=4, group_size=32,
        ...                         symmetric=False, act_order=True)
        >>> q.shape, info["dampening_frac"]
        (torch.Size([8, 64]), 0.01)
    """
    quantized, info, _ = gptq_quantize_packed(weight, hessian, **options)
    return quantized, info


def gptq_quantize_packed(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    act_order: bool,
    dampening_frac: float = 0.01,
    block_size: int = 128,
    cross: torch.Tensor | None = None,
    layer_name: str = "<layer>",
    cache: dict | None = None,
) -> tuple[torch.Tensor, dict, QuantizedWeight]:
    """GPTQ (or, with ``cross``, GPTAQ) fake-quantized copy of ``weight``, and its packed form.

    Args:
        weight: ``[out, in]`` weight (any float dtype; the result has the same dtype).
        hessian: ``[in, in]`` float32 Hessian ``2 X^T X / n`` (from :class:`HessianAccumulator`).
        bits, group_size, symmetric: the uniform quantizer (see :mod:`quantsweep.quant`).
        act_order: visit columns by decreasing ``H_ii`` (GPTQ's ``desc_act``), with static groups.
        dampening_frac: initial damping, a fraction of the mean of ``diag(H)``.
        block_size: columns per lazy batch update.
        cross: GPTAQ's ``D = 2 (X_fp - X)^T X / n``; None for GPTQ.
        cache: a dict shared by Linears with the same input (q/k/v; gate/up): the
            factorisation of their common Hessian is computed once (see :func:`factorize`).

    Returns:
        ``(quantized weight, info, packed)`` with info ``{"loss", "dampening_frac", "dead_inputs"}``
        and ``packed`` the :class:`~quantsweep.quant.packed.QuantizedWeight` whose
        ``dequantize(weight.dtype)`` is the quantized weight exactly. With act-order the
        groups are static (contiguous in the stored layout), so ``g_idx[c] = c // group_size``.

    Example:
        >>> x = torch.randn(512, 64)
        >>> q, info, packed = gptq_quantize_packed(torch.randn(8, 64), 2 * x.T @ x / 512, bits=4,
        ...                                        group_size=32, symmetric=False, act_order=True)
        >>> torch.equal(packed.dequantize(q.dtype), q)
        True
    """
    w = weight.detach().to(torch.float32).clone()
    factor = factorize(hessian, dampening_frac, w.device, layer_name, act_order=act_order, cross=cross, cache=cache)
    w[:, factor.dead] = 0.0
    order = factor.order
    if group_size is not None and act_order:
        quantizer: ColumnQuantizer = StaticGroupQuantizer(w, bits, group_size, symmetric, order)
    else:
        quantizer = UniformGroupQuantizer(bits, group_size, symmetric, weight=w)
    if act_order:
        w = w[:, order]
    upper, frac, correction, dead = factor.upper, factor.dampening_frac, factor.correction, factor.dead
    result = obs_sweep(w, upper, quantizer, block_size=block_size, asym_cross=correction)
    quantized = result.weight
    if act_order:
        quantized = quantized[:, torch.argsort(order)]
    info = {"loss": result.loss, "dampening_frac": frac, "dead_inputs": int(dead.sum())}
    scales, zeros, widths = quantizer.group_params()
    packed = pack_dequantized(quantized, scales, zeros, widths, symmetric=symmetric, group_size=group_size)
    return quantized.to(weight.dtype), info, packed
