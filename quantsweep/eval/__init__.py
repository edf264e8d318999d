"""Evaluation: the lm-eval bridge (``harness``), non-finite diagnosis (``health``), chance
levels (``chance``), statistical tests (``stats``) and verdicts (``verdicts``).

Nothing is imported here, so ``import quantsweep.eval.verdicts`` stays free of torch and lm-eval.
"""
