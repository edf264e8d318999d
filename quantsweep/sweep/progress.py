"""A progress bar over cells: done, running, failed and skipped, with an ETA (tqdm).

Example:
    >>> progress = CellProgress(total=6, skipped=14, enabled=False)
    >>> progress.finished("done")
    >>> progress.counts["done"], progress.counts["skipped"]
    (1, 14)
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class CellProgress:
    """Counts cells as they finish and shows them on one bar (stderr).

    Args:
        total: cells to compute in this run.
        skipped: cells already stored, not computed again.
        enabled: False for no bar (tests, quiet library use).

    Example:
        >>> bar = CellProgress(total=2, skipped=0, enabled=False)
        >>> bar.finished("failed"); bar.counts["failed"]
        1
    """

    def __init__(self, total: int, skipped: int = 0, *, enabled: bool = True, desc: str = "cells"):
        self.counts = {"done": 0, "failed": 0, "running": 0, "skipped": skipped}
        self._bar = tqdm(
            total=total, desc=desc, unit="cell", file=sys.stderr, disable=not enabled, dynamic_ncols=True, leave=True
        )
        self._refresh()

    def _refresh(self) -> None:
        self._bar.set_postfix_str(", ".join(f"{name} {n}" for name, n in self.counts.items()), refresh=True)

    def running(self, n: int) -> None:
        """Set how many cells are running now.

        Example:
            >>> bar = CellProgress(total=2, enabled=False)
            >>> bar.running(2)
            >>> bar.counts["running"]
            2
        """
        self.counts["running"] = n
        self._refresh()

    def finished(self, status: str, where: str | None = None) -> None:
        """Count one finished cell (``done`` or ``failed``), optionally saying where it ran.

        Example:
            >>> bar = CellProgress(total=2, enabled=False)
            >>> bar.finished("done", "node-1 npu:0")
        """
        self.counts[status] = self.counts.get(status, 0) + 1
        if where:
            self._bar.set_description_str(f"cells (last on {where})", refresh=False)
        self._bar.update(1)
        self._refresh()

    def close(self) -> None:
        """Close the bar.

        Example:
            >>> CellProgress(total=2, enabled=False).close()
        """
        self._bar.close()
