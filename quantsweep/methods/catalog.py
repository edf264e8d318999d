"""Which methods exist: the built-in method modules, loaded by name, and lookups over the registry.

This module sits one floor above the method files: it imports each module named in
:data:`BUILTIN_METHOD_MODULES` (which register themselves with
:func:`quantsweep.methods.registry.register_method`) the first time a method is looked
up. Method files import the registry, never this module, so the lazy loading draws no
import circle.

Example:
    >>> get_method("gptq").needs_calibration
    True
"""

from __future__ import annotations

import importlib

from quantsweep._schema import did_you_mean
from quantsweep.methods.registry import MethodSpec, RecipeError, registered_methods

# The modules that register the built-in methods, imported by name on first lookup.
BUILTIN_METHOD_MODULES = (
    "quantsweep.methods.none",
    "quantsweep.methods.rtn",
    "quantsweep.methods.awq",
    "quantsweep.methods.smoothquant",
    "quantsweep.methods.gptq",
    "quantsweep.methods.gptaq",
    "quantsweep.methods.billm",
    "quantsweep.methods.slim_llm",
    "quantsweep.methods.bnb",
)
_builtins_loaded = False


def _load_builtin_methods() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in BUILTIN_METHOD_MODULES:
        importlib.import_module(module)


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name``.

    Raises:
        RecipeError: no method of that name, with close matches and the registered names.

    Example:
        >>> get_method("rtn").name
        'rtn'
    """
    _load_builtin_methods()
    if name not in registered_methods():
        raise RecipeError(
            f"unknown method {name!r}{did_you_mean(name, registered_methods())}; registered: {', '.join(sorted(registered_methods()))}"
        )
    return registered_methods()[name]


def list_methods() -> list[str]:
    """Names of all registered methods.

    Example:
        >>> "rtn" in list_methods()
        True
    """
    _load_builtin_methods()
    return sorted(registered_methods())
