"""Evaluation: the lm-eval bridge (``harness``), tasks and suites, and non-finite diagnosis (``health``).

Chance levels, statistics and verdicts live in :mod:`quantsweep.verdicts`.
Nothing is imported here, so ``import quantsweep.eval.tasks`` stays free of torch and lm-eval.
"""
