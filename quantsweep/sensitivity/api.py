"""``quantsweep.sensitivity(...)``: rank a model's layers by how much a recipe hurts each, and spend a bit budget on the worst.

Example:
    >>> import quantsweep, tempfile
    >>> result = quantsweep.sensitivity("toy", "w2-rtn", out=tempfile.mkdtemp(), budget=2.7, tokens=256, device="cpu")
    >>> result.rows[0]["unit"] in result.mixed.promoted, result.mixed.bits_per_weight <= 2.7
    (True, True)
    >>> result.recipe_path.name, result.table_path.name, result.plot_path.name
    ('w2-rtn-mixed-2.7bpw.yaml', 'sensitivity.csv', 'sensitivity.png')
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsweep.sensitivity.budget import (
    MixedRecipe,
    check_budget,
    default_high_bits,
    mixed_recipe,
    recipe_bits,
    with_bits,
)
from quantsweep.sensitivity.defaults import DEFAULT_TOKENS, TEXT_SEED_OFFSET
from quantsweep.sensitivity.outputs import format_table, ranked_rows, save_figure, sensitivity_figure, write_csv
from quantsweep.sensitivity.scan import RECORD_KIND, run_scan
from quantsweep.sensitivity.units import check_granularity, scan_units

logger = logging.getLogger(__name__)

TABLE_FILE = "sensitivity.csv"
PLOT_FILE = "sensitivity.png"


@dataclass(frozen=True)
class SensitivityResult:
    """What a scan found and wrote.

    Attributes:
        rows: one per unit, most sensitive first: ``rank``, ``unit``, ``layer``, ``module``,
            ``kl_mean`` and ``kl_p99`` (nats), ``top1_agreement``, ``quantized_weights``,
            ``bits`` (in the mixed recipe; None without a budget).
        records: the stored records, in model order.
        measured: the units measured in this call (the others came from the store).
        out: the output folder; ``table_path``, ``plot_path`` and ``recipe_path`` are in it.
        mixed: the :class:`~quantsweep.sensitivity.budget.MixedRecipe` (None without a budget).

    Example:
        >>> SensitivityResult([], [], (), Path("."), Path("t.csv"), Path("p.png")).mixed is None
        True
    """

    rows: list[dict[str, Any]]
    records: list[dict[str, Any]]
    measured: tuple[str, ...]
    out: Path
    table_path: Path
    plot_path: Path
    recipe_path: Path | None = None
    mixed: MixedRecipe | None = None

    def table(self) -> str:
        """The ranked rows as aligned text.

        Example:
            >>> SensitivityResult([], [], (), Path("."), Path("t.csv"), Path("p.png")).table().split()[:2]
            ['rank', 'unit']
        """
        return format_table(self.rows)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_text_source(text) -> str:
    """The scan text's source, checked as a calibration source is (a local file is parsed now)."""
    from quantsweep.calibration import check_calibration_source

    text = str(text)
    try:
        check_calibration_source(text)
    except ValueError as error:
        raise ValueError(f"the scan text: {error}") from None
    return text


def _check_scannable(config, budget) -> None:
    """Refuse, before work, recipes the scan cannot splice layer by layer, and budgets on composed recipes."""
    stages = getattr(config, "stages", None)
    weight = getattr(config, "weight_config", config)
    if weight is None or weight.method == "none":
        raise ValueError(f"recipe {config.name!r} quantizes nothing: give a recipe with a weight method (e.g. w2-rtn)")
    transforms = [stage.name for stage in stages or () if stage.kind == "transform"]
    if transforms:
        raise ValueError(
            f"recipe {config.name!r} has a {transforms[0]} transform, which changes every layer and the embeddings "
            "together; the scan splices one layer's quantized weights into the fp model, so give its recipe without it"
        )
    if budget is not None and stages is not None:
        raise ValueError(
            f"a budget writes overrides onto a one-method recipe (method: ...); {config.name!r} is composed of stages"
        )


def _check_store(store) -> None:
    first = next(iter(store.keys()), None)
    if first is not None:
        cell = store.read_cell(first)
        if cell is not None and cell.get("kind") != RECORD_KIND:
            raise ValueError(f"{store.directory} is a sweep store; give the sensitivity scan its own --out folder")


def _key_fields(spec, model, config, needs_calibration: bool, text, granularity: str) -> dict[str, Any]:
    from quantsweep.sweep.fingerprint import model_fingerprint
    from quantsweep.sweep.plan import calibration_fields, library_versions

    parameter = next(model.parameters())
    return {
        "model": model_fingerprint(spec.path),
        "dtype": str(parameter.dtype).replace("torch.", ""),
        "device_type": parameter.device.type,
        "trust_remote_code": spec.trust_remote_code,
        "recipe": {k: v for k, v in config.to_dict().items() if k != "description"},
        "calibration": calibration_fields(spec) if needs_calibration else None,
        "text": text.provenance(),  # source, windows, length, seed and a hash of the token ids
        "granularity": granularity,
        "versions": library_versions(),  # not lm-eval's: the scan does not use it
    }


def sensitivity(
    model: str,
    recipe,
    *,
    out: str | Path,
    budget: float | None = None,
    high_bits: int | None = None,
    granularity: str = "layer",
    text: str | None = None,
    tokens: int = DEFAULT_TOKENS,
    seq_len: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    calibration: dict[str, Any] | None = None,
    force: bool = False,
    on_unit: Callable[[dict[str, Any]], None] | None = None,
) -> SensitivityResult:
    """Quantize one unit (decoder layer, or Linear) at a time with ``recipe``, rank units by KL from the fp model.

    Loads the model once; see :mod:`quantsweep.sensitivity.scan` for what one scan costs.
    Writes ``sensitivity.csv``, ``sensitivity.png`` and (with a budget) the mixed recipe's
    YAML under ``out``; each unit's record is stored under ``out/cells`` so a rerun
    measures only the units not yet stored.

    Args:
        model: ``toy`` or a local Hugging Face checkpoint directory.
        recipe: the recipe (name, YAML path or config) whose weight stage is scanned.
        out: the output folder (a rerun resumes from it).
        budget: average bits per quantized weight for the mixed recipe (None: no recipe).
        high_bits: the precision of the units the budget promotes (default 4 above a
            1-3 bit recipe, 8 above a 4-7 bit one).
        granularity: ``layer`` (one decoder layer at a time) or ``linear`` (one Linear of one layer).
        text: the scan text: ``toy``, ``wikitext2``, ``c4``, ``pile`` or a ``.txt``/``.jsonl``
            file (default: the calibration source). Its windows are drawn with the calibration
            seed + 1 (``calibration["seed"] + 1``, ``--calib-seed``), so that with the default
            text a calibrated recipe is not measured on the very windows it calibrated on
            (windows of the same source may still overlap; give another ``text`` for held-out text).
        tokens: about how many tokens of text (rounded up to whole windows of ``seq_len``).
        seq_len: tokens per window (default: the calibration's, at most ``tokens``).
        device, dtype, trust_remote_code: as for :func:`quantsweep.load_model`.
        calibration: calibration settings (``source``, ``samples``, ``seq_len``, ``seed``) for
            calibrated recipes, as in a sweep spec; left-out keys take the model's defaults.
        force: measure every unit again.
        on_unit: called with each unit's record as it is measured.

    Raises:
        ValueError: bad arguments (before the model loads), a budget below the recipe's own
            bits per weight, or a recipe that replaces modules (bitsandbytes).

    Example:
        >>> import tempfile
        >>> result = sensitivity("toy", "w4-rtn", out=tempfile.mkdtemp(), tokens=256, device="cpu")
        >>> [row["rank"] for row in result.rows], len(result.measured)
        ([1, 2, 3, 4], 4)
        >>> sensitivity("toy", "fp", out=tempfile.mkdtemp())
        Traceback (most recent call last):
        ValueError: recipe 'fp' quantizes nothing: give a recipe with a weight method (e.g. w2-rtn)
    """
    from quantsweep.calibration import load_calibration
    from quantsweep.models.loading import check_checkpoint
    from quantsweep.recipes import get_recipe
    from quantsweep.sweep.prepare import PreparedModel, needs_calibration
    from quantsweep.sweep.spec import model_from_dict
    from quantsweep.sweep.store import CellStore

    config = get_recipe(recipe)
    _check_scannable(config, budget)
    check_granularity(granularity)
    _check_positive_int(tokens, "tokens")
    if seq_len is not None:
        _check_positive_int(seq_len, "seq_len")
    if budget is not None:
        check_budget(budget)
        if high_bits is None:
            high_bits = default_high_bits(recipe_bits(config))
        with_bits(config, high_bits)  # the method checks the high precision now, not after the scan
    elif high_bits is not None:
        raise ValueError("high_bits is the precision a budget promotes units to; give a budget too")
    spec = model_from_dict(
        {
            "path": str(model),
            "device": device,
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "calibration": dict(calibration or {}),
        }
    )
    source = text if text is not None else spec.calibration.source
    if source is None:
        raise ValueError(
            "the scan needs a text: give text= (a .txt/.jsonl file, toy, wikitext2) or a calibration source"
        )
    source = _check_text_source(source)
    check_checkpoint(spec.path, spec.trust_remote_code)
    prepared = PreparedModel(spec)
    prepared.check([config])
    store = CellStore(out)
    _check_store(store)

    loaded, tokenizer = prepared.load()
    units = scan_units(loaded, granularity)
    if budget is not None:
        mixed_recipe(loaded, config, [], budget=budget, high_bits=high_bits)  # a budget below the recipe's: now
    window = min(seq_len or spec.calibration.seq_len, tokens)
    scan_text = load_calibration(
        source,
        tokenizer,
        n_samples=math.ceil(tokens / window),
        seq_len=window,
        seed=spec.calibration.seed + TEXT_SEED_OFFSET,
    )
    key_fields = _key_fields(spec, loaded, config, needs_calibration(config), scan_text, granularity)
    logger.info(
        "sensitivity: %s, %s, %d units, %d tokens of %s",
        spec.name,
        config.name,
        len(units),
        scan_text.input_ids.numel(),
        source,
    )
    records, measured = run_scan(
        prepared,
        config,
        units,
        scan_text.input_ids,
        store,
        key_fields=key_fields,
        force=force,
        record_fields={"model": spec.name, "text": scan_text.provenance()},
        on_unit=on_unit,
    )
    mixed = recipe_path = None
    bits = None
    if budget is not None:
        order = {row["unit"]: row["rank"] for row in ranked_rows(records)}
        ranking = sorted(units, key=lambda unit: order[unit.name])
        mixed = mixed_recipe(loaded, config, ranking, budget=budget, high_bits=high_bits)
        bits = {unit.name: mixed.high_bits if unit.name in mixed.promoted else mixed.low_bits for unit in units}
        recipe_path = Path(out) / f"{mixed.recipe['name']}.yaml"
        recipe_path.write_text(mixed.to_yaml())
        logger.info(
            "sensitivity: %s keeps %d units at %d bits: %.3f bits per weight (budget %g, uniform %.3f)",
            mixed.recipe["name"],
            len(mixed.promoted),
            mixed.high_bits,
            mixed.bits_per_weight,
            budget,
            mixed.uniform_bits_per_weight,
        )
    rows = ranked_rows(records, bits)
    table_path = write_csv(rows, Path(out) / TABLE_FILE)
    plot_path = save_figure(sensitivity_figure(rows, f"{spec.name}, {config.name}"), Path(out) / PLOT_FILE)
    return SensitivityResult(
        rows=rows,
        records=records,
        measured=measured,
        out=Path(out),
        table_path=table_path,
        plot_path=plot_path,
        recipe_path=recipe_path,
        mixed=mixed,
    )
