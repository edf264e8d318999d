"""One name, one meaning, per store: the resolved config behind every recipe name and model name.

A cell's key hashes its content, not its name, so two different recipes given one name
(a 1-bit recipe wrongly called ``w8-rtn``, then the real ``w8-rtn``) would land in one
store as two cells under one name, and a view could show the wrong one. The store
therefore remembers, in ``names/<kind>-<hash>.json``, the config each name stood for
when it first came, and a later run that brings another config under that name is
refused before any work, naming the differences.

A name file is created exclusively (written whole, then hard-linked into place), so two
runs that race to give one name two meanings cannot both win. A name file that does not
parse is set aside and written again from the run at hand; one that cannot be read at all
(permission denied, an I/O error) is refused, never set aside.

* a recipe name stands for its resolved config (its description aside);
* a model name stands for its checkpoint's fingerprint, its dtype as given, whether it
  trusts remote code, and its calibration (source, size, seed, a local file's digest).

Stores written before this file kept no names; their names are recorded from the first
run that brings them, and earlier cells are not checked.

Example:
    >>> import tempfile
    >>> from quantsweep.sweep.store import CellStore
    >>> store = CellStore(tempfile.mkdtemp())
    >>> remember(store, "recipe", "w8-rtn", {"method": "rtn", "bits": 8})
    >>> remember(store, "recipe", "w8-rtn", {"method": "rtn", "bits": 1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    quantsweep.sweep.store.StoreError: recipe name 'w8-rtn' already means another recipe in ...: bits is 8 there, 1 here; ...
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from quantsweep.sweep.store import PARSE_ERRORS, StoreError, create_exclusive, jsonable, set_aside

NAMES_DIR = "names"


def _path(store, kind: str, name: str) -> Path:
    digest = hashlib.sha256(f"{kind}\0{name}".encode()).hexdigest()[:16]
    return store.directory / NAMES_DIR / f"{kind}-{digest}.json"


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def differences(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """The fields in which two configs differ, as ``field is A there, B here`` (nested fields dotted).

    Example:
        >>> differences({"bits": 8, "group": {"size": 128}}, {"bits": 1, "group": {"size": 128}})
        ['bits is 8 there, 1 here']
    """
    there, here = _flat(jsonable(stored)), _flat(jsonable(given))
    missing = object()
    out = []
    for field in sorted(set(there) | set(here)):
        a, b = there.get(field, missing), here.get(field, missing)
        if a != b:
            show = lambda v: "absent" if v is missing else json.dumps(v)  # noqa: E731 - local formatter
            out.append(f"{field} is {show(a)} there, {show(b)} here")
    return out


def _read(path: Path) -> dict[str, Any] | None:
    """A name record, or None when absent or set aside; a file that cannot be read is refused, never set aside."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except PARSE_ERRORS as error:
        set_aside(path, f"{type(error).__name__}: {error}", "the name is recorded again from this run")
        return None
    except OSError as error:  # permission denied, an I/O error: the meaning it holds may be right
        raise StoreError(
            f"cannot read the name file {path} ({error.strerror or error}); nothing was run: "
            "make it readable or use another --out folder"
        ) from None
    if not isinstance(data, dict) or "config" not in data:
        set_aside(path, "not a name record", "the name is recorded again from this run")
        return None
    return data


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Record a name unless another run recorded it first (then False: its meaning is compared instead)."""
    path.parent.mkdir(exist_ok=True)
    return create_exclusive(path, json.dumps(record, sort_keys=True))


def remember(store, kind: str, name: str, config: dict[str, Any]) -> None:
    """Record that ``name`` (a ``recipe`` or ``model``) means ``config`` in ``store``, or refuse another meaning.

    Raises:
        StoreError: the store already holds ``name`` with another config; the message
            names the store and each differing field.

    Example:
        >>> import tempfile
        >>> from quantsweep.sweep.store import CellStore
        >>> store = CellStore(tempfile.mkdtemp())
        >>> remember(store, "model", "toy", {"fingerprint": "abc"})
        >>> remember(store, "model", "toy", {"fingerprint": "abc"})  # the same meaning again: accepted
    """
    path = _path(store, kind, name)
    given = jsonable(config)
    for _ in range(3):
        stored = _read(path)
        if stored is None:
            if _create(path, {"kind": kind, "name": name, "config": given}):
                return
            continue  # another run recorded it meanwhile: compare with that
        found = differences(stored["config"], given)
        if not found:
            return
        shown = "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
        raise StoreError(
            f"{kind} name {name!r} already means another {kind} in {store.directory}: {shown}; nothing was run: "
            f"give this {kind} another name, or use another --out folder (the store's meaning is in {path})"
        )
    raise StoreError(f"could not record the {kind} name {name!r} in {path.parent}")


def model_meaning(cell) -> dict[str, Any]:
    """What a planned cell's model name stands for (see the module docstring).

    Example:
        >>> from quantsweep.sweep.plan import plan_cells
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> cell = plan_cells(spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"]})).cells[0]
        >>> sorted(model_meaning(cell))
        ['calibration', 'dtype', 'fingerprint', 'trust_remote_code']
    """
    from quantsweep.sweep.plan import calibration_fields

    return {
        "fingerprint": cell.key_fields["model"],
        "dtype": cell.model.dtype,
        "trust_remote_code": cell.model.trust_remote_code,
        "calibration": calibration_fields(cell.model),
    }


def recipe_meaning(recipe) -> dict[str, Any]:
    """What a recipe name stands for: its resolved config, its description aside.

    Example:
        >>> from quantsweep.recipes import get_recipe
        >>> recipe_meaning(get_recipe("w8-rtn"))["bits"]
        8
    """
    return {key: value for key, value in recipe.to_dict().items() if key != "description"}


def claim_names(store, plan) -> None:
    """Check and record every recipe and model name of ``plan`` in ``store`` (before any work).

    Every clash is found before any name is recorded, so a refused run leaves no trace.

    Raises:
        StoreError: a name the store already holds with another meaning.

    Example:
        >>> import tempfile
        >>> from quantsweep.sweep.plan import plan_cells
        >>> from quantsweep.sweep.spec import spec_from_dict
        >>> from quantsweep.sweep.store import CellStore
        >>> plan = plan_cells(spec_from_dict({"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"]}))
        >>> claim_names(CellStore(tempfile.mkdtemp()), plan)
    """
    meanings: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in plan.cells:
        meanings.setdefault(("recipe", cell.recipe.name), recipe_meaning(cell.recipe))
        meanings.setdefault(("model", cell.model.name), model_meaning(cell))
    for (kind, name), config in meanings.items():  # look first: a refusal records nothing
        stored = _read(_path(store, kind, name))
        if stored is not None and differences(stored["config"], jsonable(config)):
            remember(store, kind, name, config)  # raises, naming the differences
    for (kind, name), config in meanings.items():
        remember(store, kind, name, config)
