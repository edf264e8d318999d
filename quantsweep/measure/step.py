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
    >>> records = measure_recipes("toy", ["w8-bnb", "w4-rtn"], prompt_tokens=128, new_tokens=32)  # doctest: +SKIP
    >>> records[1]["kernel"], records[1]["speed_measured_on"]  # doctest: +SKIP
    ('bitsandbytes', 'bitsandbytes kernels')
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
        >>> timed(model, tokenizer, prompt_tokens=32, new_tokens=8, repeats=2)["peak_memory_kind"]  # doctest: +SKIP
        'process_rss'
    """
    device = str(next(model.parameters()).device)
    with PeakMemory(device) as peak:
        speed = measure_speed(model, tokenizer, **speed_options)
    return {**speed, **peak.to_dict()}


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
        >>> [r["recipe"] for r in measure_recipes("toy", ["w8-bnb"], prompt_tokens=64, new_tokens=8)]  # doctest: +SKIP
        ['fp', 'w8-bnb']
    """
    from quantsweep.calibration import load_calibration, require_calibration_source
    from quantsweep.methods.registry import get_method
    from quantsweep.models.loading import load_model
    from quantsweep.models.snapshot import WeightSnapshot
    from quantsweep.recipes import apply_recipe, expand_recipes
    from quantsweep.sweep.spec import calibration_settings

    configs = list(expand_recipes(["fp", *recipes]))
    configs = [c for i, c in enumerate(configs) if c.name not in {d.name for d in configs[:i]}]
    needs_data = [c.name for c in configs if get_method(c.method).needs_calibration]
    source, samples, seq_len = calibration_settings(
        model_name_or_path, calibration_source, calibration_samples, calibration_seq_len
    )
    if needs_data:
        require_calibration_source(needs_data, source)
    model, tokenizer = load_model(model_name_or_path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    calibration = None
    if needs_data:
        calibration = load_calibration(source, tokenizer, n_samples=samples, seq_len=seq_len, seed=calibration_seed)
    snapshot = WeightSnapshot(model)
    records, fp_measured = [], None
    for config in configs:
        snapshot.restore(model)
        data = calibration if get_method(config.method).needs_calibration else None
        result = apply_recipe(model, config, calibration=data)
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
    snapshot.restore(model)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return records
