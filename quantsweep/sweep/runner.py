"""``quantsweep run``: the one-model shorthand of a sweep, with the same store, resume and judging.

:class:`RunSpec` is a thin constructor: its keyword arguments become the mapping a
sweep spec file holds, validated by the same :func:`~quantsweep.sweep.spec.spec_from_dict`
into the same :class:`~quantsweep.sweep.spec.SweepSpec`, with one model. :func:`run`
runs it with the local backend. Results go to ``out_dir`` (a store: one file per cell;
rerunning skips finished cells). With no ``out_dir`` the cells live in a temporary
store that is removed afterwards.

Example:
    >>> spec = RunSpec(model="toy", recipes=["w4-rtn"], tasks=["toy_mc4"], limit=8, device="cpu")
    >>> [o.recipe.name for o in run(spec)]
    ['fp', 'w4-rtn']
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantsweep.methods.registry import RecipeConfig
from quantsweep.sweep.spec import BASELINE_RECIPE, SweepSpec, spec_from_dict

logger = logging.getLogger(__name__)


def one_model_mapping(
    model: str | Path,
    recipes: list,
    tasks: list[str] | str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    calibration: dict[str, Any] | None = None,
    baseline: str | RecipeConfig = BASELINE_RECIPE,
    verdict: dict[str, Any] | None = None,
    measure: bool = False,
    **evaluation: Any,
) -> dict[str, Any]:
    """The sweep spec mapping (as in a spec file) of one model; ``evaluation`` holds the evaluation settings given.

    Settings left as None are left out, so the spec's defaults apply.

    Example:
        >>> one_model_mapping("toy", ["w8-rtn"], ["toy_mc4"], limit=None, batch_size=8)["batch_size"]
        8
    """
    model_entry = {"path": str(model), "device": device, "dtype": dtype, "trust_remote_code": trust_remote_code}
    calibration = {k: v for k, v in (calibration or {}).items() if v is not None}
    if calibration:
        model_entry["calibration"] = calibration
    if not tasks:
        raise ValueError("no tasks given; pass at least one task name")
    return {
        "models": [model_entry],
        "recipes": list(recipes),
        "tasks": tasks,
        "baseline": baseline,
        "verdict": dict(verdict or {}),
        "measure": measure,
        **{name: value for name, value in evaluation.items() if value is not None},
    }


class RunSpec:
    """What to run on one model, as keyword arguments: a thin constructor of the one-model :class:`SweepSpec`.

    Args:
        model: ``toy`` or a local checkpoint; ``device``, ``dtype``, ``trust_remote_code`` as in a spec.
        recipes, tasks, baseline, measure: as in a spec.
        out_dir: the store (None: a temporary one); ``retry_failed``, ``force``: what a rerun recomputes.
        calibration_source, calibration_samples, calibration_seq_len, calibration_seed: the
            model's calibration (None takes the model's defaults: the toy's own 32 x 64 from
            ``toy``; 128 x 2048 for checkpoints, which need a source).
        verdict_config: a :class:`~quantsweep.verdicts.config.VerdictConfig` (default thresholds if None).
        evaluation: the evaluation settings (:class:`~quantsweep.eval.settings.EvalSettings`
            fields: ``limit``, ``batch_size``, ``max_length``, ...).

    Raises:
        SpecError: as a spec file with the same content would.

    Example:
        >>> RunSpec(model="toy", recipes=["w8-rtn"], tasks=["toy_mc4"]).to_sweep_spec().models[0].calibration.samples
        32
    """

    def __init__(
        self,
        model: str | Path,
        recipes: list,
        tasks: list[str],
        *,
        out_dir: str | Path | None = None,
        retry_failed: bool = False,
        force: bool = False,
        calibration_source: str | None = None,
        calibration_samples: int | None = None,
        calibration_seq_len: int | None = None,
        calibration_seed: int = 0,
        verdict_config: Any = None,
        **spec_fields: Any,
    ):
        self.model, self.recipes, self.tasks = model, recipes, tasks  # as given (the CLI prints them)
        self.out_dir, self.retry_failed, self.force = out_dir, retry_failed, force
        calibration = {
            "source": calibration_source,
            "samples": calibration_samples,
            "seq_len": calibration_seq_len,
            "seed": calibration_seed,
        }
        verdict = verdict_config.to_dict() if verdict_config is not None else {}
        mapping = one_model_mapping(model, recipes, tasks, calibration=calibration, verdict=verdict, **spec_fields)
        self.spec = spec_from_dict(mapping, "the run")

    def to_sweep_spec(self) -> SweepSpec:
        """The one-model sweep this run is.

        Example:
            >>> RunSpec(model="toy", recipes=[], tasks=["toy_mc4"]).to_sweep_spec().tasks
            ('toy_mc4',)
        """
        return self.spec


@dataclass
class RecipeOutcome:
    """One recipe's results in a run: its records (one per task x metric) and its first error.

    Example:
        >>> from quantsweep.recipes import get_recipe
        >>> RecipeOutcome(recipe=get_recipe("w4-rtn")).error is None
        True
    """

    recipe: RecipeConfig
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def run(
    spec: RunSpec,
    on_outcome: Callable[[RecipeOutcome], None] | None = None,
    on_plan: Callable | None = None,
    progress: bool = False,
) -> list[RecipeOutcome]:
    """Run every recipe of ``spec`` on its tasks and return the outcomes, baseline first.

    Cells already in ``spec.out_dir`` are not computed again. ``on_outcome`` is called as
    each recipe finishes (cells stored earlier are reported at the end).

    Example:
        >>> outcomes = run(RunSpec(model="toy", recipes=["w8-rtn"], tasks=["toy_mc4"], limit=8, device="cpu"))
        >>> [(o.recipe.name, o.error) for o in outcomes]
        [('fp', None), ('w8-rtn', None)]
    """
    from quantsweep.sweep.api import run_sweep
    from quantsweep.sweep.plan import control_recipe, resolve_recipes

    sweep_spec = spec.to_sweep_spec()
    recipes = resolve_recipes(sweep_spec)
    if sweep_spec.evaluation.aa_control:  # the baseline's A/A control is reported as a recipe of its own
        recipes.insert(1, control_recipe(recipes[0]))
    by_name = {recipe.name: recipe for recipe in recipes}
    reported: set[str] = set()

    def outcome_of(recipe, records) -> RecipeOutcome:
        errors = [r.get("error") for r in records if r.get("verdict") == "error" and r.get("error")]
        return RecipeOutcome(recipe=recipe, records=records, error=errors[0] if errors else None)

    def on_recipe(model, recipe_name, records):
        if on_outcome is not None and recipe_name in by_name:
            reported.add(recipe_name)
            on_outcome(outcome_of(by_name[recipe_name], records))
        elif on_outcome is not None:  # never a crash at the end of a recipe's work: its cells are stored
            logger.warning("recipe %r finished but is not one of this run's recipes; not reported", recipe_name)

    temporary = tempfile.TemporaryDirectory(prefix="quantsweep-run-") if spec.out_dir is None else None
    try:
        out = temporary.name if temporary is not None else spec.out_dir
        result = run_sweep(
            sweep_spec,
            out,
            retry_failed=spec.retry_failed,
            force=spec.force,
            progress=progress,
            on_plan=on_plan,
            on_recipe=on_recipe,
        )
    finally:
        if temporary is not None:
            temporary.cleanup()
    outcomes = []
    for recipe in recipes:
        outcome = outcome_of(recipe, [r for r in result.records if r["recipe"] == recipe.name])
        if on_outcome is not None and recipe.name not in reported:
            on_outcome(outcome)
        outcomes.append(outcome)
    return outcomes
