"""What a method returns: its report and its quantized representation, never a side channel.

A method registered with :func:`quantsweep.methods.registry.register_method` quantizes the
model in place and returns a :class:`QuantizationResult`. The runner records the
report (per-layer seconds and peak memory) with each cell; export and real kernels
use ``packed``. Returning the model or ``None`` (older user methods) is still
accepted and means "no report, nothing packed".

Example:
    >>> result = QuantizationResult(method="rtn")
    >>> result.kernel
    'fake-quant'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KERNELS = ("none", "fake-quant", "bitsandbytes")


@dataclass
class QuantizationResult:
    """The outcome of one method applied to one model.

    Attributes:
        method: the registered method's name, e.g. ``gptq``.
        report: plain data about the work: ``{"layers": [...], "total_seconds": ...}``
            for layer-by-layer methods (see :func:`layer_report`), else ``None``.
        packed: module name -> quantized representation (integer codes, scales,
            zero points, group index) for methods that have one; empty otherwise.
        kernel: how evaluation runs the weights: ``fake-quant`` (dequantized floats in
            an fp model), ``bitsandbytes`` (real low-bit modules) or ``none`` (fp).
        extra_parameters: parameters a stage added to the model that the format must store
            (a learned rotation matrix: n x n; an online Hadamard transform: none).

    Example:
        >>> QuantizationResult(method="none", kernel="none").packed
        {}
    """

    method: str
    report: dict[str, Any] | None = None
    packed: dict[str, Any] = field(default_factory=dict)
    kernel: str = "fake-quant"
    extra_parameters: int = 0

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")

    def layer_seconds(self) -> list[float] | None:
        """Quantization wall time of each decoder layer, for layer-by-layer methods.

        Example:
            >>> QuantizationResult(method="x", report={"layers": [{"seconds": 0.5}]}).layer_seconds()
            [0.5]
        """
        if not self.report:
            return None
        return [layer["seconds"] for layer in self.report.get("layers", [])]

    def peak_device_bytes(self) -> int | None:
        """The largest per-layer device peak, or None where it was not measured (CPU).

        Example:
            >>> QuantizationResult(method="x", report={"layers": [{"peak_device_bytes": 7}]}).peak_device_bytes()
            7
        """
        peaks = [layer.get("peak_device_bytes") for layer in (self.report or {}).get("layers", [])]
        peaks = [p for p in peaks if p is not None]
        return max(peaks) if peaks else None


def layer_report(reports) -> dict[str, Any]:
    """Plain data from a list of :class:`~quantsweep.methods.engine.sequential.LayerReport`.

    Example:
        >>> layer_report([])["total_seconds"]
        0
    """
    return {
        "layers": [report.to_dict() for report in reports],
        "total_seconds": sum(report.seconds for report in reports),
    }
