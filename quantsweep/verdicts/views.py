"""Views of a store: one per (model, settings), labelled, and never a silent drop.

A store can hold several models, and one model under several settings (another
``limit``, few-shot count or ``max_length``). Every view of results (the text table,
``summary.json``, the HTML report) shows each (model, settings) pair apart, under a
label that says what tells it from the others (``limit=60`` against ``limit=100``), and
never merges them.

Within one view a (recipe, task) has one cell. Should a store still hold two (a task
edited between runs, or a store written before names were checked), the view keeps the
newest and says, in :attr:`View.left_out`, which cell it left out and why.

Example:
    >>> records = [{"model": "1b", "settings": "s1", "recipe": "fp", "task": "t", "primary": True, "cell_key": "a"},
    ...            {"model": "7b", "settings": "s2", "recipe": "fp", "task": "t", "primary": True, "cell_key": "b"}]
    >>> [view.title for view in split_views(records)]
    ['1b', '7b']
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from quantsweep.verdicts.rules import is_primary_or_error

# Record fields that tell two settings of one model apart, in the order a label names them.
LABEL_FIELDS = (
    ("limit", "limit"),
    ("num_fewshot", "few-shot"),
    ("max_length", "max_length"),
    ("seed", "seed"),
    ("dtype", "dtype"),
    ("device_type", "device"),
    ("quantsweep_version", "quantsweep"),
    ("lm_eval_version", "lm-eval"),
    ("transformers_version", "transformers"),
    ("torch_version", "torch"),
)


@dataclass
class View:
    """The records of one model under one setting, with what was left out of it.

    Attributes:
        model: the model's name.
        settings: the settings id (``settings`` of its records; None for records without one).
        label: what tells this setting from the model's others ("" when the model has one).
        records: every record of the view, left-out cells removed.
        left_out: one line per cell left out, saying which and why.

    Example:
        >>> View(model="toy", settings=None, label="limit=60").title
        'toy · limit=60'
    """

    model: str
    settings: str | None
    label: str
    records: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        """The model's name and, when it has several settings, the label.

        Example:
            >>> View(model="toy", settings="s", label="").title
            'toy'
        """
        return f"{self.model} · {self.label}" if self.label else str(self.model)


def _shown(value: Any) -> str:
    return "default" if value is None else str(value)


def _labels(settings: dict[str, dict[str, Any]]) -> dict[str, str]:
    """settings id -> label naming the fields in which this model's settings differ."""
    if len(settings) < 2:
        return dict.fromkeys(settings, "")
    varying = [
        (name, shown)
        for name, shown in LABEL_FIELDS
        if len({_shown(fields.get(name)) for fields in settings.values()}) > 1
    ]
    labels = {}
    for sid, fields in settings.items():
        parts = [f"{shown}={_shown(fields.get(name))}" for name, shown in varying]
        labels[sid] = ", ".join(parts) if parts else f"settings {sid}"
    return labels


def _cell_identity(record: dict[str, Any]) -> tuple:
    return (record.get("recipe"), record.get("task"))


def _why_left_out(kept: dict[str, Any], dropped: dict[str, Any]) -> str:
    same = json.dumps(kept.get("recipe_config"), sort_keys=True) == json.dumps(
        dropped.get("recipe_config"), sort_keys=True
    )
    cause = (
        "its task definition or calibration differs"
        if same
        else "its recipe config differs (one name, two recipes: a store from before names were checked)"
    )
    return (
        f"{dropped.get('recipe')} / {dropped.get('task')}: cell {str(dropped.get('cell_key'))[:12]} "
        f"(finished {dropped.get('finished_at') or 'at an unrecorded time'}) left out for the newer cell "
        f"{str(kept.get('cell_key'))[:12]}; same model, recipe, task and settings, but {cause}"
    )


def _dedupe(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Keep one cell per (recipe, task): the newest; say which were left out and why."""
    cells: dict[tuple, dict[str, dict[str, Any]]] = {}
    for record in records:
        if is_primary_or_error(record):
            cells.setdefault(_cell_identity(record), {}).setdefault(str(record.get("cell_key")), record)
    dropped_keys: set[str] = set()
    left_out = []
    for candidates in cells.values():
        if len(candidates) < 2:
            continue
        ordered = sorted(candidates.values(), key=lambda r: str(r.get("finished_at") or ""), reverse=True)
        for other in ordered[1:]:
            dropped_keys.add(str(other.get("cell_key")))
            left_out.append(_why_left_out(ordered[0], other))
    return [r for r in records if str(r.get("cell_key")) not in dropped_keys], left_out


def split_views(records: Iterable[dict[str, Any]]) -> list[View]:
    """The records split into one :class:`View` per (model, settings), in the order first seen.

    Example:
        >>> records = [{"model": "toy", "settings": "a", "limit": 60, "recipe": "fp", "task": "t", "primary": True},
        ...            {"model": "toy", "settings": "b", "limit": 100, "recipe": "fp", "task": "t", "primary": True}]
        >>> [view.title for view in split_views(records)]
        ['toy · limit=60', 'toy · limit=100']
    """
    records = list(records)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record.get("model"), record.get("settings")), []).append(record)
    settings_of: dict[Any, dict[str, dict[str, Any]]] = {}
    for (model, sid), group in groups.items():
        settings_of.setdefault(model, {})[str(sid)] = group[0]
    labels = {model: _labels(settings) for model, settings in settings_of.items()}
    views = []
    for (model, sid), group in groups.items():
        kept, left_out = _dedupe(group)
        views.append(View(model=model, settings=sid, label=labels[model][str(sid)], records=kept, left_out=left_out))
    return views
