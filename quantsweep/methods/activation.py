"""Dynamic per-token activation fake quantization on the input of a Linear.

W8A8 / W4A4 recipes (SmoothQuant, W4A4 GPTAQ) simulate integer activations by
quantizing each token's input vector to ``bits`` on the fly, with its own scale
(per-token, dynamic), just before the matrix multiply. The hook is recorded with
:func:`quantsweep.models.snapshot.attach_hook`, so :meth:`WeightSnapshot.restore`
removes it together with the quantized weights.

Nothing here clamps or filters Inf/NaN: a non-finite input stays non-finite, so
the verdict machinery can report it.

Example:
    >>> import torch
    >>> linear = torch.nn.Linear(16, 4)
    >>> handle = attach_activation_quant(linear, bits=8)
    >>> linear(torch.randn(2, 16)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from torch import nn

from quantsweep.models.snapshot import attach_hook
from quantsweep.quant import fake_quantize_activation

ACTIVATION_BITS = (2, 3, 4, 5, 6, 7, 8)
_MARK = "_quantsweep_act_bits"


def attach_activation_quant(linear: nn.Module, bits: int, symmetric: bool = True, clip_ratio: float = 1.0):
    """Fake-quantize ``linear``'s input per token to ``bits`` on every forward call.

    Args:
        linear: the module whose first positional input is quantized (usually ``nn.Linear``).
        bits: activation bit width, 2..8.
        symmetric: symmetric integers around zero (default), or asymmetric with a zero point.
        clip_ratio: each token's range is shrunk by this factor in (0, 1] before its scale
            is set (1.0: min-max, as before clipping existed).

    Returns:
        The hook handle (also remembered on the module for ``WeightSnapshot.restore``).

    Raises:
        ValueError: unsupported ``bits``, or the module already carries an activation hook.

    Example:
        >>> import torch
        >>> linear = torch.nn.Linear(8, 2)
        >>> h = attach_activation_quant(linear, bits=4)
        >>> h.remove()
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in ACTIVATION_BITS:
        raise ValueError(f"activation bits must be one of {list(ACTIVATION_BITS)}, got {bits!r}")
    if isinstance(clip_ratio, bool) or not isinstance(clip_ratio, (int, float)) or not 0.0 < clip_ratio <= 1.0:
        raise ValueError(f"activation clip_ratio must be in (0, 1], got {clip_ratio!r}")
    if activation_bits(linear) is not None:
        raise ValueError(
            f"{type(linear).__name__} already quantizes its input to {activation_bits(linear)} bits; "
            "restore the FP weights (WeightSnapshot.restore) before attaching another"
        )

    def quantize_input(module, args):
        if not args:
            return None
        return (fake_quantize_activation(args[0], bits, symmetric, clip_ratio),) + tuple(args[1:])

    handle = linear.register_forward_pre_hook(quantize_input)
    attach_hook(linear, handle)
    # Plain attribute in __dict__ (not a buffer): it must not enter state_dict.
    linear.__dict__[_MARK] = (bits, handle.id)
    return handle


def activation_bits(linear: nn.Module) -> int | None:
    """The activation bit width a live hook applies to ``linear``'s input, or None.

    Example:
        >>> import torch
        >>> activation_bits(torch.nn.Linear(4, 4)) is None
        True
    """
    mark = linear.__dict__.get(_MARK)
    if mark is None:
        return None
    bits, hook_id = mark
    # WeightSnapshot.restore removes the handle; the mark is then stale.
    return bits if hook_id in linear._forward_pre_hooks else None
