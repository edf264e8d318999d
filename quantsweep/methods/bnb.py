"""bitsandbytes recipes: real low-bit kernels, LLM.int8() and 4-bit NF4 / FP4.

Unlike the fake-quant methods, these replace every decoder Linear with
bitsandbytes' own module (``bnb.nn.Linear8bitLt`` or ``bnb.nn.Linear4bit``), so the
model evaluated holds int8 or packed 4-bit weights and runs bitsandbytes' kernels.

* ``int8``: LLM.int8() (Dettmers et al., 2022). Per-output-row absmax int8 weights;
  activations are quantized per token at run time, and input features whose
  magnitude exceeds ``threshold`` (6.0 in the paper) run in floating point instead.
  ``threshold: 0`` turns that mixed-precision decomposition off.
* ``nf4`` / ``fp4``: QLoRA's 4-bit data types, one absmax per ``blocksize`` weights;
  ``double_quant`` also quantizes those absmax values. The matmul runs in
  ``compute_dtype`` (``auto``: the model's dtype).

Where bitsandbytes runs is decided by :func:`quantsweep.device.check_bitsandbytes_device`
(CPU since 0.48, CUDA; not Ascend NPU). The swap is undone by
:meth:`quantsweep.models.snapshot.WeightSnapshot.restore`.

Example:
    >>> import quantsweep
    >>> model, _ = quantsweep.load_model("toy")
    >>> result = quantsweep.apply_recipe(model, "w8-bnb")
    >>> result.kernel
    'bitsandbytes'
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from quantsweep import device as devices
from quantsweep.methods.registry import RecipeConfig, RecipeError, register_method
from quantsweep.methods.result import QuantizationResult

logger = logging.getLogger(__name__)

BNB_QUANT_TYPES = {"int8": 8, "nf4": 4, "fp4": 4}
COMPUTE_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class BitsAndBytesConfig(RecipeConfig):
    """A bitsandbytes module swap of every decoder Linear.

    Attributes:
        quant_type: ``int8`` (LLM.int8()), ``nf4`` or ``fp4``.
        threshold: int8 only: activation magnitude above which an input feature runs in
            floating point (LLM.int8()'s outlier decomposition); 0 disables it.
        blocksize: 4-bit only: weights per absmax block (64 as in QLoRA).
        double_quant: 4-bit only: also quantize the absmax values (QLoRA's double quantization).
        compute_dtype: 4-bit only: dtype of the matmul; ``auto`` is the model's dtype.

    Example:
        >>> BitsAndBytesConfig(name="w4-bnb-nf4", method="bnb", quant_type="nf4").bits
        4
    """

    quant_type: str = "int8"
    threshold: float = 6.0
    blocksize: int = 64
    double_quant: bool = False
    compute_dtype: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quant_type not in BNB_QUANT_TYPES:
            raise RecipeError(
                f"recipe {self.name!r}: quant_type must be one of {', '.join(BNB_QUANT_TYPES)}, got {self.quant_type!r}"
            )
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise RecipeError(
                f"recipe {self.name!r}: compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, "
                f"got {self.compute_dtype!r}"
            )
        if self.threshold < 0:
            raise RecipeError(f"recipe {self.name!r}: threshold must be >= 0, got {self.threshold}")
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise RecipeError(
                f"recipe {self.name!r}: blocksize must be a power of two from 32 to 4096, got {self.blocksize}"
            )
        if self.quantize_embeddings or self.quantize_lm_head:
            raise RecipeError(
                f"recipe {self.name!r}: bitsandbytes recipes quantize decoder Linears only; "
                "set quantize_embeddings and quantize_lm_head to false"
            )

    @property
    def bits(self) -> int:
        """Bits per stored weight: 8 for int8, 4 for nf4 / fp4."""
        return BNB_QUANT_TYPES[self.quant_type]


def _bnb_linear(bnb, linear: nn.Linear, config: BitsAndBytesConfig, device: torch.device) -> nn.Module:
    """A bitsandbytes module holding ``linear``'s weight, quantized on ``device``."""
    weight = linear.weight.detach().to("cpu", copy=True)
    has_bias = linear.bias is not None
    if config.quant_type == "int8":
        module = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False, threshold=config.threshold
        )
        module.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        compute = COMPUTE_DTYPES[config.compute_dtype] or linear.weight.dtype
        module = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            compute_dtype=compute,
            compress_statistics=config.double_quant,
            quant_type=config.quant_type,
        )
        module.weight = bnb.nn.Params4bit(
            weight,
            requires_grad=False,
            quant_type=config.quant_type,
            blocksize=config.blocksize,
            compress_statistics=config.double_quant,
        )
    if has_bias:
        module.bias = nn.Parameter(linear.bias.detach().to("cpu", copy=True), requires_grad=False)
    return module.to(device)  # bitsandbytes quantizes the weight when it is moved to its device


class _OnceFilter(logging.Filter):
    """Let each distinct message through once: bitsandbytes warns on every int8 forward pass."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _quiet_repeated_warnings() -> None:
    noisy = logging.getLogger("bitsandbytes.autograd._functions")  # "inputs will be cast ... to float16"
    if not any(isinstance(f, _OnceFilter) for f in noisy.filters):
        noisy.addFilter(_OnceFilter())


def import_bitsandbytes(device: torch.device | str):
    """Check the device with :mod:`quantsweep.device`, then import bitsandbytes.

    Raises:
        ValueError: bitsandbytes is missing (names the ``bnb`` extra) or does not run on ``device``.

    Example:
        >>> import_bitsandbytes("cpu").__name__
        'bitsandbytes'
    """
    devices.check_bitsandbytes_device(device)
    import bitsandbytes

    _quiet_repeated_warnings()
    return bitsandbytes


@register_method("bnb", config=BitsAndBytesConfig)
def apply_bnb(model: nn.Module, config: BitsAndBytesConfig, calibration=None) -> QuantizationResult:
    """Replace every decoder Linear of ``model`` with a bitsandbytes module, in place.

    Raises:
        ValueError: bitsandbytes is not installed, or the model's device is one the
            installed release does not support (both before any module is swapped).

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> apply_bnb(model, quantsweep.get_recipe("w8-bnb")).report["modules"]
        28
    """
    from quantsweep.models.layout import decoder_linears
    from quantsweep.models.snapshot import swap_module

    device = next(model.parameters()).device
    bnb = import_bitsandbytes(device)
    linears = decoder_linears(model)
    for name, linear in linears.items():
        swap_module(model, name, _bnb_linear(bnb, linear, config, device))
    logger.info("bnb: %d Linears now bitsandbytes %s modules on %s", len(linears), config.quant_type, device)
    return QuantizationResult(
        method="bnb",
        kernel="bitsandbytes",
        report={
            "modules": len(linears),
            "quant_type": config.quant_type,
            "bitsandbytes_version": devices.bitsandbytes_version(),
        },
    )
