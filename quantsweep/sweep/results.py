"""The results store: ``results.jsonl`` (one object per model, recipe, task, metric) and per-sample files.

Each line of ``results.jsonl`` carries the resolved recipe config and enough
provenance (device, dtype, versions, calibration, verdict thresholds) to
reproduce it. Per-sample outcomes go to ``samples/<recipe>/<task>.jsonl`` so a
later analysis can pair any two recipes document by document.

Example:
    >>> store = ResultStore("out")  # doctest: +SKIP
    >>> store.append({"model": "toy", "recipe": "fp", "task": "toy_mc4", "metric": "acc", "value": 0.9})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    return value


class ResultStore:
    """Appends result records to ``DIR/results.jsonl`` as they are produced.

    Records are flushed line by line, so an interrupted sweep keeps everything
    finished so far.

    Example:
        >>> store = ResultStore(tmp_path)  # doctest: +SKIP
        >>> store.path.name  # doctest: +SKIP
        'results.jsonl'
    """

    def __init__(self, directory: str | Path, *, overwrite: bool = True):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"output path {str(self.directory)!r} exists and is not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "results.jsonl"
        if overwrite and self.path.exists():
            self.path.unlink()

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a JSON line (NaN becomes null, Inf becomes "inf").

        Example:
            >>> store.append({"recipe": "fp"})  # doctest: +SKIP
        """
        with self.path.open("a") as handle:
            handle.write(json.dumps(_jsonable(record)) + "\n")

    def write_json(self, name: str, data: Any) -> Path:
        """Write a JSON document next to ``results.jsonl`` (e.g. ``summary.json``).

        Example:
            >>> store.write_json("summary.json", {"by_recipe": {}})  # doctest: +SKIP
        """
        path = self.directory / name
        path.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
        return path

    def write_samples(self, recipe: str, task: str, rows: Iterable[dict[str, Any]]) -> Path:
        """Write one task's per-sample outcomes for one recipe.

        Example:
            >>> store.write_samples("fp", "toy_mc4", [{"doc_id": 0, "acc": 1.0}])  # doctest: +SKIP
        """
        path = self.directory / "samples" / recipe / f"{task}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            for row in rows:
                handle.write(json.dumps(_jsonable(row)) + "\n")
        return path


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Read every record of a ``results.jsonl`` (or of the folder holding it).

    Example:
        >>> rows = read_results("out")  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise ValueError(f"no results file at {str(path)!r}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
