"""GPTAQ: GPTQ with asymmetric calibration; weight-only or W4A4.

Paper: Li et al., "GPTAQ: Efficient Finetuning-Free Quantization for Asymmetric
Calibration", 2025 (earlier circulated under the name GPTQv2).

GPTQ fits each quantized Linear to its *own* (quantized-stream) inputs,
minimising ``||W X̃ - Ŵ X̃||``. GPTAQ makes the full-precision model the target,
minimising ``||W X - Ŵ X̃||`` where ``X`` is the Linear's input in the
full-precision model and ``X̃`` its input in the partly quantized one, so the
error that earlier layers left in the activations is compensated too. The
sequential engine carries both streams (``propagate_fp=True``).

Our derivation of the column update (same objective as the paper, written in our
own terms): when column ``q`` is fixed, the remaining columns ``F`` absorb, besides
GPTQ's rounding term, the residual ``w_q (X_q - X̃_q)``; its least-squares fix is
``w_q D[q, F] (H_FF)^-1`` with ``D = 2 ΔX X̃^T / n``. Using the Cholesky factor
``U`` of ``H^-1`` all these rows are ``P = triu(D U^T, 1) U``, computed once
(:func:`quantsweep.methods.engine.obs.asymmetric_correction`) and applied with
GPTQ's lazy batch updates. ``w_q`` is the *original* weight of column ``q``,
because earlier corrections were made on the quantized stream already.

Deviations from the paper and its reference code:

* No rotation (QuaRot/SpinQuant) precedes W4A4: the paper's W4A4 results are on
  rotated models. Here W4A4 is plain per-token dynamic 4-bit activation
  fake-quantization (:func:`quantsweep.methods.activation.attach_activation_quant`)
  on the input of every quantized Linear, so expect heavy loss or collapse; the
  verdict machinery reports whatever happens.
* The activation quantizer is attached to a group of Linears once their weights
  are quantized: their own Hessians use unquantized inputs, while every later
  layer sees the activation-quantized stream, and so does every later group of
  the same layer with ``true_sequential`` (without it, all groups of a layer take
  their Hessians in one pass, before any quantizer is attached).
* The cross term is used at full strength (no extra scaling hyperparameter).
* Otherwise GPTQ's options apply unchanged (see :mod:`quantsweep.methods.gptq`).

Example:
    >>> import quantsweep
    >>> recipe = quantsweep.get_recipe("w4a4-gptaq")
    >>> recipe.method, recipe.bits, recipe.activation_bits
    ('gptaq', 4, 4)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from quantsweep.methods.engine.hessian import run_hessian_method
from quantsweep.methods.engine.obs import gptq_quantize_packed
from quantsweep.methods.gptq import GPTQConfig
from quantsweep.methods.registry import RecipeError, register_method
from quantsweep.methods.result import QuantizationResult, layer_report
from quantsweep.methods.targets import quantize_extra_targets

logger = logging.getLogger(__name__)

GPTAQ_ACTIVATION_BITS = (4, 8)


@dataclass(frozen=True, kw_only=True)
class GPTAQConfig(GPTQConfig):
    """GPTAQ: GPTQ's fields plus optional activation quantization.

    Attributes:
        activation_bits: None for weight-only, or 4 / 8 for per-token dynamic
            activation fake-quantization on the input of every quantized Linear.
        activation_symmetric: symmetric activation integers (default) or asymmetric.
        (other fields: see :class:`quantsweep.methods.gptq.GPTQConfig`)

    Example:
        >>> GPTAQConfig(name="w4a4-gptaq", method="gptaq", activation_bits=4).bits
        4
    """

    activation_bits: int | None = None
    activation_symmetric: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.activation_bits is not None and self.activation_bits not in GPTAQ_ACTIVATION_BITS:
            raise RecipeError(
                f"recipe {self.name!r}: gptaq supports activation_bits {list(GPTAQ_ACTIVATION_BITS)} "
                f"or null (weight-only), got {self.activation_bits}"
            )


@register_method("gptaq", config=GPTAQConfig, needs_calibration=True)
def apply_gptaq(model, config: GPTAQConfig, calibration=None):
    """Quantize ``model`` in place with GPTAQ, one decoder layer at a time.

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
        >>> result = apply_gptaq(model, quantsweep.get_recipe("w4-gptaq"), calibration=calibration)
        >>> result.method, len(result.packed)
        ('gptaq', 7)
    """

    def quantize_linear(name, weight, accumulator, cache):
        return gptq_quantize_packed(
            weight,
            accumulator.hessian,
            bits=config.bits,
            group_size=config.group_size,
            symmetric=config.symmetric,
            act_order=config.act_order,
            dampening_frac=config.dampening_frac,
            block_size=config.block_size,
            cross=accumulator.cross,
            layer_name=name,
            cache=cache,
        )

    def attach_activation_quantization(ctx, group):
        from quantsweep.methods.activation import attach_activation_quant

        for linear in group.values():
            attach_activation_quant(linear, config.activation_bits, config.activation_symmetric)

    weight_only = config.activation_bits is None
    packed: dict = {}
    reports = run_hessian_method(
        model,
        config,
        calibration,
        "gptaq",
        quantize_linear,
        asymmetric=True,
        after_group=None if weight_only else attach_activation_quantization,
        packed=packed,
    )
    quantize_extra_targets(model, config, packed=packed)
    return QuantizationResult(method="gptaq", report=layer_report(reports), packed=packed)
