"""The ``none`` method: the model as loaded, the full-precision baseline (recipe ``fp``).

Example:
    >>> quantsweep.quantize(model, "fp") is model  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from quantsweep.methods.registry import RecipeConfig, register_method
from quantsweep.methods.result import QuantizationResult


@dataclass(frozen=True, kw_only=True)
class NoQuantConfig(RecipeConfig):
    """No quantization: the baseline every other recipe is compared with."""


@register_method("none", config=NoQuantConfig)
def apply_none(model, config: NoQuantConfig, calibration=None):
    """Leave the model untouched.

    Example:
        >>> apply_none(model, NoQuantConfig(name="fp", method="none")).kernel  # doctest: +SKIP
        'none'
    """
    return QuantizationResult(method="none", kernel="none")
