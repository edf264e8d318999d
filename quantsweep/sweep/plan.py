"""From a spec to cells and work units: every cell's content key, what is already stored, what to run.

A **cell** is one (model, recipe) evaluated on one task. Its key hashes everything
that changes its result (STYLE.md: a cell is a pure function of its key):

* the model's fingerprint (config and weight files) and the resolved dtype and device type;
* the resolved recipe config (its description aside; every stage of a composed recipe,
  with its settings and overrides, and the contents of a rotation matrix file it reads);
* the task's configuration (YAML and helpers, or the local override), ``limit``,
  ``num_fewshot`` and ``seed``;
* the calibration source, size and seed (for recipes that calibrate; a local file's
  contents are hashed too);
* the versions of quantsweep, lm-eval, transformers and torch.

A **work unit** is one model with the recipes to run on it: the worker loads the model
once and restores its full-precision weights between recipes. The baseline's cells
come first, since every verdict compares with them.

Example:
    >>> import tempfile
    >>> from quantsweep.sweep.spec import spec_from_dict
    >>> from quantsweep.sweep.store import CellStore
    >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "recipes": ["w4-rtn"], "tasks": ["toy_mc4"]})
    >>> plan = plan_sweep(spec, CellStore(tempfile.mkdtemp()))
    >>> plan.describe()
    '0 of 2 cells already done; 2 to run'
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantsweep.sweep.fingerprint import file_digest, model_fingerprint, task_fingerprint, text_fingerprint
from quantsweep.sweep.spec import ModelSpec, SweepSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSetup:
    """The resolved tasks of a sweep: names (suites expanded), local overrides, fingerprints.

    Example:
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> resolve_tasks(spec_from_dict({"models": ["toy"], "tasks": ["toy_mc4", "toy_ppl"]})).names
        ('toy_mc4', 'toy_ppl')
    """

    names: tuple[str, ...]
    configs: dict[str, dict]
    fingerprints: dict[str, str]


@dataclass(frozen=True)
class CellPlan:
    """One cell to look up or compute.

    Example:
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "recipes": ["w4-rtn"], "tasks": ["toy_mc4"]})
        >>> import tempfile
        >>> from quantsweep.sweep.store import CellStore
        >>> store = CellStore(tempfile.mkdtemp())
        >>> plan = plan_sweep(spec, store)
        >>> cell = plan.cells[1]
        >>> cell.recipe.name, cell.task
        ('w4-rtn', 'toy_mc4')
    """

    key: str
    model: ModelSpec
    recipe: Any  # RecipeConfig
    task: str
    is_baseline: bool
    baseline_key: str
    key_fields: dict[str, Any]
    needs_calibration: bool
    control: dict[str, Any] | None = None  # the A/A control: {"batch_size": ..., "order": "reversed"}


@dataclass(frozen=True)
class WorkUnit:
    """One model and the cells to compute on it, recipe by recipe (baseline first).

    Example:
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "recipes": ["w4-rtn"], "tasks": ["toy_mc4"]})
        >>> import tempfile
        >>> from quantsweep.sweep.store import CellStore
        >>> store = CellStore(tempfile.mkdtemp())
        >>> plan = plan_sweep(spec, store)
        >>> unit = plan.units()[0]
        >>> [r.name for r in unit.recipes]
        ['fp', 'w4-rtn']
    """

    model: ModelSpec
    cells: tuple[CellPlan, ...]

    @property
    def recipes(self) -> list:
        seen, out = set(), []
        for cell in self.cells:
            if cell.recipe.name not in seen:
                seen.add(cell.recipe.name)
                out.append(cell.recipe)
        return out

    @property
    def is_baseline_unit(self) -> bool:
        return all(cell.is_baseline for cell in self.cells)


@dataclass
class SweepPlan:
    """Every cell of a sweep, what is stored, and the units left to run.

    Attributes:
        cells: every cell in spec order (model, recipe, task).
        done, failed: keys already stored as finished or failed (and not to be rerun).
        to_run: cells to compute.
        units: ``to_run`` grouped per model (see :func:`group_units`).

    Example:
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"]})
        >>> SweepPlan(spec=spec, tasks=None, cells=[]).describe()
        '0 of 0 cells already done; 0 to run'
    """

    spec: SweepSpec
    tasks: TaskSetup
    cells: list[CellPlan]
    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    to_run: list[CellPlan] = field(default_factory=list)

    def describe(self) -> str:
        """One line: how many cells are done, failed (kept) and to run.

        Example:
            >>> from quantsweep.sweep.spec import spec_from_dict
            >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"]})
            >>> SweepPlan(spec=spec, tasks=None, cells=[], done={"a", "b"}).describe()
            '2 of 0 cells already done; 0 to run'
        """
        parts = [f"{len(self.done)} of {len(self.cells)} cells already done"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed earlier (kept; --retry-failed runs them again)")
        parts.append(f"{len(self.to_run)} to run")
        return "; ".join(parts)

    def units(self, slots_per_model: dict[str, int] | None = None) -> list[WorkUnit]:
        """The cells to run as work units; see :func:`group_units`.

        Example:
            >>> from quantsweep.sweep.spec import spec_from_dict
            >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "recipes": ["w4-rtn"], "tasks": ["toy_mc4"]})
            >>> import tempfile
            >>> from quantsweep.sweep.store import CellStore
            >>> store = CellStore(tempfile.mkdtemp())
            >>> plan = plan_sweep(spec, store)
            >>> [len(u.cells) for u in plan.units()]
            [2]
        """
        return group_units(self.to_run, slots_per_model)


def library_versions() -> dict[str, str]:
    """The versions of quantsweep, transformers and torch: what every stored result's key holds.

    The sensitivity scan keys its records with these; a sweep cell adds lm-eval's (:func:`_versions`).

    Example:
        >>> sorted(library_versions())
        ['quantsweep', 'torch', 'transformers']
    """
    import torch
    import transformers

    from quantsweep._version import __version__

    return {"quantsweep": __version__, "transformers": transformers.__version__, "torch": torch.__version__}


def _versions() -> dict[str, str]:
    import lm_eval

    versions = library_versions()
    return {
        "quantsweep": versions["quantsweep"],
        "lm_eval": getattr(lm_eval, "__version__", "?"),
        "transformers": versions["transformers"],
        "torch": versions["torch"],
    }


def resolve_tasks(spec: SweepSpec) -> TaskSetup:
    """Expand suites and check every task before any model loads.

    Raises:
        ValueError: an unknown task, code tasks without ``allow_code_execution``, or suite
            tasks without local data while the hub is unreachable.

    Example:
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> resolve_tasks(spec_from_dict({"models": ["toy"], "tasks": ["toy_mc4"]})).names
        ('toy_mc4',)
    """
    from quantsweep.eval.harness import check_tasks
    from quantsweep.eval.offline import check_code_execution, check_data_available, local_task_configs
    from quantsweep.eval.suites import expand_tasks

    names = expand_tasks(list(spec.tasks))
    settings = spec.evaluation
    check_code_execution(names, settings.allow_code_execution)
    check_data_available(names, settings.data_dir)
    configs = local_task_configs(names, settings.data_dir)
    include = list(settings.include_path) or None
    check_tasks([t for t in names if t not in configs], include)
    from quantsweep.eval.suites import suite_entry

    def suite_part(name):
        entry = suite_entry(name)
        return entry.to_dict() if entry is not None else None

    fingerprints = {
        name: text_fingerprint(task_fingerprint(name, configs.get(name), include), suite_part(name)) for name in names
    }
    return TaskSetup(names=tuple(names), configs=configs, fingerprints=fingerprints)


def resolve_recipes(spec: SweepSpec) -> list:
    """The baseline followed by the spec's recipes, grids expanded, without duplicates.

    Example:
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> [r.name for r in resolve_recipes(spec_from_dict({"models": ["toy"], "recipes": ["w4-rtn"], "tasks": ["t"]}))]
        ['fp', 'w4-rtn']
    """
    from quantsweep.recipes import expand_recipes

    return expand_recipes([spec.baseline, *spec.recipes])


def calibration_fields(model: ModelSpec) -> dict[str, Any]:
    """A model's calibration as its cells' keys hold it: source, size, seed, and a local file's SHA-256.

    Example:
        >>> calibration_fields(ModelSpec(path="toy"))["source"]
        'toy'
    """
    fields = model.calibration.to_dict()
    source = model.calibration.source
    if source and Path(source).is_file():
        fields["source_sha256"] = file_digest(source)
    return fields


def _recipe_files(recipe) -> dict[str, str]:
    """Files a recipe reads (a rotation ``matrix``), by path, with their contents' sha256."""
    stage = recipe.stage("rotate") if hasattr(recipe, "stage") else None
    if stage is None or stage.matrix is None:
        return {}
    from quantsweep.methods.rotation import check_matrix_file

    try:
        check_matrix_file(stage.matrix)
    except ValueError as error:
        raise ValueError(_name_recipe(recipe, error)) from None
    return {stage.matrix: file_digest(stage.matrix)}


def device_kind(model: ModelSpec) -> str:
    """The device type a model's cells run on here (``cpu``, ``cuda`` or ``npu``).

    Example:
        >>> device_kind(ModelSpec(path="toy", device="cpu"))
        'cpu'
    """
    from quantsweep.device import parse_device, resolve_device

    return parse_device(resolve_device(model.device))[0]


def _dtype_name(model: ModelSpec, kind: str) -> str:
    from quantsweep.device import resolve_dtype

    return str(resolve_dtype(model.dtype, kind)).replace("torch.", "")


def plan_sweep(
    spec: SweepSpec,
    store,
    *,
    retry_failed: bool = False,
    force: bool = False,
    device_kind_of: Callable[[ModelSpec], str] = device_kind,
) -> SweepPlan:
    """Key every cell of ``spec`` (:func:`plan_cells`) and sort it into done, failed and to run.

    Args:
        spec: the sweep.
        store: a :class:`~quantsweep.sweep.store.CellStore`.
        retry_failed: run failed cells again (else they are kept as findings).
        force: recompute every cell (stored files are replaced one by one as new ones finish).
        device_kind_of: see :func:`plan_cells`.

    Example:
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "recipes": ["w4-rtn"], "tasks": ["toy_mc4"]})
        >>> import tempfile
        >>> from quantsweep.sweep.store import CellStore
        >>> store = CellStore(tempfile.mkdtemp())
        >>> plan_sweep(spec, store).describe()
        '0 of 2 cells already done; 2 to run'
    """
    return sort_cells(plan_cells(spec, device_kind_of=device_kind_of), store, retry_failed=retry_failed, force=force)


def plan_cells(spec: SweepSpec, *, device_kind_of: Callable[[ModelSpec], str] = device_kind) -> SweepPlan:
    """Check the spec and key every cell, touching no store: a plan with nothing sorted yet.

    Args:
        spec: the sweep.
        device_kind_of: the device type each model's cells will run on (a cluster
            backend passes the kind it schedules on); part of the key.

    Raises:
        ValueError: unknown recipe or task, a calibrated recipe without a calibration
            source, or a model path that does not exist: all before any model loads.

    Example:
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "recipes": ["w4-rtn"], "tasks": ["toy_mc4"]})
        >>> len(plan_cells(spec).cells)
        2
    """
    from quantsweep.calibration import require_calibration_source
    from quantsweep.models.loading import check_checkpoint
    from quantsweep.recipes import needs_calibration

    tasks = resolve_tasks(spec)
    recipes = resolve_recipes(spec)
    baseline = recipes[0]
    versions = _versions()
    files_of = {recipe.name: _recipe_files(recipe) for recipe in recipes}  # each file hashed once, not per task
    cells: list[CellPlan] = []
    seen_models: dict[tuple, str] = {}
    for model in spec.models:
        needing = [r.name for r in recipes if needs_calibration(r)]
        check_checkpoint(model.path, model.trust_remote_code)
        if needing:
            require_calibration_source(needing, model.calibration.source, where=f"model {model.name!r}: ")
        check_shapes(model, recipes)
        fingerprint = model_fingerprint(model.path)
        kind = device_kind_of(model)
        identity = (
            fingerprint,
            _dtype_name(model, kind),
            kind,
            model.trust_remote_code,
            text_fingerprint(model.calibration.to_dict()),
        )
        if identity in seen_models:
            raise ValueError(
                f"models {seen_models[identity]!r} and {model.name!r} are the same checkpoint with the "
                "same dtype, device type and calibration, so their cells would be the same; keep one"
            )
        seen_models[identity] = model.name
        shared = {
            "model": fingerprint,
            "dtype": _dtype_name(model, kind),
            "device_type": kind,
            "trust_remote_code": model.trust_remote_code,
            **spec.evaluation.key_fields(),  # limit, num_fewshot, seed, max_length: whatever changes results
            "versions": versions,
        }
        calibration = calibration_fields(model)
        for task in tasks.names:
            task_fields = {"task": task, "task_config": tasks.fingerprints[task]}

            def fields_for(recipe) -> dict[str, Any]:
                config = {k: v for k, v in recipe.to_dict().items() if k != "description"}
                calibrated = needs_calibration(recipe)
                fields = {**shared, **task_fields, "recipe": config, "calibration": calibration if calibrated else None}
                files = files_of[recipe.name]
                if files:  # a learned rotation read from a file: its contents change results
                    fields["recipe_files_sha256"] = files
                return fields

            baseline_key = text_fingerprint(fields_for(baseline)) + fingerprint[:8]
            for recipe in recipes:
                key_fields = fields_for(recipe)
                key = text_fingerprint(key_fields) + fingerprint[:8]
                cells.append(
                    CellPlan(
                        key=key,
                        model=model,
                        recipe=recipe,
                        task=task,
                        is_baseline=recipe is baseline,
                        baseline_key=baseline_key,
                        key_fields=key_fields,
                        needs_calibration=needs_calibration(recipe),
                    )
                )
                if recipe is baseline and spec.evaluation.aa_control:
                    cells.append(control_cell(cells[-1], spec.evaluation.batch_size))
    return SweepPlan(spec=spec, tasks=tasks, cells=cells)


AA_SUFFIX = "-aa"


def control_recipe(baseline):
    """The recipe an A/A control cell runs: the baseline's, renamed ``<baseline>-aa``.

    Example:
        >>> from quantsweep.recipes import get_recipe
        >>> control_recipe(get_recipe("fp")).name
        'fp-aa'
    """
    import dataclasses

    return dataclasses.replace(baseline, name=baseline.name + AA_SUFFIX)


def control_cell(baseline: CellPlan, batch_size: int) -> CellPlan:
    """The A/A control of a baseline cell: the same recipe again, at another batch size, in reverse order.

    Its recipe is the baseline's renamed ``<baseline>-aa``; the batch size and order are in
    its key (they are what it measures), and it is judged against the baseline like a recipe.

    Example:
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"], "aa_control": True})
        >>> [(c.recipe.name, c.control) for c in plan_cells(spec).cells]
        [('fp', None), ('fp-aa', {'batch_size': 16, 'order': 'reversed'})]
    """
    import dataclasses

    from quantsweep.eval.settings import control_batch_size

    control = {"batch_size": control_batch_size(batch_size), "order": "reversed"}
    key_fields = {
        **baseline.key_fields,
        "recipe": {**baseline.key_fields["recipe"], "name": baseline.recipe.name + AA_SUFFIX},
        "control": control,
    }
    return dataclasses.replace(
        baseline,
        key=text_fingerprint(key_fields) + baseline.key[-8:],
        recipe=control_recipe(baseline.recipe),
        is_baseline=False,
        key_fields=key_fields,
        control=control,
    )


def sort_cells(plan: SweepPlan, store, *, retry_failed: bool = False, force: bool = False) -> SweepPlan:
    """Sort a plan's cells into done, failed (kept) and to run, by what ``store`` holds.

    Example:
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "recipes": ["w4-rtn"], "tasks": ["toy_mc4"]})
        >>> import tempfile
        >>> from quantsweep.sweep.store import CellStore
        >>> store = CellStore(tempfile.mkdtemp())
        >>> sort_cells(plan_cells(spec), store).describe()
        '0 of 2 cells already done; 2 to run'
    """
    for cell in plan.cells:
        status = None if force else store.status(cell.key)
        if status == "done":
            plan.done.add(cell.key)
        elif status == "failed" and not retry_failed:
            plan.failed.add(cell.key)
        else:
            plan.to_run.append(cell)
    return plan


def check_shapes(model: ModelSpec, recipes: list) -> None:
    """Check every recipe against the model's layer shapes (built on the meta device: no weights read).

    Raises:
        ValueError: a recipe's group size does not divide a target layer's in_features
            (naming the recipe, the layer and both sizes), an override matches no module
            the recipe quantizes, or a rotation cannot be applied to this architecture.

    Example:
        >>> from quantsweep.recipes import expand_recipes
        >>> check_shapes(ModelSpec(path="toy"), expand_recipes(["w4-rtn"]))
    """
    from quantsweep.models.loading import meta_model
    from quantsweep.recipes import check_recipe

    try:
        structure = meta_model(model.path, model.trust_remote_code)
    except Exception as error:  # noqa: BLE001 - the same check runs again when the recipe is applied
        logger.info(
            "model %s: shapes not checked up front (%s); each recipe checks them when applied", model.name, error
        )
        return
    for recipe in recipes:
        try:
            check_recipe(structure, recipe)
        except ValueError as error:
            raise ValueError(_name_recipe(recipe, error)) from None


def _name_recipe(recipe, error: Exception) -> str:
    """The error's message, led by ``recipe 'name': `` unless it already names the recipe so."""
    prefix = f"recipe {recipe.name!r}: "
    message = str(error)
    return message if message.startswith(prefix) else prefix + message


def group_units(cells: list[CellPlan], slots_per_model: dict[str, int] | None = None) -> list[WorkUnit]:
    """Split each model's cells into at most ``slots_per_model[model]`` units of whole recipes (default 1).

    The baseline leads the first unit of its model and the first units of all models
    are listed (so submitted) first: baselines are scheduled before recipes, and no
    accelerator loads a model more often than the cluster's size requires (one load per
    unit; a unit runs its recipes one after the other on one load).

    Example:
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> spec = spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "recipes": ["w8-rtn", "w4-rtn"], "tasks": ["toy_mc4"]})
        >>> plan = plan_cells(spec)
        >>> [[r.name for r in u.recipes] for u in group_units(plan.cells, {"toy": 2})]
        [['fp'], ['w8-rtn', 'w4-rtn']]
    """
    slots_per_model = slots_per_model or {}
    by_model: dict[str, list] = {}
    for cell in cells:
        by_model.setdefault(cell.model.name, []).append(cell)
    per_model: list[list[WorkUnit]] = []
    for name, model_cells in by_model.items():
        ordered = sorted(model_cells, key=lambda c: not c.is_baseline)  # stable: baseline first
        controls = list(dict.fromkeys(c.recipe.name for c in ordered if c.control is not None))
        recipes = [r for r in dict.fromkeys(c.recipe.name for c in ordered) if r not in controls]
        count = max(1, min(slots_per_model.get(name, 1), len(recipes)))
        groups = [recipes[i * len(recipes) // count : (i + 1) * len(recipes) // count] for i in range(count)]
        # the A/A control runs on the baseline's load, after it: it reads the baseline's stored distributions
        groups[0] = groups[0][:1] + controls + groups[0][1:]
        per_model.append(
            [
                WorkUnit(model=ordered[0].model, cells=tuple(c for c in ordered if c.recipe.name in group))
                for group in groups
            ]
        )
    rounds = max((len(units) for units in per_model), default=0)
    return [units[i] for i in range(rounds) for units in per_model if i < len(units)]
