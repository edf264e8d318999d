"""The cost fields of a cell record: what a recipe costs in theory, and as stored.

``theoretical_bits_per_weight`` counts every weight of the model: quantized codes at
their width, plus their scales (16 bits each, the fp16 that GPTQ checkpoints store)
and zero points (one per group at the group's width, none when symmetric), plus
every tensor kept in floating point (embeddings, lm_head, norms, biases) at the
model's floating-point width. bitsandbytes modules count what bitsandbytes keeps:
int8 codes plus one fp32 scale per row (LLM.int8()), or 4-bit codes plus one fp32
absmax per block (8 bits plus a fp32 per 256 blocks with double quantization).

Per-module overrides are counted module by module (a skipped module is floating
point), and ``extra_parameters`` that a stage adds (a learned rotation matrix; an
online Hadamard transform has none) add their fp bits to the total, over the same
weight count.

``stored_bytes`` is what the weights take as stored, measured: the export's files on
disk when ``export_dir`` is given; the bitsandbytes modules' tensors in memory for
bitsandbytes recipes; else the model's tensors in memory. For a fake-quant recipe
that is the fp model's size, because the weights are dequantized floats, and the
record says so (``stored_bytes_kind``, ``measured_as``): its memory and speed are
the fp model's, not the format's.

Example:
    >>> import quantsweep
    >>> model, tokenizer = quantsweep.load_model("toy")
    >>> result = quantsweep.apply_recipe(model, "w4-rtn")
    >>> fields = cost_fields(model, quantsweep.get_recipe("w4-rtn"), result)
    >>> fields["kernel"], fields["theoretical_basis"], round(fields["theoretical_bits_per_weight"], 2)
    ('fake-quant', 'packed', 5.32)
    >>> fields["stored_bytes"] == fields["fp_bytes"]  # fake-quant: stored as the fp model
    True
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

SCALE_BITS = 16  # fp16 scales, as the GPTQ format stores them
BNB_STAT_BITS = 32  # bitsandbytes keeps its per-row (int8) and per-block (4-bit) scales in fp32

MEASURED_AS = {
    "none": "the fp model",
    "fake-quant": "the fp model: weights are dequantized floats, so memory and speed are the fp model's",
    "bitsandbytes": "bitsandbytes modules and kernels",
}


def _is_bnb_module(module: nn.Module) -> bool:
    return type(module).__module__.startswith("bitsandbytes")


def _fp_bits(model: nn.Module) -> int:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and embeddings.weight.is_floating_point():
        return embeddings.weight.element_size() * 8
    return next(p for p in model.parameters() if p.is_floating_point()).element_size() * 8


def _bnb_weight_bits(module: nn.Module) -> tuple[int, float]:
    """(weights, theoretical bits) of a bitsandbytes Linear's weight."""
    weights = module.in_features * module.out_features
    if type(module).__name__ == "Linear8bitLt":
        return weights, 8 * weights + BNB_STAT_BITS * module.out_features
    state = module.weight.quant_state
    blocks = weights / state.blocksize
    if getattr(state, "nested", False):  # double quantization: 8-bit absmax + fp32 per 256 blocks
        return weights, 4 * weights + 8 * blocks + BNB_STAT_BITS * blocks / 256
    return weights, 4 * weights + BNB_STAT_BITS * blocks


def _tensor_bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0


def _bnb_extra_bytes(module: nn.Module) -> int:
    """Bytes a bitsandbytes module keeps outside its parameters: int8 row scales, 4-bit quant state."""
    weight = module.weight
    scb = getattr(weight, "SCB", None)
    if scb is None and getattr(module, "state", None) is not None:
        scb = getattr(module.state, "SCB", None)
    total = _tensor_bytes(scb)
    state = getattr(weight, "quant_state", None)
    while state is not None:
        total += _tensor_bytes(getattr(state, "absmax", None)) + _tensor_bytes(getattr(state, "code", None))
        total += _tensor_bytes(getattr(state, "offset", None))
        state = getattr(state, "state2", None)
    return total


def _module_config(recipe_config, name: str):
    """The weight config that applies to module ``name``: a composed recipe's weight stage, after its overrides.

    None when the module is skipped or the recipe has no weight method.
    """
    from quantsweep.methods.overrides import config_for

    config = getattr(recipe_config, "weight_config", recipe_config)
    if config is None:
        return None
    return config_for(config, getattr(recipe_config, "overrides", ()), name)


def _recipe_weight_bits(config, weights: int, in_features: int) -> float | None:
    """Theory from the recipe alone (methods that return no packed form): codes + scales + zeros."""
    if config is None:
        return None
    bits = getattr(config, "bits", None) or getattr(config, "weight_bits", None)
    if not bits:
        return None
    group = getattr(config, "group_size", None) or in_features
    groups = weights / group
    zero_bits = 0 if getattr(config, "symmetric", True) or bits == 1 else bits
    return bits * weights + (SCALE_BITS + zero_bits) * groups


def disk_bytes(folder: str | Path) -> int:
    """Bytes of the weight files (``*.safetensors``, ``*.bin``) in an exported folder.

    Example:
        >>> disk_bytes("/nonexistent")
        0
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def cost_fields(model: nn.Module, recipe_config, result, *, export_dir: str | Path | None = None) -> dict:
    """Theoretical bits per weight and bytes, and bytes as stored, as JSON-friendly record fields.

    Args:
        model: the model after the recipe was applied (fp, fake-quant or bitsandbytes).
        recipe_config: the recipe (for methods that return no packed form, theory comes from it).
        result: the :class:`~quantsweep.methods.result.QuantizationResult` of the recipe.
        export_dir: an export of this model; its files' size becomes ``stored_bytes``.

    Returns:
        ``kernel``, ``theoretical_bits_per_weight``, ``theoretical_bytes``, ``theoretical_basis``
        (``packed``, ``recipe`` or ``fp``), ``stored_bytes``, ``stored_bytes_kind``, ``fp_bytes``,
        ``fp_bits``, ``weights`` (parameter count of the fp model), ``quantized_weights``, ``measured_as``.

    Example:
        >>> import quantsweep
        >>> model, tokenizer = quantsweep.load_model("toy")
        >>> fields = cost_fields(model, quantsweep.get_recipe("fp"), quantsweep.apply_recipe(model, "fp"))
        >>> fields["theoretical_bits_per_weight"], fields["quantized_weights"]
        (32.0, 0)
        >>> fields["stored_bytes"] == 4 * fields["weights"]  # fp32 on CPU
        True
    """
    from quantsweep.models.layout import decoder_linears

    fp_bits = _fp_bits(model)
    packed = result.packed or {}
    decoder = set(decoder_linears(model))
    weights = quantized = 0
    bits = 0.0
    memory = 0
    basis = "fp"
    seen: set[int] = set()
    for name, module in model.named_modules():
        # Parameters only: buffers (rotary inv_freq, ...) are recomputed state, not weights.
        own = [(n, t) for n, t in module.named_parameters(recurse=False) if t.data_ptr() not in seen]
        seen.update(t.data_ptr() for _, t in own)
        memory += sum(_tensor_bytes(t) for _, t in own)
        if _is_bnb_module(module) and hasattr(module, "in_features"):
            count, weight_bits = _bnb_weight_bits(module)
            weights, quantized, bits = weights + count, quantized + count, bits + weight_bits
            memory += _bnb_extra_bytes(module)
            own = [(n, t) for n, t in own if n != "weight"]
            basis = "bitsandbytes"
        elif name in packed:
            count = module.weight.numel()
            weights, quantized, bits = (
                weights + count,
                quantized + count,
                bits + 8 * packed[name].nbytes_theoretical(SCALE_BITS),
            )
            own = [(n, t) for n, t in own if n != "weight"]
            basis = "packed"
        elif result.kernel == "fake-quant" and not packed and name in decoder:
            estimate = _recipe_weight_bits(
                _module_config(recipe_config, name), module.weight.numel(), module.in_features
            )
            if estimate is not None:
                count = module.weight.numel()
                weights, quantized, bits = weights + count, quantized + count, bits + estimate
                own = [(n, t) for n, t in own if n != "weight"]
                basis = "recipe"
        for _, tensor in own:
            if tensor.is_floating_point():
                weights += tensor.numel()
                bits += tensor.numel() * fp_bits
    # Parameters a stage added outside the model's own tensors (a learned rotation matrix)
    # are stored at the fp width; they add bits, not weights: bits per weight of the model's weights.
    extra = int(getattr(result, "extra_parameters", 0) or 0)
    bits += extra * fp_bits
    if export_dir is not None:
        stored, kind = disk_bytes(export_dir), "export_on_disk"
    elif result.kernel == "bitsandbytes":
        stored, kind = memory, "bitsandbytes_in_memory"
    elif result.kernel == "fake-quant":
        stored, kind = memory, "fp_model_in_memory (fake-quant)"
    else:
        stored, kind = memory, "fp_model_in_memory"
    return {
        "kernel": result.kernel,
        "theoretical_bits_per_weight": bits / weights if weights else None,
        "theoretical_bytes": int(round(bits / 8)),
        "theoretical_basis": basis,
        "stored_bytes": int(stored),
        "stored_bytes_kind": kind,
        "fp_bytes": int(weights * fp_bits // 8),
        "fp_bits": fp_bits,
        "weights": int(weights),
        "quantized_weights": int(quantized),
        "extra_parameters": extra,
        "measured_as": MEASURED_AS[result.kernel],
    }


def recipe_weight_bits(config, weight: torch.Tensor) -> float | None:
    """Theoretical bits of one ``[out, in]`` weight under a recipe: codes, fp16 scales and zero points.

    The count :func:`cost_fields` makes for a fake-quant weight, and the same as the
    packed form's (:meth:`~quantsweep.quant.packed.QuantizedWeight.nbytes_theoretical`)
    when the group size divides ``in``. None for a recipe without ``bits``.

    Example:
        >>> import quantsweep
        >>> weight = torch.zeros(8, 256)
        >>> recipe_weight_bits(quantsweep.get_recipe("w4-rtn"), weight) / weight.numel()  # 4 + (16 + 4) / 128
        4.15625
    """
    return _recipe_weight_bits(config, weight.numel(), weight.shape[1])
