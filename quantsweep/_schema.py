"""Strict mapping -> frozen dataclass: unknown keys are named, with "did you mean".

One mechanism for every file format quantsweep reads by hand: sweep specs are built
by :func:`build`; suites refuse unknown keys with :func:`refuse_unknown` and find
missing keys with :func:`missing_keys`; every "did you mean"
in the package comes from :func:`close_matches`. Field types are checked against
the dataclass's annotations, so ``limit: "ten"`` fails with the field's name.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Point:
    ...     x: int = 0
    >>> build(Point, {"x": 3}, "point").x
    3
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any


class SchemaError(ValueError):
    """A mapping does not fit its schema; the message names the key and where it was."""


def close_matches(name: str, choices, *, n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The choices closest to ``name`` (at most ``n``, similarity at least ``cutoff``): the package's one difflib call.

    Example:
        >>> close_matches("openpangu17", ["openpangu18", "toy"])
        ['openpangu18']
    """
    return difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)


def did_you_mean(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for close matches of ``name``, else an empty string.

    Example:
        >>> did_you_mean("recipies", ["recipes", "tasks"])
        " (did you mean 'recipes'?)"
    """
    close = close_matches(name, choices)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def allowed_keys(cls, *, exclude=()) -> list[str]:
    """The keys a mapping for dataclass ``cls`` may have: its init fields, in order, less ``exclude``.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Pair:
        ...     a: int = 0
        ...     b: int = 0
        >>> allowed_keys(Pair, exclude=("b",))
        ['a']
    """
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in exclude]


def refuse_unknown(
    allowed, data: Mapping, where: str, *, exclude=(), error: type[Exception] = SchemaError, note: str = ""
) -> None:
    """Raise ``error`` naming the first key of ``data`` not in ``allowed``, with "did you mean" and the allowed keys.

    Args:
        allowed: a dataclass (its init fields, less ``exclude``: :func:`allowed_keys`) or the key names.
        data: the mapping read.
        where: where it came from, for the message.
        exclude: fields of a dataclass ``allowed`` that the mapping may not set.
        error: the exception class raised (default :class:`SchemaError`).
        note: appended to the message (e.g. where the other settings go).

    Example:
        >>> refuse_unknown(["bits", "match"], {"bitz": 4}, "r: overrides[0]")
        Traceback (most recent call last):
        ...
        quantsweep._schema.SchemaError: r: overrides[0]: unknown key 'bitz' (did you mean 'bits'?); allowed keys: bits, match
    """
    names = allowed_keys(allowed, exclude=exclude) if dataclasses.is_dataclass(allowed) else list(allowed)
    unknown = [key for key in data if key not in names]
    if unknown:
        key = unknown[0]
        raise error(f"{where}: unknown key {key!r}{did_you_mean(key, names)}; allowed keys: {', '.join(names)}{note}")


def missing_keys(cls, data: Mapping, *, exclude=()) -> list[str]:
    """Required fields of ``cls`` (no default) that ``data`` lacks, in field order.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Need:
        ...     a: int
        >>> missing_keys(Need, {})
        ['a']
    """
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.name not in exclude
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in data
    ]


def type_matches(value: Any, expected: Any) -> bool:
    """Whether ``value`` fits the annotation ``expected`` (unions, lists, dicts; ints are not bools).

    Example:
        >>> type_matches(3, int | None), type_matches(True, int)
        (True, False)
    """
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(type_matches(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin in (tuple, list):
        args = [a for a in typing.get_args(expected) if a is not Ellipsis]
        return isinstance(value, (tuple, list)) and (not args or all(type_matches(v, args[0]) for v in value))
    if origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True


def _type_name(expected: Any) -> str:
    text = getattr(expected, "__name__", None) or str(expected)
    return text.replace("NoneType", "null").replace("typing.", "")


def check_types(instance: Any, where: str, *, error: type[Exception] = SchemaError) -> None:
    """Raise ``error`` unless every field of dataclass ``instance`` fits its annotation.

    What :func:`build` checks for a mapping, for a dataclass built directly in Python
    (a config's ``__post_init__`` calls this).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Box:
        ...     size: int = 1
        >>> check_types(Box(size="big"), "box")
        Traceback (most recent call last):
        ...
        quantsweep._schema.SchemaError: box: 'size' must be int, got 'big'
    """
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        expected = hints.get(field.name, Any)
        if not type_matches(value, expected):
            raise error(f"{where}: {field.name!r} must be {_type_name(expected)}, got {value!r}")


def build(
    cls,
    data: Any,
    where: str,
    *,
    convert: Mapping[str, Any] | None = None,
    error: type[Exception] = SchemaError,
):
    """Build dataclass ``cls`` from mapping ``data``, strictly.

    Args:
        cls: a dataclass type.
        data: the mapping read from YAML or JSON.
        where: where the mapping came from, for messages (``"spec.yaml: models[0]"``).
        convert: field name -> function applied to that field's raw value before the
            type check (for nested dataclasses and lists of them).
        error: the exception class raised (default :class:`SchemaError`); recipes raise
            their own ``RecipeError``.

    Raises:
        SchemaError: (or ``error``) ``data`` is not a mapping, has an unknown key (named, with
            "did you mean" and the allowed keys), lacks a required key, or a value
            has the wrong type.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Box:
        ...     size: int = 1
        >>> build(Box, {"sise": 2}, "box.yaml")
        Traceback (most recent call last):
        ...
        quantsweep._schema.SchemaError: box.yaml: unknown key 'sise' (did you mean 'size'?); allowed keys: size
    """
    if not isinstance(data, Mapping):
        raise error(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    refuse_unknown(cls, data, where, error=error)
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise error(f"{where}: missing required key {field.name!r}")
            continue
        value = data[field.name]
        if convert and field.name in convert:
            value = convert[field.name](value)
        elif not type_matches(value, hints.get(field.name, Any)):
            raise error(f"{where}: {field.name!r} must be {_type_name(hints.get(field.name))}, got {value!r}")
        values[field.name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as problem:
        message = str(problem)
        raise error(message if message.startswith(where) else f"{where}: {message}") from None
