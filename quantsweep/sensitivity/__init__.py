"""Layer sensitivity: which decoder layers a recipe hurts most, and a mixed-precision recipe that spares them.

- :mod:`~quantsweep.sensitivity.divergence`: KL divergence and top-1 agreement of next-token
  distributions (pure tensor math).
- :mod:`~quantsweep.sensitivity.units`: the units a scan quantizes one at a time (a decoder
  layer, or one Linear of one layer).
- :mod:`~quantsweep.sensitivity.scan`: the scan itself: fp log-probabilities once, then one
  forward per unit, each unit's record in a content-keyed store (a rerun resumes).
- :mod:`~quantsweep.sensitivity.budget`: bits per weight as :mod:`quantsweep.measure.cost`
  counts them, and the mixed-precision recipe within a budget.
- :mod:`~quantsweep.sensitivity.outputs`: the table (CSV and text) and the plot.
- :mod:`~quantsweep.sensitivity.api`: the verb, :func:`~quantsweep.sensitivity.api.sensitivity`.

The package itself is callable: ``quantsweep.sensitivity("toy", "w2-rtn", out=...)``.

Example:
    >>> import quantsweep, tempfile
    >>> result = quantsweep.sensitivity("toy", "w2-rtn", out=tempfile.mkdtemp(), tokens=256, device="cpu")
    >>> len(result.rows), result.rows[0]["rank"]
    (4, 1)
"""

from quantsweep._verbs import make_callable

make_callable(__name__, "quantsweep.sensitivity.api:sensitivity")
