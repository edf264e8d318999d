"""The ``none`` method: the model as loaded, the full-precision baseline (recipe ``fp``).

Example:
    >>> import quantsweep
    >>> model, _ = quantsweep.load_model("toy")
    >>> quantsweep.quantize(model, "fp") is model
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from quantsweep.methods.registry import RecipeConfig, register_method
from quantsweep.methods.result import QuantizationResult


@dataclass(frozen=True, kw_only=True)
class NoQuantConfig(RecipeConfig):
    """No quantization: the baseline every other recipe is compared with.

    Example:
        >>> NoQuantConfig(name="fp", method="none").description
        ''
    """


@register_method("none", config=NoQuantConfig)
def apply_none(model, config: NoQuantConfig, calibration=None):
    """Leave the model untouched.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> apply_none(model, NoQuantConfig(name="fp", method="none")).kernel
        'none'
    """
    return QuantizationResult(method="none", kernel="none")
