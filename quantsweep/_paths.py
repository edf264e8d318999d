"""Where the data that ships with quantsweep lives: ``recipes/`` and ``tasks/``.

In the repository both folders sit at the top, beside ``quantsweep/`` (the design
card's layout). A wheel or sdist carries them inside the package, as
``quantsweep/_shipped/recipes`` and ``quantsweep/_shipped/tasks`` (``setup.py``
maps the top-level folders there at build time, so the files exist in one place
only). This module is the one place that knows both locations.

Example:
    >>> shipped_dir("recipes").name
    'recipes'
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_NAMES = ("recipes", "tasks")


def shipped_dir(name: str) -> Path:
    """The folder of shipped ``recipes`` or ``tasks``, installed or in a checkout.

    Raises:
        ValueError: ``name`` is not one of the shipped folders.

    Example:
        >>> (shipped_dir("tasks") / "toy").is_dir()
        True
    """
    if name not in SHIPPED_NAMES:
        raise ValueError(f"unknown shipped folder {name!r}; one of {', '.join(SHIPPED_NAMES)}")
    installed = _PACKAGE_DIR / "_shipped" / name
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / name
