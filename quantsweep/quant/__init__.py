"""Pure tensor math for number formats: int-k, binary and activation fake-quant, and packed codes.

Algorithms (RTN, GPTQ, AWQ, ...) live in :mod:`quantsweep.methods` and decide how
to call these functions; nothing here knows about model architectures or devices
(:mod:`quantsweep.quant.finite` only walks a module's tensors to name NaN/Inf weights).
"""

from quantsweep.quant.packed import QuantizedWeight, pack_dequantized, rtn_pack
from quantsweep.quant.primitives import (
    QuantParams,
    binarize,
    check_group_size,
    compute_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_activation,
    quantize_to_int,
    quantize_weight,
)

__all__ = [
    "QuantParams",
    "QuantizedWeight",
    "binarize",
    "check_group_size",
    "compute_qparams",
    "dequantize",
    "fake_quantize",
    "fake_quantize_activation",
    "pack_dequantized",
    "quantize_to_int",
    "quantize_weight",
    "rtn_pack",
]
