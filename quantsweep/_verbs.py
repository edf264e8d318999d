"""Subpackages that are also verbs: ``quantsweep.sweep(...)`` and ``quantsweep.report(...)``.

``quantsweep.sweep`` is the package of the sweep machinery and the function that runs
a sweep; ``quantsweep.report`` likewise. Making the package module callable keeps both
meanings whichever is imported first, with no import-order surprises.

Example:
    >>> import quantsweep
    >>> callable(quantsweep.sweep) and callable(quantsweep.report)
    True
"""

from __future__ import annotations

import importlib
import sys
import types


def make_callable(module_name: str, target: str) -> None:
    """Make the module ``module_name`` callable, forwarding calls to ``"package.module:function"``.

    The target is imported at call time, so the package import stays light.

    Example:
        >>> import sys, types
        >>> sys.modules["demo_verb"] = types.ModuleType("demo_verb")
        >>> make_callable("demo_verb", "math:hypot")
        >>> import demo_verb
        >>> demo_verb(3, 4)
        5.0
        >>> del sys.modules["demo_verb"]
    """
    module_path, function_name = target.split(":")

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(module_path), function_name)(*args, **kwargs)

    _CallableModule.__call__.__doc__ = f"Forwards to :func:`{module_path}.{function_name}`."
    sys.modules[module_name].__class__ = _CallableModule
