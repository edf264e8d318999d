"""Text from the user's files, made safe to print: control characters shown, never sent raw.

A recipe, model or task name comes from the user's files; an escape sequence in it must
not reach the terminal or a log. This module imports nothing from quantsweep, so every
layer may use it.

Example:
    >>> safe_text("w4\\x1b[31m-red")
    'w4\\\\x1b[31m-red'
"""

from __future__ import annotations

from typing import Any


def safe_text(text: Any, keep: str = "", limit: int | None = None) -> str:
    """``text`` (made a string) with control characters (ANSI escapes among them) as ``\\x..``.

    Args:
        text: anything; ``str(text)`` is escaped.
        keep: characters passed through as they are (``"\\n\\t"`` for a log line of several lines).
        limit: keep only the first ``limit`` characters of ``str(text)`` (None: all).

    Example:
        >>> safe_text("a\\tb\\x07", keep="\\t")
        'a\\tb\\\\x07'
        >>> safe_text("abcdef", limit=3)
        'abc'
    """
    text = str(text) if limit is None else str(text)[:limit]
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)
