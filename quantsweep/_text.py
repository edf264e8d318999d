"""Text in and out: names from the user's files made safe to print, and files read as UTF-8 naming a bad line.

A recipe, model or task name comes from the user's files; an escape sequence in it must
not reach the terminal or a log. A data or calibration file that is not UTF-8 is named by
file and line. This module imports nothing from quantsweep, so every layer may use it.

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


def decode_utf8(raw: bytes, path: Any, first_line: int = 1) -> str:
    """``raw`` (the bytes of ``path`` from line ``first_line`` on) as text, or a ValueError naming the line.

    Raises:
        ValueError: ``path:line: not UTF-8 text (why at byte N)``, the line counted as an editor does.

    Example:
        >>> decode_utf8(b"one\\ntwo", "a.txt")
        'one\\ntwo'
        >>> decode_utf8(b"one\\ntw\\xff", "a.txt")
        Traceback (most recent call last):
        ValueError: a.txt:2: not UTF-8 text (invalid start byte at byte 6)
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + raw[: error.start].count(b"\n")
        raise ValueError(f"{path}:{line}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_utf8(path: Any) -> str:
    """The file at ``path`` as UTF-8 text; a byte that is not UTF-8 is named by file and line.

    Raises:
        ValueError: ``path:line: not UTF-8 text (...)`` (see :func:`decode_utf8`).
        OSError: the file cannot be read.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> bad = Path(tempfile.mkdtemp()) / "bad.txt"
        >>> _ = bad.write_bytes(b"fine\\n\\xff")
        >>> read_utf8(bad)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: ...bad.txt:2: not UTF-8 text (invalid start byte at byte 5)
    """
    with open(path, "rb") as handle:
        return decode_utf8(handle.read(), path)
