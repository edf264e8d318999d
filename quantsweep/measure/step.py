"""The ``quantsweep measure`` step: cost, peak memory and speed of recipes on one model.

The model is loaded once. The fp model is timed first; then for each recipe the fp
weights are restored, the recipe applied, and its cost fields recorded. Recipes that
run real kernels (bitsandbytes) are timed and their peak memory measured; fake-quant
recipes are not timed again: their weights are dequantized floats, so their memory
and speed *are* the fp model's, and the record copies the fp numbers with
``speed_measured_on: "fp model (fake-quant)"`` rather than showing a number that
would look like the format's.

Timing must not share the machine with evaluation, which is why this is a separate
step that a sweep can switch on.

Example:
    >>> records = measure_recipes("toy", ["w4-rtn"], device="cpu", prompt_tokens=8, new_tokens=2, repeats=1, warmup=0)
    >>> records[1]["kernel"], records[1]["speed_measured_on"]
    ('fake-quant', 'fp model (fake-quant)')
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from quantsweep.measure.cost import cost_fields
from quantsweep.measure.memory import PeakMemory
from quantsweep.measure.speed import measure_speed

logger = logging.getLogger(__name__)

SPEED_KEYS_COPIED_FROM_FP = (
    "prefill_tokens_per_s",
    "prefill_tokens_per_s_min",
    "prefill_tokens_per_s_max",
    "prefill_relative_spread",
    "decode_tokens_per_s",
    "decode_tokens_per_s_min",
    "decode_tokens_per_s_max",
    "decode_relative_spread",
    "peak_memory_bytes",
    "peak_memory_kind",
)


def timed(model, tokenizer, **speed_options) -> dict:
    """:func:`measure_speed` inside :class:`PeakMemory`: speed and peak memory of one model.

    Example:
        >>> import quantsweep
        >>> model, tokenizer = quantsweep.load_model("toy", device="cpu")
        >>> timed(model, tokenizer, prompt_tokens=8, new_tokens=2, repeats=1, warmup=0)["peak_memory_kind"]
        'process_rss'
    """
    device = str(next(model.parameters()).device)
    with PeakMemory(device) as peak:
        speed = measure_speed(model, tokenizer, **speed_options)
    return {**speed, **peak.to_dict()}


SPEED_PROMPT_TOKENS, SPEED_NEW_TOKENS = 512, 128  # a sweep's timing: prefill prompt and decode length, batch 1
_SPEED_KEYS_RECORDED = (
    "prefill_tokens_per_s",
    "prefill_relative_spread",
    "decode_tokens_per_s",
    "decode_relative_spread",
    "prompt_tokens",
    "new_tokens",
    "repeats",
)


def _error_text(error: BaseException) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}".rstrip(": ")


def recipe_cost(model, recipe, quantized) -> dict:
    """What a recipe costs (:func:`~quantsweep.measure.cost.cost_fields`), or its kernel and why it was not measured.

    Example:
        >>> from types import SimpleNamespace
        >>> recipe_cost(None, SimpleNamespace(name="x"), SimpleNamespace(kernel="fake-quant"))["kernel"]
        'fake-quant'
    """
    try:
        return cost_fields(model, recipe, quantized)
    except Exception as error:  # noqa: BLE001 - a cost we cannot measure is recorded as such
        logger.warning("cost of %s not measured: %s", getattr(recipe, "name", recipe), error)
        return {"kernel": quantized.kernel, "cost_error": _error_text(error)}


def speed_fields(model, tokenizer, quantized) -> dict:
    """Prefill/decode speed and peak memory of a recipe with a real kernel, as a sweep's cell records them.

    A fake-quant model is the fp model with rounded weights: its speed and memory are the
    fp model's, so no number is recorded for it, only that label.

    Example:
        >>> from types import SimpleNamespace
        >>> speed_fields(None, None, SimpleNamespace(kernel="fake-quant"))["speed_measured"]
        False
    """
    if quantized.kernel == "fake-quant":
        return {"speed_measured": False, "speed_note": "fake-quant: memory and speed are the fp model's"}
    prompt_tokens, new_tokens = SPEED_PROMPT_TOKENS, SPEED_NEW_TOKENS
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and prompt_tokens + new_tokens > positions:  # e.g. the toy's 512 positions
        prompt_tokens, new_tokens = positions * 3 // 4, positions // 8
    try:
        measured = timed(model, tokenizer, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
    except Exception as error:  # noqa: BLE001 - a timing we could not take is recorded as such
        return {"speed_measured": False, "speed_note": f"not measured: {_error_text(error)}"}
    return {
        "speed_measured": True,
        **{k: measured.get(k) for k in _SPEED_KEYS_RECORDED},
        "speed_device": measured.get("device"),
        "speed_threads": measured.get("threads"),
        "speed_peak_memory_bytes": measured.get("peak_memory_bytes"),
        "speed_peak_memory_kind": measured.get("peak_memory_kind"),
    }


def measure_recipes(
    model_name_or_path: str,
    recipes: list,
    *,
    device: str = "auto",
    dtype: str = "auto",
    calibration_source: str | None = None,
    calibration_samples: int | None = None,
    calibration_seq_len: int | None = None,
    calibration_seed: int = 0,
    trust_remote_code: bool = False,
    out: str | Path | None = None,
    **speed_options,
) -> list[dict]:
    """One record per recipe (the fp baseline first): cost fields, speed and peak memory.

    Args:
        model_name_or_path: ``toy`` or a local Hugging Face checkpoint.
        recipes: recipe names, YAML paths or configs (grids expand).
        calibration_*: as ``quantsweep run`` (toy: 32 x 64 from ``toy``; others need a source).
        out: a ``.jsonl`` file to write the records to.
        speed_options: ``prompt_tokens``, ``new_tokens``, ``repeats``, ``warmup`` of :func:`measure_speed`.

    Raises:
        ValueError: unknown recipes, missing calibration data or bad counts, before the model loads.

    Example:
        >>> records = measure_recipes("toy", ["w8-rtn"], device="cpu", prompt_tokens=8, new_tokens=2, repeats=1,
        ...                           warmup=0)
        >>> [(r["recipe"], r["speed_measured_on"]) for r in records]
        [('fp', 'fp model'), ('w8-rtn', 'fp model (fake-quant)')]
    """
    from quantsweep.recipes import expand_recipes
    from quantsweep.sweep.prepare import PreparedModel
    from quantsweep.sweep.spec import model_from_options

    configs = list(expand_recipes(["fp", *recipes]))
    configs = [c for i, c in enumerate(configs) if c.name not in {d.name for d in configs[:i]}]
    spec = model_from_options(
        model_name_or_path,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        calibration_source=calibration_source,
        calibration_samples=calibration_samples,
        calibration_seq_len=calibration_seq_len,
        calibration_seed=calibration_seed,
    )
    prepared = PreparedModel(spec)
    prepared.check(configs)
    model, tokenizer = prepared.load()
    records, fp_measured = [], None
    for config in configs:
        result = prepared.quantize(config)
        record = {"model": str(model_name_or_path), "recipe": config.name, **cost_fields(model, config, result)}
        if result.kernel == "fake-quant" and fp_measured is not None:
            record.update({key: fp_measured[key] for key in SPEED_KEYS_COPIED_FROM_FP if key in fp_measured})
            record.update(
                {k: fp_measured[k] for k in ("device", "device_name", "threads", "prompt_tokens", "new_tokens")}
            )
            record["speed_measured_on"] = "fp model (fake-quant)"
        else:
            logger.info("timing %s", config.name)
            measured = timed(model, tokenizer, **speed_options)
            record.update(measured)
            record["speed_measured_on"] = "fp model" if result.kernel == "none" else f"{result.kernel} kernels"
            if result.kernel == "none":
                fp_measured = measured
        records.append(record)
    prepared.restore()
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return records
