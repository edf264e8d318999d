"""Write a quantized model as a Hugging Face checkpoint in the GPTQ format.

The checkpoint holds the decoder Linears as ``qweight`` / ``qzeros`` / ``scales`` /
``g_idx`` (see :mod:`quantsweep.export.gptq_format`) and every other tensor
(embeddings, norms, output head) in the model's dtype, plus ``quantize_config.json``
and the ``quantization_config`` entry of ``config.json``. What it stores is the
method's :class:`~quantsweep.quant.packed.QuantizedWeight`, i.e. the very codes the
fake-quant model that was evaluated was made of. Weight scales are float16 values from
the start (:func:`quantsweep.quant.compute_qparams`), so storing them in fp16, as the
format requires, changes nothing: the checkpoint decodes to the evaluated weights exactly.

Example:
    >>> import json, tempfile
    >>> import quantsweep
    >>> model, tokenizer = quantsweep.load_model("toy")
    >>> result = quantsweep.apply_recipe(model, "w4-rtn")  # a calibrated w4-gptq result exports the same way
    >>> out = export_gptq(model, result, tempfile.mkdtemp(), config=quantsweep.get_recipe("w4-rtn"), tokenizer=tokenizer)
    >>> json.loads((out / "quantize_config.json").read_text())["bits"]
    4
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from quantsweep.export.gptq_format import GPTQ_BITS, layer_tensors, quantize_config
from quantsweep.models.layout import decoder_linears
from quantsweep.quant.finite import require_finite_weights

logger = logging.getLogger(__name__)

EXPORTABLE_METHODS = ("rtn", "gptq", "gptaq")


def is_exportable(config) -> bool:
    """Whether a recipe's model has a GPTQ form: uniform 2/3/4/8-bit decoder weights, fp activations.

    SliM-LLM (mixed widths), BiLLM and binary (1 bit), AWQ (per-channel input scales
    the format cannot hold) and SmoothQuant or W4A4 (activation fake-quant) have none.

    Example:
        >>> from quantsweep import get_recipe
        >>> is_exportable(get_recipe("w4-gptq")), is_exportable(get_recipe("w4a4-smoothquant"))
        (True, False)
    """
    return (
        config.method in EXPORTABLE_METHODS
        and getattr(config, "bits", None) in GPTQ_BITS
        and getattr(config, "activation_bits", None) is None
        and not config.quantize_embeddings
        and not config.quantize_lm_head
    )


def exportable_recipes() -> list[str]:
    """Names of the registered recipes that :func:`export_gptq` can write.

    Example:
        >>> "w4-gptq" in exportable_recipes()
        True
    """
    from quantsweep.recipes import get_recipe, list_recipes

    return [name for name in list_recipes() if is_exportable(get_recipe(name))]


def check_exportable(config) -> None:
    """Raise ``ValueError`` naming the recipe and the exportable ones when it has no packed form.

    Example:
        >>> from quantsweep import get_recipe
        >>> check_exportable(get_recipe("w4-rtn"))  # exportable: returns None
        >>> check_exportable(get_recipe("w1-billm"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: recipe 'w1-billm' (method billm) has no GPTQ packed form ...
    """
    if not is_exportable(config):
        raise ValueError(
            f"recipe {config.name!r} (method {config.method}) has no GPTQ packed form (the format stores uniform "
            f"2/3/4/8-bit weights with fp activations); recipes that can be exported: {', '.join(exportable_recipes())}"
        )


def check_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """The export folder; refuse one that exists and is not empty unless ``overwrite``.

    Example:
        >>> check_out_dir("/nonexistent/new-folder", overwrite=False).name
        'new-folder'
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"export folder {str(out)!r} exists and is a file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(
            f"export folder {str(out)!r} exists and is not empty; pass --overwrite (overwrite=True) to replace it"
        )
    return out


def _quantized_state(model: nn.Module, packed: dict, checkpoint_format: str) -> dict[str, torch.Tensor]:
    linears = decoder_linears(model)
    missing = sorted(set(linears) - set(packed))
    if missing:
        raise ValueError(
            f"no packed weights for {len(missing)} decoder Linears (e.g. {missing[0]}); "
            "the method did not return a quantized representation for them"
        )
    extra = sorted(set(packed) - set(linears))
    if extra:
        raise ValueError(f"the GPTQ format stores decoder Linears only; {extra[0]} is not one")
    state: dict[str, torch.Tensor] = {}
    quantized_keys = set()
    for name, linear in linears.items():
        state.update(layer_tensors(name, packed[name], linear.bias, checkpoint_format))
        quantized_keys.update({f"{name}.weight", f"{name}.bias"})
    seen: dict[int, str] = {}
    for key, tensor in model.state_dict().items():
        if key in quantized_keys:
            continue
        pointer = tensor.data_ptr()
        if pointer in seen:  # tied embeddings / head: stored once, config.json says they are tied
            continue
        seen[pointer] = key
        state[key] = tensor.detach().to("cpu").contiguous()
    return state


def export_gptq(
    model: nn.Module,
    result,
    out_dir: str | Path,
    *,
    config=None,
    tokenizer=None,
    overwrite: bool = False,
    checkpoint_format: str = "gptq",
) -> Path:
    """Write ``model``'s packed weights from ``result`` as a GPTQ checkpoint in ``out_dir``.

    Args:
        model: the quantized model (its non-Linear tensors and config are written too).
        result: the :class:`~quantsweep.methods.result.QuantizationResult` of quantizing it.
        out_dir: the folder to write (created; must be empty unless ``overwrite``).
        config: the recipe (for ``desc_act`` and damping in ``quantize_config.json``); when
            given, it is checked with :func:`check_exportable` first.
        tokenizer: saved beside the weights when given.
        checkpoint_format: ``gptq`` (v1, stores zero - 1; what auto-gptq writes) or ``gptq_v2``.

    Returns:
        The folder written.

    Raises:
        ValueError: a recipe with no packed form, a non-empty folder, or weights the format cannot store.
        NonFiniteWeightsError: the model holds NaN or Inf weights (a ValueError naming the modules).

    Example:
        >>> import tempfile
        >>> from safetensors import safe_open
        >>> import quantsweep
        >>> model, tokenizer = quantsweep.load_model("toy")
        >>> result = quantsweep.apply_recipe(model, "w4-rtn")
        >>> out = export_gptq(model, result, tempfile.mkdtemp(), config=quantsweep.get_recipe("w4-rtn"))
        >>> with safe_open(out / "model.safetensors", "pt") as stored:
        ...     sum(key.endswith(".qweight") for key in stored.keys())  # the 7 Linears of each of 4 layers
        28
        >>> export_gptq(model, result, out)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: export folder '...' exists and is not empty; pass --overwrite (overwrite=True) to replace it
    """
    from safetensors.torch import save_file

    if config is not None:
        check_exportable(config)
    out = check_out_dir(out_dir, overwrite)
    if not result.packed:
        raise ValueError(
            f"method {result.method!r} returned no packed weights; recipes that can be exported: "
            f"{', '.join(exportable_recipes())}"
        )
    require_finite_weights(
        model,
        "the GPTQ export",
        "the format stores integer codes, which cannot hold NaN or Inf, so the checkpoint would decode "
        "to different, finite weights",
    )
    first = next(iter(result.packed.values()))
    if any(
        p.symmetric != first.symmetric or p.group_size != first.group_size or p.bits[0] != first.bits[0]
        for p in result.packed.values()
    ):
        raise ValueError("the GPTQ format needs one bits / group_size / sym for every layer")
    state = _quantized_state(model, result.packed, checkpoint_format)  # every check passes before a file is written
    settings = quantize_config(
        bits=first.uniform_bits,
        group_size=first.group_size,
        desc_act=bool(getattr(config, "act_order", False)),
        symmetric=first.symmetric,
        checkpoint_format=checkpoint_format,
        damp_percent=getattr(config, "dampening_frac", None),
        true_sequential=bool(getattr(config, "true_sequential", False)),
    )
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "quantize_config.json", "config.json"):
        (out / stale).unlink(missing_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(out)
    config_path = out / "config.json"
    hf_config = json.loads(config_path.read_text())
    hf_config["quantization_config"] = settings
    config_path.write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    (out / "quantize_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    logger.info(
        "exported %d quantized Linears (%d-bit, group %s) to %s",
        len(result.packed),
        settings["bits"],
        settings["group_size"],
        out,
    )
    return out
