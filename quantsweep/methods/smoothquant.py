"""SmoothQuant: migrate activation outliers into the weights, then quantize weights and activations.

Xiao, Lin, Seznec, Wu, Demouth, Han. "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models", ICML 2023 (arXiv:2211.10438).

For a norm feeding Linears ``W_1..W_k`` (``input_layernorm -> q/k/v_proj`` and
``post_attention_layernorm -> gate/up_proj`` in Llama-style layers, see
:mod:`quantsweep.methods.mappings`), each input channel ``j`` gets the smoothing factor

    s_j = max|X_j| ** alpha / max_i max|W_i[:, j]| ** (1 - alpha)

where ``max|X_j|`` is taken over every calibration token. The norm's weight is divided
by ``s`` and each Linear's column ``j`` multiplied by ``s_j``: in exact arithmetic the
model computes the same function (a test checks this). Then every decoder Linear gets

* its weight fake-quantized to ``weight_bits`` (per output channel, symmetric, as in the
  paper's W8A8 setting; ``group_size`` optional), and
* a hook that fake-quantizes its input per token, dynamically, to ``activation_bits``
  (:func:`quantsweep.methods.activation.attach_activation_quant`).

Deviations from the paper, stated:

* Calibration runs layer by layer (:mod:`quantsweep.methods.engine.sequential`): the channel
  maxima of layer ``i`` are measured on the outputs of the already quantized layers
  ``< i`` (activation quantization included), not on one pass of the FP model. Errors
  of earlier layers are therefore seen, as in GPTQ.
* Only norm -> Linear pairs are smoothed (as the paper's Llama/OPT recipes do);
  ``o_proj`` and ``down_proj`` are quantized without smoothing.
* Activations are quantized per token, dynamically (the paper's "O1"-style setting
  with per-token activations), weights per channel; no static per-tensor scales.
* Nothing clamps Inf/NaN. Factors use the paper code's floor of 1e-5 (against zero
  channels) only; whatever W4A4 produces is what the evaluation sees.

Example:
    >>> import quantsweep
    >>> recipe = quantsweep.get_recipe("w8a8-smoothquant")
    >>> recipe.weight_bits, recipe.activation_bits, recipe.alpha
    (8, 8, 0.5)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from quantsweep.methods.activation import ACTIVATION_BITS, attach_activation_quant
from quantsweep.methods.engine.sequential import compute_device, require_calibration, run_sequential
from quantsweep.methods.mappings import ResolvedScaling, fold_scales, mappings_for
from quantsweep.methods.registry import RecipeConfig, RecipeError, register_method
from quantsweep.methods.result import QuantizationResult, layer_report
from quantsweep.methods.targets import check_group_sizes, extra_targets
from quantsweep.quant import fake_quantize

logger = logging.getLogger(__name__)

WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8)
# Floor on channel maxima and factors, as in the paper's reference code: keeps a channel
# that is exactly zero from producing 0/0; does not touch Inf or NaN.
_FLOOR = 1e-5


@dataclass(frozen=True, kw_only=True)
class SmoothQuantConfig(RecipeConfig):
    """SmoothQuant W{weight_bits}A{activation_bits}.

    Attributes:
        weight_bits: weight bit width, 2..8 (W8A8: 8, W4A4: 4).
        activation_bits: per-token dynamic activation bit width, 2..8.
        alpha: migration strength in [0, 1]; 0.5 is the paper's default.
        group_size: weight group size along in_features; None (default) is per channel.
        symmetric: symmetric weight integers (the paper's choice).
        activation_symmetric: symmetric activation integers.
        calibration_batch_size: calibration samples per forward pass.
        device: where each decoder layer is quantized; ``auto`` = the model's accelerator,
            else the best available one (the model itself stays on the host).

    Example:
        >>> SmoothQuantConfig(name="w8a8", method="smoothquant").alpha
        0.5
    """

    weight_bits: int = 8
    activation_bits: int = 8
    alpha: float = 0.5
    group_size: int | None = None
    symmetric: bool = True
    activation_symmetric: bool = True
    calibration_batch_size: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_bits not in WEIGHT_BITS:
            raise RecipeError(
                f"recipe {self.name!r}: smoothquant weight_bits must be one of {list(WEIGHT_BITS)}, got {self.weight_bits}"
            )
        if self.activation_bits not in ACTIVATION_BITS:
            raise RecipeError(
                f"recipe {self.name!r}: smoothquant activation_bits must be one of {list(ACTIVATION_BITS)}, got {self.activation_bits}"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise RecipeError(f"recipe {self.name!r}: alpha must be in [0, 1], got {self.alpha}")
        if self.group_size is not None and self.group_size <= 0:
            raise RecipeError(f"recipe {self.name!r}: group_size must be positive or null, got {self.group_size}")
        if self.calibration_batch_size <= 0:
            raise RecipeError(
                f"recipe {self.name!r}: calibration_batch_size must be positive, got {self.calibration_batch_size}"
            )


def smoothing_factors(activation_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """The per-input-channel factors ``s = max|X|^alpha / max|W|^(1-alpha)``.

    Args:
        activation_absmax: ``[in_features]``, max |x| per channel over calibration tokens.
        weights: the ``[out, in_features]`` weights of the Linears reading that input.
        alpha: migration strength in [0, 1].

    Example:
        >>> s = smoothing_factors(torch.tensor([4.0, 1.0]), [torch.ones(3, 2)], alpha=0.5)
        >>> s.tolist()
        [2.0, 1.0]
    """
    weight_absmax = torch.cat([w.detach().float().abs() for w in weights], dim=0).amax(dim=0)
    act = activation_absmax.float().to(weight_absmax.device).clamp_min(_FLOOR)
    return (act.pow(alpha) / weight_absmax.clamp_min(_FLOOR).pow(1.0 - alpha)).clamp_min(_FLOOR)


def smooth_pairs(
    pairs: list[ResolvedScaling], activation_absmax: list[torch.Tensor], alpha: float
) -> list[torch.Tensor]:
    """Fold SmoothQuant factors into each (norm -> Linears) pair; return the factors.

    Only rescales: the FP function is unchanged (up to rounding).

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> before = model(ids).logits
        >>> pairs = mappings_for(model, "smoothquant")[0]
        >>> factors = smooth_pairs(pairs, [torch.rand(p.channels) + 0.5 for p in pairs], 0.5)
        >>> [tuple(f.shape) for f in factors]
        [(128,), (128,)]
        >>> torch.allclose(model(ids).logits, before, atol=1e-3)
        True
    """
    factors = []
    for pair, absmax in zip(pairs, activation_absmax):
        s = smoothing_factors(absmax, [t.weight for t in pair.targets], alpha)
        fold_scales(pair, s)
        factors.append(s)
    return factors


def _smooth_layer(ctx, pairs, alpha: float) -> dict:
    """Measure the channel maxima of one layer's smoothed inputs and fold the factors; the layer's report info."""
    observed = {str(i): pair.targets[0] for i, pair in enumerate(pairs)}
    absmax: dict[str, torch.Tensor] = {}

    def observe(key, x, _x_fp):
        current = x.float().abs().amax(dim=0)
        absmax[key] = current if key not in absmax else torch.maximum(absmax[key], current)

    ctx.capture_inputs(observed, observe)
    factors = smooth_pairs(pairs, [absmax[str(i)] for i in range(len(pairs))], alpha)
    return {"smoothed_pairs": len(pairs), "max_factor": max(float(s.max()) for s in factors) if factors else None}


def smooth_model(model, calibration, recipe, *, alpha: float = 0.5, device: str = "auto", batch_size: int = 1) -> list:
    """The ``smooth`` transform of a composed recipe: fold SmoothQuant factors, quantize nothing.

    Channel maxima are measured layer by layer on the full-precision stream (nothing is
    quantized yet); each norm -> Linears pair gets ``s = max|X|^alpha / max|W|^(1-alpha)``
    (:func:`smoothing_factors`). The model computes the same function; a weight method
    and an activation stage come after it.

    Args:
        model: a Llama-style causal LM.
        calibration: token ids ``[N, L]`` or :class:`~quantsweep.calibration.CalibrationData`.
        recipe: the recipe (its name goes into messages).
        alpha: migration strength in [0, 1].
        device: where each decoder layer is processed (``auto``: see :func:`compute_device`).
        batch_size: calibration samples per forward pass.

    Returns:
        One :class:`~quantsweep.methods.engine.sequential.LayerReport` per decoder layer.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> before = model(ids).logits
        >>> reports = smooth_model(model, torch.randint(0, 123, (2, 16)), quantsweep.get_recipe("w4-rtn"))
        >>> torch.allclose(model(ids).logits, before, atol=1e-4), reports[0].info["smoothed_pairs"]
        (True, 2)
    """
    calibration = require_calibration(calibration, recipe)
    pairs_by_layer = mappings_for(model, "smoothquant")

    return run_sequential(
        model,
        calibration,
        compute_device(device, model),
        lambda ctx: _smooth_layer(ctx, pairs_by_layer[ctx.index], alpha),
        batch_size=batch_size,
        desc=f"smooth {recipe.name}",
    )


def _quantize_linear(linear: nn.Linear, config: SmoothQuantConfig, name: str) -> None:
    linear.weight.data.copy_(
        fake_quantize(linear.weight.data, config.weight_bits, config.group_size, config.symmetric, name)
    )
    attach_activation_quant(linear, config.activation_bits, config.activation_symmetric)


@register_method("smoothquant", config=SmoothQuantConfig, needs_calibration=True, smooths=True)
def apply_smoothquant(model, config: SmoothQuantConfig, calibration=None):
    """Smooth, then quantize weights and (per token, dynamically) activations, layer by layer.

    Args:
        model: a Llama-style causal LM (openPangu-Embedded included).
        config: the recipe.
        calibration: :class:`quantsweep.calibration.CalibrationData` or token ids ``[N, L]``.

    Raises:
        ValueError: no calibration data; layers that cannot be mapped (names the
            unmatched modules); a group size that does not divide a layer's width.
            All checks run before any weight changes.

    Example:
        >>> import quantsweep
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> shape = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
        ...                     num_attention_heads=4, num_key_value_heads=2)
        >>> model = LlamaForCausalLM(shape).eval()  # one random decoder layer keeps the example fast
        >>> calibration = torch.randint(0, 64, (2, 16))  # token ids [N, L]
        >>> apply_smoothquant(model, quantsweep.get_recipe("w8a8-smoothquant"), calibration).method
        'smoothquant'
    """
    require_calibration(calibration, config)
    pairs_by_layer = mappings_for(model, "smoothquant")
    targets = check_group_sizes(model, config)

    def quantize_layer(ctx) -> dict:
        info = _smooth_layer(ctx, pairs_by_layer[ctx.index], config.alpha)
        for relative, linear in ctx.linears().items():
            _quantize_linear(linear, config, ctx.full_name(relative))
        return info

    reports = run_sequential(
        model,
        calibration,
        compute_device(config.device, model),
        quantize_layer,
        batch_size=config.calibration_batch_size,
        desc=f"smoothquant {config.name}",
    )
    # The embedding table / output head, when the recipe asks for them, outside the layers.
    with torch.no_grad():
        for name, module in extra_targets(model, config).items():
            module.weight.data.copy_(
                fake_quantize(module.weight.data, config.weight_bits, config.group_size, config.symmetric, name)
            )
            if isinstance(module, nn.Linear):
                attach_activation_quant(module, config.activation_bits, config.activation_symmetric)
    logger.info(
        "smoothquant: W%dA%d, alpha %.2f, %d weights",
        config.weight_bits,
        config.activation_bits,
        config.alpha,
        len(targets),
    )
    return QuantizationResult(method="smoothquant", report=layer_report(reports))
