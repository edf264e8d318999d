"""Content fingerprints of models and tasks, the ingredients of a cell's key.

A model's fingerprint is a SHA-256 over its ``config.json`` and every weight file.
Hashing a 15 GB checkpoint takes about a minute, so each file's digest is cached
by (absolute path, size, modification time) in ``~/.cache/quantsweep/fingerprints.json``
(``QUANTSWEEP_CACHE_DIR`` moves it): a second sweep over the same checkpoint reads
only the file's metadata.

Example:
    >>> len(model_fingerprint("toy"))
    16
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_CHUNK = 8 << 20  # bytes read at a time while hashing


def cache_dir() -> Path:
    """Where quantsweep keeps caches (``QUANTSWEEP_CACHE_DIR``, else ``~/.cache/quantsweep``).

    Example:
        >>> cache_dir().name in ("quantsweep", os.environ.get("QUANTSWEEP_CACHE_DIR", "quantsweep").rsplit("/", 1)[-1])
        True
    """
    return Path(os.environ.get("QUANTSWEEP_CACHE_DIR") or Path.home() / ".cache" / "quantsweep")


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    from quantsweep.sweep.store import atomic_write_text

    try:
        atomic_write_text(path, json.dumps(data))
    except OSError as error:  # a read-only home must not stop a sweep; hashing is only slower
        logger.warning("could not write the fingerprint cache %s: %s", path, error)


def file_digest(path: str | Path) -> str:
    """SHA-256 of one file, cached by (absolute path, size, mtime).

    Example:
        >>> len(file_digest(__file__))
        64
    """
    path = Path(path).resolve()
    stat = path.stat()
    cache_file = cache_dir() / "fingerprints.json"
    cache = _read_cache(cache_file)
    entry = cache.get(str(path))
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    if stat.st_size > 1 << 30:
        logger.info(
            "hashing %s (%.1f GB) once for the cell keys; later sweeps reuse the digest", path, stat.st_size / 1e9
        )
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    cache = _read_cache(cache_file)  # re-read: another process may have added entries meanwhile
    cache[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": value}
    _write_cache(cache_file, cache)
    return value


def model_fingerprint(name_or_path: str | Path) -> str:
    """A short hash of a checkpoint's config and weight files (``toy`` included).

    Raises:
        quantsweep.models.checkpoint.ModelLoadError: the path is missing or has no config or weights.

    Example:
        >>> model_fingerprint("toy") == model_fingerprint("toy")
        True
    """
    from quantsweep.models.checkpoint import find_weight_files, resolve_model_path

    path = resolve_model_path(name_or_path)
    files = [path / "config.json", *find_weight_files(path)]
    # what else changes a result: the tokenizer, generation defaults, and remote code shipped as Python
    index = [
        p
        for pattern in (
            "*.index.json",
            "tokenizer*",
            "special_tokens_map.json",
            "*.model",
            "vocab*",
            "merges.txt",
            "generation_config.json",
            "*.py",
        )
        for p in path.glob(pattern)
        if p.is_file()
    ]
    digest = hashlib.sha256()
    for file in sorted(set(files + index)):
        digest.update(file.name.encode() + b"\0" + file_digest(file).encode() + b"\0")
    return digest.hexdigest()[:16]


def text_fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts (canonical: sorted keys; non-JSON values as text).

    Example:
        >>> text_fingerprint({"b": 1, "a": 2}) == text_fingerprint({"a": 2, "b": 1})
        True
    """
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value} if len(value) < 4096 and Path(value).is_file() else set()
    if isinstance(value, dict):
        return set().union(*(_file_strings(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_file_strings(v) for v in value)) if value else set()
    return set()


def task_fingerprint(name: str, override: dict | None, include_path=None) -> str:
    """A short hash of a task's configuration: its local override (with its data files' contents), or its YAML and helpers.

    For a task found by name the YAML file (and the Python helpers beside it, which
    ``!function`` entries load) is hashed, so editing a task changes its cells' keys.

    Example:
        >>> task_fingerprint("toy_mc4", None) == task_fingerprint("toy_mc4", None)
        True
    """
    if override is not None:
        # the override names local data files: their contents count, not only their paths
        contents = sorted((path, file_digest(path)) for path in _file_strings(override))
        return text_fingerprint("override", override, contents)
    from quantsweep.eval.harness import manager_for

    entry = manager_for([name], include_path).task_index.get(name, {})
    yaml_path = entry.get("yaml_path") if isinstance(entry, dict) else None
    parts: list[Any] = [name, entry.get("type") if isinstance(entry, dict) else None]
    if isinstance(yaml_path, str) and Path(yaml_path).is_file():
        folder = Path(yaml_path).parent
        parts.append(Path(yaml_path).read_text())
        parts += [p.read_text() for p in sorted(folder.glob("*.py"))]
    return text_fingerprint(*parts)
