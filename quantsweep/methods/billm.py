"""BiLLM: 1-bit post-training quantization with salient columns and a bell-shaped split.

Paper: Huang et al., "BiLLM: Pushing the Limit of Post-Training Quantization for
LLMs", ICML 2024.

For every block of ``block_size`` (128) input columns of a Linear, BiLLM:

1. ranks columns by Hessian-based salience ``s_j = sum_i w_ij^2 / d_j^2`` (``d_j``
   the diagonal of the upper Cholesky factor of ``H^-1``, the same normaliser as
   GPTQ's error: the loss of rounding a column is ``||w_j - q_j||^2 / (2 d_j^2)``),
   and takes the top ``k`` columns as *salient*;
2. binarizes salient weights with a residual (two-stage) binarization, per row:
   ``α1 sign(w) + α2 sign(w - α1 sign(w))`` with ``α = mean |.|``: 4 values per row;
3. splits the remaining, bell-shaped weights at a break point ``p`` into a
   concentrated part ``|w| <= p`` and a sparse part ``|w| > p``, each binarized
   with its own per-row ``α``: ``±α_c, ±α_s``, 4 values per row;
4. spreads each column's error over the not-yet-quantized columns as GPTQ does
   (:func:`quantsweep.methods.engine.obs.obs_sweep`).

**Distinct values:** within each (output row, block of ``block_size`` columns) the
weights take at most 8 distinct values: ``{±α1 ± α2}`` on salient columns and
``{±α_c, ±α_s}`` on the others (fewer when a part is empty). Storage is about 1.1
bits a weight (sign bits, a 1-bit bitmap for the split, a salient-column bitmap and
per-row scales), as the paper counts it.

Deviations from the paper and its reference code:

* ``k`` is searched over {1, 2, 4, 8, 16, 32} and ``p`` over 16 fractions of the
  block's largest non-salient magnitude, choosing the pair with the least
  Hessian-weighted error ``sum (w - ŵ)^2 / d_j^2``; the paper searches with the
  plain squared error.
* The codebook (salient columns, ``p`` and the per-row ``α``) is set from the
  block's error-updated weights when the sweep reaches the block; each column is
  then rounded into that codebook from its current value (sign, and ``|w| <= p``
  for the split), so updates from earlier columns of the block are honoured.
* Embedding table / output head, when a recipe asks for them, get plain binary
  RTN per block (:func:`quantsweep.quant.binarize`).

Example:
    >>> import quantsweep
    >>> recipe = quantsweep.get_recipe("w1-billm")
    >>> recipe.bits, recipe.block_size
    (1, 128)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantsweep.methods.engine.hessian import run_hessian_method
from quantsweep.methods.engine.obs import ColumnQuantizer, factorize, obs_sweep
from quantsweep.methods.registry import RecipeConfig, RecipeError, register_method
from quantsweep.methods.result import QuantizationResult, layer_report
from quantsweep.methods.targets import quantize_extra_targets

BILLM_BITS = (1,)
SALIENT_CANDIDATES = (1, 2, 4, 8, 16, 32)
BREAK_POINT_FRACTIONS = torch.linspace(0.05, 0.95, 16)


@dataclass(frozen=True, kw_only=True)
class BiLLMConfig(RecipeConfig):
    """BiLLM binary weight quantization.

    Attributes:
        bits: 1 (the only width BiLLM defines).
        block_size: columns per block; salience, split and scales are per block (and per row).
        dampening_frac: initial damping as a fraction of the mean Hessian diagonal.
        true_sequential: quantize a layer's Linears group by group (q/k/v, o, gate/up, down).
        calibration_batch_size: calibration samples per forward pass.
        device: where each decoder layer is quantized (``auto``: see GPTQ).

    Example:
        >>> BiLLMConfig(name="w1-billm", method="billm").block_size
        128
    """

    bits: int = 1
    block_size: int = 128
    dampening_frac: float = 0.01
    true_sequential: bool = True
    calibration_batch_size: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in BILLM_BITS:
            raise RecipeError(f"recipe {self.name!r}: billm supports bits {list(BILLM_BITS)}, got {self.bits}")
        if self.block_size <= 0 or self.calibration_batch_size <= 0:
            raise RecipeError(f"recipe {self.name!r}: block_size and calibration_batch_size must be positive")
        if not 0 <= self.dampening_frac <= 1:
            raise RecipeError(f"recipe {self.name!r}: dampening_frac must be in [0, 1], got {self.dampening_frac}")

    @property
    def group_size(self) -> int:
        """Alias used by shared target checks: blocks must divide in_features."""
        return self.block_size


def _signs(values: torch.Tensor) -> torch.Tensor:
    return torch.where(values >= 0, 1.0, -1.0).to(values.dtype)


def residual_binarize(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-stage binarization per row: returns ``(approximation, α1, α2)``.

    Example:
        >>> approx, a1, a2 = residual_binarize(torch.tensor([[3.0, -1.0, 1.0, -3.0]]))
        >>> approx.tolist(), a1.item(), a2.item()
        ([[3.0, -1.0, 1.0, -3.0]], 2.0, 1.0)
    """
    alpha1 = values.abs().mean(-1, keepdim=True)
    first = alpha1 * _signs(values)
    residual = values - first
    alpha2 = residual.abs().mean(-1, keepdim=True)
    return first + alpha2 * _signs(residual), alpha1, alpha2


def split_binarize(
    values: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, float, torch.Tensor, torch.Tensor]:
    """Bell-shaped split of ``values [out, m]`` at the break point with least weighted error.

    Returns ``(approximation, p, α_concentrated [out, 1], α_sparse [out, 1])``.

    Example:
        >>> v = torch.tensor([[0.1, -0.1, 2.0, -2.0]])
        >>> approx, p, ac, asp = split_binarize(v, torch.ones(4))
        >>> [round(x, 4) for x in approx[0].tolist()]
        [0.1, -0.1, 2.0, -2.0]
    """
    magnitude = values.abs()
    rows, width = magnitude.shape
    top = float(magnitude.max()) if values.numel() else 0.0
    candidates = BREAK_POINT_FRACTIONS.to(values.device, values.dtype) * top  # [T]
    # Closed form over sorted magnitudes: with prefix sums of |w|, c|w|, c|w|^2 and c
    # (c the column weight), every break point's per-row scales and weighted error
    # (|w| - α)^2 c cost O(1) per row, instead of materialising [T, out, m] tensors.
    sorted_mag, order = magnitude.sort(dim=1)
    col_weight = weights.to(values.dtype).expand(rows, width).gather(1, order)

    def prefix(x):
        return torch.nn.functional.pad(x.cumsum(dim=1), (1, 0))  # [out, m + 1], prefix[:, k] = sum of first k

    sum_mag, sum_w = prefix(sorted_mag), prefix(col_weight)
    sum_wmag, sum_wmag2 = prefix(col_weight * sorted_mag), prefix(col_weight * sorted_mag.pow(2))
    counts = torch.searchsorted(
        sorted_mag.contiguous(), candidates.expand(rows, -1).contiguous(), right=True
    )  # [out, T]

    def at(prefix_sums):
        return prefix_sums.gather(1, counts), prefix_sums[:, -1:] - prefix_sums.gather(1, counts)

    n_c = counts.to(values.dtype)
    mag_c, mag_s = at(sum_mag)
    alpha_c = mag_c / n_c.clamp_min(1)
    alpha_s = mag_s / (width - n_c).clamp_min(1)
    (w_c, w_s), (wm_c, wm_s), (wm2_c, wm2_s) = at(sum_w), at(sum_wmag), at(sum_wmag2)
    error = (wm2_c - 2 * alpha_c * wm_c + alpha_c.pow(2) * w_c) + (wm2_s - 2 * alpha_s * wm_s + alpha_s.pow(2) * w_s)
    best = int(torch.argmin(error.sum(dim=0)))
    alpha_c, alpha_s = alpha_c[:, best : best + 1], alpha_s[:, best : best + 1]
    cut = float(candidates[best])
    approx = _signs(values) * torch.where(magnitude <= cut, alpha_c, alpha_s)
    return approx, cut, alpha_c, alpha_s


class BiLLMBlockQuantizer(ColumnQuantizer):
    """Sets each block's binary codebook at the block's start, then rounds columns into it.

    Example:
        >>> q = BiLLMBlockQuantizer(block_size=4, diag=torch.ones(4))
        >>> q.prepare(0, torch.tensor([[1.0, -2.0, 0.5, 0.1]]))
        >>> q.quantize(1, torch.tensor([-2.0])).shape
        torch.Size([1])
    """

    def __init__(self, block_size: int, diag: torch.Tensor):
        self.span = block_size
        self.inv_d2 = 1.0 / diag.pow(2)
        self.start = 0
        self.chosen_salient: list[int] = []

    def prepare(self, start: int, values: torch.Tensor) -> None:
        width = values.shape[1]
        weights = self.inv_d2[start : start + width]
        salience = (values.pow(2) * weights).sum(0)
        order = torch.argsort(salience, descending=True)
        best = None
        for k in [c for c in SALIENT_CANDIDATES if c < width] or [max(width - 1, 0)]:
            salient = torch.zeros(width, dtype=torch.bool, device=values.device)
            salient[order[:k]] = True
            approx_s, alpha1, alpha2 = residual_binarize(values[:, salient])
            error = ((values[:, salient] - approx_s).pow(2) * weights[salient]).sum()
            rest = ~salient
            if rest.any():
                approx_n, p, alpha_c, alpha_s = split_binarize(values[:, rest], weights[rest])
                error = error + ((values[:, rest] - approx_n).pow(2) * weights[rest]).sum()
            else:
                p, alpha_c, alpha_s = 0.0, torch.zeros_like(alpha1), torch.zeros_like(alpha1)
            if best is None or error < best[0]:
                best = (float(error), salient, alpha1, alpha2, p, alpha_c, alpha_s, k)
        _, salient, self.alpha1, self.alpha2, self.p, self.alpha_c, self.alpha_s, k = best
        self.salient = salient.tolist()  # read once per column below: a host list, not a device sync each time
        self.start = start
        self.chosen_salient.append(k)

    def quantize(self, column: int, values: torch.Tensor) -> torch.Tensor:
        signs = _signs(values)
        if self.salient[column - self.start]:
            first = self.alpha1.squeeze(1) * signs
            return first + self.alpha2.squeeze(1) * _signs(values - first)
        scale = torch.where(values.abs() <= self.p, self.alpha_c.squeeze(1), self.alpha_s.squeeze(1))
        return signs * scale


def billm_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    block_size: int = 128,
    dampening_frac: float = 0.01,
    layer_name: str = "<layer>",
    cache: dict | None = None,
) -> tuple[torch.Tensor, dict]:
    """BiLLM fake-quantized copy of ``weight [out, in]`` given its Hessian ``[in, in]``.

    ``cache``: shared by Linears with the same input (see :func:`~quantsweep.methods.engine.obs.factorize`).

    Returns:
        ``(binarized weight, info)``; info has ``loss``, ``dampening_frac`` and
        ``mean_salient_columns`` (per block).

    Example:
        >>> x = torch.randn(256, 128)
        >>> q, info = billm_quantize(torch.randn(4, 128), 2 * x.T @ x / 256)
        >>> int(q[0].unique().numel()) <= 8
        True
    """
    w = weight.detach().to(torch.float32).clone()
    factor = factorize(hessian, dampening_frac, w.device, layer_name, cache=cache)
    w[:, factor.dead] = 0.0
    upper, frac = factor.upper, factor.dampening_frac
    quantizer = BiLLMBlockQuantizer(block_size, torch.diagonal(upper))
    result = obs_sweep(w, upper, quantizer, block_size=block_size)
    info = {
        "loss": result.loss,
        "dampening_frac": frac,
        "mean_salient_columns": sum(quantizer.chosen_salient) / max(len(quantizer.chosen_salient), 1),
    }
    return result.weight.to(weight.dtype), info


@register_method("billm", config=BiLLMConfig, needs_calibration=True)
def apply_billm(model, config: BiLLMConfig, calibration=None):
    """Binarize ``model``'s decoder Linears in place with BiLLM, one decoder layer at a time.

    Raises:
        ValueError: no calibration data, or a block size that does not divide a layer.

    Example:
        >>> import quantsweep
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> shape = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
        ...                     num_attention_heads=4, num_key_value_heads=2)
        >>> model = LlamaForCausalLM(shape).eval()  # one random decoder layer keeps the example fast
        >>> calibration = torch.randint(0, 64, (2, 16))  # token ids [N, L]
        >>> result = apply_billm(model, quantsweep.get_recipe("w1-billm"), calibration=calibration)
        >>> result.method, len(result.report["layers"])
        ('billm', 1)
    """

    def quantize_linear(name, weight, accumulator, cache):
        return billm_quantize(
            weight,
            accumulator.hessian,
            block_size=config.block_size,
            dampening_frac=config.dampening_frac,
            layer_name=name,
            cache=cache,
        )

    reports = run_hessian_method(model, config, calibration, "billm", quantize_linear)
    quantize_extra_targets(model, config)  # no Hessian: plain binary per block_size group
    return QuantizationResult(method="billm", report=layer_report(reports))
