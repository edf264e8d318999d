"""Offline data for suite tasks, and the gate on tasks that execute model-written code.

Local data: :func:`local_task_configs` turns suite task names and a data folder into
lm-eval task config dicts that read ``DATA_DIR/<dir>/<split>.{jsonl,json,parquet,csv}``
through the ``datasets`` packaged builders (``json``/``parquet``/``csv`` with
``data_files``), keeping the rest of the lm-eval task (prompts, metrics) identical.
Missing files are reported up front, naming the task, the files expected and where
they were looked for; nothing waits on the network (see :mod:`quantsweep.hub`).

Example:
    >>> find_data_files(suite_entry("piqa"), "/nonexistent")[2]
    ['validation']
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from quantsweep._text import decode_utf8, read_utf8
from quantsweep.eval.sandbox import default_sandbox
from quantsweep.eval.suites import SuiteEntry, SuiteError, expand_tasks, lm_eval_task_config, suite_entry
from quantsweep.hub import effective_hub_endpoint, hub_offline, hub_reachable, use_hub_mirror

logger = logging.getLogger(__name__)

# File name endings accepted for local data, and the ``datasets`` builder that reads each.
DATA_FORMATS = {
    ".jsonl": "json",
    ".json": "json",
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
DEFAULT_CODE_TIMEOUT_S = 10.0  # seconds per executed program (HF's code_eval default is 3 s)
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


class MissingDataError(ValueError):
    """Local data files for one or more suite tasks are missing (the message lists them)."""


# ---------------------------------------------------------------- code execution


def _code_task_names(names: list[str]) -> list[str]:
    found = []
    for name in expand_tasks(names):
        entry = suite_entry(name)
        # lm-eval's own code tasks (humaneval*, mbpp*) execute code as well.
        if (entry is not None and entry.executes_code) or (entry is None and name.startswith(("humaneval", "mbpp"))):
            found.append(name)
    return found


def check_code_execution(
    task_names: list[str] | str, allow: bool, *, timeout_s: float = DEFAULT_CODE_TIMEOUT_S
) -> list[str]:
    """Refuse code-executing tasks without the opt-in; with it, enable execution with a time-out.

    With ``allow=True`` and at least one such task, sets ``HF_ALLOW_CODE_EVAL=1`` (the
    switch the hub's ``code_eval`` metric and quantsweep's executor both check) and
    ``QUANTSWEEP_CODE_TIMEOUT_S`` (seconds per program, read by the shipped code tasks),
    and probes the sandbox (:mod:`quantsweep.eval.sandbox`), which warns here, before any
    work, about each protection this machine cannot give.
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
    # Probe the sandbox now, so that what it cannot protect here is said before any work.
    _ = default_sandbox().isolation
    return code_tasks


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
            raise MissingDataError(
                f"task {entry.task!r}: split {split!r} has several candidate files "
                f"{[p.name for p in found]} in {folder}; keep exactly one"
            )
        if not found:  # hub-style shards: test-00000-of-00002.parquet, test-00001-of-00002.parquet
            found = sorted(folder.glob(f"{stem}-*.parquet"))
        if not found:
            missing.append(split)
            continue
        builders[split] = DATA_FORMATS[_format_of(found[0])]
        files[split] = [str(path) for path in found]
    if len(set(builders.values())) > 1:
        raise MissingDataError(
            f"task {entry.task!r}: all splits must use one format, found "
            f"{', '.join(f'{s}: {b}' for s, b in builders.items())} in {folder}"
        )
    builder = next(iter(builders.values()), None)
    return builder, files, missing


def _kind(value) -> str | None:
    """The JSON kind of a value, as pyarrow would type its column (None for null: it fits any)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


class _Records:
    """Checks records one by one: each a mapping holding every column, each column of one kind throughout."""

    def __init__(self, path: str, columns: tuple[str, ...]):
        self.path, self.columns = path, columns
        self.kinds: dict[str, tuple[str, str]] = {}  # column -> (kind, where first seen)

    def check(self, record, where: str) -> None:
        if not isinstance(record, dict):
            raise ValueError(f"{self.path}:{where}: expected a JSON object (one record), got {_kind(record)}")
        absent = [c for c in self.columns if c not in record]
        if absent:
            raise ValueError(
                f"{self.path}:{where}: record lacks column(s) {', '.join(absent)} "
                f"(has {', '.join(map(str, record)) or 'none'})"
            )
        for column in self.columns:
            kind = _kind(record[column])
            if kind is None:
                continue
            seen = self.kinds.setdefault(column, (kind, where))
            if seen[0] != kind:
                raise ValueError(
                    f"{self.path}:{where}: column {column!r} is a {kind} here but a {seen[0]} at {seen[1]}; "
                    "a column keeps one type in every record"
                )


def _open_binary(path: str):
    import gzip

    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def _fast_json_lines(path: str, columns: tuple[str, ...]) -> int | None:
    """Rows of a JSON Lines file parsed by pyarrow (C++, what ``datasets`` itself reads it with), or
    None when anything is off (a parse error, a missing column, a null in a required column): then
    the line-by-line reading finds the line, or accepts the file."""
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        with _open_binary(path) as handle:
            raw = handle.read()
        raw.decode("utf-8")  # pyarrow lets a byte that is not UTF-8 through; Python's decoder (C) does not
        table = pj.read_json(pa.BufferReader(raw))
    except (pa.ArrowException, OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if any(c not in table.column_names or table.column(c).null_count for c in columns):
        return None
    return table.num_rows


def _check_json_lines(path: str, records: _Records) -> int:
    fast = _fast_json_lines(path, records.columns)
    if fast is not None:
        return fast
    count = 0
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            line = decode_utf8(raw, path, first_line=number)
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}, column {error.colno})") from None
            records.check(record, str(number))
            count += 1
    return count


def check_data_file(path: str | Path, columns: tuple[str, ...] | list[str] = ()) -> int:
    """Parse a local data file completely and return its number of records.

    Every record must parse, hold every column in ``columns`` and keep each column's
    type (a ``label`` that is a number in one record and a string in the next is what
    ``datasets`` would refuse). JSON Lines (``.jsonl``, ``.json`` holding lines, and
    their ``.gz``), JSON arrays, CSV and Parquet are read; a problem is named by file
    and line (record, for a JSON array; row group, for Parquet).

    Raises:
        ValueError: ``file:line: what is wrong``.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "test.jsonl"
        >>> _ = path.write_text('{"q": "a", "label": 1}\\n{"q": "b", "label": 0}\\n{"q": "c"\\n')
        >>> check_data_file(path, ["q", "label"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: ...test.jsonl:3: not valid JSON (Expecting ',' delimiter...)
    """
    path = str(path)
    records = _Records(path, tuple(columns))
    fmt = _format_of(Path(path))
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except (OSError, ValueError) as error:  # pyarrow.ArrowInvalid is a ValueError
            raise ValueError(f"{path}: not a readable Parquet file ({error})") from None
        names = list(parquet.schema_arrow.names)
        absent = [c for c in columns if c not in names]
        if absent:
            raise ValueError(f"{path}: lacks column(s) {', '.join(absent)} (has {', '.join(names) or 'none'})")
        for group in range(parquet.num_row_groups):  # decodes every page: a damaged one fails here
            try:
                parquet.read_row_group(group, columns=list(columns) or None)
            except Exception as error:  # noqa: BLE001 - pyarrow raises several types for damaged pages
                raise ValueError(f"{path}: row group {group}: {error}") from None
        return parquet.metadata.num_rows
    if fmt == ".csv":
        text = read_utf8(path)
        reader = csv.reader(text.splitlines(keepends=True))
        header = next(reader, [])
        absent = [c for c in columns if c not in header]
        if absent:
            raise ValueError(
                f"{path}:1: header lacks column(s) {', '.join(absent)} (has {', '.join(header) or 'none'})"
            )
        count = 0
        try:
            for row in reader:
                if row and len(row) != len(header):
                    raise ValueError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
                count += bool(row)
        except csv.Error as error:
            raise ValueError(f"{path}:{reader.line_num}: {error}") from None
        return count
    if fmt in (".jsonl", ".jsonl.gz"):
        return _check_json_lines(path, records)
    if fmt in (".json", ".json.gz"):
        with _open_binary(path) as handle:
            head = handle.read(64).lstrip()
        if not head.startswith(b"["):
            return _check_json_lines(path, records)  # JSON Lines saved as .json, which `datasets` also accepts
        with _open_binary(path) as handle:
            raw = handle.read()
        text = decode_utf8(raw, path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno})") from None
        for index, record in enumerate(data):
            records.check(record, f"record {index + 1}")
        return len(data)
    raise ValueError(f"{path}: not a data file quantsweep reads ({', '.join(DATA_FORMATS)})")


def check_columns(entry: SuiteEntry, files: Mapping[str, list[str]]) -> None:
    """Parse every file of a task completely (:func:`check_data_file`): each record holds the columns the
    task's prompts use, and nothing is found broken later, after a model has loaded.

    Raises:
        MissingDataError: naming the task, the file and the line.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "validation.jsonl"
        >>> _ = path.write_text(json.dumps({"goal": "open a jar", "sol1": "twist", "sol2": "push"}) + "\\n")
        >>> check_columns(suite_entry("piqa"), {"validation": [str(path)]})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        quantsweep.eval.offline.MissingDataError: task 'piqa': ...validation.jsonl:1: record lacks column(s) label ...
    """
    for _split, paths in files.items():
        for path in paths:
            try:
                check_data_file(path, entry.data.columns)
            except OSError as error:
                raise MissingDataError(f"task {entry.task!r}: cannot read {path}: {error}") from None
            except ValueError as error:
                raise MissingDataError(f"task {entry.task!r}: {error}") from None


def _local_config(entry: SuiteEntry, builder: str, files: dict[str, list[str]], folder: Path) -> dict:
    config = lm_eval_task_config(entry)
    eval_split = config.get("test_split") or config.get("validation_split")
    if eval_split not in files:
        raise SuiteError(
            f"suite task {entry.task!r}: data.splits {sorted(files)} lacks the task's evaluation split {eval_split!r}"
        )
    fewshot_split = config.get("fewshot_split")
    if entry.num_fewshot > 0 and fewshot_split is not None and fewshot_split not in files:
        raise SuiteError(
            f"suite task {entry.task!r}: {entry.num_fewshot}-shot needs the {fewshot_split!r} split "
            f"in data.splits (has {sorted(files)})"
        )
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


def local_task_configs(
    task_names: list[str] | str, data_dir: str | Path | None = None, *, hub_endpoint: str | None = None
) -> dict[str, dict]:
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
        >>> import json, os, tempfile
        >>> from pathlib import Path
        >>> from unittest import mock
        >>> data = Path(tempfile.mkdtemp())
        >>> (data / "arc_easy").mkdir()
        >>> row = {"question": "2 + 2 = ?", "choices": {"text": ["3", "4"], "label": ["A", "B"]}, "answerKey": "B"}
        >>> _ = (data / "arc_easy" / "test.jsonl").write_text(json.dumps(row) + "\\n")
        >>> config = local_task_configs(["arc_easy"], data)["arc_easy"]
        >>> config["dataset_path"], config["dataset_kwargs"]["data_files"] == {"test": [str(data / "arc_easy" / "test.jsonl")]}
        ('json', True)
        >>> with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):  # no hub mirror to fall back to
        ...     local_task_configs(["piqa"], data)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        quantsweep.eval.offline.MissingDataError: local data missing for 1 task(s) ...
          piqa: expected validation{.jsonl,...} (split(s) validation; columns goal, sol1, sol2, label) in ...
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
            if mirror and not hub_offline():
                logger.warning("no local data for %s in %s; loading it from the hub mirror %s", name, folder, mirror)
                if entry.lm_eval_task != entry.task:
                    configs[name] = lm_eval_task_config(entry)
                continue
            wanted = ", ".join(f"{entry.data.splits[s]}{{{','.join(DATA_FORMATS)}}}" for s in missing)
            problems.append(
                f"  {name}: expected {wanted} (split(s) {', '.join(missing)}; columns "
                f"{', '.join(entry.data.columns) or 'as the public dataset'}) in {folder}"
            )
            continue
        check_columns(entry, files)
        configs[name] = _local_config(entry, builder, files, folder)
    if problems:
        raise MissingDataError(
            "local data missing for {} task(s) (no hub mirror configured, so nothing is downloaded; "
            "see docs/suite-and-offline-data.md):\n{}".format(len(problems), "\n".join(problems))
        )
    return configs


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
    needed = "; ".join(
        f"{e.task}: {', '.join(sorted(e.data.splits.values()))} file(s) in DATA_DIR/{e.data.dir}/" for e in entries[:6]
    )
    more = f" (and {len(entries) - 6} more tasks)" if len(entries) > 6 else ""
    raise MissingDataError(
        f"no local data given and the hub ({effective_hub_endpoint() or 'https://huggingface.co'}) cannot be "
        f"reached; pass --data-dir DATA_DIR holding {needed}{more} (see docs/suite-and-offline-data.md), or set "
        "HF_ENDPOINT to a reachable mirror"
    )
