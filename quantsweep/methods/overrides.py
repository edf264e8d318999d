"""Per-module overrides: other bits, group size or symmetry for some modules, or none at all.

A recipe's ``overrides:`` is a list of entries, each with ``match`` (a glob or a list of
globs on the module's full name, as ``model.named_modules()`` spells it) and either
``skip: true`` (keep the module in full precision) or per-module settings of the weight
method (``bits``, ``group_size``, ``symmetric`` for RTN and GPTQ). The first entry that
matches a module wins. Globs are :mod:`fnmatch` patterns (``*`` also crosses dots) plus
brace sets, ``model.layers.{0,27}.mlp.down_proj``, which expand to one glob per
alternative (no nesting).

An override applies to the modules the weight method quantizes (its targets); one that
matches none of them is an error naming it, raised before any weight changes. Only
methods registered with ``per_module`` fields honour overrides; for the others the
recipe is refused when it is read.

Example:
    >>> from quantsweep.methods.rtn import RTNConfig
    >>> config = RTNConfig(name="w2", method="rtn", bits=2)
    >>> overrides = (Override(match=("model.layers.0.*",), settings=(("bits", 8),)),
    ...              Override(match=("lm_head",), skip=True))
    >>> plan = module_configs(config, overrides, ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj", "lm_head"])
    >>> plan["model.layers.0.mlp.up_proj"].bits, plan["model.layers.1.mlp.up_proj"].bits, plan["lm_head"]
    (8, 2, None)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from quantsweep._schema import refuse_unknown
from quantsweep.methods.registry import RecipeError

_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """One glob per alternative of each ``{a,b}`` set (sets may repeat, not nest).

    Raises:
        RecipeError: unbalanced or nested braces, or an empty set.

    Example:
        >>> expand_braces("model.layers.{0,27}.mlp.{up,down}_proj")  # doctest: +NORMALIZE_WHITESPACE
        ['model.layers.0.mlp.up_proj', 'model.layers.0.mlp.down_proj',
         'model.layers.27.mlp.up_proj', 'model.layers.27.mlp.down_proj']
    """
    depth = 0
    for char in pattern:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth not in (0, 1):
            raise RecipeError(f"override match {pattern!r}: unbalanced or nested braces (write {{a,b}}, no nesting)")
    if depth:
        raise RecipeError(f"override match {pattern!r}: unbalanced or nested braces (write {{a,b}}, no nesting)")
    found = _BRACES.search(pattern)
    if found is None:
        return [pattern]
    alternatives = found.group(1).split(",")
    if not found.group(1) or any(not a for a in alternatives):
        raise RecipeError(f"override match {pattern!r}: an empty alternative in {found.group(0)}")
    expanded = []
    for alternative in alternatives:
        expanded += expand_braces(pattern[: found.start()] + alternative + pattern[found.end() :])
    return expanded


@dataclass(frozen=True, kw_only=True)
class Override:
    """One ``overrides:`` entry.

    Attributes:
        match: globs on full module names (brace sets allowed); the entry applies to a
            module that any of them matches.
        skip: keep the matched modules in full precision (weights and activations).
        settings: ``(field, value)`` pairs of the weight method's config for the
            matched modules, e.g. ``(("bits", 8),)``.

    Example:
        >>> Override(match=("lm_head",), settings=(("bits", 8),)).to_dict()
        {'match': ['lm_head'], 'bits': 8}
        >>> Override(match=("lm_head",), skip=True).matches("lm_head")
        True
    """

    match: tuple[str, ...]
    skip: bool = False
    settings: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.match or not all(isinstance(m, str) and m for m in self.match):
            raise RecipeError(f"override {list(self.match)!r}: 'match' must be a non-empty glob or list of globs")
        if self.skip and self.settings:
            keys = ", ".join(k for k, _ in self.settings)
            raise RecipeError(
                f"override {self.label}: 'skip: true' keeps the modules in full precision, so {keys} cannot apply"
            )
        if not self.skip and not self.settings:
            raise RecipeError(f"override {self.label}: give 'skip: true' or at least one setting (e.g. bits)")
        object.__setattr__(self, "_globs", tuple(g for m in self.match for g in expand_braces(m)))

    @property
    def label(self) -> str:
        """The entry's globs as written, for messages.

        Example:
            >>> Override(match=("a", "b"), skip=True).label
            "['a', 'b']"
        """
        return repr(self.match[0]) if len(self.match) == 1 else repr(list(self.match))

    def matches(self, name: str) -> bool:
        """Whether any of the entry's globs matches the full module name ``name``.

        Example:
            >>> Override(match=("model.layers.{0,3}.*",), skip=True).matches("model.layers.3.mlp.up_proj")
            True
        """
        return any(fnmatch.fnmatchcase(name, glob) for glob in self._globs)

    def to_dict(self) -> dict[str, Any]:
        """The entry as the recipe YAML writes it.

        Example:
            >>> Override(match=("x",), skip=True).to_dict()
            {'match': ['x'], 'skip': True}
        """
        out: dict[str, Any] = {"match": list(self.match)}
        if self.skip:
            out["skip"] = True
        out.update(dict(self.settings))
        return out


def override_from_dict(data: Any, config, per_module: Iterable[str], where: str) -> Override:
    """Read one ``overrides:`` entry for weight config ``config``, strictly.

    Args:
        data: the entry's mapping.
        config: the weight method's config (types and allowed values are checked against it).
        per_module: the config fields the method can vary per module.
        where: where the entry came from, for messages.

    Raises:
        RecipeError: not a mapping, no ``match``, an unknown key (named, with "did you mean"
            and the allowed keys), a wrong type, or a value the method refuses.

    Example:
        >>> from quantsweep.methods.rtn import RTNConfig
        >>> config = RTNConfig(name="w2", method="rtn", bits=2)
        >>> override_from_dict({"match": "lm_head", "bits": 8}, config, ("bits",), "r").settings
        (('bits', 8),)
        >>> override_from_dict({"match": "lm_head", "bitz": 8}, config, ("bits",), "r")
        Traceback (most recent call last):
        ...
        quantsweep.methods.registry.RecipeError: r: unknown key 'bitz' (did you mean 'bits'?); allowed keys: match, skip, bits
    """
    per_module = tuple(per_module)
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: an override must be a mapping with 'match', got {type(data).__name__}")
    refuse_unknown(("match", "skip", *per_module), data, where, error=RecipeError)
    if "match" not in data:
        raise RecipeError(f"{where}: missing required key 'match' (a glob or a list of globs on module names)")
    match = data["match"]
    match = (match,) if isinstance(match, str) else match
    if not isinstance(match, (list, tuple)) or not all(isinstance(m, str) for m in match):
        raise RecipeError(f"{where}: 'match' must be a glob or a list of globs, got {data['match']!r}")
    skip = data.get("skip", False)
    if not isinstance(skip, bool):
        raise RecipeError(f"{where}: 'skip' must be true or false, got {skip!r}")
    settings = tuple((key, data[key]) for key in per_module if key in data)
    try:
        override = Override(match=tuple(match), skip=skip, settings=settings)
        if settings:
            # The config's own checks: field types (RecipeConfig.__post_init__), then the method's (e.g. GPTQ bits).
            dataclasses.replace(config, **dict(settings))
    except RecipeError as error:
        message = str(error).removeprefix(f"recipe {config.name!r}: ")
        raise RecipeError(f"{where}: {message}") from None
    return override


def find_override(overrides: Iterable[Override], name: str) -> Override | None:
    """The first entry that matches module ``name``, or None.

    Example:
        >>> entries = (Override(match=("*.down_proj",), skip=True), Override(match=("*",), settings=(("bits", 8),)))
        >>> find_override(entries, "model.layers.0.mlp.down_proj").skip
        True
    """
    return next((o for o in overrides if o.matches(name)), None)


def config_for(config, overrides: Iterable[Override], name: str):
    """Module ``name``'s config under the overrides: ``config``, None (skipped), or ``config`` with its first match applied.

    Example:
        >>> from quantsweep.methods.rtn import RTNConfig
        >>> config = RTNConfig(name="w2", method="rtn", bits=2)
        >>> entries = (Override(match=("a",), skip=True), Override(match=("b",), settings=(("bits", 8),)))
        >>> config_for(config, entries, "a") is None, config_for(config, entries, "b").bits, config_for(config, entries, "c") is config
        (True, 8, True)
    """
    override = find_override(overrides, name)
    if override is None:
        return config
    return None if override.skip else dataclasses.replace(config, **dict(override.settings))


def module_configs(config, overrides: Iterable[Override], names: Iterable[str]) -> dict[str, Any]:
    """Each module's config under the overrides: ``config`` changed by its first match, or None (skip).

    Raises:
        RecipeError: an override matches none of ``names`` (the modules the method quantizes).

    Example:
        >>> from quantsweep.methods.rtn import RTNConfig
        >>> config = RTNConfig(name="w2", method="rtn", bits=2)
        >>> module_configs(config, (Override(match=("b",), skip=True),), ["a", "b"])["b"] is None
        True
        >>> module_configs(config, (Override(match=("c",), skip=True),), ["a", "b"])
        Traceback (most recent call last):
        ...
        quantsweep.methods.registry.RecipeError: recipe 'w2': override 'c' matches no module the recipe quantizes (e.g. a, b)
    """
    overrides = tuple(overrides)
    names = list(names)
    for override in overrides:
        if not any(override.matches(name) for name in names):
            examples = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise RecipeError(
                f"recipe {config.name!r}: override {override.label} matches no module the recipe quantizes (e.g. {examples})"
            )
    return {name: config_for(config, overrides, name) for name in names}
