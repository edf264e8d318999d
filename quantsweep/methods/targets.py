"""Which modules a recipe quantizes: decoder Linears, plus optionally embeddings and head.

Example:
    >>> from quantsweep.methods.targets import weight_targets  # doctest: +SKIP
    >>> list(weight_targets(model, config))[:1]  # doctest: +SKIP
    [('model.layers.0.self_attn.q_proj', Linear(...))]
"""

from __future__ import annotations

from torch import nn

from quantsweep.layout import decoder_linears, input_embeddings, lm_head


def weight_targets(model: nn.Module, config) -> dict[str, nn.Module]:
    """Modules whose ``weight`` the recipe quantizes, by full name, in model order.

    Every Linear in the decoder blocks; the embedding table and the output head
    only when ``config.quantize_embeddings`` / ``config.quantize_lm_head`` say so.

    Example:
        >>> len(weight_targets(model, get_recipe("w4-rtn")))  # doctest: +SKIP
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
