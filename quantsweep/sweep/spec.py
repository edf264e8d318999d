"""The sweep spec: which models, recipes and tasks, with every setting that changes a result.

A spec is a YAML file (or a mapping) validated as strictly as a recipe: an unknown
key is named, with "did you mean". ``quantsweep run`` builds the same object for
one model, so both commands share the store, the resume and the judging.

Example spec (``recipes/sweeps/toy.yaml``)::

    models:
      - name: toy
        path: toy
    recipes: [fp, w8-rtn, w4-rtn, w1-rtn]
    tasks: [toy_mc4, toy_ppl]
    limit: 400

Example:
    >>> spec = spec_from_dict({"models": [{"path": "toy"}], "recipes": ["w8-rtn"], "tasks": ["toy_mc4"]})
    >>> spec.models[0].name, spec.models[0].calibration.samples
    ('toy', 32)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantsweep._schema import SchemaError, build, refuse_unknown
from quantsweep.eval.settings import DEFAULT_BATCH_SIZE, DEFAULT_SEED, EvalSettings

BASELINE_RECIPE = "fp"
# Calibration defaults belong to the model: the toy's bios are short, the literature's
# defaults (128 windows of 2048 tokens) are for real checkpoints.
TOY_CALIBRATION = {"source": "toy", "samples": 32, "seq_len": 64}
CHECKPOINT_CALIBRATION = {"source": None, "samples": 128, "seq_len": 2048}


class SpecError(SchemaError):
    """A sweep spec is malformed; the message says which key and where."""


@dataclass(frozen=True, kw_only=True)
class CalibrationSpec:
    """Where calibration windows come from (used only by recipes that need calibration).

    Attributes:
        source: ``toy``, a local ``.txt``/``.jsonl`` file, or ``wikitext2``/``c4``/``pile``
            (hub). None means "not given": calibrated recipes then fail up front.
        samples: N windows. seq_len: L tokens each. seed: window sampling seed.

    Example:
        >>> CalibrationSpec(source="toy", samples=8, seq_len=32).seed
        0
    """

    source: str | None = None
    samples: int = 128
    seq_len: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SpecError(f"calibration {name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as recorded and hashed into cell keys.

        Example:
            >>> CalibrationSpec(source="toy").to_dict()["source"]
            'toy'
        """
        return dataclasses.asdict(self)


def default_calibration(model_path: str) -> dict[str, Any]:
    """The calibration defaults of a model: the toy's own, else the literature's 128 x 2048.

    Example:
        >>> default_calibration("toy")["seq_len"]
        64
    """
    return dict(TOY_CALIBRATION if model_path == "toy" else CHECKPOINT_CALIBRATION)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One model of a sweep.

    Attributes:
        path: ``toy`` or a local Hugging Face checkpoint directory.
        name: the id used in results (default: ``toy``, or the folder's name).
        device: ``auto``, ``cpu``, ``cuda[:N]``, ``npu[:N]``; on a cluster the worker's
            own accelerator replaces it.
        dtype: ``auto``, ``float32``, ``bfloat16``, ``float16``.
        trust_remote_code: allow the checkpoint's own Python code.
        calibration: a :class:`CalibrationSpec`; None takes the model's defaults
            (:func:`default_calibration`).

    Example:
        >>> ModelSpec(path="toy").name
        'toy'
    """

    path: str
    name: str = ""
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    calibration: CalibrationSpec | None = None

    def __post_init__(self) -> None:
        if not self.path:
            raise SpecError("a model needs a 'path' ('toy' or a local checkpoint directory)")
        if self.calibration is None:
            object.__setattr__(self, "calibration", CalibrationSpec(**default_calibration(self.path)))
        if not self.name:
            object.__setattr__(self, "name", "toy" if self.path == "toy" else Path(self.path).name or self.path)


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """Everything a sweep runs, and every setting that changes its results.

    Attributes:
        models: the models, each with its device, dtype and calibration.
        recipes: recipe names, grid names or YAML paths (the baseline is added first).
        tasks: task or suite names.
        baseline: the recipe every other one is judged against (default ``fp``).
        limit, num_fewshot, seed, batch_size, data_dir, include_path, allow_code_execution,
            max_length, aa_control: the evaluation settings, keys of the spec file as they always were;
            they are checked once, as the :class:`~quantsweep.eval.settings.EvalSettings`
            in :attr:`evaluation` (what workers and the evaluator receive).
        verdict: verdict thresholds (:class:`quantsweep.verdicts.config.VerdictConfig` fields).
        measure: also measure prefill/decode speed of each recipe (a separate timing step).
        evaluation: the frozen evaluation settings, made from the fields above.

    Example:
        >>> SweepSpec(models=(ModelSpec(path="toy"),), recipes=("w4-rtn",), tasks=("toy_mc4",)).baseline
        'fp'
    """

    models: tuple[ModelSpec, ...]
    tasks: tuple[str, ...]
    recipes: tuple[Any, ...] = ()
    baseline: Any = BASELINE_RECIPE
    limit: int | float | None = None
    num_fewshot: int | None = None
    seed: int = DEFAULT_SEED
    batch_size: int = DEFAULT_BATCH_SIZE
    data_dir: str | None = None
    include_path: tuple[str, ...] = ()
    allow_code_execution: bool = False
    verdict: dict[str, Any] = field(default_factory=dict)
    measure: bool = False
    max_length: int | None = None
    aa_control: bool = False
    evaluation: EvalSettings = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from quantsweep.methods.registry import RecipeConfig

        if not isinstance(self.baseline, (str, RecipeConfig)) or not self.baseline:
            raise SpecError(f"baseline must be one recipe name or YAML path, got {self.baseline!r}")
        names = [f.name for f in dataclasses.fields(EvalSettings)]
        evaluation = EvalSettings(**{name: getattr(self, name) for name in names})  # the one check of each
        object.__setattr__(self, "evaluation", evaluation)
        for name in names:  # normalised: a whole limit as an int, include_path as a tuple
            object.__setattr__(self, name, getattr(evaluation, name))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "recipes", tuple(self.recipes))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.models:
            raise SpecError("a sweep needs at least one model under 'models'")
        names = [m.name for m in self.models]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise SpecError(f"two models are named {duplicate!r}; give each a distinct 'name'")
        if not self.tasks:
            raise SpecError("a sweep needs at least one task under 'tasks'")
        verdict_config(self)  # thresholds checked now, not after the first model loaded

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what the store records of the spec).

        Example:
            >>> SweepSpec(models=(ModelSpec(path="toy"),), recipes=(), tasks=("toy_mc4",)).to_dict()["tasks"]
            ['toy_mc4']
        """
        data = dataclasses.asdict(self)
        del data["evaluation"]  # the same settings, flat
        data["recipes"] = [r if isinstance(r, str) else r.name for r in self.recipes]
        data["baseline"] = self.baseline if isinstance(self.baseline, str) else self.baseline.name
        for key in ("models", "tasks", "include_path"):
            data[key] = list(data[key])
        return data


def verdict_config(spec: SweepSpec):
    """The spec's :class:`~quantsweep.verdicts.config.VerdictConfig`.

    Raises:
        SpecError: an unknown threshold name or an out-of-range value.

    Example:
        >>> verdict_config(SweepSpec(models=(ModelSpec(path="toy"),), recipes=(), tasks=("t",), verdict={"alpha": 0.01})).alpha
        0.01
    """
    from quantsweep.verdicts.config import VerdictConfig

    try:
        return build(VerdictConfig, dict(spec.verdict), "verdict")
    except (TypeError, ValueError) as error:
        raise SpecError(str(error)) from None


def model_from_dict(data: Any, where: str = "model") -> ModelSpec:
    """Validate one model entry (a path, or a mapping with ``path``) into a :class:`ModelSpec`.

    Calibration keys left out take the model's defaults (:func:`default_calibration`);
    ``export`` and ``measure`` build their model this way, as a sweep does.

    Example:
        >>> model_from_dict({"path": "toy", "calibration": {"samples": 8}}).calibration.seq_len
        64
    """
    if isinstance(data, str):
        data = {"path": data}
    if not isinstance(data, dict):
        raise SpecError(f"{where}: a model is a path or a mapping with 'path', got {type(data).__name__}")
    refuse_unknown(
        ModelSpec, data, where, error=SpecError
    )  # a typo (``pth:``) is named before the key it hides is missed
    path = data.get("path")
    if not isinstance(path, str) or not path:
        raise SpecError(f"{where}: missing required key 'path' ('toy' or a local checkpoint directory)")
    defaults = default_calibration(path)
    raw_calibration = data.get("calibration", {}) or {}
    if not isinstance(raw_calibration, dict):
        raise SpecError(f"{where}.calibration: expected a mapping, got {type(raw_calibration).__name__}")
    calibration = build(CalibrationSpec, {**defaults, **raw_calibration}, f"{where}.calibration")
    return build(ModelSpec, {**data, "calibration": calibration}, where, convert={"calibration": lambda value: value})


def model_from_options(
    path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    calibration_source: str | None = None,
    calibration_samples: int | None = None,
    calibration_seq_len: int | None = None,
    calibration_seed: int | None = None,
) -> ModelSpec:
    """One model from the flat options of ``export`` and ``measure``, through :func:`model_from_dict`.

    Calibration options left as None take the model's defaults.

    Example:
        >>> model_from_options("toy", calibration_samples=8).calibration.samples
        8
    """
    calibration = {
        "source": calibration_source,
        "samples": calibration_samples,
        "seq_len": calibration_seq_len,
        "seed": calibration_seed,
    }
    return model_from_dict(
        {
            "path": str(path),
            "device": device,
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "calibration": {k: v for k, v in calibration.items() if v is not None},
        }
    )


def _string_list(value: Any, where: str) -> tuple:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{where}: expected a list of names, got {value!r}")
    return tuple(value)


def _recipe_list(value: Any, where: str) -> tuple:
    """Recipe names, grid names, YAML paths, or (from Python) RecipeConfig objects."""
    from quantsweep.methods.registry import RecipeConfig

    if isinstance(value, (list, tuple)) and any(isinstance(v, RecipeConfig) for v in value):
        bad = [v for v in value if not isinstance(v, (str, RecipeConfig)) or v == ""]
        if bad:
            raise SpecError(f"{where}: expected recipe names or RecipeConfig objects, got {bad[0]!r}")
        return tuple(value)
    return _string_list(value, where)


def spec_from_dict(data: Any, source: str = "<spec>") -> SweepSpec:
    """Validate a spec mapping and build the :class:`SweepSpec`.

    Raises:
        SpecError: unknown key (with "did you mean"), wrong type, missing models/tasks,
            or a bad batch size, few-shot count, limit or verdict threshold.
        SettingError: (raised as a SpecError) an impossible evaluation setting; the
            error's ``__context__`` chain holds the :class:`~quantsweep.eval.settings.SettingError`.

    Example:
        >>> spec_from_dict({"models": ["toy"], "recipes": ["w8-rtn"], "tasks": "toy_mc4,toy_ppl"}).tasks
        ('toy_mc4', 'toy_ppl')
    """
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: a sweep spec is a mapping with models, recipes and tasks, got {type(data).__name__}"
        )
    models = data.get("models")
    if models is None:
        refuse_unknown(SweepSpec, data, source, error=SpecError)
        raise SpecError(f"{source}: missing required key 'models'")
    if not isinstance(models, list):
        models = [models]
    convert = {
        "models": lambda _: tuple(model_from_dict(m, f"{source}: models[{i}]") for i, m in enumerate(models)),
        "recipes": lambda v: _recipe_list(v, f"{source}: recipes") if v else (),
        "tasks": lambda v: _string_list(v, f"{source}: tasks"),
        "include_path": lambda v: _string_list(_path_text(v), f"{source}: include_path") if v else (),
        "data_dir": lambda v: _path_text(v, f"{source}: data_dir"),
        "verdict": lambda v: (
            v if isinstance(v, dict) else _raise(SpecError(f"{source}: verdict must be a mapping of thresholds"))
        ),
    }
    try:
        return build(SweepSpec, data, source, convert=convert)
    except SpecError:
        raise
    except SchemaError as error:
        raise SpecError(str(error)) from None


def _path_text(value: Any, where: str | None = None) -> Any:
    """Paths as text (``pathlib.Path`` objects from Python callers); with ``where``, a single path or None."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [str(v) if isinstance(v, Path) else v for v in value]
    if where is not None and value is not None and not isinstance(value, str):
        raise SpecError(f"{where}: expected a folder path, got {value!r}")
    return value


def _raise(error: Exception):
    raise error


def absolute_paths(spec: SweepSpec, base: str | Path | None = None) -> SweepSpec:
    """The spec with every path made absolute (relative to ``base``, default the current folder).

    Ray workers start in another folder than the driver, so only absolute paths mean the
    same on every node: model paths (``toy`` aside), ``data_dir``, ``include_path`` and
    local calibration files.

    Example:
        >>> absolute_paths(spec_from_dict({"models": ["./m"], "tasks": ["t"]}), "/data").models[0].path
        '/data/m'
    """
    root = Path(base) if base is not None else Path.cwd()

    def absolute(path):
        return str((root / Path(path).expanduser()).resolve()) if path else path

    def calibration(spec_c: CalibrationSpec) -> CalibrationSpec:
        source = spec_c.source
        if source and (Path(source).suffix in (".txt", ".jsonl") or "/" in source):
            return dataclasses.replace(spec_c, source=absolute(source))
        return spec_c

    models = tuple(
        dataclasses.replace(
            m, path=m.path if m.path == "toy" else absolute(m.path), calibration=calibration(m.calibration)
        )
        for m in spec.models
    )
    return dataclasses.replace(
        spec,
        models=models,
        data_dir=absolute(spec.data_dir),
        include_path=tuple(absolute(p) for p in spec.include_path),
    )


def load_spec(spec_or_path: Any) -> SweepSpec:
    """A :class:`SweepSpec` from a spec object, a mapping, or a YAML file path.

    Raises:
        SpecError: the file does not exist, is not valid YAML, or does not fit the schema.

    Example:
        >>> load_spec({"models": ["toy"], "recipes": [], "tasks": ["toy_mc4"]}).recipes
        ()
    """
    if isinstance(spec_or_path, SweepSpec):
        return spec_or_path
    if isinstance(spec_or_path, dict):
        return spec_from_dict(spec_or_path)
    if not isinstance(spec_or_path, (str, Path)):
        raise TypeError(f"a sweep spec is a SweepSpec, a mapping or a YAML path, got {type(spec_or_path).__name__}")
    path = Path(spec_or_path)
    if not path.is_file():
        raise SpecError(f"sweep spec {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from None
    return spec_from_dict(data, str(path))
