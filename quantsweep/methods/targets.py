"""Which modules a recipe quantizes: decoder Linears, plus optionally embeddings and head.

Example:
    >>> import quantsweep
    >>> model, _ = quantsweep.load_model("toy")
    >>> list(weight_targets(model, quantsweep.get_recipe("w4-rtn")))[:1]
    ['model.layers.0.self_attn.q_proj']
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from quantsweep.methods.overrides import config_for, module_configs
from quantsweep.models.layout import decoder_linears, input_embeddings, lm_head
from quantsweep.quant import check_group_size
from quantsweep.quant.packed import rtn_pack

logger = logging.getLogger(__name__)


def weight_targets(model: nn.Module, config) -> dict[str, nn.Module]:
    """Modules whose ``weight`` the recipe quantizes, by full name, in model order.

    Every Linear in the decoder blocks; the embedding table and the output head
    only when ``config.quantize_embeddings`` / ``config.quantize_lm_head`` say so.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> len(weight_targets(model, quantsweep.get_recipe("w4-rtn")))
        28
    """
    targets: dict[str, nn.Module] = {}
    names = {module: name for name, module in model.named_modules()}
    embeddings = input_embeddings(model)
    if config.quantize_embeddings and embeddings is not None:
        targets[names[embeddings]] = embeddings
    targets.update(decoder_linears(model))
    head = lm_head(model)
    if config.quantize_lm_head and head is not None:
        if embeddings is not None and head.weight is embeddings.weight and config.quantize_embeddings:
            return targets  # tied weights: already quantized once through the embedding table
        targets[names[head]] = head
    return targets


def check_group_sizes(model: nn.Module, config, overrides=()) -> dict[str, nn.Module]:
    """Check the recipe's ``group_size`` against every target before any weight changes; return the targets.

    Recipes without a ``group_size`` field (or with ``None``, per channel) always pass.
    With ``overrides`` (:class:`~quantsweep.methods.overrides.Override`), each module is
    checked at its own group size, skipped modules not at all, and an override that
    matches no target is an error.

    Raises:
        ValueError: naming the first layer whose ``in_features`` the group size does not divide,
            or an override that matches no target.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> len(check_group_sizes(model, quantsweep.get_recipe("w4-rtn")))
        28
    """
    targets = weight_targets(model, config)
    for name, module_config in module_configs(config, overrides, targets).items():
        if module_config is not None:
            check_group_size(targets[name].weight.shape[1], getattr(module_config, "group_size", None), name)
    return targets


def extra_targets(model: nn.Module, config) -> dict[str, nn.Module]:
    """Targets outside the decoder blocks (embedding table, output head) that the recipe asks for.

    Layer-by-layer methods calibrate only decoder Linears; these get a plain format instead.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> extra_targets(model, quantsweep.get_recipe("w4-gptq"))
        {}
    """
    decoder = {id(module) for module in decoder_linears(model).values()}
    return {name: module for name, module in weight_targets(model, config).items() if id(module) not in decoder}


def quantize_extra_targets(model: nn.Module, config, packed: dict | None = None, overrides=()) -> int:
    """RTN (``config.bits``, ``config.group_size``, ``config.symmetric``; binary at 1 bit) for :func:`extra_targets`; return how many.

    ``packed``, if given, receives each target's :class:`~quantsweep.quant.packed.QuantizedWeight`.
    ``overrides`` change a target's ``bits``, ``group_size`` or ``symmetric``, or skip it.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> quantize_extra_targets(model, quantsweep.get_recipe("w4-gptq"))
        0
    """
    extra = extra_targets(model, config)
    count = 0
    with torch.no_grad():
        for name, module in extra.items():
            own = config_for(config, overrides, name)
            if own is None:
                continue
            representation = rtn_pack(
                module.weight.data, own.bits, own.group_size, getattr(own, "symmetric", True), name
            )
            module.weight.data.copy_(representation.dequantize(module.weight.dtype))
            if packed is not None:
                packed[name] = representation
            logger.info("%s: %s quantized with RTN (no calibration data for it)", config.name, name)
            count += 1
    return count
