"""Reports of a sweep's results.

- :mod:`~quantsweep.report.text`: the plain-text table the CLI prints (``format_table``).
- :mod:`~quantsweep.report.frames`: the records as pandas DataFrames (``load_records``).
- :mod:`~quantsweep.report.plots`: matplotlib figures (verdict map, retained margin vs bits).
- :mod:`~quantsweep.report.html`: one self-contained HTML file (``write_report``).

The module itself is callable, so ``quantsweep.report(DIR)`` writes the HTML report of
a results folder whichever way the package was imported first. Only the text helpers
load with it; pandas, matplotlib and jinja2 load when a report is made.

Example:
    >>> import json, quantsweep, tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> record = {"model": "toy", "recipe": "fp", "task": "toy_mc4", "metric": "acc", "primary": True,
    ...           "value": 0.9, "verdict": "baseline"}
    >>> _ = (folder / "results.jsonl").write_text(json.dumps(record))
    >>> quantsweep.report(folder).name
    'report.html'
    >>> from quantsweep.report import format_cell
    >>> format_cell({"value": 0.5, "verdict": "lossless"})
    '0.500 ok'
"""

from __future__ import annotations

from quantsweep._verbs import make_callable
from quantsweep.report.text import LEGEND, format_cell, format_reasons, format_table, primary_records
from quantsweep.verdicts.rules import VERDICT_MARKERS

__all__ = ["LEGEND", "VERDICT_MARKERS", "format_cell", "format_reasons", "format_table", "primary_records"]


make_callable(__name__, "quantsweep.report.html:write_report")
