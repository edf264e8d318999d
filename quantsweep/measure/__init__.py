"""Measured cost of a recipe: bytes (theory and as stored), peak memory, prefill and decode speed.

* :func:`quantsweep.measure.cost.cost_fields`: the cost fields of a cell record.
* :class:`quantsweep.measure.memory.PeakMemory`: peak device memory, or peak process RSS on CPU.
* :func:`quantsweep.measure.speed.measure_speed`: prefill and decode tokens/s, median and spread.

Example:
    >>> from quantsweep.measure.memory import PeakMemory
    >>> with PeakMemory("cpu") as peak:
    ...     _ = bytearray(10)
    >>> peak.kind
    'process_rss'
"""
