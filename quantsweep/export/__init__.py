"""Export a quantized model in a real low-bit format: the GPTQ checkpoint format.

``quantsweep.export(model, recipe, out)`` loads the model, calibrates exactly as
``quantsweep run`` does (same sources, defaults and seed), quantizes and writes
the checkpoint, so the export is the model a run of the same recipe evaluated.
:func:`export_gptq` writes an already quantized model.

This package is itself callable (as ``quantsweep.sweep`` and ``quantsweep.report`` are):
``quantsweep.export(...)`` is :func:`export_model`, and ``quantsweep.export.export_gptq``
is the writer.

Example:
    >>> import quantsweep, tempfile
    >>> out = quantsweep.export("toy", "w4-rtn", tempfile.mkdtemp(), device="cpu", overwrite=True)
    >>> (out / "quantize_config.json").is_file()
    True
"""

from __future__ import annotations

import logging
from pathlib import Path

from quantsweep._verbs import make_callable
from quantsweep.export.gptq import check_exportable, check_out_dir, export_gptq, exportable_recipes, is_exportable

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
        >>> import tempfile
        >>> out = export_model("toy", "w8-rtn", tempfile.mkdtemp(), device="cpu", overwrite=True)
        >>> out.is_dir()
        True
    """
    from quantsweep.recipes import get_recipe
    from quantsweep.sweep.prepare import prepare
    from quantsweep.sweep.spec import model_from_options

    config = get_recipe(recipe)
    check_exportable(config)
    check_out_dir(out, overwrite)
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
    model, tokenizer, result = prepare(spec, config)
    return export_gptq(
        model, result, out, config=config, tokenizer=tokenizer, overwrite=overwrite, checkpoint_format=checkpoint_format
    )


make_callable(__name__, "quantsweep.export:export_model")
