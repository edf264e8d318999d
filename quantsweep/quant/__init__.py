"""Pure tensor math for number formats: int-k, binary and activation fake-quant.

Algorithms (RTN, GPTQ, AWQ, ...) live in :mod:`quantsweep.methods` and decide how
to call these functions; nothing here knows about models or devices.
"""

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
    "binarize",
    "check_group_size",
    "compute_qparams",
    "dequantize",
    "fake_quantize",
    "fake_quantize_activation",
    "quantize_to_int",
    "quantize_weight",
]
