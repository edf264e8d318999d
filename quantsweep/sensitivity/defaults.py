"""The sensitivity scan's defaults, apart from the scan so that the CLI reads them without loading torch.

Example:
    >>> DEFAULT_TOKENS
    4096
"""

from __future__ import annotations

DEFAULT_TOKENS = 4096  # tokens of text each unit is measured on (rounded up to whole windows)
