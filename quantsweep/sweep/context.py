"""What a worker needs besides its cells: the store, the tasks, the evaluation settings, what this run recomputes.

It is plain frozen data (it pickles to Ray workers): the spec's own
:class:`~quantsweep.eval.settings.EvalSettings`, not a copy of its fields.

Example:
    >>> from quantsweep.eval.settings import EvalSettings
    >>> UnitContext(store_dir="out", task_configs={}, evaluation=EvalSettings(limit=10)).evaluation.limit
    10
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from quantsweep.eval.settings import EvalSettings


@dataclass(frozen=True)
class UnitContext:
    """The sweep settings a worker needs besides its cells.

    Attributes:
        store_dir: the store folder.
        task_configs: task name -> local config override (suite tasks with local data).
        evaluation: the spec's evaluation settings, as :func:`quantsweep.evaluate` takes them.
        measure: also time each recipe with a real kernel.
        started_at: when the driver began this run (epoch s); cells written since are this run's.
        force: recompute cells stored before this run.
        retry_failed: compute cells stored as failed before this run again (else they are kept).

    Example:
        >>> UnitContext(store_dir="out", task_configs={}).evaluation.batch_size
        32
    """

    store_dir: str
    task_configs: dict
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    measure: bool = False
    started_at: float = 0.0
    force: bool = False
    retry_failed: bool = False

    @classmethod
    def from_plan(cls, plan, store_dir, *, force: bool = False, retry_failed: bool = False) -> UnitContext:
        """The context of a :class:`~quantsweep.sweep.plan.SweepPlan` writing into ``store_dir``.

        Example:
            >>> from types import SimpleNamespace
            >>> from quantsweep.sweep.spec import spec_from_dict
            >>> plan = SimpleNamespace(spec=spec_from_dict({"models": ["toy"], "tasks": ["t"], "limit": 5}),
            ...                        tasks=SimpleNamespace(configs={}))
            >>> UnitContext.from_plan(plan, "out").evaluation.limit
            5
        """
        return cls(
            store_dir=str(store_dir),
            task_configs=dict(plan.tasks.configs),
            evaluation=plan.spec.evaluation,
            measure=plan.spec.measure,
            started_at=time.time(),
            force=force,
            retry_failed=retry_failed,
        )
