"""Sweeps: models x recipes x tasks as cells in a content-keyed store, run by a backend and judged from disk.

- :mod:`~quantsweep.sweep.spec`: the sweep spec (YAML, strict).
- :mod:`~quantsweep.sweep.plan`: cell keys, what is stored, the work units.
- :mod:`~quantsweep.sweep.prepare`: load -> calibrate -> quantize (shared with export and measure).
- :mod:`~quantsweep.sweep.cell`: one unit's cells: restore -> quantize -> evaluate -> store;
  with :mod:`~quantsweep.sweep.context` (what a worker gets), :mod:`~quantsweep.sweep.claims`,
  :mod:`~quantsweep.sweep.records` and :mod:`~quantsweep.sweep.logs`.
- :mod:`~quantsweep.sweep.store`: one atomic file per cell; claims; "is this cell settled"; its metadata.
- :mod:`~quantsweep.sweep.derived`: verdicts from the store; derived results.jsonl/summary.json.
- :mod:`~quantsweep.sweep.local`, :mod:`~quantsweep.sweep.ray`: the backends.
- :mod:`~quantsweep.sweep.api`: the driver (:func:`~quantsweep.sweep.api.run_sweep`).

The package itself is callable: ``quantsweep.sweep(spec, out=...)`` runs a sweep and
returns a DataFrame (:func:`quantsweep.sweep.api.sweep`).

Example:
    >>> import quantsweep
    >>> import tempfile
    >>> spec = {"models": [{"path": "toy", "device": "cpu"}], "tasks": ["toy_mc4"], "limit": 8}
    >>> frame = quantsweep.sweep(spec, out=tempfile.mkdtemp(), progress=False)
    >>> list(frame.query("primary").verdict)
    ['baseline']
"""

from quantsweep._verbs import make_callable

make_callable(__name__, "quantsweep.sweep.api:sweep")
