"""Task suites (``openpangu18``): the suite schema, suite lookup, and each task's chance rule.

A *suite* is a YAML file in ``tasks/suites/`` (or any path) listing tasks with what
the verdicts need to know about each: the lm-eval task it runs, the metric, the
few-shot count, the family, the chance rule, a version, whether it executes
model-written code, and the local files ``--data-dir`` expects. Suite files are
validated like recipes: an unknown key is an error naming it and the allowed keys.

Local data and the code-execution gate live in :mod:`quantsweep.eval.offline` (which
reads suite entries from here), hub access in :mod:`quantsweep.hub`, task lookup in
:mod:`quantsweep.eval.tasks`.

Example:
    >>> expand_tasks(["openpangu18"])[:2]
    ['wikitext', 'c4']
    >>> suite_entry("arc_easy").family
    'commonsense_reasoning'
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantsweep._schema import close_matches, missing_keys, refuse_unknown
from quantsweep.eval.tasks import OUTPUT_TYPES, TASKS_DIR, TaskNotFoundError, task_config, task_yaml

SUITES_DIR = TASKS_DIR / "suites"
FAMILIES = ("language_modelling", "commonsense_reasoning", "knowledge", "math", "code")
CHANCE_RULES = ("choices", "zero", "uniform_vocab")


class SuiteError(ValueError):
    """A suite name, file or entry is wrong; the message says which."""


# ---------------------------------------------------------------- schema


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """The local files one suite task reads from ``--data-dir``.

    Attributes:
        dir: folder under the data directory, e.g. ``arc_easy``.
        splits: lm-eval split name -> file stem, e.g. ``{"test": "test"}``; every
            listed split must be present (few-shot tasks list their few-shot split too).
        columns: top-level columns each file must have (the public dataset's names).

    Example:
        >>> DataSpec(dir="arc_easy", splits={"test": "test"}, columns=("question",)).dir
        'arc_easy'
    """

    dir: str
    splits: Mapping[str, str]
    columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (
            not isinstance(self.dir, str)
            or not self.dir
            or Path(self.dir).is_absolute()
            or ".." in Path(self.dir).parts
        ):
            raise SuiteError(f"data.dir must be a relative folder name, got {self.dir!r}")
        if not isinstance(self.splits, Mapping) or not self.splits:
            raise SuiteError(f"data.splits must map split names to file stems, got {self.splits!r}")
        for split, stem in self.splits.items():
            if not isinstance(split, str) or not isinstance(stem, str) or not split or not stem or "/" in stem:
                raise SuiteError(f"data.splits entries must be split: file-stem strings, got {split!r}: {stem!r}")
        object.__setattr__(self, "splits", dict(self.splits))
        if isinstance(self.columns, str) or not all(isinstance(c, str) for c in self.columns):
            raise SuiteError(f"data.columns must be a list of column names, got {self.columns!r}")
        object.__setattr__(self, "columns", tuple(self.columns))


@dataclass(frozen=True, kw_only=True)
class SuiteEntry:
    """One task of a suite.

    Attributes:
        task: the task's name in results (an lm-eval task name; shipped tasks live in ``tasks/``).
        lm_eval_task: the lm-eval task it runs (default: ``task``).
        lm_eval_yaml: optional path of that task's YAML inside lm-eval's ``tasks`` folder,
            a hint that avoids indexing all of lm-eval's tasks to find it.
        family: one of :data:`FAMILIES`.
        metric: the metric verdicts use, e.g. ``acc``, ``word_perplexity``, ``pass@1``.
        metric_filter: the lm-eval filter whose ``metric`` is meant, for tasks that
            report one metric under several filters (gsm8k: ``strict-match``); lm-eval
            keys such results ``"exact_match,strict-match"``. None: the only one.
        num_fewshot: few-shot examples per prompt.
        chance: ``choices`` (mean 1/number-of-choices over the evaluated samples),
            ``zero`` (exact-match floor, ``chance_floor``), or ``uniform_vocab``
            (perplexity baseline: cross-entropy log V).
        chance_floor: the documented floor for ``zero`` (default 0).
        version: bump when anything that changes scores changes.
        executes_code: the task runs model-written code (needs the explicit opt-in).
        cluster_column: the document column whose value is its cluster (e.g. ``subject``)
            for clustered standard errors; None: the doc's ``subject`` key when it has one.
        max_length: the scoring window in tokens (perplexity tasks: the literature's 2048),
            recorded with the result; None: the model's positions.
        data: the local files ``--data-dir`` expects (:class:`DataSpec`).
        description: free text.

    Example:
        >>> suite_entry("gsm8k").num_fewshot
        5
    """

    task: str
    lm_eval_task: str = ""
    lm_eval_yaml: str | None = None
    family: str
    metric: str
    metric_filter: str | None = None
    num_fewshot: int = 0
    chance: str
    chance_floor: float = 0.0
    version: int | str = 1
    executes_code: bool = False
    cluster_column: str | None = None
    max_length: int | None = None
    data: DataSpec
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task or "," in self.task:
            raise SuiteError(f"task must be a non-empty task name without commas, got {self.task!r}")
        if not self.lm_eval_task:
            object.__setattr__(self, "lm_eval_task", self.task)
        if self.family not in FAMILIES:
            raise SuiteError(f"task {self.task!r}: unknown family {self.family!r}; allowed: {', '.join(FAMILIES)}")
        if self.chance not in CHANCE_RULES:
            raise SuiteError(
                f"task {self.task!r}: unknown chance rule {self.chance!r}; allowed: {', '.join(CHANCE_RULES)}"
            )
        if not isinstance(self.metric, str) or not self.metric:
            raise SuiteError(f"task {self.task!r}: metric must be a metric name, got {self.metric!r}")
        if self.metric_filter is not None and (not isinstance(self.metric_filter, str) or not self.metric_filter):
            raise SuiteError(f"task {self.task!r}: metric_filter must be a filter name, got {self.metric_filter!r}")
        if isinstance(self.num_fewshot, bool) or not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
            raise SuiteError(f"task {self.task!r}: num_fewshot must be an integer >= 0, got {self.num_fewshot!r}")
        if (
            isinstance(self.chance_floor, bool)
            or not isinstance(self.chance_floor, (int, float))
            or not 0.0 <= self.chance_floor < 1.0
        ):
            raise SuiteError(f"task {self.task!r}: chance_floor must be in [0, 1), got {self.chance_floor!r}")
        if self.chance_floor and self.chance != "zero":
            raise SuiteError(f"task {self.task!r}: chance_floor only applies to chance: zero")
        if not isinstance(self.executes_code, bool):
            raise SuiteError(f"task {self.task!r}: executes_code must be true or false, got {self.executes_code!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, (int, str)):
            raise SuiteError(f"task {self.task!r}: version must be an integer or string, got {self.version!r}")
        if self.cluster_column is not None and (not isinstance(self.cluster_column, str) or not self.cluster_column):
            raise SuiteError(f"task {self.task!r}: cluster_column must be a column name, got {self.cluster_column!r}")
        if self.max_length is not None and (
            isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2
        ):
            raise SuiteError(f"task {self.task!r}: max_length must be an integer >= 2, got {self.max_length!r}")
        if not isinstance(self.data, DataSpec):
            raise SuiteError(f"task {self.task!r}: data must be a DataSpec, got {type(self.data).__name__}")

    def to_dict(self) -> dict:
        """Plain-data form (for results provenance).

        Example:
            >>> suite_entry("piqa").to_dict()["chance"]
            'choices'
        """
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class Suite:
    """A named list of :class:`SuiteEntry`.

    Example:
        >>> len(load_suite("openpangu18").tasks)
        18
    """

    name: str
    description: str = ""
    version: int | str = 1
    tasks: tuple[SuiteEntry, ...] = field(default_factory=tuple)
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "," in self.name:
            raise SuiteError(f"suite name must be a non-empty name without commas, got {self.name!r}")
        if not self.tasks:
            raise SuiteError(f"suite {self.name!r} lists no tasks")
        names = [entry.task for entry in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SuiteError(f"suite {self.name!r} lists task(s) {', '.join(duplicates)} more than once")

    def task_names(self) -> list[str]:
        """The suite's task names, in file order.

        Example:
            >>> load_suite("openpangu18").task_names()[-1]
            'mbpp_offline'
        """
        return [entry.task for entry in self.tasks]

    def entry(self, task: str) -> SuiteEntry | None:
        """The entry for ``task``, or None.

        Example:
            >>> load_suite("openpangu18").entry("c4").metric
            'word_perplexity'
        """
        return next((e for e in self.tasks if e.task == task), None)


def _build(cls, data: Any, where: str, source: str):
    if not isinstance(data, Mapping):
        raise SuiteError(f"{source}: {where} must be a mapping, got {type(data).__name__}")
    refuse_unknown(cls, data, f"{source}: {where}", exclude=("source",), error=SuiteError)
    missing = missing_keys(cls, data, exclude=("source",))
    if missing:
        raise SuiteError(f"{source}: {where} is missing required key(s) {', '.join(missing)}")
    try:
        return cls(**data)
    except SuiteError as err:
        raise SuiteError(f"{source}: {where}: {err}") from None
    except TypeError as err:
        raise SuiteError(f"{source}: {where}: {err}") from None


def suite_from_dict(data: Mapping, source: str = "<dict>") -> Suite:
    """Validate a suite mapping (the parsed YAML) into a :class:`Suite`.

    Example:
        >>> s = suite_from_dict({"name": "mini", "tasks": [{"task": "piqa", "family": "commonsense_reasoning",
        ...     "metric": "acc", "chance": "choices", "data": {"dir": "piqa", "splits": {"validation": "validation"}}}]})
        >>> s.task_names()
        ['piqa']
    """
    if not isinstance(data, Mapping):
        raise SuiteError(f"{source}: a suite file must be a mapping with keys name, tasks, got {type(data).__name__}")
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list):
        raise SuiteError(f"{source}: `tasks` must be a list of task entries")
    entries = []
    for index, raw in enumerate(raw_tasks):
        where = f"tasks[{index}]" + (f" ({raw.get('task')!r})" if isinstance(raw, Mapping) and "task" in raw else "")
        raw = dict(raw) if isinstance(raw, Mapping) else raw
        if isinstance(raw, dict) and "data" in raw:
            raw["data"] = _build(DataSpec, raw["data"], f"{where}.data", source)
        entries.append(_build(SuiteEntry, raw, where, source))
    top = {key: value for key, value in data.items() if key != "tasks"}
    return _build(Suite, {**top, "tasks": tuple(entries)}, "the suite", source)


_LOADED: dict[str, Suite] = {}  # suites loaded from user paths, so suite_entry can find their tasks


@functools.lru_cache(maxsize=64)
def _load_suite_file(path: str, mtime_ns: int) -> Suite:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: malformed suite YAML: {err}") from None
    suite = suite_from_dict(data, source=path)
    return dataclasses.replace(suite, source=path)


def list_suites() -> list[str]:
    """Names of the suites shipped in ``tasks/suites/``.

    Example:
        >>> "openpangu18" in list_suites()
        True
    """
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def _suite_path(name_or_path: str | Path) -> Path | None:
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise SuiteError(f"suite file {text!r} does not exist")
        return path
    path = SUITES_DIR / f"{text}.yaml"
    return path if path.is_file() else None


def load_suite(name_or_path: str | Path) -> Suite:
    """Load a suite by name (``tasks/suites/NAME.yaml``) or from a YAML path, validated.

    Raises:
        SuiteError: unknown name (with the available ones), malformed file (named),
            unknown key (named, with the allowed keys) or a bad value.

    Example:
        >>> load_suite("openpangu18").version
        1
    """
    path = _suite_path(name_or_path)
    if path is None:
        close = close_matches(str(name_or_path), list_suites())
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SuiteError(f"unknown suite {str(name_or_path)!r}{hint}; available: {', '.join(list_suites())}")
    resolved = path.resolve()
    suite = _load_suite_file(str(resolved), resolved.stat().st_mtime_ns)
    if resolved.parent != SUITES_DIR.resolve():
        _LOADED[suite.name] = suite
    return suite


def _is_suite_reference(name: str) -> bool:
    return name in list_suites() or name.endswith((".yaml", ".yml"))


def expand_tasks(names: list[str] | str) -> list[str]:
    """Expand suite names (or suite YAML paths) into their task names; other names pass through.

    Duplicates are dropped, first occurrence kept.

    Example:
        >>> len(expand_tasks(["openpangu18"]))
        18
        >>> expand_tasks(["toy_mc4", "toy_mc4"])
        ['toy_mc4']
    """
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    expanded: list[str] = []
    for name in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"task and suite names must be non-empty strings, got {name!r}")
        found = load_suite(name).task_names() if _is_suite_reference(name) else [name]
        expanded.extend(task for task in found if task not in expanded)
    return expanded


def suite_entry(task: str) -> SuiteEntry | None:
    """The suite entry describing ``task`` (built-in suites first, then loaded user suites), or None.

    Example:
        >>> suite_entry("hellaswag").chance
        'choices'
        >>> suite_entry("toy_mc4") is None
        True
    """
    for name in list_suites():
        entry = load_suite(name).entry(task)
        if entry is not None:
            return entry
    for suite in _LOADED.values():
        entry = suite.entry(task)
        if entry is not None:
            return entry
    return None


def task_family(task: str, output_type: str | None = None) -> str:
    """The family of a task: from its suite entry, else from its lm-eval output type (``other`` if unknown).

    It lives here, beside :func:`suite_entry`, rather than in :mod:`quantsweep.eval.tasks`
    (beside :data:`~quantsweep.eval.tasks.OUTPUT_TYPES`), because suites import tasks.

    Example:
        >>> task_family("arc_easy"), task_family("my_task", "generate_until"), task_family("my_task")
        ('commonsense_reasoning', 'generation', 'other')
    """
    entry = suite_entry(task)
    if entry is not None:
        return entry.family
    kind = OUTPUT_TYPES.get(output_type or "")
    return kind.family if kind is not None else "other"


# ---------------------------------------------------------------- the lm-eval task behind an entry


def lm_eval_task_yaml(entry: SuiteEntry) -> Path:
    """The YAML file defining the entry's lm-eval task (this repo's ``tasks/`` first, then lm-eval's).

    Example:
        >>> lm_eval_task_yaml(suite_entry("arc_easy")).name
        'arc_easy.yaml'
    """
    try:
        return task_yaml(entry.lm_eval_task, entry.lm_eval_yaml)
    except TaskNotFoundError as err:
        raise SuiteError(f"suite task {entry.task!r}: {err}") from None


def lm_eval_task_config(entry: SuiteEntry) -> dict:
    """The entry's full lm-eval task config (includes and ``!function`` resolved), renamed to ``entry.task``.

    Example:
        >>> lm_eval_task_config(suite_entry("boolq"))["output_type"]
        'multiple_choice'
    """
    lm_eval_task_yaml(entry)  # the error names the suite task
    try:
        config = task_config(entry.lm_eval_task, entry.lm_eval_yaml)
    except ValueError as err:
        raise SuiteError(f"suite task {entry.task!r}: {err}") from None
    config["task"] = entry.task
    config["num_fewshot"] = entry.num_fewshot
    return config
