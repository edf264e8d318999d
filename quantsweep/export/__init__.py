"""Export a quantized model in a real low-bit format: the GPTQ checkpoint format.

``quantsweep.export(model, recipe, out)`` loads the model, calibrates exactly as
``quantsweep run`` does (same sources, defaults and seed), quantizes and writes
the checkpoint, so the export is the model a run of the same recipe evaluated.
:func:`export_gptq` writes an already quantized model.

This package is itself callable (as ``quantsweep.sweep`` and ``quantsweep.report`` are):
``quantsweep.export(...)`` is :func:`export_model`, and ``quantsweep.export.export_gptq``
is the writer.

Example:
    >>> import quantsweep
    >>> quantsweep.export("toy", "w4-gptq", "out/toy-w4-gptq")  # doctest: +SKIP
    PosixPath('out/toy-w4-gptq')
"""

from __future__ import annotations

import logging
from pathlib import Path

from quantsweep._verbs import make_callable
from quantsweep.calibration import require_calibration_source
from quantsweep.export.gptq import check_exportable, check_out_dir, export_gptq, exportable_recipes, is_exportable
from quantsweep.sweep.spec import calibration_settings

logger = logging.getLogger(__name__)

__all__ = ["check_exportable", "export_gptq", "export_model", "exportable_recipes", "is_exportable"]


def export_model(
    model_name_or_path: str | Path,
    recipe,
    out: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    calibration_source: str | None = None,
    calibration_samples: int | None = None,
    calibration_seq_len: int | None = None,
    calibration_seed: int = 0,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    checkpoint_format: str = "gptq",
) -> Path:
    """Load, calibrate (like ``quantsweep run``), quantize with ``recipe`` and write a GPTQ checkpoint.

    Args:
        model_name_or_path: ``toy`` or a local Hugging Face checkpoint.
        recipe: an exportable recipe name, YAML path or config (see :func:`exportable_recipes`).
        out: the folder to write; it must be empty or absent unless ``overwrite``.
        calibration_source: ``toy``, a .txt/.jsonl file, or wikitext2/c4/pile; required
            for calibrated recipes on any model but ``toy``.
        calibration_samples, calibration_seq_len: default 32 x 64 for toy, else 128 x 2048.
        calibration_seed: seed of the calibration windows (default 0, as ``run``).
        checkpoint_format: ``gptq`` (v1) or ``gptq_v2``.

    Returns:
        The folder written.

    Raises:
        ValueError: a recipe with no packed form, a non-empty folder, or missing calibration
            data, all before the model is loaded.

    Example:
        >>> export_model("toy", "w4-gptq", "out/toy-w4-gptq")  # doctest: +SKIP
        PosixPath('out/toy-w4-gptq')
    """
    from quantsweep.calibration import load_calibration
    from quantsweep.methods.registry import get_method
    from quantsweep.models.loading import load_model
    from quantsweep.recipes import apply_recipe, get_recipe

    config = get_recipe(recipe)
    check_exportable(config)
    check_out_dir(out, overwrite)
    needs_data = get_method(config.method).needs_calibration
    source, samples, seq_len = calibration_settings(
        model_name_or_path, calibration_source, calibration_samples, calibration_seq_len
    )
    if needs_data:
        require_calibration_source([config.name], source)
    model, tokenizer = load_model(model_name_or_path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    calibration = None
    if needs_data:
        calibration = load_calibration(source, tokenizer, n_samples=samples, seq_len=seq_len, seed=calibration_seed)
    result = apply_recipe(model, config, calibration=calibration)
    return export_gptq(
        model, result, out, config=config, tokenizer=tokenizer, overwrite=overwrite, checkpoint_format=checkpoint_format
    )


make_callable(__name__, "quantsweep.export:export_model")
