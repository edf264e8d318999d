"""Where things are inside a causal LM: decoder layers, their Linears, embeddings, head.

Methods ask this module for the modules to quantize, so no method hard-codes a
model family. Llama-style models (openPangu-Embedded included) keep their blocks
at ``model.model.layers``; GPT-2 style ones at ``model.transformer.h``.

Example:
    >>> import quantsweep
    >>> model, _ = quantsweep.load_model("toy")
    >>> len(decoder_layers(model)), decoder_layer_prefix(model)
    (4, 'model.layers')
"""

from __future__ import annotations

from torch import nn

_LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "transformer.blocks")


def _get_path(root: nn.Module, dotted: str):
    current = root
    for part in dotted.split("."):
        current = getattr(current, part, None)
        if current is None:
            return None
    return current


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM.

    Raises:
        ValueError: the model's blocks are not at any known path.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> type(decoder_layers(model)[0]).__name__
        'LlamaDecoderLayer'
    """
    for path in _LAYER_PATHS:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}; looked at {', '.join(_LAYER_PATHS)}")


def decoder_layer_prefix(model: nn.Module) -> str:
    """The dotted module path of the decoder-layer list, e.g. ``model.layers``.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> decoder_layer_prefix(model)
        'model.layers'
    """
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise AssertionError("decoder layers found but not named")  # internal invariant


def linears_in(module: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside ``module``, by its name relative to ``module``.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> sorted(linears_in(decoder_layers(model)[0]))[:3]
        ['mlp.down_proj', 'mlp.gate_proj', 'mlp.up_proj']
    """
    return {name: child for name, child in module.named_modules() if isinstance(child, nn.Linear)}


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear of every decoder block, by full dotted name.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> next(iter(decoder_linears(model))), len(decoder_linears(model))
        ('model.layers.0.self_attn.q_proj', 28)
    """
    prefix = decoder_layer_prefix(model)
    found = {}
    for index, layer in enumerate(decoder_layers(model)):
        for name, linear in linears_in(layer).items():
            found[f"{prefix}.{index}.{name}"] = linear
    return found


def lm_head(model: nn.Module) -> nn.Module | None:
    """The output projection, if the model exposes one.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> lm_head(model)
        Linear(in_features=128, out_features=123, bias=False)
    """
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def input_embeddings(model: nn.Module) -> nn.Module | None:
    """The token embedding table, if the model exposes one.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> input_embeddings(model)
        Embedding(123, 128, padding_idx=0)
    """
    getter = getattr(model, "get_input_embeddings", None)
    return getter() if callable(getter) else None
