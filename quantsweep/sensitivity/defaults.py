"""The sensitivity scan's defaults, apart from the scan so that the CLI reads them without loading torch.

Example:
    >>> DEFAULT_TOKENS, TEXT_SEED_OFFSET
    (4096, 1)
"""

from __future__ import annotations

DEFAULT_TOKENS = 4096  # tokens of text each unit is measured on (rounded up to whole windows)
TEXT_SEED_OFFSET = 1  # the scan text's windows are drawn with the calibration seed + 1: not the calibration's windows
