"""``quantsweep run``: the one-model shorthand of a sweep, with the same store, resume and judging.

:class:`RunSpec` mirrors the command's options; :func:`run` turns it into a one-model
:class:`~quantsweep.sweep.spec.SweepSpec` and runs it with the local backend. Results
go to ``out_dir`` (a store: one file per cell; rerunning skips finished cells). With
no ``out_dir`` the cells live in a temporary store that is removed afterwards.

Example:
    >>> spec = RunSpec(model="toy", recipes=["fp", "w4-rtn"], tasks=["toy_mc4"], limit=100)  # doctest: +SKIP
    >>> outcomes = run(spec)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantsweep.methods.registry import RecipeConfig
from quantsweep.sweep.spec import (
    BASELINE_RECIPE,
    DEFAULT_BATCH_SIZE,
    CalibrationSpec,
    ModelSpec,
    SweepSpec,
    calibration_settings,
)

logger = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """What to run on one model. Mirrors the options of ``quantsweep run``.

    Calibration fields left as None take the model's defaults (the toy's own
    32 x 64 from ``toy``; 128 x 2048 for checkpoints, which need a source).

    Example:
        >>> RunSpec(model="toy", recipes=["w8-rtn"], tasks=["toy_mc4"]).to_sweep_spec().models[0].calibration.samples
        32
    """

    model: str
    recipes: list[str | RecipeConfig]
    tasks: list[str]
    limit: int | float | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    num_fewshot: int | None = None
    out_dir: str | Path | None = None
    trust_remote_code: bool = False
    include_path: str | Path | list | None = None
    data_dir: str | Path | None = None
    allow_code_execution: bool = False
    calibration_source: str | None = None
    calibration_samples: int | None = None
    calibration_seq_len: int | None = None
    calibration_seed: int = 0
    baseline: str | RecipeConfig = BASELINE_RECIPE
    verdict_config: Any = None
    seed: int = 1234
    retry_failed: bool = False
    force: bool = False
    measure: bool = False
    max_length: int | None = None

    def to_sweep_spec(self) -> SweepSpec:
        """The one-model sweep this run is.

        Example:
            >>> RunSpec(model="toy", recipes=[], tasks=["toy_mc4"]).to_sweep_spec().tasks
            ('toy_mc4',)
        """
        source, samples, seq_len = calibration_settings(
            self.model, self.calibration_source, self.calibration_samples, self.calibration_seq_len
        )
        calibration = CalibrationSpec(source=source, samples=samples, seq_len=seq_len, seed=self.calibration_seed)
        model = ModelSpec(
            path=str(self.model),
            device=self.device,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            calibration=calibration,
        )
        include = self.include_path
        include = [] if include is None else [include] if isinstance(include, (str, Path)) else list(include)
        verdict = self.verdict_config.to_dict() if self.verdict_config is not None else {}
        if not self.tasks:
            raise ValueError("no tasks given; pass at least one task name")
        return SweepSpec(
            models=(model,),
            recipes=tuple(self.recipes),
            tasks=tuple(self.tasks),
            baseline=self.baseline,
            limit=self.limit,
            num_fewshot=self.num_fewshot,
            seed=self.seed,
            batch_size=self.batch_size,
            data_dir=str(self.data_dir) if self.data_dir is not None else None,
            include_path=tuple(str(p) for p in include),
            allow_code_execution=self.allow_code_execution,
            verdict=verdict,
            measure=self.measure,
            max_length=self.max_length,
        )


@dataclass
class RecipeOutcome:
    """One recipe's results in a run: its records (one per task x metric) and its first error.

    Example:
        >>> outcome.recipe.name  # doctest: +SKIP
        'w4-rtn'
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
        >>> outcomes = run(RunSpec(model="toy", recipes=["w8-rtn"], tasks=["toy_mc4"], limit=50))  # doctest: +SKIP
        >>> [o.recipe.name for o in outcomes]  # doctest: +SKIP
        ['fp', 'w8-rtn']
    """
    from quantsweep.sweep.api import run_sweep
    from quantsweep.sweep.plan import resolve_recipes

    sweep_spec = spec.to_sweep_spec()
    recipes = resolve_recipes(sweep_spec)
    reported: set[str] = set()

    def outcome_of(recipe, records) -> RecipeOutcome:
        errors = [r.get("error") for r in records if r.get("verdict") == "error" and r.get("error")]
        return RecipeOutcome(recipe=recipe, records=records, error=errors[0] if errors else None)

    def on_recipe(model, recipe_name, records):
        if on_outcome is not None:
            reported.add(recipe_name)
            on_outcome(outcome_of(next(r for r in recipes if r.name == recipe_name), records))

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
