"""Round-to-nearest (RTN) weight-only quantization, k = 2..8 bits, and binary (k = 1).

RTN needs no calibration data: each group of weights gets a min-max scale (and a
zero point when asymmetric) and every weight is rounded to the nearest level.
``bits: 1`` binarizes: ``sign(w) * mean|w|`` per channel or group.

Example:
    >>> import quantsweep
    >>> model, _ = quantsweep.load_model("toy")
    >>> quantsweep.quantize(model, "w4-rtn") is model
    True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from quantsweep._text import safe_text
from quantsweep.methods.overrides import module_configs
from quantsweep.methods.registry import RecipeConfig, RecipeError, register_method
from quantsweep.methods.result import QuantizationResult
from quantsweep.methods.targets import check_group_sizes
from quantsweep.quant.packed import rtn_pack

logger = logging.getLogger(__name__)

RTN_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


@dataclass(frozen=True, kw_only=True)
class RTNConfig(RecipeConfig):
    """Round-to-nearest weight quantization.

    Attributes:
        bits: 1 (binary) or 2..8.
        group_size: weights per group along in_features; None means per output channel.
        symmetric: symmetric integers around zero, or asymmetric min-max with a zero point.
            Ignored for binary.

    Example:
        >>> RTNConfig(name="w4", method="rtn", bits=4, group_size=128).symmetric
        True
    """

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in RTN_BITS:
            raise RecipeError(f"recipe {self.name!r}: rtn supports bits {list(RTN_BITS)}, got {self.bits}")
        if self.group_size is not None and self.group_size <= 0:
            raise RecipeError(f"recipe {self.name!r}: group_size must be positive or null, got {self.group_size}")


@register_method("rtn", config=RTNConfig, per_module=("bits", "group_size", "symmetric"))
def apply_rtn(model, config: RTNConfig, calibration=None, overrides=()):
    """Quantize every target weight of ``model`` in place with RTN.

    Group sizes are checked for every layer before any weight changes, so a bad
    group size leaves the model intact. The result's ``packed`` holds each
    weight's codes, scales and zero points (:func:`~quantsweep.quant.packed.rtn_pack`).
    ``overrides`` (:mod:`quantsweep.methods.overrides`) give some modules their own
    ``bits``, ``group_size`` or ``symmetric``, or keep them in full precision.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> result = apply_rtn(model, quantsweep.get_recipe("w4-rtn"))
        >>> packed = result.packed["model.layers.0.mlp.down_proj"]
        >>> torch.equal(packed.dequantize(torch.float32), model.model.layers[0].mlp.down_proj.weight)
        True
    """
    targets = check_group_sizes(model, config, overrides)
    plan = module_configs(config, overrides, targets)
    packed = {}
    with torch.no_grad():
        for name, module in tqdm(targets.items(), desc=safe_text(f"quantize {config.name}"), unit="layer", leave=False):
            own = plan[name]
            if own is None:  # skip: keep full precision
                continue
            packed[name] = rtn_pack(module.weight.data, own.bits, own.group_size, own.symmetric, name)
            module.weight.data.copy_(packed[name].dequantize(module.weight.dtype))
    logger.info(
        "rtn: quantized %d weights to %d bits (%d overridden)",
        len(packed),
        config.bits,
        sum(own is not config for own in plan.values()),
    )
    return QuantizationResult(method="rtn", packed=packed)
