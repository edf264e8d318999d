"""GPTQ: weight-only k-bit quantization with second-order error compensation.

Paper: Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", ICLR 2023.

Each decoder Linear is quantized column by column; the rounding error of a
column is spread over the columns not yet quantized using the inverse Hessian of
the layer loss ``||W X - Ŵ X||^2`` (``H = 2 X X^T / n`` from the calibration
inputs). Layers are processed one at a time by
:func:`quantsweep.methods.engine.hessian.run_hessian_method`, each seeing the outputs of
the already-quantized layers before it. The math is in
:mod:`quantsweep.methods.engine.obs`.

Options and choices (all as in the paper or the reference code unless stated):

* ``bits`` 2, 3, 4 or 8; ``group_size`` (None: per output channel); ``symmetric``.
* ``act_order``: visit columns by decreasing ``H_ii``. Group scales are then fixed
  up front from the original weight ("static groups"), which keeps groups
  contiguous; the reference code instead sets them when a group is first reached
  and stores a permutation (``g_idx``). Without act-order the scale of each group
  is set from the error-updated weights when the sweep reaches it, as in the paper.
* ``dampening_frac``: ``λ = frac * mean(diag H)`` is added to the diagonal; if
  the Cholesky factorisation still fails, ``frac`` grows x10 (logged) up to 10.
* ``true_sequential``: within a decoder layer, the Linears that share an input
  (q/k/v, then o, then gate/up, then down) are quantized group by group, each
  group's Hessian taken after the previous groups were quantized.
* Lazy batch updates over ``block_size`` columns (128).
* The Cholesky factorisation runs on :func:`quantsweep.device.cholesky_device`:
  on Ascend only the Hessian hops to the CPU, because torch-npu has been seen to
  fall back to the CPU for ``torch.linalg.cholesky`` implicitly and slowly.
* Embedding table / output head, when a recipe asks for them, get RTN with the
  same bits and groups (they have no calibration Hessian here).

Example:
    >>> import quantsweep
    >>> recipe = quantsweep.get_recipe("w4-gptq")
    >>> recipe.bits, recipe.group_size, recipe.act_order, recipe.true_sequential
    (4, 128, True, True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from quantsweep.methods.engine.hessian import run_hessian_method
from quantsweep.methods.engine.obs import gptq_quantize_packed
from quantsweep.methods.overrides import module_configs
from quantsweep.methods.registry import RecipeConfig, RecipeError, register_method
from quantsweep.methods.result import QuantizationResult, layer_report
from quantsweep.methods.targets import check_group_sizes, quantize_extra_targets

logger = logging.getLogger(__name__)

GPTQ_BITS = (2, 3, 4, 8)


@dataclass(frozen=True, kw_only=True)
class GPTQConfig(RecipeConfig):
    """GPTQ weight-only quantization.

    Attributes:
        bits: 2, 3, 4 or 8.
        group_size: weights per group along in_features; None means per output channel.
        symmetric: symmetric integers around zero, or asymmetric min-max with a zero point.
        act_order: quantize columns by decreasing Hessian diagonal (``desc_act``).
        dampening_frac: initial damping as a fraction of the mean Hessian diagonal.
        block_size: columns per lazy batch update.
        true_sequential: quantize the Linears of a layer group by group (q/k/v, o, gate/up, down).
        calibration_batch_size: calibration samples per forward pass.
        device: where each decoder layer is quantized; ``auto`` = the model's accelerator,
            else the best available one, while the model stays on the host.

    Example:
        >>> GPTQConfig(name="w4-gptq", method="gptq", bits=4).group_size
        128
    """

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False
    act_order: bool = True
    dampening_frac: float = 0.01
    block_size: int = 128
    true_sequential: bool = True
    calibration_batch_size: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in GPTQ_BITS:
            raise RecipeError(f"recipe {self.name!r}: {self.method} supports bits {list(GPTQ_BITS)}, got {self.bits}")
        if self.group_size is not None and self.group_size <= 0:
            raise RecipeError(f"recipe {self.name!r}: group_size must be positive or null, got {self.group_size}")
        if not 0 <= self.dampening_frac <= 1:
            raise RecipeError(f"recipe {self.name!r}: dampening_frac must be in [0, 1], got {self.dampening_frac}")
        if self.block_size <= 0 or self.calibration_batch_size <= 0:
            raise RecipeError(f"recipe {self.name!r}: block_size and calibration_batch_size must be positive")


@register_method("gptq", config=GPTQConfig, needs_calibration=True, per_module=("bits", "group_size", "symmetric"))
def apply_gptq(model, config: GPTQConfig, calibration=None, overrides=()):
    """Quantize ``model`` in place with GPTQ, one decoder layer at a time.

    ``overrides`` (:mod:`quantsweep.methods.overrides`) give some modules their own
    ``bits``, ``group_size`` or ``symmetric``, or keep them in full precision (a skipped
    Linear is left as it is; the layers after it calibrate on its full-precision output).

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
        >>> result = apply_gptq(model, quantsweep.get_recipe("w4-gptq"), calibration=calibration)
        >>> result.method, len(result.packed), len(result.report["layers"])
        ('gptq', 7, 1)
    """

    plan = module_configs(config, overrides, check_group_sizes(model, config, overrides))

    def quantize_linear(name, weight, accumulator, cache):
        own = plan.get(name, config)
        if own is None:  # skip: keep full precision
            return weight, {"skipped": True}
        return gptq_quantize_packed(
            weight,
            accumulator.hessian,
            bits=own.bits,
            group_size=own.group_size,
            symmetric=own.symmetric,
            act_order=config.act_order,
            dampening_frac=config.dampening_frac,
            block_size=config.block_size,
            layer_name=name,
            cache=cache,
        )

    packed: dict = {}
    reports = run_hessian_method(
        model, config, calibration, "gptq", quantize_linear, packed=packed, overrides=overrides
    )
    quantize_extra_targets(model, config, packed=packed, overrides=overrides)
    return QuantizationResult(method="gptq", report=layer_report(reports), packed=packed)
