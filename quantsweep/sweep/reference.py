"""A recipe cell's baseline distributions: read from the store, or waited for while the baseline runs.

A recipe cell of a perplexity task compares its next-token distributions with those its
baseline cell stored (``references/<baseline key>.npz``, :mod:`quantsweep.eval.divergence`).
The local backend runs the baseline first, so the file is there. On a cluster a model's
units run at once, so a recipe cell may get there first: :class:`BaselineReference` then
waits for the baseline, as long as it still has to be computed in this run and no other
process is known to have died computing it, for at most ``wait_s`` seconds. When there is
no file, the reason is what the scorer keeps (the record's ``divergence_error``):

* the baseline failed;
* the baseline was stored by a quantsweep from before stored distributions (rerun with ``--force``);
* the baseline stored none for this task (its own scorer could not record them);
* the process computing the baseline died, or the wait ran out.

Only a rolling log-likelihood task ever asks (:meth:`quantsweep.eval.divergence.DivergenceProbe.reference`),
so a multiple-choice cell never waits: its divergence is computed from the stored cells when judged.

Example:
    >>> import tempfile
    >>> from types import SimpleNamespace
    >>> from quantsweep.sweep.store import CellStore
    >>> store = CellStore(tempfile.mkdtemp())
    >>> run = SimpleNamespace(started_at=0.0, force=False, retry_failed=False)
    >>> cell = SimpleNamespace(key="w4", baseline_key="fp", task="toy_ppl")
    >>> _ = store.write_cell({"key": "fp", "status": "failed", "error": "RuntimeError: boom"})
    >>> BaselineReference(store, cell, run)("toy_ppl")
    'the baseline cell fp failed (RuntimeError: boom): there are no distributions to compare with'
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

logger = logging.getLogger(__name__)

WAIT_S = 1800.0  # longest a recipe cell waits for its baseline cell (s): one baseline evaluation of a large model
POLL_S = 2.0  # how often the store is read while waiting (s)


class BaselineReference:
    """Fetches the baseline's stored distributions for one recipe cell, once (see the module docstring).

    Called with a task name, it returns the :class:`~quantsweep.eval.divergence.TokenReference`,
    or a string saying why there is none; the answer is kept, so an out-of-memory retry of
    the cell does not wait again.

    Args:
        store: the :class:`~quantsweep.sweep.store.CellStore`.
        cell: the recipe cell (``key``, ``baseline_key``, ``task``).
        run: what this run recomputes (``started_at``, ``force``, ``retry_failed``): a baseline
            settled in it (:meth:`~quantsweep.sweep.store.CellStore.is_settled`) is never waited for.
        wait_s: the longest wait, in seconds (default :data:`WAIT_S`).
        poll_s: seconds between two looks at the store (default :data:`POLL_S`).
        said: baseline keys whose missing distributions were already logged (one message each).
        gave_up: baseline key -> why its wait was given up, shared by the cells of one unit, so
            that the next cell of the same baseline does not wait all over again.

    Attributes:
        waited: seconds spent fetching: reading the stored file, plus the wait when it was not there yet.

    Example:
        >>> import tempfile
        >>> from types import SimpleNamespace
        >>> from quantsweep.sweep.store import CellStore
        >>> store = CellStore(tempfile.mkdtemp())
        >>> _ = store.write_cell({"key": "fp", "status": "done", "tasks": {}})  # no divergence_reference: older
        >>> cell = SimpleNamespace(key="w4", baseline_key="fp", task="toy_ppl")
        >>> run = SimpleNamespace(started_at=0.0, force=False, retry_failed=False)
        >>> "older quantsweep" in BaselineReference(store, cell, run)("toy_ppl")
        True
    """

    def __init__(
        self,
        store,
        cell,
        run,
        *,
        wait_s: float | None = None,
        poll_s: float | None = None,
        said: set[str] | None = None,
        gave_up: dict[str, str] | None = None,
    ):
        self.store, self.cell, self.run = store, cell, run
        self.wait_s = WAIT_S if wait_s is None else wait_s
        self.poll_s = POLL_S if poll_s is None else poll_s
        self.said = said if said is not None else set()
        self.gave_up = gave_up if gave_up is not None else {}
        self.waited = 0.0
        self._answer: Any = None

    def __call__(self, task: str):
        if task != self.cell.task:
            return f"the baseline cell {self.cell.baseline_key} holds task {self.cell.task}, not {task}"
        if self._answer is None:
            started = time.monotonic()
            try:
                self._answer = self._fetch()
            finally:
                self.waited += time.monotonic() - started
        return self._answer

    def _read(self):
        from quantsweep.eval.divergence import TokenReference

        data = self.store.read_reference(self.cell.baseline_key)
        return None if data is None else TokenReference.from_bytes(data)

    def _usable(self):
        """The stored distributions; under ``force`` only those written during this run.

        Checked before the file is read: an earlier run's file is never parsed, nor taken for those
        of a forced baseline that is still running or has failed.
        """
        if self.run.force:
            try:
                if self.store.reference_path(self.cell.baseline_key).stat().st_mtime < self.run.started_at:
                    return None
            except FileNotFoundError:
                return None
        return self._read()

    def _fetch(self):
        key = self.cell.baseline_key
        if key in self.gave_up:  # an earlier cell of this unit waited for it in vain: no second wait
            found = self._usable()
            return found if found is not None else self.gave_up[key]
        deadline = time.monotonic() + self.wait_s
        owner_seen = False
        waiting = False
        while True:
            found = self._usable()
            if found is not None:
                if waiting:
                    logger.info("baseline cell %s is stored: cell %s measures its divergence", key, self.cell.key)
                return found
            owner = self.store.claim_owner(key)
            if owner is not None and _is_this_process(owner):
                return self._give_up(f"the baseline cell {key} is held by this process, which cannot wait for itself")
            if owner is None:
                found = self._usable()  # the owner may have stored it between the two looks
                if found is not None:
                    return found
                if self.store.is_settled(key, self.run):
                    return self._settled_reason()
                if owner_seen or self.store.has_stale_claim(key):
                    return self._give_up(
                        f"the process computing the baseline cell {key} died or stopped answering before storing "
                        "it; rerun the sweep to measure the divergence"
                    )
            owner_seen = owner_seen or owner is not None
            if time.monotonic() >= deadline:
                return self._give_up(
                    f"the baseline cell {key} was not stored within {self.wait_s:g} s; rerun the sweep to "
                    "measure the divergence"
                )
            if not waiting:
                waiting = True
                who = f"computed by {owner.get('host')} pid {owner.get('pid')}" if owner else "not started yet"
                logger.info(
                    "cell %s waits (at most %g s) for its baseline cell %s (%s): it needs the baseline's stored "
                    "distributions",
                    self.cell.key,
                    self.wait_s,
                    key,
                    who,
                )
            time.sleep(self.poll_s)

    def _give_up(self, reason: str) -> str:
        logger.warning("cell %s has no token divergence: %s", self.cell.key, reason)
        self.gave_up[self.cell.baseline_key] = reason
        return reason

    def _settled_reason(self) -> str:
        """Why a baseline cell that is stored (and kept in this run) has no distributions."""
        key = self.cell.baseline_key
        baseline = self.store.read_cell(key) or {}
        if baseline.get("status") == "failed":
            reason = (
                f"the baseline cell {key} failed ({baseline.get('error')}): there are no distributions to compare with"
            )
        elif "divergence_reference" not in baseline:
            reason = (
                f"the baseline cell {key} was stored by an older quantsweep, before baselines stored their "
                "distributions; rerun the sweep with --force to compute the baseline (and this cell) again "
                "and measure the divergence"
            )
        else:
            own = ((baseline.get("tasks") or {}).get(self.cell.task) or {}).get("divergence") or {}
            why = f": {own['error']}" if isinstance(own, dict) and own.get("error") else ""
            reason = f"the baseline cell {key} stored no distributions for this task{why}"
        if key not in self.said:
            self.said.add(key)
            logger.warning("cell %s has no token divergence: %s", self.cell.key, reason)
        return reason


def _is_this_process(owner: dict[str, Any]) -> bool:
    return owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid()
