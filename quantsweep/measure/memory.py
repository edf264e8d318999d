"""Peak memory of a block of work: the device's allocator peak, or the process's peak RSS on CPU.

On CUDA and Ascend the allocator's peak counter (through :mod:`quantsweep.device`)
is reset on entry and read on exit. On CPU there is no allocator counter; the
process's peak resident set size (Linux ``VmHWM``) is reset on entry by writing
``5`` to ``/proc/self/clear_refs`` and read on exit. Where that reset is not
possible (not Linux), ``ru_maxrss`` is used and ``reset`` is False: the peak then
covers the whole process life, and says so.

Example:
    >>> with PeakMemory("cpu") as peak:
    ...     block = bytearray(50_000_000)
    >>> peak.peak_bytes >= 50_000_000, peak.kind
    (True, 'process_rss')
"""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path

import torch

from quantsweep import device as devices

logger = logging.getLogger(__name__)

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError as error:
        logger.debug("cannot reset peak RSS (%s); using the process-lifetime peak", error)
        return False


def _peak_rss_bytes() -> int:
    if _STATUS.exists():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, kB on Linux


class PeakMemory:
    """Context manager: ``peak_bytes`` and ``kind`` (``device`` or ``process_rss``) after exit.

    Attributes:
        peak_bytes: the peak, in bytes, while the block ran (None before exit).
        kind: ``device`` (allocator peak on CUDA / NPU) or ``process_rss`` (CPU).
        reset: whether the counter was reset on entry (False: a process-lifetime peak).

    Example:
        >>> with PeakMemory("cpu") as peak:
        ...     pass
        >>> peak.to_dict()["peak_memory_kind"]
        'process_rss'
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = str(device)
        self.kind = "device" if devices.has_allocator_stats(self.device) else "process_rss"
        self.peak_bytes: int | None = None
        self.reset = False

    def __enter__(self) -> PeakMemory:
        if self.kind == "device":
            devices.synchronize(self.device)
            devices.reset_peak_memory(self.device)
            self.reset = True
        else:
            self.reset = _reset_peak_rss()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.kind == "device":
            devices.synchronize(self.device)
            self.peak_bytes = devices.peak_memory_bytes(self.device)
        else:
            self.peak_bytes = _peak_rss_bytes()

    def to_dict(self) -> dict:
        """The peak as record fields.

        Example:
            >>> PeakMemory("cpu").to_dict()["peak_memory_bytes"] is None
            True
        """
        return {
            "peak_memory_bytes": self.peak_bytes,
            "peak_memory_kind": self.kind,
            "peak_memory_reset": self.reset,
            "peak_memory_device": self.device,
        }

    def eval_fields(self) -> dict:
        """The peak while evaluating, as the cell-record fields the report reads.

        Example:
            >>> PeakMemory("cpu").eval_fields()["peak_eval_memory_kind"]
            'process_rss'
        """
        return {"peak_eval_bytes": self.peak_bytes, "peak_eval_memory_kind": self.kind}
