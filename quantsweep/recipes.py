"""Recipes: YAML files that map one to one onto method configs, grids of them, and ``quantize``.

A *method* is an algorithm (``rtn``, ``gptq``, ...) registered with
:func:`quantsweep.methods.registry.register_method` together with its config
dataclass. A *recipe* is one YAML file in ``recipes/``: either one method (``method:``,
whose keys are exactly that dataclass's fields, validated by
:func:`quantsweep._schema.build`), or a list of ``stages:`` (transforms, a weight
method, activation and KV-cache quantization) with optional per-module ``overrides:``
(:mod:`quantsweep.methods.compose`). A *grid* is a YAML file with a single ``grid:``
key listing recipe names.

Adding a method takes one new Python file and one YAML file::

    from dataclasses import dataclass
    from quantsweep.methods.registry import RecipeConfig, register_method

    @dataclass(frozen=True, kw_only=True)
    class MyConfig(RecipeConfig):
        bits: int = 4

    @register_method("my-method", config=MyConfig)
    def apply_my_method(model, config, calibration=None):
        ...  # quantize model in place
        return QuantizationResult(method="my-method")  # or the model, or None

Example:
    >>> import quantsweep
    >>> "w4-rtn" in quantsweep.list_recipes()
    True
    >>> quantsweep.get_recipe("w4-rtn").bits
    4
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from quantsweep._paths import shipped_dir
from quantsweep._schema import build, did_you_mean
from quantsweep.methods.catalog import get_method, list_methods
from quantsweep.methods.compose import ComposedRecipe, apply_composed, check_composed, composed_from_dict
from quantsweep.methods.registry import RecipeConfig, RecipeError
from quantsweep.methods.targets import check_group_sizes

logger = logging.getLogger(__name__)

RECIPES_DIR = shipped_dir("recipes")


def recipe_from_dict(data: dict[str, Any], source: str = "<dict>") -> RecipeConfig:
    """Build the config a recipe mapping describes, rejecting unknown keys by name.

    A mapping with ``method:`` is one method's config; with ``stages:`` (or ``method:``
    plus ``overrides:``) it is a :class:`~quantsweep.methods.compose.ComposedRecipe`.

    Example:
        >>> recipe_from_dict({"name": "w4", "method": "rtn", "bits": 4}).bits
        4
        >>> recipe_from_dict({"name": "w4a4", "stages": [{"weight": "rtn"}, {"activations": {"bits": 4}}]}).method
        'rtn+a4'
    """
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of keys to values, got {type(data).__name__}")
    if "stages" not in data and data.get("overrides", 1) in (None, []):
        # ``overrides: []`` overrides nothing: the recipe stays its method's own config (and keeps its cell key)
        data = {key: value for key, value in data.items() if key != "overrides"}
    if "stages" in data or "overrides" in data:
        return composed_from_dict(data, source)
    if "method" not in data:
        raise RecipeError(
            f"{source}: missing required key 'method' (one of: {', '.join(list_methods())}) or 'stages' (a composed recipe)"
        )
    spec = get_method(str(data["method"]))
    return build(spec.config, data, source, error=RecipeError)


def recipe_from_yaml(text: str, source: str = "<yaml>") -> RecipeConfig:
    """Parse recipe YAML text.

    Example:
        >>> recipe_from_yaml("name: fp\\nmethod: none\\n").name
        'fp'
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"{source}: not valid YAML: {error}") from None
    return recipe_from_dict(data, source)


def _recipe_files() -> dict[str, Path]:
    if not RECIPES_DIR.is_dir():
        return {}
    return {path.stem: path for path in sorted(RECIPES_DIR.glob("*.yaml"))}


def _read_yaml_file(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None


def list_recipes() -> list[str]:
    """Names of the recipes (not grids) shipped in ``recipes/``.

    Example:
        >>> "fp" in list_recipes()
        True
    """
    return [name for name, path in _recipe_files().items() if not _is_grid(_read_yaml_file(path))]


def list_grids() -> list[str]:
    """Names of the grids shipped in ``recipes/`` (files with a ``grid:`` key).

    Example:
        >>> isinstance(list_grids(), list)
        True
    """
    return [name for name, path in _recipe_files().items() if _is_grid(_read_yaml_file(path))]


def _is_grid(data: Any) -> bool:
    return isinstance(data, dict) and "grid" in data


def _resolve_file(name_or_path: str) -> Path:
    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path
    if looks_like_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise RecipeError(f"recipe file {name_or_path!r} does not exist")
        return path
    files = _recipe_files()
    if name_or_path not in files:
        raise RecipeError(
            f"unknown recipe {name_or_path!r}{did_you_mean(name_or_path, files)}; "
            f"available: {', '.join(files)} (or pass a path to a .yaml file)"
        )
    return files[name_or_path]


def get_recipe(name_or_path: str | RecipeConfig) -> RecipeConfig:
    """A recipe by name (from ``recipes/``) or by path to a YAML file.

    Raises:
        RecipeError: unknown name (with close matches), missing file, bad YAML,
            unknown key, or a grid where one recipe was expected.

    Example:
        >>> get_recipe("w8-rtn").group_size is None
        True
    """
    if isinstance(name_or_path, RecipeConfig):
        return name_or_path
    if not isinstance(name_or_path, str):
        raise TypeError(f"recipe must be a name, a YAML path or a RecipeConfig, got {type(name_or_path).__name__}")
    path = _resolve_file(name_or_path)
    data = _read_yaml_file(path)
    if _is_grid(data):
        raise RecipeError(f"{name_or_path!r} is a grid of recipes, not one recipe; use expand_recipes()")
    return recipe_from_dict(data, str(path))


def expand_recipes(names: list[str | RecipeConfig]) -> list[RecipeConfig]:
    """Resolve recipe names, paths and grids into a flat list without duplicates.

    Example:
        >>> [r.name for r in expand_recipes(["fp", "w8-rtn"])]
        ['fp', 'w8-rtn']
    """
    resolved: list[RecipeConfig] = []
    seen: set[str] = set()

    def visit(item, stack: tuple[str, ...]):
        if isinstance(item, RecipeConfig):
            configs = [item]
        else:
            path = _resolve_file(item)
            data = _read_yaml_file(path)
            if _is_grid(data):
                if item in stack:
                    raise RecipeError(f"grid {item!r} includes itself")
                members = data["grid"]
                if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                    raise RecipeError(f"{path}: 'grid' must be a list of recipe names")
                extra = [key for key in data if key not in ("grid", "description")]
                if extra:
                    raise RecipeError(f"{path}: unknown key {extra[0]!r}; allowed keys: grid, description")
                for member in members:
                    visit(member, stack + (item,))
                return
            configs = [recipe_from_dict(data, str(path))]
        for config in configs:
            if config.name not in seen:
                seen.add(config.name)
                resolved.append(config)
            else:
                earlier = next(r for r in resolved if r.name == config.name)
                if earlier.to_dict() != config.to_dict():
                    raise RecipeError(
                        f"two different recipes are named {config.name!r}; rename one "
                        f"(they differ in {', '.join(k for k, v in config.to_dict().items() if earlier.to_dict().get(k) != v)})"
                    )

    for name in names:
        visit(name, ())
    return resolved


def apply_recipe(model, recipe: str | RecipeConfig, calibration=None):
    """Quantize ``model`` in place with ``recipe`` and return what the method reported.

    Args:
        model: a Hugging Face causal LM (e.g. from :func:`quantsweep.load_model`).
        recipe: a recipe name, a path to recipe YAML, or a :class:`RecipeConfig`.
        calibration: calibration data for methods that need it (GPTQ, AWQ, ...):
            a :class:`~quantsweep.calibration.CalibrationData` or token ids ``[N, L]``.

    Returns:
        :class:`~quantsweep.methods.result.QuantizationResult` (report, packed
        representation, kernel). A method that returns the model or ``None`` gets an
        empty result.

    Example:
        >>> import quantsweep
        >>> model, tokenizer = quantsweep.load_model("toy")
        >>> result = apply_recipe(model, "w4-rtn")
        >>> result.method, result.kernel, len(result.packed) > 0
        ('rtn', 'fake-quant', True)
    """
    from quantsweep.methods.result import QuantizationResult

    config = get_recipe(recipe)
    if isinstance(config, ComposedRecipe):
        logger.info("quantizing with composed recipe %s (%s)", config.name, config.method)
        return apply_composed(model, config, calibration=calibration)
    spec = get_method(config.method)
    if not isinstance(config, spec.config):
        raise TypeError(
            f"recipe {config.name!r} is a {type(config).__name__}, method {spec.name!r} needs {spec.config.__name__}"
        )
    logger.info("quantizing with recipe %s (method %s)", config.name, spec.name)
    result = spec.apply(model, config, calibration=calibration)
    if isinstance(result, QuantizationResult):
        return result
    return QuantizationResult(method=spec.name)


def needs_calibration(recipe: str | RecipeConfig) -> bool:
    """Whether applying ``recipe`` draws calibration windows (its method, or a composed recipe's stages).

    Example:
        >>> needs_calibration("w4-gptq"), needs_calibration("w4-rtn")
        (True, False)
    """
    config = get_recipe(recipe)
    if isinstance(config, ComposedRecipe):
        return config.needs_calibration()
    return get_method(config.method).needs_calibration


def check_recipe(model, recipe: str | RecipeConfig) -> None:
    """Check ``recipe`` against ``model``'s structure before any work (a meta-device model will do).

    Group sizes against every target layer; for a composed recipe also the overrides
    (each must match a module the method quantizes) and whether the model can be rotated.

    Raises:
        ValueError: naming the layer or override and why.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> check_recipe(model, "w4-rtn")
    """
    config = get_recipe(recipe)
    if isinstance(config, ComposedRecipe):
        check_composed(model, config)
    else:
        check_group_sizes(model, config)


def quantize(model, recipe: str | RecipeConfig, calibration=None):
    """Quantize ``model`` in place with ``recipe`` and return it.

    Use :func:`apply_recipe` to also get the method's report and packed weights.

    Args:
        model: a Hugging Face causal LM (e.g. from :func:`quantsweep.load_model`).
        recipe: a recipe name, a path to recipe YAML, or a :class:`RecipeConfig`.
        calibration: calibration data for methods that need it (GPTQ, AWQ, ...):
            a tensor of token ids ``[N, L]``.

    Example:
        >>> import quantsweep
        >>> model, tokenizer = quantsweep.load_model("toy")
        >>> quantsweep.quantize(model, "w4-rtn") is model
        True
    """
    apply_recipe(model, recipe, calibration=calibration)
    return model
