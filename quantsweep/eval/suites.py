"""Task suites (``openpangu18``) and offline local data for their tasks.

A *suite* is a YAML file in ``tasks/suites/`` (or any path) listing tasks with what
the verdicts need to know about each: the lm-eval task it runs, the metric, the
few-shot count, the family, the chance rule, a version, whether it executes
model-written code, and the local files ``--data-dir`` expects. Suite files are
validated like recipes: an unknown key is an error naming it and the allowed keys.

Local data: :func:`local_task_configs` turns suite task names and a data folder into
lm-eval task config dicts that read ``DATA_DIR/<dir>/<split>.{jsonl,json,parquet,csv}``
through the ``datasets`` packaged builders (``json``/``parquet``/``csv`` with
``data_files``), keeping the rest of the lm-eval task (prompts, metrics) identical.
Missing files are reported up front, naming the task, the files expected and where
they were looked for; nothing waits on the network.

Example:
    >>> expand_tasks(["openpangu18"])[:2]
    ['wikitext', 'c4']
    >>> suite_entry("arc_easy").family
    'commonsense_reasoning'
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import difflib
import functools
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from quantsweep.eval.harness import TASKS_DIR

logger = logging.getLogger(__name__)

SUITES_DIR = TASKS_DIR / "suites"
FAMILIES = ("language_modelling", "commonsense_reasoning", "knowledge", "math", "code")
CHANCE_RULES = ("choices", "zero", "uniform_vocab")
# File name endings accepted for local data, and the ``datasets`` builder that reads each.
DATA_FORMATS = {".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
                ".parquet": "parquet", ".csv": "csv"}
DEFAULT_CODE_TIMEOUT_S = 10.0  # seconds per executed program (HF's code_eval default is 3 s)
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


class SuiteError(ValueError):
    """A suite name, file or entry is wrong; the message says which."""


class MissingDataError(ValueError):
    """Local data files for one or more suite tasks are missing (the message lists them)."""


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
        if not isinstance(self.dir, str) or not self.dir or Path(self.dir).is_absolute() or ".." in Path(self.dir).parts:
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
            raise SuiteError(f"task {self.task!r}: unknown chance rule {self.chance!r}; allowed: {', '.join(CHANCE_RULES)}")
        if not isinstance(self.metric, str) or not self.metric:
            raise SuiteError(f"task {self.task!r}: metric must be a metric name, got {self.metric!r}")
        if self.metric_filter is not None and (not isinstance(self.metric_filter, str) or not self.metric_filter):
            raise SuiteError(f"task {self.task!r}: metric_filter must be a filter name, got {self.metric_filter!r}")
        if isinstance(self.num_fewshot, bool) or not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
            raise SuiteError(f"task {self.task!r}: num_fewshot must be an integer >= 0, got {self.num_fewshot!r}")
        if isinstance(self.chance_floor, bool) or not isinstance(self.chance_floor, (int, float)) \
                or not 0.0 <= self.chance_floor < 1.0:
            raise SuiteError(f"task {self.task!r}: chance_floor must be in [0, 1), got {self.chance_floor!r}")
        if self.chance_floor and self.chance != "zero":
            raise SuiteError(f"task {self.task!r}: chance_floor only applies to chance: zero")
        if not isinstance(self.executes_code, bool):
            raise SuiteError(f"task {self.task!r}: executes_code must be true or false, got {self.executes_code!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, (int, str)):
            raise SuiteError(f"task {self.task!r}: version must be an integer or string, got {self.version!r}")
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
    allowed = [f.name for f in fields(cls) if f.name != "source"]
    unknown = [key for key in data if key not in allowed]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SuiteError(f"{source}: unknown key {unknown[0]!r}{hint} in {where}; allowed keys: {', '.join(allowed)}")
    required = [f.name for f in fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and f.name != "source"]
    missing = [key for key in required if key not in data]
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
        close = difflib.get_close_matches(str(name_or_path), list_suites(), n=3, cutoff=0.6)
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


# ---------------------------------------------------------------- code execution

def _code_task_names(names: list[str]) -> list[str]:
    found = []
    for name in expand_tasks(names):
        entry = suite_entry(name)
        # lm-eval's own code tasks (humaneval*, mbpp*) execute code as well.
        if (entry is not None and entry.executes_code) or (entry is None and name.startswith(("humaneval", "mbpp"))):
            found.append(name)
    return found


def check_code_execution(task_names: list[str] | str, allow: bool, *,
                         timeout_s: float = DEFAULT_CODE_TIMEOUT_S) -> list[str]:
    """Refuse code-executing tasks without the opt-in; with it, enable execution with a time-out.

    With ``allow=True`` and at least one such task, sets ``HF_ALLOW_CODE_EVAL=1`` (the
    switch the hub's ``code_eval`` metric and quantsweep's executor both check) and
    ``QUANTSWEEP_CODE_TIMEOUT_S`` (seconds per program, read by the shipped code tasks).
    lm-eval's ``unsafe_code`` guard is lifted separately by passing
    ``allow_code_execution=True`` to :func:`quantsweep.evaluate`.

    Returns:
        the requested tasks that execute model-written code.

    Raises:
        ValueError: such a task was requested without ``allow``; or ``timeout_s`` <= 0.

    Example:
        >>> check_code_execution(["arc_easy"], allow=False)
        []
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    code_tasks = _code_task_names(task_names if not isinstance(task_names, str) else [task_names])
    if not code_tasks:
        return []
    if not allow:
        raise ValueError(
            f"task(s) {', '.join(code_tasks)} execute model-written code, which is off by default; "
            "pass --allow-code-execution (API: allow_code_execution=True) to run them, "
            f"each program with a {timeout_s:g} s time-out"
        )
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    os.environ["QUANTSWEEP_CODE_TIMEOUT_S"] = f"{float(timeout_s):g}"
    logger.warning("executing model-written code for %s (time-out %g s per program)", ", ".join(code_tasks), timeout_s)
    return code_tasks


# ---------------------------------------------------------------- hub mirror

def effective_hub_endpoint(endpoint: str | None = None) -> str | None:
    """The hub mirror in effect: the user's ``HF_ENDPOINT`` if set, else ``endpoint``, else None.

    Example:
        >>> effective_hub_endpoint("https://hf-mirror.example")  # with HF_ENDPOINT unset  # doctest: +SKIP
        'https://hf-mirror.example'
    """
    return os.environ.get("HF_ENDPOINT") or endpoint or None


def use_hub_mirror(endpoint: str) -> str:
    """Point ``huggingface_hub`` and ``datasets`` at a hub mirror, unless the user set ``HF_ENDPOINT``.

    A user-set ``HF_ENDPOINT`` always wins and is never overwritten. Both libraries
    read the variable when first imported, so when they are already imported their
    module-level endpoint constants are updated as well.

    Returns:
        the endpoint in effect.

    Example:
        >>> use_hub_mirror("https://hf-mirror.example")  # doctest: +SKIP
        'https://hf-mirror.example'
    """
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"hub endpoint must be an http(s) URL, got {endpoint!r}")
    user = os.environ.get("HF_ENDPOINT")
    if user:
        if user.rstrip("/") != endpoint.rstrip("/"):
            logger.warning("HF_ENDPOINT=%s is set; keeping it rather than %s", user, endpoint)
        return user
    endpoint = endpoint.rstrip("/")
    os.environ["HF_ENDPOINT"] = endpoint
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        hub_constants.ENDPOINT = endpoint
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_ENDPOINT = endpoint
        datasets_config.HUB_DATASETS_URL = endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    return endpoint


def _hub_offline() -> bool:
    return any(os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE")
               for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


# ---------------------------------------------------------------- local data

def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((fmt for fmt in sorted(DATA_FORMATS, key=len, reverse=True) if name.endswith(fmt)), None)


def find_data_files(entry: SuiteEntry, data_dir: str | Path) -> tuple[str | None, dict[str, list[str]], list[str]]:
    """Locate one suite task's local files.

    Looks for ``DATA_DIR/<dir>/<stem><format>`` for each split, or hub-style parquet
    shards ``<stem>-00000-of-0000N.parquet``.

    Returns:
        ``(builder, files, missing)``: the ``datasets`` builder (``json``, ``parquet``,
        ``csv``), split -> file paths found, and the splits with no file.

    Raises:
        MissingDataError: one split has files in several formats, or splits mix formats.

    Example:
        >>> find_data_files(suite_entry("piqa"), "/nonexistent")[2]
        ['validation']
    """
    folder = Path(data_dir) / entry.data.dir
    files: dict[str, list[str]] = {}
    missing: list[str] = []
    builders: dict[str, str] = {}
    for split, stem in entry.data.splits.items():
        found = [folder / f"{stem}{fmt}" for fmt in DATA_FORMATS if (folder / f"{stem}{fmt}").is_file()]
        if len(found) > 1:
            raise MissingDataError(f"task {entry.task!r}: split {split!r} has several candidate files "
                                   f"{[p.name for p in found]} in {folder}; keep exactly one")
        if not found:  # hub-style shards: test-00000-of-00002.parquet, test-00001-of-00002.parquet
            found = sorted(folder.glob(f"{stem}-*.parquet"))
        if not found:
            missing.append(split)
            continue
        builders[split] = DATA_FORMATS[_format_of(found[0])]
        files[split] = [str(path) for path in found]
    if len(set(builders.values())) > 1:
        raise MissingDataError(f"task {entry.task!r}: all splits must use one format, found "
                               f"{', '.join(f'{s}: {b}' for s, b in builders.items())} in {folder}")
    builder = next(iter(builders.values()), None)
    return builder, files, missing


def _first_record_columns(path: str) -> list[str] | None:
    """Top-level column names of a data file, reading as little as possible; None if unknown."""
    fmt = _format_of(Path(path))
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    if fmt == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            return next(csv.reader(handle), [])
    if fmt == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    return list(record) if isinstance(record, dict) else None
        return []
    if fmt == ".json" and os.path.getsize(path) < 64 * 2**20:  # 64 MiB: a full parse is cheap below that
        with open(path, encoding="utf-8") as handle:
            first = handle.read(1)
            handle.seek(0)
            if first != "[":  # JSON Lines saved as .json, which `datasets` also accepts
                line = handle.readline()
                record = json.loads(line) if line.strip() else {}
            else:
                records = json.load(handle)
                record = records[0] if records else {}
        return list(record) if isinstance(record, dict) else None
    return None  # compressed files: let `datasets` report problems


def check_columns(entry: SuiteEntry, files: Mapping[str, list[str]]) -> None:
    """Raise :class:`MissingDataError` when a file lacks a column the task's prompts use.

    Example:
        >>> check_columns(suite_entry("piqa"), {})
    """
    for split, paths in files.items():
        for path in paths[:1]:
            try:
                columns = _first_record_columns(path)
            except (OSError, ValueError, UnicodeDecodeError) as err:
                raise MissingDataError(f"task {entry.task!r}: cannot read {path}: {err}") from None
            if columns is None:
                continue
            absent = [c for c in entry.data.columns if c not in columns]
            if absent:
                raise MissingDataError(
                    f"task {entry.task!r}: {path} lacks column(s) {', '.join(absent)}; "
                    f"expected columns {', '.join(entry.data.columns)} (found {', '.join(columns) or 'none'})"
                )


@functools.lru_cache(maxsize=1)
def _shipped_task_index() -> dict[str, str]:
    from lm_eval.tasks._index import TaskIndex

    return {name: str(entry.yaml_path) for name, entry in TaskIndex.build([TASKS_DIR]).items()
            if entry.yaml_path is not None}


@functools.lru_cache(maxsize=1)
def _builtin_task_index() -> dict[str, str]:
    # Indexing all of lm-eval's ~15k task YAML takes seconds; only done when a hint fails, and
    # the index is the harness's cached full TaskManager's (this repo's tasks are looked up first anyway).
    from quantsweep.eval.harness import task_manager

    manager = task_manager(include_defaults=True)
    return {name: str(entry.yaml_path) for name, entry in manager.task_index.items() if entry.yaml_path is not None}


def lm_eval_task_yaml(entry: SuiteEntry) -> Path:
    """The YAML file defining the entry's lm-eval task (this repo's ``tasks/`` first, then lm-eval's).

    Example:
        >>> lm_eval_task_yaml(suite_entry("arc_easy")).name
        'arc_easy.yaml'
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    name = entry.lm_eval_task
    shipped = _shipped_task_index()
    if name in shipped:
        return Path(shipped[name])
    if entry.lm_eval_yaml:
        import lm_eval.tasks

        hint = Path(lm_eval.tasks.__file__).parent / entry.lm_eval_yaml
        if hint.is_file() and load_yaml(hint, resolve_func=False).get("task") == name:
            return hint
        logger.info("lm_eval_yaml hint %s does not define %s; searching lm-eval's registry", hint, name)
    builtin = _builtin_task_index()
    if name not in builtin:
        raise SuiteError(f"suite task {entry.task!r}: lm-eval task {name!r} is not defined in {TASKS_DIR} "
                         "nor in lm-eval's registry")
    return Path(builtin[name])


def lm_eval_task_config(entry: SuiteEntry) -> dict:
    """The entry's full lm-eval task config (includes and ``!function`` resolved), renamed to ``entry.task``.

    Example:
        >>> lm_eval_task_config(suite_entry("boolq"))["output_type"]
        'multiple_choice'
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    config = copy.deepcopy(load_yaml(lm_eval_task_yaml(entry), resolve_func=True))
    if config.get("group") is not None or "task" not in config or isinstance(config.get("task"), list):
        raise SuiteError(f"suite task {entry.task!r}: lm-eval {entry.lm_eval_task!r} is a group, not a single task")
    for key in ("tag", "group", "task_list", "include"):
        config.pop(key, None)
    config["task"] = entry.task
    config["num_fewshot"] = entry.num_fewshot
    return config


def _local_config(entry: SuiteEntry, builder: str, files: dict[str, list[str]], folder: Path) -> dict:
    config = lm_eval_task_config(entry)
    eval_split = config.get("test_split") or config.get("validation_split")
    if eval_split not in files:
        raise SuiteError(f"suite task {entry.task!r}: data.splits {sorted(files)} lacks the task's evaluation "
                         f"split {eval_split!r}")
    fewshot_split = config.get("fewshot_split")
    if entry.num_fewshot > 0 and fewshot_split is not None and fewshot_split not in files:
        raise SuiteError(f"suite task {entry.task!r}: {entry.num_fewshot}-shot needs the {fewshot_split!r} split "
                         f"in data.splits (has {sorted(files)})")
    for key in _SPLIT_KEYS:
        # A split with no local file must not be opened by lm-eval (it would raise KeyError).
        if config.get(key) is not None and config[key] not in files:
            config[key] = None
    if config.get("test_split") is None and config.get("validation_split") is None:
        config["test_split"] = eval_split
    config.pop("custom_dataset", None)
    config["dataset_path"] = builder
    config["dataset_name"] = None
    config["dataset_kwargs"] = {"data_files": {split: list(paths) for split, paths in files.items()}}
    metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    config["metadata"] = {**metadata, "quantsweep_data_dir": str(folder), "quantsweep_suite_version": entry.version}
    return config


def local_task_configs(task_names: list[str] | str, data_dir: str | Path | None = None, *,
                       hub_endpoint: str | None = None) -> dict[str, dict]:
    """lm-eval task configs that read suite tasks' data from local files.

    For every requested task (suite names are expanded) that a suite describes,
    finds its files under ``data_dir`` (see :func:`find_data_files`), checks their
    columns, and returns lm-eval's own task config with only the dataset swapped for
    the local files. Tasks no suite describes are left alone (not in the result).

    Missing files are an error raised before anything runs, naming each task, the
    files expected and the folder searched. The one exception: with a hub mirror
    configured (``HF_ENDPOINT`` set by the user, or ``hub_endpoint``) and the hub not
    marked offline, tasks whose files are missing fall back to the hub through that
    mirror (logged). A user-set ``HF_ENDPOINT`` is never overridden.

    With ``data_dir=None`` only entries whose results name differs from their
    lm-eval task get a (renaming) config.

    Raises:
        MissingDataError: files missing (and no mirror), unreadable, or lacking columns.
        SuiteError: a suite entry inconsistent with its lm-eval task.

    Example:
        >>> configs = local_task_configs(["arc_easy"], "data")  # doctest: +SKIP
        >>> configs["arc_easy"]["dataset_kwargs"]["data_files"]  # doctest: +SKIP
        {'test': ['data/arc_easy/test.jsonl']}
    """
    names = expand_tasks(task_names)
    if hub_endpoint is not None:
        use_hub_mirror(hub_endpoint)
    mirror = effective_hub_endpoint()
    configs: dict[str, dict] = {}
    problems: list[str] = []
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.is_dir():
            raise MissingDataError(f"--data-dir {str(data_dir)!r} is not a folder")
    for name in names:
        entry = suite_entry(name)
        if entry is None:
            logger.debug("task %s is in no suite; it runs from its own lm-eval definition", name)
            continue
        if data_dir is None:
            if entry.lm_eval_task != entry.task:
                configs[name] = lm_eval_task_config(entry)
            continue
        builder, files, missing = find_data_files(entry, data_dir)
        folder = data_dir / entry.data.dir
        if missing:
            if mirror and not _hub_offline():
                logger.warning("no local data for %s in %s; loading it from the hub mirror %s", name, folder, mirror)
                if entry.lm_eval_task != entry.task:
                    configs[name] = lm_eval_task_config(entry)
                continue
            wanted = ", ".join(f"{entry.data.splits[s]}{{{','.join(DATA_FORMATS)}}}" for s in missing)
            problems.append(f"  {name}: expected {wanted} (split(s) {', '.join(missing)}; columns "
                            f"{', '.join(entry.data.columns) or 'as the public dataset'}) in {folder}")
            continue
        check_columns(entry, files)
        configs[name] = _local_config(entry, builder, files, folder)
    if problems:
        raise MissingDataError(
            "local data missing for {} task(s) (no hub mirror configured, so nothing is downloaded; "
            "see docs/offline-data.md):\n{}".format(len(problems), "\n".join(problems))
        )
    return configs


# ---------------------------------------------------------------- chance level inputs

_RULE_BY_OUTPUT_TYPE = {"multiple_choice": "choices", "loglikelihood_rolling": "uniform_vocab",
                        "loglikelihood": "zero", "generate_until": "zero"}


def chance_rule(task: str, output_type: str | None = None) -> tuple[str, float]:
    """The chance rule and floor for a task: its suite entry's, else inferred from lm-eval's output type.

    Tasks outside any suite: multiple choice -> ``choices``; rolling log-likelihood
    (perplexity) -> ``uniform_vocab``; generation and single-continuation
    log-likelihood (scored by exact match) -> ``zero``.

    Returns:
        ``(rule, floor)``; the floor only matters for ``zero``.

    Raises:
        ValueError: the task is in no suite and its output type is unknown.

    Example:
        >>> chance_rule("hellaswag")
        ('choices', 0.0)
        >>> chance_rule("toy_ppl", "loglikelihood_rolling")
        ('uniform_vocab', 0.0)
    """
    entry = suite_entry(task)
    if entry is not None:
        return entry.chance, float(entry.chance_floor)
    if output_type not in _RULE_BY_OUTPUT_TYPE:
        raise ValueError(f"task {task!r} is in no suite and its output type {output_type!r} has no chance rule; "
                         f"known output types: {', '.join(_RULE_BY_OUTPUT_TYPE)}")
    return _RULE_BY_OUTPUT_TYPE[output_type], 0.0


def chance_level(task_result, vocab_size: int | None = None) -> float:
    """Chance level of one evaluated task, in the units of its verdict metric, computed from its samples.

    * ``choices``: mean over the evaluated samples of 1 / (their number of choices),
      from ``SampleOutcome.n_choices`` (never hard-coded).
    * ``zero``: the entry's documented floor (0 by default).
    * ``uniform_vocab``: the perplexity per token of the uniform distribution, ``V``
      (cross-entropy ``log V`` nats). Pass ``vocab_size`` = the size of the model's
      output distribution (its logits' last dimension, e.g. ``model.config.vocab_size``),
      which may exceed ``len(tokenizer)`` when the embedding table is padded.

    Args:
        task_result: a :class:`quantsweep.eval.harness.TaskResult`.
        vocab_size: needed for ``uniform_vocab`` only.

    Example:
        >>> from quantsweep.eval.harness import TaskResult, SampleOutcome
        >>> result = TaskResult("arc_easy", "multiple_choice", {}, [SampleOutcome(0, {}, n_choices=4),
        ...     SampleOutcome(1, {}, n_choices=5)], 0, 0)
        >>> chance_level(result)
        0.225
    """
    from quantsweep.eval import chance as _chance

    rule, floor = chance_rule(task_result.task, task_result.output_type)
    if rule == "choices":
        counts = [sample.n_choices for sample in task_result.samples]
        if not counts or any(count is None for count in counts):
            raise ValueError(f"task {task_result.task!r}: chance rule 'choices' needs every sample's n_choices "
                             f"(output type {task_result.output_type!r})")
        return _chance.multiple_choice_chance(counts)
    if rule == "zero":
        return _chance.exact_match_chance(floor)
    if vocab_size is None:
        raise ValueError(f"task {task_result.task!r}: chance rule 'uniform_vocab' needs vocab_size")
    return _chance.chance_perplexity(vocab_size)


def hub_reachable(endpoint: str | None = None, timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or the user's ``HF_ENDPOINT`` mirror) answers a TCP connect.

    Offline switches (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) answer False without
    touching the network; otherwise one connection attempt with a short time-out, so a
    closed network is found in seconds instead of after datasets' retries.

    Example:
        >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
        >>> hub_reachable()
        False
    """
    import socket
    from urllib.parse import urlparse

    if _hub_offline():
        return False
    url = urlparse(effective_hub_endpoint(endpoint) or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_data_available(task_names: list[str], data_dir: str | Path | None) -> None:
    """Refuse up front to run suite tasks that have no local data and no reachable hub.

    With ``data_dir`` given, :func:`local_task_configs` checks the files. Without it,
    suite tasks would download from the hub; if the hub (or mirror) cannot be reached
    this raises a :class:`MissingDataError` naming each task and the files ``--data-dir``
    would need, instead of failing later inside lm-eval.

    Example:
        >>> check_data_available(["toy_mc4"], None)  # not a suite task: nothing to check
    """
    if data_dir is not None:
        return
    entries = [e for e in (suite_entry(t) for t in expand_tasks(task_names)) if e is not None]
    if not entries or hub_reachable():
        return
    needed = "; ".join(f"{e.task}: {', '.join(sorted(e.data.splits.values()))} file(s) in DATA_DIR/{e.data.dir}/"
                       for e in entries[:6])
    more = f" (and {len(entries) - 6} more tasks)" if len(entries) > 6 else ""
    raise MissingDataError(
        f"no local data given and the hub ({effective_hub_endpoint() or 'https://huggingface.co'}) cannot be "
        f"reached; pass --data-dir DATA_DIR holding {needed}{more} (see docs/offline-data.md), or set "
        "HF_ENDPOINT to a reachable mirror"
    )
