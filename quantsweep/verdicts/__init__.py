"""Verdicts: which recipes keep a model usable, with statistics behind each claim.

- :mod:`~quantsweep.verdicts.rules`: the ladder (every verdict name, ``error`` included),
  its severity order, the table markers, and the decision rules.
- :mod:`~quantsweep.verdicts.config`: :class:`~quantsweep.verdicts.config.VerdictConfig`, the thresholds.
- :mod:`~quantsweep.verdicts.judge`: one metric's per-document values -> a verdict (one
  skeleton, a strategy per metric kind).
- :mod:`~quantsweep.verdicts.task`: one evaluated task (and its baseline's) -> verdict records.
- :mod:`~quantsweep.verdicts.summary`: the family summary of a sweep's records.
- :mod:`~quantsweep.verdicts.stats`, :mod:`~quantsweep.verdicts.chance`: the statistics and chance levels.

Nothing is imported here, so importing a submodule stays free of torch and lm-eval.
"""
