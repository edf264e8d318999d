"""Per-cell log files: quantsweep's and lm-eval's log records of one cell go to that cell's log.

Example:
    >>> import logging, tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "cell.log"
    >>> with cell_log(path):
    ...     logging.getLogger("quantsweep.sweep").info("evaluating")
    >>> "evaluating" in path.read_text()
    True
"""

from __future__ import annotations

import contextlib
import logging

_LOGGED_PACKAGES = ("quantsweep", "lm_eval", "lm-eval")


class _AsBefore(logging.Filter):
    """Keeps a handler showing exactly what it showed before a cell lowered the logger levels."""

    def __init__(self, levels: dict[str, int]):
        super().__init__()
        self.levels = levels

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".", 1)[0]
        return record.levelno >= self.levels.get(top, logging.NOTSET)


@contextlib.contextmanager
def cell_log(path):
    """Send quantsweep's and lm-eval's log records (INFO and up) to ``path`` for the duration of a cell.

    Handlers that existed before (the console) keep showing only what they showed before.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with cell_log(Path(tempfile.mkdtemp()) / "x.log"):
        ...     pass
    """
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in _LOGGED_PACKAGES]
    levels = [lg.level for lg in loggers]
    keep = _AsBefore({lg.name: lg.getEffectiveLevel() for lg in loggers})
    others = {h for lg in [logging.getLogger(), *loggers] for h in lg.handlers}
    for other in others:
        other.addFilter(keep)
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        for other in others:
            other.removeFilter(keep)
        handler.close()
