"""Build glue: ship the top-level ``recipes/`` and ``tasks/`` folders inside the package.

Everything else is declared in ``pyproject.toml``. The two folders stay at the top of
the repository (one source of truth) and are mapped to ``quantsweep/_shipped/...`` in
wheels and sdists; :mod:`quantsweep._paths` finds them in either place.
"""

from setuptools import find_packages, setup

SHIPPED = {"quantsweep._shipped.recipes": "recipes", "quantsweep._shipped.tasks": "tasks"}

setup(
    packages=find_packages(include=["quantsweep", "quantsweep.*"]) + list(SHIPPED),
    package_dir=SHIPPED,
    package_data={
        "quantsweep": ["py.typed", "assets/**/*", "report/templates/*"],
        "quantsweep._shipped.recipes": ["*.yaml", "sweeps/*.yaml"],
        "quantsweep._shipped.tasks": ["**/*.yaml", "**/*.py"],
    },
    exclude_package_data={"": ["__pycache__/*", "*.pyc"]},
)
