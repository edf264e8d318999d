"""Non-finite weights: find them, name them, and refuse where a method or format cannot carry them.

A checkpoint with a NaN or Inf weight is broken, and quantization must not make it look
repaired. The quantizers keep such weights non-finite (:mod:`quantsweep.quant.primitives`);
methods that cannot run on them at all (the Hessian methods, whose calibration activations
turn non-finite past the broken module) and formats that cannot store them (integer codes
in a GPTQ checkpoint) refuse with :class:`NonFiniteWeightsError`, naming the module.

Example:
    >>> import torch
    >>> layer = torch.nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     layer.weight[0, 0] = float("inf")
    >>> nonfinite_weights(layer)
    {'weight': '1 Inf of 8'}
"""

from __future__ import annotations

import torch
from torch import nn


class NonFiniteWeightsError(ValueError):
    """A method or format was asked to quantize or store weights that hold NaN or Inf."""


def _count(tensor: torch.Tensor) -> str | None:
    data = tensor.detach()
    if not data.is_floating_point():
        return None
    bad = ~torch.isfinite(data)
    if not bool(bad.any()):
        return None
    nan = int(torch.isnan(data).sum())
    inf = int(bad.sum()) - nan
    parts = [f"{inf} Inf"] * bool(inf) + [f"{nan} NaN"] * bool(nan)
    return f"{' and '.join(parts)} of {data.numel()}"


def nonfinite_weights(model: nn.Module) -> dict[str, str]:
    """Each parameter or buffer holding NaN or Inf, with how many of each.

    Example:
        >>> nonfinite_weights(torch.nn.Linear(2, 2))
        {}
    """
    found = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        counted = _count(tensor)
        if counted is not None:
            found[name] = counted
    return found


def describe(found: dict[str, str], limit: int = 3) -> str:
    """``found`` in words: ``name (1 Inf of 8)``, the first ``limit`` names, then how many more.

    Example:
        >>> describe({"a.weight": "1 Inf of 8", "b.weight": "2 NaN of 8"}, limit=1)
        'a.weight (1 Inf of 8) and 1 more'
    """
    names = [f"{name} ({what})" for name, what in list(found.items())[:limit]]
    more = len(found) - len(names)
    return ", ".join(names) + (f" and {more} more" if more else "")


def require_finite_weights(model: nn.Module, what: str, why: str) -> None:
    """Refuse, naming the modules, when ``model`` holds a NaN or Inf weight.

    Args:
        model: the model (or module) about to be quantized or stored.
        what: who refuses, e.g. ``"gptq (w4-gptq)"`` or ``"the GPTQ export"``.
        why: why it cannot carry a non-finite weight.

    Raises:
        NonFiniteWeightsError: naming each module with a non-finite weight.

    Example:
        >>> layer = torch.nn.Linear(2, 2)
        >>> require_finite_weights(layer, "the test", "it cannot")
        >>> with torch.no_grad():
        ...     layer.bias[0] = float("nan")
        >>> require_finite_weights(layer, "the test", "it cannot")
        Traceback (most recent call last):
        quantsweep.quant.finite.NonFiniteWeightsError: the checkpoint has non-finite weights in bias (1 NaN of 2); the test refuses: it cannot
    """
    found = nonfinite_weights(model)
    if found:
        raise NonFiniteWeightsError(
            f"the checkpoint has non-finite weights in {describe(found)}; {what} refuses: {why}"
        )
