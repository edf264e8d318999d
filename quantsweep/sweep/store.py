"""The store: one file per finished cell, written atomically, and claims for cells in progress.

Layout of a store folder::

    store.json                 format version and the quantsweep that created it
    cells/<key>.json           one finished cell (done or failed): metrics, per-document
                               outcomes, provenance, cost; the source of truth
    claims/<key>.claim         a cell being computed right now, and by whom
    logs/<key>.log             each cell's log
    references/<key>.npz       a baseline cell's stored next-token distributions (rolling
                               tasks; :mod:`quantsweep.eval.divergence`), read by its recipes' cells
    names/<kind>-<hash>.json   what each recipe and model name means in this store
                               (see :mod:`quantsweep.sweep.names`)
    results.jsonl, summary.json   derived from the cells, rebuilt after every cell

A cell file is written to a temporary file in the same folder, fsynced, then renamed
over its final name, so a reader sees either the whole file or none (a kill at any
moment leaves at most a stray ``*.tmp``, never a partial cell). Claims are created
with ``O_CREAT | O_EXCL``, so two sweeps writing into one store (two processes, or Ray
workers on a shared filesystem) never compute the same cell at once. A claim whose
owner died (same host and its pid gone, or no heartbeat for ``stale_after_s``) is
taken over.

Example:
    >>> import tempfile
    >>> store = CellStore(tempfile.mkdtemp())
    >>> with store.claim("abc") as claim:
    ...     path = store.write_cell({"key": "abc", "status": "done"})
    >>> store.status("abc")
    'done'
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from quantsweep._text import safe_text

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
HEARTBEAT_S = 20.0
STALE_AFTER_S = 120.0
# The folders a run writes into (besides the store's own): each is probed before any work.
STORE_FOLDERS = ("cells", "claims", "logs", "references", "names")
# Test hooks for the kill -9 tests: "kill-before-rename:N" SIGKILLs this process mid-write of its N-th cell
# file; "kill-evaluating:RECIPE/TASK" SIGKILLs it while that cell is being evaluated (as the OOM killer would).
FAULT_ENV = "QUANTSWEEP_FAULT"


class StoreError(ValueError):
    """The folder is not a store this quantsweep can use; the message says why."""


def jsonable(value: Any) -> Any:
    """Plain JSON data: NaN becomes None, +-Inf the strings "inf"/"-inf", numpy scalars floats.

    Example:
        >>> jsonable({"a": float("inf"), "b": [float("nan")]})
        {'a': 'inf', 'b': [None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            return str(value)
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: temporary file, fsync, rename, fsync of the folder.

    Example:
        >>> import tempfile
        >>> atomic_write_text(Path(tempfile.mkdtemp()) / "x.json", "{}")
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, as :func:`atomic_write_text` does.

    Example:
        >>> import tempfile
        >>> atomic_write_bytes(Path(tempfile.mkdtemp()) / "x.npz", b"")
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        _fault_point(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_cell_writes = 0


def _fault_point(path: Path) -> None:
    """Fault injection for the kill -9 tests: die between the fsync and the rename of a cell file."""
    global _cell_writes
    spec = os.environ.get(FAULT_ENV, "")
    if not spec.startswith("kill-before-rename:") or path.parent.name != "cells":
        return
    _cell_writes += 1
    if _cell_writes == int(spec.split(":", 1)[1]):
        os.kill(os.getpid(), signal.SIGKILL)


def fault_point(name: str) -> None:
    """SIGKILL this process here if ``QUANTSWEEP_FAULT`` is ``kill-evaluating:<name>`` (a test hook).

    Example:
        >>> fault_point("w8-rtn/toy_ppl")  # does nothing unless the variable says so
    """
    if os.environ.get(FAULT_ENV, "") == f"kill-evaluating:{name}":
        os.kill(os.getpid(), signal.SIGKILL)


def set_aside(path: Path, why: str, then: str) -> Path:
    """Move an unparseable store file out of the way as ``<name>.corrupt-<time>-<id>`` and log its name.

    Nothing is deleted: the file is kept beside its old name for inspection. ``then`` says
    what happens next (logged with the reason). Only a file that was read and found not to
    parse (:data:`PARSE_ERRORS`) is set aside: a file that could not be read (permission
    denied, an I/O error) may hold a good result, so its ``OSError`` propagates instead.

    Example:
        >>> import tempfile
        >>> bad = Path(tempfile.mkdtemp()) / "abc.json"
        >>> _ = bad.write_bytes(b"\\xff\\xfe")
        >>> set_aside(bad, "not UTF-8", "it is rebuilt").name.startswith("abc.json.corrupt-")
        True
    """
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return aside  # another reader set it aside first
    except OSError as error:
        raise StoreError(f"{path} is unreadable ({why}) and cannot be set aside ({error})") from None
    logger.warning("%s is unreadable (%s); kept as %s and %s", path, safe_text(why, limit=200), aside.name, then)
    return aside


# What makes a store file "unparseable", so that it is set aside: bad JSON, bad UTF-8 (both are
# ValueErrors) or a wrong schema (raised as ValueError by the readers). Never an OSError.
PARSE_ERRORS = (ValueError, json.JSONDecodeError, UnicodeDecodeError)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claim:
    """A held claim on one cell; a heartbeat thread keeps it fresh until released.

    The claim file holds its owner (host, pid), a random ``token`` and ``attempts``:
    how many owners before this one died while computing the cell (see
    :meth:`mark_running`). Only the owner whose token is in the file may release it.

    Example:
        >>> import tempfile
        >>> store = CellStore(tempfile.mkdtemp())
        >>> with store.claim("abc") as claim:
        ...     claim.key
        'abc'
    """

    def __init__(self, path: Path, key: str, owner: dict[str, Any]):
        self.path, self.key, self.owner = path, key, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"claim-{key[:8]}", daemon=True)
        self._thread.start()

    @property
    def attempts(self) -> int:
        """How many earlier owners died while computing this cell.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.claim("abc").attempts
            0
        """
        return int(self.owner.get("attempts", 0))

    def holds(self) -> bool:
        """Whether the claim file is still this owner's (not taken over by another process).

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.claim("abc").holds()
            True
        """
        return _read_owner(self.path).get("token") == self.owner["token"]

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = self.holds()
            except OSError as error:  # cannot tell: keep the heartbeat going rather than let the claim go stale
                logger.warning("cannot read the claim on cell %s (%s); its heartbeat goes on", self.key, error)
                held = True
            if not held:
                logger.warning("the claim on cell %s was taken over by another process", self.key)
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def mark_running(self, running: bool = True) -> None:
        """Record in the claim whether the cell is being computed now, so that a death then counts.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.claim("abc").mark_running()
        """
        if self.holds():
            self.owner = {**self.owner, "running": running}
            _write_claim_file(self.path, self.owner, replace=True)

    def release(self) -> None:
        """Stop the heartbeat and remove the claim file if it is still this owner's (once).

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.claim("abc").release()
        """
        if self._stop.is_set():
            return  # released already
        self._stop.set()
        try:
            held = self.holds()
        except OSError as error:  # cannot tell whose it is: leave it; its heartbeat has stopped, so it goes stale
            logger.warning("cannot read the claim on cell %s (%s); left in place", self.key, error)
            return
        if held:  # never remove a claim another process took over meanwhile
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(path: Path) -> dict[str, Any]:
    """A claim file's owner; ``{}`` when the file is gone or holds no JSON object.

    Any other ``OSError`` (permission denied, an I/O error) propagates: a claim that
    cannot be read is not garbage, and must not be taken over as if it were.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except PARSE_ERRORS:
        return {}
    return data if isinstance(data, dict) else {}


def _read_meta(path: Path) -> dict[str, Any] | None:
    """``store.json`` as a mapping, or None when it is gone or not a JSON object (an ``OSError`` propagates)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except PARSE_ERRORS:
        return None
    return data if isinstance(data, dict) else None


def _write_claim_file(path: Path, owner: dict[str, Any], *, replace: bool = False) -> bool:
    """Create (or, with ``replace``, rewrite) a claim file that holds its content from the start."""
    return create_exclusive(path, json.dumps(owner), replace=replace)


def create_exclusive(path: Path, text: str, *, replace: bool = False) -> bool:
    """Create ``path`` holding ``text`` whole from its first moment, unless it exists; whether it was created.

    ``text`` goes to a temporary file in the same folder, which is then hard-linked into
    place: atomic, and exclusive as ``O_CREAT | O_EXCL`` is (a file another process
    created first is never overwritten), yet no reader ever sees it empty or half-written.
    With ``replace``, an existing file is replaced atomically instead (and True returned).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "name.json"
        >>> create_exclusive(path, "first"), create_exclusive(path, "second"), path.read_text()
        (True, False, 'first')
    """
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if the file exists
            return True
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


# What a write probe writes (bytes): enough that a file system with no free block refuses it.
PROBE_BYTES = b"quantsweep write probe\n" * 8


def probe_writable(folder: str | Path) -> None:
    """Write ``PROBE_BYTES`` to a temporary file in ``folder``, fsync it, and remove it.

    ``os.access`` is not enough (it says yes to root on a read-only mount), and an empty
    file takes no data block, so a full disk would pass; written and fsynced bytes do not.
    A disk that fills up later, during the work, is not foreseen.

    Raises:
        OSError: the folder cannot take a file (permission denied, read-only file system,
            no space left); callers name the folder and what is not done.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> probe_writable(folder)
        >>> list(Path(folder).iterdir())  # the probe is removed
        []
    """
    handle, probe = tempfile.mkstemp(dir=folder, prefix=".quantsweep-probe-", suffix=".tmp")
    try:
        try:
            view = memoryview(PROBE_BYTES)
            while view:
                view = view[os.write(handle, view) :]
            os.fsync(handle)
        finally:
            os.close(handle)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def check_store_writable(directory: str | Path) -> None:
    """Refuse, before any work, a store folder this process could not write: an existing store is
    probed folder by folder (:meth:`CellStore.check_writable`), a new one at its nearest existing parent,
    each with :func:`probe_writable`.

    Raises:
        StoreError: naming the folder and why (permission, read-only file system, no space left).

    Example:
        >>> import tempfile
        >>> check_store_writable(Path(tempfile.mkdtemp()) / "new" / "store")
    """
    path = Path(directory)
    if path.exists():
        CellStore(path).check_writable()
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        probe_writable(parent)
    except OSError as error:
        raise StoreError(
            f"cannot create the store {path}: {parent} is not writable ({error.strerror or error}); "
            "nothing was run: use another --out folder"
        ) from None


class CellStore:
    """A folder of cell files; see the module docstring for the layout and guarantees.

    Args:
        directory: the store folder (created if missing).
        stale_after_s: a claim without a heartbeat for this long is taken over.

    Raises:
        StoreError: the path is a file, the store was written by an incompatible
            quantsweep, or the folder holds results of a quantsweep before stores
            (a ``results.jsonl`` and no ``store.json``): nothing there is touched.

    Example:
        >>> import tempfile
        >>> store = CellStore(tempfile.mkdtemp())
        >>> store.status("no-such-key") is None
        True
    """

    def __init__(self, directory: str | Path, *, stale_after_s: float = STALE_AFTER_S):
        from quantsweep._version import __version__

        self.directory = Path(directory)
        self.stale_after_s = stale_after_s
        self._statuses: dict[str, tuple[tuple[int, int, int], str]] = {}  # key -> ((mtime_ns, size, inode), status)
        self._meta: dict[str, Any] = {}
        if self.directory.exists() and not self.directory.is_dir():
            raise StoreError(f"output path {str(self.directory)!r} exists and is not a directory")
        meta_path = self.directory / "store.json"
        try:
            meta = _read_meta(meta_path) if meta_path.is_file() else None
        except OSError as error:  # unreadable is not corrupt: nothing is set aside or written again
            raise StoreError(
                f"cannot read {meta_path} ({error.strerror or error}); nothing was changed: "
                "make it readable or use another --out folder"
            ) from None
        if meta is None and meta_path.is_file():
            if not (self.directory / "cells").is_dir():
                raise StoreError(f"{meta_path} is not valid JSON; is {self.directory} a quantsweep store?")
            set_aside(meta_path, "not a JSON object", "it is written again (the verdict thresholds it kept are lost)")
        if meta is not None:
            if meta.get("format") != STORE_FORMAT:
                raise StoreError(
                    f"{self.directory} was written by quantsweep {meta.get('quantsweep_version', '?')} in store "
                    f"format {meta.get('format')!r}; this quantsweep {__version__} reads format "
                    f"{STORE_FORMAT}. Nothing was changed; use another --out folder"
                )
            self._meta = meta
        elif (self.directory / "results.jsonl").is_file() and not (self.directory / "cells").is_dir():
            raise StoreError(
                f"{self.directory} holds a results.jsonl from a quantsweep without cell stores (no store.json); "
                "it is left untouched: use another --out folder"
            )
        else:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._meta = {"format": STORE_FORMAT, "quantsweep_version": __version__}
                atomic_write_text(meta_path, json.dumps(self._meta) + "\n")
            except OSError as error:
                raise StoreError(f"cannot write the store {self.directory}: {error.strerror or error}") from None
        for name in ("cells", "claims", "logs"):
            try:
                (self.directory / name).mkdir(exist_ok=True)
            except OSError as error:
                raise StoreError(f"cannot write the store {self.directory}: {error.strerror or error}") from None

    def check_writable(self) -> None:
        """Refuse a store this process cannot write into, before any work: each folder a run writes
        (the store, ``cells/``, ``claims/``, ``logs/``, ``references/``, ``names/``) is probed with
        :func:`probe_writable` (bytes written and fsynced, so a full disk is caught too).

        Raises:
            StoreError: naming the folder that cannot be written and why.

        Example:
            >>> import tempfile
            >>> CellStore(tempfile.mkdtemp()).check_writable()
        """
        for folder in (self.directory, *(self.directory / name for name in STORE_FOLDERS)):
            try:
                folder.mkdir(exist_ok=True)  # references/ and names/ are otherwise made on first use
                probe_writable(folder)
            except OSError as error:
                raise StoreError(
                    f"cannot write into {folder} ({error.strerror or error}); nothing was run: "
                    "make it writable or use another --out folder"
                ) from None

    # ------------------------------------------------------------------ metadata
    def verdict_thresholds(self) -> dict[str, Any] | None:
        """The verdict thresholds this store was last judged with (``store.json``), or None if never recorded.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.verdict_thresholds() is None
            True
        """
        thresholds = self._meta.get("verdict")
        return dict(thresholds) if isinstance(thresholds, dict) else None

    def record_verdict_thresholds(self, thresholds: dict[str, Any]) -> None:
        """Keep ``thresholds`` in ``store.json``: what :func:`quantsweep.judge` starts from next time.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.record_verdict_thresholds({"alpha": 0.01})
            >>> CellStore(store.directory).verdict_thresholds()
            {'alpha': 0.01}
        """
        if self._meta.get("verdict") == thresholds:
            return
        self._meta = {**self._meta, "verdict": dict(thresholds)}
        atomic_write_text(self.directory / "store.json", json.dumps(jsonable(self._meta)) + "\n")

    # ------------------------------------------------------------------ cells
    def cell_path(self, key: str) -> Path:
        """The file of cell ``key``.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.cell_path("abc").name
            'abc.json'
        """
        return self.directory / "cells" / f"{key}.json"

    def log_path(self, key: str) -> Path:
        """The log file of cell ``key``.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.log_path("abc").name
            'abc.log'
        """
        return self.directory / "logs" / f"{key}.log"

    def reference_path(self, key: str) -> Path:
        """The file of baseline cell ``key``'s stored distributions (:mod:`quantsweep.eval.divergence`).

        Example:
            >>> import tempfile
            >>> CellStore(tempfile.mkdtemp()).reference_path("abc").name
            'abc.npz'
        """
        return self.directory / "references" / f"{key}.npz"

    def write_reference(self, key: str, data: bytes) -> Path:
        """Store baseline cell ``key``'s distributions atomically (before its cell file, which names it).

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> _ = store.write_reference("abc", b"x")
            >>> store.read_reference("abc")
            b'x'
        """
        path = self.reference_path(key)
        atomic_write_bytes(path, data)
        return path

    def read_reference(self, key: str) -> bytes | None:
        """Baseline cell ``key``'s stored distributions, or None when it stored none.

        Example:
            >>> import tempfile
            >>> CellStore(tempfile.mkdtemp()).read_reference("abc") is None
            True
        """
        try:
            return self.reference_path(key).read_bytes()
        except FileNotFoundError:
            return None

    def read_cell(self, key: str) -> dict[str, Any] | None:
        """The stored cell, or None if absent. A file that is not valid JSON (edited by hand,
        say) is reported, kept aside as ``<key>.json.corrupt-<time>``, and read as absent,
        so the cell is computed again.

        Raises:
            OSError: the file exists but cannot be read (permission denied, an I/O error);
                it is left where it is, since it may hold a good result.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.read_cell("abc") is None
            True
        """
        path = self.cell_path(key)
        try:
            cell = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(cell, dict) or cell.get("key") != key or cell.get("status") not in ("done", "failed"):
                raise ValueError("not a cell record")
            return cell
        except FileNotFoundError:
            return None
        except PARSE_ERRORS as error:  # binary garbage, a wrong encoding, a wrong schema; never an OSError
            set_aside(path, f"{type(error).__name__}: {error}", "the cell will be computed again")
            return None

    def status(self, key: str) -> str | None:
        """``done``, ``failed`` or None (not stored).

        Drivers and workers ask this often (before and after claiming, while waiting); a
        cell file is parsed once per version (its modification time, size and inode), not per call.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> _ = store.write_cell({"key": "abc", "status": "done"})
            >>> store.status("abc")
            'done'
        """
        try:
            stat = self.cell_path(key).stat()
        except FileNotFoundError:
            return None
        version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)  # a new inode per atomic replacement
        cached = self._statuses.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        cell = self.read_cell(key)
        if cell is None:
            return None
        self._statuses[key] = (version, cell["status"])
        return cell["status"]

    def is_settled(self, key: str, run) -> bool:
        """Whether cell ``key`` needs no computing in this run.

        ``run`` says when the run began and what it recomputes (``started_at`` in epoch s,
        ``force``, ``retry_failed``). A cell is settled when it is stored and either it was
        written during this run, or it is a stored result the run keeps: a done cell unless
        ``force``, a failed cell unless ``retry_failed`` or ``force``. So a cell that fails
        again during a retry is final for that run, never retried forever.

        Example:
            >>> import tempfile, types
            >>> store = CellStore(tempfile.mkdtemp())
            >>> run = types.SimpleNamespace(started_at=0.0, force=False, retry_failed=False)
            >>> store.is_settled("absent", run)
            False
        """
        status = self.status(key)
        if status is None:
            return False
        try:
            written_now = self.cell_path(key).stat().st_mtime >= run.started_at
        except FileNotFoundError:
            return False
        if written_now:
            return True
        if run.force:
            return False
        return status == "done" or not run.retry_failed

    def write_cell(self, cell: dict[str, Any]) -> Path:
        """Store one finished cell atomically (replacing an earlier version of the same key).

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.write_cell({"key": "abc", "status": "done"}).name
            'abc.json'
        """
        if cell.get("status") not in ("done", "failed") or not cell.get("key"):
            raise ValueError("a cell needs a 'key' and a status of 'done' or 'failed'")
        path = self.cell_path(cell["key"])
        atomic_write_text(path, json.dumps(jsonable(cell), separators=(",", ":")) + "\n")
        return path

    def keys(self) -> list[str]:
        """Keys of every stored cell file.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> _ = store.write_cell({"key": "abc", "status": "done"})
            >>> store.keys()
            ['abc']
        """
        return sorted(p.stem for p in (self.directory / "cells").glob("*.json"))

    def cells(self) -> Iterator[dict[str, Any]]:
        """Every readable stored cell.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> _ = store.write_cell({"key": "abc", "status": "done", "recipe": "fp"})
            >>> [c["recipe"] for c in store.cells()]
            ['fp']
        """
        for key in self.keys():
            cell = self.read_cell(key)
            if cell is not None:
                yield cell

    # ------------------------------------------------------------------ claims
    def _claim_path(self, key: str) -> Path:
        return self.directory / "claims" / f"{key}.claim"

    def claim(self, key: str) -> Claim | None:
        """Claim cell ``key`` for this process, or None if a live claim is held elsewhere.

        A stale claim (owner dead, or no heartbeat for ``stale_after_s``) is taken over;
        if its owner had started computing the cell, the new claim's ``attempts`` is one
        more than the old one's.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> claim = store.claim("abc")
            >>> store.claim("abc") is None  # held by this process: no second claim
            True
            >>> claim.release()
        """
        path = self._claim_path(key)
        attempts = 0
        for _ in range(3):
            owner = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": time.time(),
                "token": uuid.uuid4().hex,
                "attempts": attempts,
            }
            if _write_claim_file(path, owner):
                return Claim(path, key, owner)
            seen = _read_owner(path)
            if not self._is_stale(path, seen):
                return None
            stale = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.replace(path, stale)
            except OSError:
                continue  # another taker moved it first
            moved = _read_owner(stale)
            if moved.get("token") != seen.get("token"):
                # between our look and our move another process took the claim over: give it back
                with contextlib.suppress(OSError):
                    os.link(stale, path)
                with contextlib.suppress(OSError):
                    stale.unlink()
                return None
            logger.info("took over the stale claim on cell %s (%s)", key, json.dumps(moved))
            with contextlib.suppress(OSError):
                stale.unlink()
            attempts = int(moved.get("attempts", 0)) + (1 if moved.get("running") else 0)
        return None

    def claim_owner(self, key: str) -> dict[str, Any] | None:
        """Who holds a live claim on ``key`` (host, pid, started), or None.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.claim_owner("abc") is None
            True
        """
        path = self._claim_path(key)
        owner = _read_owner(path)
        if not path.exists() or self._is_stale(path, owner):
            return None
        return owner

    def has_stale_claim(self, key: str) -> bool:
        """Whether ``key`` has a claim file whose owner died or stopped its heartbeat (not yet taken over).

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> claim = store.claim("abc")
            >>> store.has_stale_claim("abc"), store.has_stale_claim("absent")
            (False, False)
            >>> claim.release()
        """
        path = self._claim_path(key)
        return path.exists() and self._is_stale(path)

    def _is_stale(self, path: Path, owner: dict[str, Any] | None = None) -> bool:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        owner = _read_owner(path) if owner is None else owner
        if not owner:
            # a claim file is written whole before it is linked into place, so one without an owner
            # is never half-written: it is garbage, and waiting for its heartbeat would only stall
            logger.warning("claim file %s is unreadable; taken as stale", path)
            return True
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            if not _pid_alive(owner["pid"]):
                return True
        return age > self.stale_after_s

    # ------------------------------------------------------------------ derived files
    def write_derived(self, name: str, text: str) -> Path:
        """Write a derived file (``results.jsonl``, ``summary.json``) atomically.

        Example:
            >>> import tempfile
            >>> store = CellStore(tempfile.mkdtemp())
            >>> store.write_derived("summary.json", "{}").name
            'summary.json'
        """
        path = self.directory / name
        atomic_write_text(path, text)
        return path
