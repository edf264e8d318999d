"""The method registry, on the ground floor: recipe configs and the methods that apply them.

A *method* is an algorithm (``rtn``, ``gptq``, ...) registered with
:func:`register_method` together with its config dataclass, a subclass of
:class:`RecipeConfig`. Method files import this module and nothing above it;
:mod:`quantsweep.recipes` (YAML, grids, ``quantize``) sits on top.

The built-in methods are the modules named in
:data:`quantsweep.methods.catalog.BUILTIN_METHOD_MODULES`. The catalog, one floor up,
imports them by name the first time a method is looked up, so importing this module
never imports a method, and no method module imports the catalog.

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
    >>> from quantsweep.methods.catalog import get_method
    >>> get_method("rtn").config.__name__
    'RTNConfig'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from quantsweep._schema import check_types


class RecipeError(ValueError):
    """A recipe name, file or field is wrong; the message says which.

    Example:
        >>> RecipeConfig(name="x", method="rtn", quantize_lm_head="yes")
        Traceback (most recent call last):
        ...
        quantsweep.methods.registry.RecipeError: recipe 'x': 'quantize_lm_head' must be bool, got 'yes'
    """


@dataclass(frozen=True, kw_only=True)
class RecipeConfig:
    """Fields every recipe has.

    Attributes:
        name: the recipe's name, e.g. ``w4-rtn``.
        method: the registered method that applies it, e.g. ``rtn``.
        description: one line for ``quantsweep recipes``.
        quantize_embeddings: also quantize the input embedding table (default off).
        quantize_lm_head: also quantize the output head (default off).

    Example:
        >>> RecipeConfig(name="fp", method="none").quantize_lm_head
        False
    """

    name: str
    method: str
    description: str = ""
    quantize_embeddings: bool = False
    quantize_lm_head: bool = False

    def __post_init__(self) -> None:
        check_types(self, f"recipe {getattr(self, 'name', '?')!r}", error=RecipeError)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what results record).

        Example:
            >>> RecipeConfig(name="fp", method="none").to_dict()["method"]
            'none'
        """
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The config as YAML text that :func:`quantsweep.recipes.recipe_from_yaml` reads back.

        Example:
            >>> "name: fp" in RecipeConfig(name="fp", method="none").to_yaml()
            True
        """
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, config class and apply function.

    Attributes:
        per_module: config fields the method can set per module (per-module overrides,
            :mod:`quantsweep.methods.overrides`); its apply function then takes
            ``overrides=``. Empty: the method cannot honour overrides.
        smooths: the method rescales channels itself (SmoothQuant, AWQ), so a recipe
            refuses to combine it with a ``smooth`` or ``rotate`` transform.

    Example:
        >>> spec = MethodSpec(name="doc-identity", config=RecipeConfig, apply=lambda model, config, calibration=None: model,
        ...                   needs_calibration=False)
        >>> spec.apply("the model", None)
        'the model'
    """

    name: str
    config: type[RecipeConfig]
    apply: Callable[..., Any]
    needs_calibration: bool
    per_module: tuple[str, ...] = ()
    smooths: bool = False


_METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    config: type[RecipeConfig],
    needs_calibration: bool = False,
    per_module: tuple[str, ...] = (),
    smooths: bool = False,
):
    """Decorator that registers ``fn(model, config, calibration=None) -> model`` as a method.

    ``per_module`` names the config fields the method can vary per module; such a method's
    function also takes ``overrides=`` (a tuple of :class:`~quantsweep.methods.overrides.Override`).
    ``smooths`` marks a method that rescales channels itself (see :class:`MethodSpec`).

    Raises:
        ValueError: a method of that name is already registered.

    Example:
        >>> @register_method("doc-noop", config=RecipeConfig)
        ... def apply_noop(model, config, calibration=None):
        ...     return model
        >>> registered_methods()["doc-noop"].apply is apply_noop
        True
        >>> register_method("doc-noop", config=RecipeConfig)(apply_noop)
        Traceback (most recent call last):
        ...
        ValueError: method 'doc-noop' is already registered (by quantsweep.methods.registry)
        >>> _ = _METHODS.pop("doc-noop")  # leave the registry as it was
    """
    if not (isinstance(config, type) and issubclass(config, RecipeConfig)):
        raise TypeError(f"config for method {name!r} must be a RecipeConfig subclass, got {config!r}")
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = [f for f in per_module if f not in fields]
    if unknown:
        raise TypeError(f"per_module fields of method {name!r} must be fields of {config.__name__}, got {unknown}")

    def decorator(fn):
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered (by {_METHODS[name].apply.__module__})")
        _METHODS[name] = MethodSpec(
            name=name,
            config=config,
            apply=fn,
            needs_calibration=needs_calibration,
            per_module=tuple(per_module),
            smooths=smooths,
        )
        return fn

    return decorator


def registered_methods() -> dict[str, MethodSpec]:
    """The methods registered so far, by name (the built-ins load through :mod:`quantsweep.methods.catalog`).

    Example:
        >>> from quantsweep.methods.catalog import list_methods
        >>> "rtn" in list_methods() and "rtn" in registered_methods()
        True
    """
    return _METHODS
