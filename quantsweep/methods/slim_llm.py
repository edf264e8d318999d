"""SliM-LLM: salience-driven mixed-precision groups with an exact average bit width, on GPTQ.

Paper: Huang et al., "SliM-LLM: Salience-Driven Mixed-Precision Quantization for
Large Language Models", 2024.

SliM-LLM gives each group of ``group_size`` input columns (shared by all output
rows, so the layout stays structured) its own bit width from ``{N-1, N, N+1}``:

1. **Salience-determined bit allocation (SBA).** Group salience is
   ``sum_{i, j in g} w_ij^2 / d_j^2`` (``d_j`` the diagonal of the upper Cholesky
   factor of ``H^-1``, as in BiLLM). Groups are ranked by salience; the ``r`` most
   salient get ``N+1`` bits and the ``r`` least salient ``N-1``, so the average is
   *exactly* ``N`` bits. ``r`` is searched over ``0 .. G/2`` to minimise the
   block-diagonal estimate of the layer error, ``sum_g tr(ΔW_g H_gg ΔW_g^T)`` with
   ``ΔW_g`` the round-to-nearest error of group ``g`` at its bit width.
2. **Quantization** with GPTQ's column sweep and error compensation
   (:func:`quantsweep.methods.engine.obs.obs_sweep`); each group's min-max scale
   is set from the error-updated weights when the sweep reaches it.

Deviations from the paper:

* The salience-weighted quantizer calibration (SQC, a scale search that protects
  salient weights inside a group) is not implemented: plain min-max scales.
* 1-bit groups (when ``N = 2``) are binarized per row as ``sign(w) * mean|w|``
  (:func:`quantsweep.quant.binarize`'s format) instead of a 2-level min-max grid;
  2..8-bit groups use the shared min-max quantizer of :mod:`quantsweep.quant`.
* The search for ``r`` uses the block-diagonal Hessian error estimate above
  rather than the output error of the full layer; no act-order.

Example:
    >>> import quantsweep
    >>> recipe = quantsweep.get_recipe("w2-slim-llm")
    >>> recipe.bits, recipe.group_size
    (2, 128)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from quantsweep.methods.engine.hessian import run_hessian_method
from quantsweep.methods.engine.obs import ColumnQuantizer, factorize, obs_sweep, quantize_column
from quantsweep.methods.registry import RecipeConfig, RecipeError, register_method
from quantsweep.methods.result import QuantizationResult, layer_report
from quantsweep.methods.targets import quantize_extra_targets
from quantsweep.quant import compute_qparams, quantize_weight
from quantsweep.quant.packed import QuantizedWeight, pack_dequantized

logger = logging.getLogger(__name__)

SLIM_BITS = (2, 3, 4)


@dataclass(frozen=True, kw_only=True)
class SliMLLMConfig(RecipeConfig):
    """SliM-LLM mixed-precision groups averaging exactly ``bits``.

    Attributes:
        bits: the average width N: 2, 3 or 4 (groups take N-1, N or N+1 bits).
        group_size: input columns per group (shared by all output rows).
        symmetric: symmetric integer grids, or asymmetric min-max with a zero point.
        dampening_frac: initial damping as a fraction of the mean Hessian diagonal.
        block_size: columns per lazy batch update.
        true_sequential: quantize a layer's Linears group by group (q/k/v, o, gate/up, down).
        calibration_batch_size: calibration samples per forward pass.
        device: where each decoder layer is quantized (``auto``: see GPTQ).

    Example:
        >>> SliMLLMConfig(name="w2-slim-llm", method="slim-llm").bits
        2
    """

    bits: int = 2
    group_size: int = 128
    symmetric: bool = False
    dampening_frac: float = 0.01
    block_size: int = 128
    true_sequential: bool = True
    calibration_batch_size: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in SLIM_BITS:
            raise RecipeError(f"recipe {self.name!r}: slim-llm supports bits {list(SLIM_BITS)}, got {self.bits}")
        if self.group_size <= 0 or self.block_size <= 0 or self.calibration_batch_size <= 0:
            raise RecipeError(
                f"recipe {self.name!r}: group_size, block_size and calibration_batch_size must be positive"
            )
        if not 0 <= self.dampening_frac <= 1:
            raise RecipeError(f"recipe {self.name!r}: dampening_frac must be in [0, 1], got {self.dampening_frac}")


def allocate_bits(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    diag: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    symmetric: bool,
) -> tuple[list[int], int]:
    """SBA: per-group bit widths from ``{bits-1, bits, bits+1}`` with mean exactly ``bits``.

    Args:
        weight: ``[out, in]`` float32 weight.
        hessian: damped ``[in, in]`` Hessian.
        diag: diagonal of the upper Cholesky factor of ``H^-1`` (salience normaliser).

    Returns:
        ``(bit width of each group, r)`` where ``r`` groups were promoted and ``r`` demoted.

    Example:
        >>> w, h = torch.randn(4, 8), torch.eye(8)
        >>> widths, r = allocate_bits(w, h, torch.ones(8), bits=2, group_size=2, symmetric=False)
        >>> sum(widths) / len(widths)
        2.0
    """
    out_features, in_features = weight.shape
    n_groups = in_features // group_size
    grouped = weight.reshape(out_features, n_groups, group_size)
    salience = (grouped.pow(2) / diag.reshape(1, n_groups, group_size).pow(2)).sum(dim=(0, 2))
    order = torch.argsort(salience, descending=True).tolist()
    # errors[b][g]: tr(ΔW_g H_gg ΔW_g^T) for group g rounded to bits + b - 1.
    errors = []
    for width in (bits - 1, bits, bits + 1):
        row = []
        for g in range(n_groups):
            cols = slice(g * group_size, (g + 1) * group_size)
            delta = grouped[:, g] - quantize_weight(grouped[:, g], width, None, symmetric)
            row.append(float(((delta @ hessian[cols, cols]) * delta).sum()))
        errors.append(row)
    best_r, best_error = 0, sum(errors[1])
    total = best_error
    for r in range(1, n_groups // 2 + 1):
        promoted, demoted = order[r - 1], order[n_groups - r]
        total += errors[2][promoted] - errors[1][promoted] + errors[0][demoted] - errors[1][demoted]
        if total < best_error:
            best_r, best_error = r, total
    widths = [bits] * n_groups
    for g in order[:best_r]:
        widths[g] = bits + 1
    for g in order[n_groups - best_r :]:
        widths[g] = bits - 1
    return widths, best_r


class MixedGroupQuantizer(ColumnQuantizer):
    """Per-group bit widths; each group's scale is set when the sweep reaches it.

    Example:
        >>> q = MixedGroupQuantizer([1, 3], group_size=2, symmetric=False)
        >>> q.prepare(0, torch.tensor([[1.0, -3.0]]))
        >>> q.quantize(0, torch.tensor([1.0])).tolist()
        [2.0]
    """

    def __init__(self, widths: list[int], group_size: int, symmetric: bool):
        self.widths, self.span, self.symmetric = widths, group_size, symmetric
        self.history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (scale, zero) [out] per group

    def prepare(self, start: int, values: torch.Tensor) -> None:
        self.width = self.widths[start // self.span]
        if self.width == 1:
            self.alpha = values.abs().mean(dim=1)
            # Binary as codes 0/1 with zero 0.5 and scale 2 alpha: (code - 0.5) * 2 alpha = ±alpha exactly.
            self.history.append((2 * self.alpha, torch.full_like(self.alpha, 0.5)))
        else:
            self.params = compute_qparams(values, self.width, None, self.symmetric)
            self.history.append((self.params.scale.reshape(-1), self.params.zero.reshape(-1)))

    def group_params(self):
        scales = torch.stack([scale for scale, _ in self.history], dim=1)
        zeros = torch.stack([zero for _, zero in self.history], dim=1)
        return scales, zeros, tuple(self.widths)

    def quantize(self, column: int, values: torch.Tensor) -> torch.Tensor:
        if self.width == 1:
            return torch.where(values >= 0, 1.0, -1.0).to(values.dtype) * self.alpha
        return quantize_column(values, self.params)


def slim_llm_quantize(weight: torch.Tensor, hessian: torch.Tensor, **options) -> tuple[torch.Tensor, dict]:
    """SliM-LLM fake-quantized copy of ``weight [out, in]``: :func:`slim_llm_quantize_packed` without the packed form.

    Example:
        >>> x = torch.randn(512, 256)
        >>> q, info = slim_llm_quantize(torch.randn(8, 256), 2 * x.T @ x / 512, group_size=64)
        >>> info["average_bits"]
        2.0
    """
    quantized, info, _ = slim_llm_quantize_packed(weight, hessian, **options)
    return quantized, info


def slim_llm_quantize_packed(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int = 2,
    group_size: int = 128,
    symmetric: bool = False,
    dampening_frac: float = 0.01,
    block_size: int = 128,
    layer_name: str = "<layer>",
    cache: dict | None = None,
) -> tuple[torch.Tensor, dict, QuantizedWeight]:
    """SliM-LLM fake-quantized copy of ``weight [out, in]`` given its Hessian, and its packed form.

    Returns:
        ``(weight, info, packed)``; info has ``group_bits`` (per group), ``average_bits``
        (exactly ``bits``), ``promoted`` (= demoted groups), ``loss``, ``dampening_frac``;
        ``packed`` is a mixed-width :class:`~quantsweep.quant.packed.QuantizedWeight`.

    Example:
        >>> x = torch.randn(512, 256)
        >>> q, info, packed = slim_llm_quantize_packed(torch.randn(8, 256), 2 * x.T @ x / 512, group_size=64)
        >>> torch.equal(packed.dequantize(q.dtype), q)
        True
    """
    w = weight.detach().to(torch.float32).clone()
    factor = factorize(hessian, dampening_frac, w.device, layer_name, cache=cache, keep_damped=True)
    w[:, factor.dead] = 0.0
    upper, frac = factor.upper, factor.dampening_frac
    widths, promoted = allocate_bits(
        w, factor.damped, torch.diagonal(upper), bits=bits, group_size=group_size, symmetric=symmetric
    )
    quantizer = MixedGroupQuantizer(widths, group_size, symmetric)
    result = obs_sweep(w, upper, quantizer, block_size=block_size)
    info = {
        "group_bits": widths,
        "average_bits": sum(widths) / len(widths),
        "promoted": promoted,
        "loss": result.loss,
        "dampening_frac": frac,
    }
    scales, zeros, group_bits = quantizer.group_params()
    packed = pack_dequantized(result.weight, scales, zeros, group_bits, symmetric=symmetric, group_size=group_size)
    return result.weight.to(weight.dtype), info, packed


@register_method("slim-llm", config=SliMLLMConfig, needs_calibration=True)
def apply_slim_llm(model, config: SliMLLMConfig, calibration=None):
    """Quantize ``model`` in place with SliM-LLM, one decoder layer at a time.

    Raises:
        ValueError: no calibration data, or a group size that does not divide a layer.

    Example:
        >>> import quantsweep
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> shape = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
        ...                     num_attention_heads=4, num_key_value_heads=2)
        >>> model = LlamaForCausalLM(shape).eval()  # one random decoder layer keeps the example fast
        >>> calibration = torch.randint(0, 64, (2, 16))  # token ids [N, L]
        >>> result = apply_slim_llm(model, quantsweep.get_recipe("w2-slim-llm"), calibration=calibration)
        >>> result.method, len(result.packed)
        ('slim-llm', 7)
    """

    def quantize_linear(name, weight, accumulator, cache):
        return slim_llm_quantize_packed(
            weight,
            accumulator.hessian,
            bits=config.bits,
            group_size=config.group_size,
            symmetric=config.symmetric,
            dampening_frac=config.dampening_frac,
            block_size=config.block_size,
            layer_name=name,
            cache=cache,
        )

    packed: dict = {}
    reports = run_hessian_method(model, config, calibration, "slim-llm", quantize_linear, packed=packed)
    quantize_extra_targets(model, config, packed=packed)  # no Hessian: uniform RTN at the average width
    return QuantizationResult(method="slim-llm", report=layer_report(reports), packed=packed)
