"""Keep a full-precision copy of a model's weights so recipes can be applied one after another.

``quantsweep run`` loads a model once; before each recipe it restores the
weights captured here and removes any activation-quantization hooks a previous
recipe attached.

Example:
    >>> snapshot = WeightSnapshot(model)  # doctest: +SKIP
    >>> quantsweep.quantize(model, "w2-rtn")  # doctest: +SKIP
    >>> snapshot.restore(model)  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

HOOK_ATTRIBUTE = "_quantsweep_hooks"


def attach_hook(module: nn.Module, handle) -> None:
    """Remember a hook handle on ``module`` so :meth:`WeightSnapshot.restore` can remove it.

    Example:
        >>> attach_hook(linear, linear.register_forward_pre_hook(fn))  # doctest: +SKIP
    """
    handles = module.__dict__.setdefault(HOOK_ATTRIBUTE, [])
    handles.append(handle)


def remove_hooks(model: nn.Module) -> int:
    """Remove every hook quantsweep attached below ``model``; return how many.

    Example:
        >>> remove_hooks(model)  # doctest: +SKIP
        0
    """
    removed = 0
    for module in model.modules():
        for handle in module.__dict__.pop(HOOK_ATTRIBUTE, []):
            handle.remove()
            removed += 1
    return removed


class WeightSnapshot:
    """A host-memory copy of every parameter and buffer of a model.

    Costs one extra copy of the weights in host memory (not on the device).

    Example:
        >>> snapshot = WeightSnapshot(model)  # doctest: +SKIP
        >>> snapshot.restore(model)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module):
        with torch.no_grad():
            self._tensors = {
                name: tensor.detach().to("cpu", copy=True)
                for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
            }

    def restore(self, model: nn.Module) -> None:
        """Copy the saved values back in place and remove quantsweep hooks.

        Example:
            >>> snapshot.restore(model)  # doctest: +SKIP
        """
        remove_hooks(model)
        current = dict(model.named_parameters())
        current.update(dict(model.named_buffers()))
        missing = set(self._tensors) ^ set(current)
        if missing:
            raise ValueError(f"model structure changed since the snapshot: {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, saved in self._tensors.items():
                current[name].copy_(saved.to(current[name].device))
