"""Keep a full-precision copy of a model's weights so recipes can be applied one after another.

``quantsweep run`` loads a model once; before each recipe it restores the
weights captured here, removes any activation-quantization hooks a previous
recipe attached, and puts back any module a recipe swapped out (bitsandbytes
recipes replace Linears with bitsandbytes modules: see :func:`swap_module`).

Example:
    >>> import quantsweep
    >>> model, _ = quantsweep.load_model("toy")
    >>> weight = model.model.layers[0].mlp.up_proj.weight
    >>> before = weight.clone()
    >>> snapshot = WeightSnapshot(model)
    >>> _ = quantsweep.quantize(model, "w2-rtn")
    >>> torch.equal(weight, before)
    False
    >>> snapshot.restore(model)
    >>> torch.equal(weight, before)
    True
"""

from __future__ import annotations

import torch
from torch import nn

HOOK_ATTRIBUTE = "_quantsweep_hooks"


def attach_hook(module: nn.Module, handle) -> None:
    """Remember a hook handle on ``module`` so :meth:`WeightSnapshot.restore` can remove it.

    Example:
        >>> linear = nn.Linear(4, 4)
        >>> attach_hook(linear, linear.register_forward_pre_hook(lambda module, args: None))
        >>> remove_hooks(linear)
        1
    """
    handles = module.__dict__.setdefault(HOOK_ATTRIBUTE, [])
    handles.append(handle)


def remove_hooks(model: nn.Module) -> int:
    """Remove every hook quantsweep attached below ``model``; return how many.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        >>> attach_hook(model[0], model[0].register_forward_hook(lambda module, args, out: None))
        >>> remove_hooks(model), remove_hooks(model)
        (1, 0)
    """
    removed = 0
    for module in model.modules():
        for handle in module.__dict__.pop(HOOK_ATTRIBUTE, []):
            handle.remove()
            removed += 1
    return removed


def swap_module(model: nn.Module, name: str, replacement: nn.Module) -> nn.Module:
    """Put ``replacement`` at ``name`` in ``model`` and return the module it replaced.

    The replaced module's own tensors are released (set to empty) so the swap really
    frees their memory; :meth:`WeightSnapshot.restore` puts the module back and
    refills them from the snapshot.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        >>> snapshot = WeightSnapshot(model)
        >>> original = swap_module(model, "0", nn.Identity())
        >>> type(model[0]).__name__, original.weight.numel()
        ('Identity', 0)
        >>> snapshot.restore(model)
        >>> model[0] is original, original.weight.shape
        (True, torch.Size([4, 4]))
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = getattr(parent, child)
    setattr(parent, child, replacement)
    with torch.no_grad():
        for tensor in list(original.parameters(recurse=False)) + list(original.buffers(recurse=False)):
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return original


class WeightSnapshot:
    """A host-memory copy of every parameter and buffer of a model.

    Costs one extra copy of the weights in host memory (not on the device).

    Example:
        >>> model = nn.Linear(4, 4)
        >>> before = model.weight.clone()
        >>> snapshot = WeightSnapshot(model)
        >>> _ = model.weight.data.zero_()
        >>> snapshot.restore(model)
        >>> torch.equal(model.weight, before)
        True
    """

    def __init__(self, model: nn.Module):
        with torch.no_grad():
            self._tensors = {
                name: tensor.detach().to("cpu", copy=True)
                for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
            }
        # References only (no copies): which module object sat at each path, to undo swaps.
        self._modules = dict(model.named_modules())
        # Which Parameter object each module holds, to undo an untie (rotation gives a tied
        # lm_head its own weight) or any other replaced Parameter.
        self._parameter_objects = [
            (module, key, parameter)
            for module in self._modules.values()
            for key, parameter in module._parameters.items()
            if parameter is not None
        ]
        self._tie_word_embeddings = getattr(getattr(model, "config", None), "tie_word_embeddings", None)

    def _undo_swaps(self, model: nn.Module) -> int:
        current = dict(model.named_modules())
        swapped = [
            name for name, module in self._modules.items() if name and name in current and current[name] is not module
        ]
        for name in sorted(swapped, key=lambda n: n.count(".")):  # outermost first
            parent_name, _, child = name.rpartition(".")
            parent = self._modules[parent_name] if parent_name else model
            setattr(parent, child, self._modules[name])
        return len(swapped)

    def _retie(self, model: nn.Module) -> None:
        for module, key, parameter in self._parameter_objects:
            if module._parameters.get(key) is not parameter:
                module._parameters[key] = parameter
        config = getattr(model, "config", None)
        if self._tie_word_embeddings is not None and config is not None:
            config.tie_word_embeddings = self._tie_word_embeddings

    def restore(self, model: nn.Module) -> None:
        """Put swapped modules and replaced (e.g. untied) parameters back, copy the saved values
        back in place and remove quantsweep hooks.

        Example:
            >>> model = nn.Linear(2, 2)
            >>> snapshot = WeightSnapshot(model)
            >>> _ = model.bias.data.fill_(7.0)
            >>> snapshot.restore(model)
            >>> bool((model.bias == 7.0).any())
            False
        """
        remove_hooks(model)
        self._undo_swaps(model)
        self._retie(model)
        current = dict(model.named_parameters())
        current.update(dict(model.named_buffers()))
        missing = set(self._tensors) ^ set(current)
        if missing:
            raise ValueError(f"model structure changed since the snapshot: {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, saved in self._tensors.items():
                target = current[name]
                if target.shape != saved.shape:  # released by swap_module: refill it
                    target.data = saved.to(target.device, copy=True)
                else:
                    target.copy_(saved.to(target.device))
