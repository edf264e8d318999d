"""Task lookup: where task YAML lives, lm-eval's task managers, and what each output type means.

* :data:`OUTPUT_TYPES` is the one table of lm-eval output types: whether a type is
  scored by log-likelihood, the family a task outside any suite falls into, and its
  chance rule. Every other module reads it from here.
* :func:`check_tasks` / :func:`manager_for` find tasks in this repository's ``tasks/``
  folder, user folders and lm-eval's registry, with "did you mean" for unknown names.
* :func:`task_yaml` / :func:`task_config` resolve one lm-eval task's YAML file and its
  full config (includes and ``!function`` resolved).

Example:
    >>> OUTPUT_TYPES["multiple_choice"].chance
    'choices'
    >>> task_yaml("toy_mc4").name
    'toy_mc4.yaml'
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsweep._paths import shipped_dir
from quantsweep._schema import close_matches

logger = logging.getLogger(__name__)

TASKS_DIR = shipped_dir("tasks")


@dataclass(frozen=True)
class OutputType:
    """What quantsweep knows about one lm-eval ``output_type``.

    Attributes:
        loglikelihood: scored by log-likelihoods (NaN/Inf shows in the responses).
        family: the family of a task outside any suite (suite entries name their own).
        chance: the chance rule of a task outside any suite (see :mod:`quantsweep.eval.suites`).

    Example:
        >>> OUTPUT_TYPES["generate_until"].family
        'generation'
    """

    loglikelihood: bool
    family: str
    chance: str


OUTPUT_TYPES = {
    "multiple_choice": OutputType(loglikelihood=True, family="multiple_choice", chance="choices"),
    "loglikelihood": OutputType(loglikelihood=True, family="language_modelling", chance="zero"),
    "loglikelihood_rolling": OutputType(loglikelihood=True, family="language_modelling", chance="uniform_vocab"),
    "generate_until": OutputType(loglikelihood=False, family="generation", chance="zero"),
}
LOGLIKELIHOOD_TYPES = tuple(name for name, kind in OUTPUT_TYPES.items() if kind.loglikelihood)


class TaskNotFoundError(ValueError):
    """A task name matched nothing in the searched task folders."""


def task_search_paths(include_path: str | Path | list | None = None) -> list[Path]:
    """Folders searched for task YAML, besides lm-eval's own registry.

    This repository's ``tasks/`` folder comes first, then any user folders.

    Example:
        >>> task_search_paths()[0].name
        'tasks'
    """
    paths = [TASKS_DIR]
    extra = include_path if isinstance(include_path, (list, tuple)) else [include_path] if include_path else []
    for entry in extra:
        path = Path(entry)
        if not path.is_dir():
            raise ValueError(f"task folder {str(path)!r} does not exist")
        paths.append(path)
    return paths


_MANAGERS: dict[tuple, Any] = {}


def task_manager(include_path: str | Path | list | None = None, *, include_defaults: bool = True):
    """An lm-eval ``TaskManager`` over this repo's tasks, user folders and (optionally) lm-eval's registry.

    Indexing lm-eval's registry of ~15,000 tasks takes several seconds, so managers
    are cached per process, and :func:`manager_for` only builds the full index
    when a task is not found in this repository's or the user's folders.

    Example:
        >>> "toy_mc4" in task_manager(include_defaults=False).all_tasks
        True
    """
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in task_search_paths(include_path)]
    key = (tuple(paths), include_defaults)
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=paths, include_defaults=include_defaults)
    return _MANAGERS[key]


def manager_for(names: list[str], include_path: str | Path | list | None = None):
    """The cheapest cached ``TaskManager`` that knows every name, or the full one.

    Example:
        >>> manager_for(["toy_mc4"]).include_path[0].endswith("tasks")
        True
    """
    local = task_manager(include_path, include_defaults=False)
    if all(name in local.all_tasks for name in names):
        return local
    return task_manager(include_path, include_defaults=True)


def check_tasks(names: list[str], include_path: str | Path | list | None = None) -> None:
    """Raise :class:`TaskNotFoundError` for a name that no searched folder nor lm-eval defines.

    Example:
        >>> check_tasks(["toy_mc4"])
    """
    manager = manager_for(names, include_path)
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = close_matches(name, sorted(known))
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            searched = ", ".join(str(p) for p in task_search_paths(include_path))
            raise TaskNotFoundError(f"unknown task {name!r}{hint}; searched {searched} and lm-eval's built-in registry")


# ---------------------------------------------------------------- one task's YAML


@functools.lru_cache(maxsize=1)
def _shipped_task_index() -> dict[str, str]:
    from lm_eval.tasks._index import TaskIndex

    return {
        name: str(entry.yaml_path)
        for name, entry in TaskIndex.build([TASKS_DIR]).items()
        if entry.yaml_path is not None
    }


@functools.lru_cache(maxsize=1)
def _builtin_task_index() -> dict[str, str]:
    # Indexing all of lm-eval's ~15k task YAML takes seconds; only done when a hint fails, and
    # the index is the cached full TaskManager's (this repo's tasks are looked up first anyway).
    manager = task_manager(include_defaults=True)
    return {name: str(entry.yaml_path) for name, entry in manager.task_index.items() if entry.yaml_path is not None}


def task_yaml(name: str, hint: str | None = None) -> Path:
    """The YAML file defining lm-eval task ``name`` (this repo's ``tasks/`` first, then lm-eval's).

    Args:
        name: the lm-eval task name.
        hint: optional path of its YAML inside lm-eval's ``tasks`` folder, which avoids
            indexing all of lm-eval's tasks.

    Raises:
        TaskNotFoundError: no searched folder defines ``name``.

    Example:
        >>> task_yaml("arc_easy", "arc/arc_easy.yaml").name
        'arc_easy.yaml'
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    shipped = _shipped_task_index()
    if name in shipped:
        return Path(shipped[name])
    if hint:
        import lm_eval.tasks

        path = Path(lm_eval.tasks.__file__).parent / hint
        if path.is_file() and load_yaml(path, resolve_func=False).get("task") == name:
            return path
        logger.info("lm_eval_yaml hint %s does not define %s; searching lm-eval's registry", path, name)
    builtin = _builtin_task_index()
    if name not in builtin:
        raise TaskNotFoundError(f"lm-eval task {name!r} is not defined in {TASKS_DIR} nor in lm-eval's registry")
    return Path(builtin[name])


def task_config(name: str, hint: str | None = None) -> dict:
    """Task ``name``'s full lm-eval config (includes and ``!function`` resolved), without tags or groups.

    Raises:
        TaskNotFoundError: unknown task. ValueError: ``name`` is a group, not a single task.

    Example:
        >>> task_config("toy_mc4")["output_type"]
        'multiple_choice'
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    config = copy.deepcopy(load_yaml(task_yaml(name, hint), resolve_func=True))
    if config.get("group") is not None or "task" not in config or isinstance(config.get("task"), list):
        raise ValueError(f"lm-eval {name!r} is a group, not a single task")
    for key in ("tag", "group", "task_list", "include"):
        config.pop(key, None)
    return config
