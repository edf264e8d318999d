"""A sandbox for model-written programs (HumanEval, MBPP), built from what the platform gives.

Each program runs in a fresh Python process (``python -I``), and the sandbox adds, where the
platform allows:

* **network**: a new, empty network namespace (no interfaces but a down loopback);
* **environment**: an empty environment, so no token of the parent is readable;
* **resource limits**: ``setrlimit`` on address space, CPU time, open files and file size,
  applied inside the sandbox before the program starts;
* **processes**: ``RLIMIT_NPROC``, counted inside the sandbox's own user namespace (a fork bomb
  stops at the limit; without a user namespace the limit would count all the user's processes);
* **file system**: everything read-only except a private, fresh temporary folder (mounted at
  ``/tmp``, also the working folder); the parent's ``/tmp`` is hidden;
* **descendants**: a PID namespace, so every process the program started dies with it, whether
  it ends, fails or times out (a forked or ``setsid`` child included).

Backends, tried in order: ``bwrap`` (Debian's bubblewrap: all of the above), ``unshare``
(util-linux: network, processes and descendants through namespaces, but the file system stays
writable wherever the user may write) and ``none`` (limits and a process group only). When the
parent runs as root, the program runs as the unprivileged user ``nobody`` (uid 65534), so that
the process limit applies at all (the kernel never enforces it for root) and root's files are
not writable; where ``nobody`` cannot run the interpreter (say, it lives under ``/root``), the
program runs as root and the process limit is reported missing. Whatever a backend lacks is logged as one warning, naming each missing protection,
before the first program runs; nothing is claimed that was not set up.

Example:
    >>> sandbox = Sandbox(backends=("none",))
    >>> sandbox.run("assert 1 + 1 == 2", timeout_s=20.0).passed
    True
    >>> {"network", "file system", "descendants"} <= set(sandbox.isolation.missing)
    True
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

BACKENDS = ("bwrap", "unshare", "none")
PROTECTIONS = ("network", "environment", "resource limits", "processes", "file system", "descendants")
NOBODY_UID = 65534  # the conventional unprivileged user and group on Linux
_MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Resource limits applied inside the sandbox, before the program starts.

    Args:
        memory_bytes: address-space limit (``RLIMIT_AS``) in bytes.
        processes: at most this many processes and threads (``RLIMIT_NPROC``).
        file_bytes: largest file the program may write (``RLIMIT_FSIZE``) in bytes.
        open_files: at most this many open file descriptors (``RLIMIT_NOFILE``).

    The CPU-time limit (``RLIMIT_CPU``) is the program's time-out rounded up, plus one second.

    Example:
        >>> SandboxLimits(memory_bytes=512 * 1024 * 1024).processes
        64
    """

    memory_bytes: int = 2048 * _MIB  # HumanEval/MBPP programs need tens of MiB
    processes: int = 64
    file_bytes: int = 64 * _MIB
    open_files: int = 256

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SandboxLimits.{field.name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Isolation:
    """What a sandbox backend sets up on this machine.

    Attributes:
        backend: ``"bwrap"``, ``"unshare"`` or ``"none"``.
        missing: each protection this backend lacks here, mapped to why.
        run_as_nobody: the program runs as uid 65534 (the parent is root).

    Example:
        >>> Isolation("none", {"network": "no namespaces"}, False).describe()
        'none (missing: network: no namespaces)'
    """

    backend: str
    missing: dict[str, str]
    run_as_nobody: bool

    def describe(self) -> str:
        """One line: the backend, and each missing protection with its reason.

        Example:
            >>> Isolation("bwrap", {}, True).describe()
            'bwrap (all protections; program runs as uid 65534)'
        """
        if not self.missing:
            nobody = "; program runs as uid 65534" if self.run_as_nobody else ""
            return f"{self.backend} (all protections{nobody})"
        return f"{self.backend} (missing: {'; '.join(f'{k}: {v}' for k, v in self.missing.items())})"


@dataclasses.dataclass(frozen=True)
class ProgramResult:
    """The outcome of one program: its exit status (None when killed at the time-out).

    Example:
        >>> ProgramResult(0, timed_out=False).passed
        True
    """

    returncode: int | None
    timed_out: bool

    @property
    def passed(self) -> bool:
        """True when the program exited with status 0 within its time-out."""
        return self.returncode == 0 and not self.timed_out


# The first process inside the sandbox: set the limits, then exec the program's interpreter,
# so that the program itself runs exactly as ``python -I program.py`` would.
_BOOTSTRAP = (
    "import os, resource, sys\n"
    "as_, cpu, nproc, fsize, nofile = (int(v) for v in sys.argv[1:6])\n"
    "for kind, value in ((resource.RLIMIT_AS, as_), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize),\n"
    "                    (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_CORE, 0)):\n"
    "    resource.setrlimit(kind, (value, value))\n"
    "if nproc > 0:\n"
    "    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))\n"
    "os.execv(sys.argv[6], sys.argv[6:])\n"
)


def _drop_to_nobody() -> None:  # runs in the child between fork and exec
    os.setgroups([])
    os.setgid(NOBODY_UID)
    os.setuid(NOBODY_UID)


def _backend_command(backend: str, workdir: str) -> tuple[list[str], str] | None:
    """The command prefix and the sandbox's view of ``workdir``; None when the tool is absent."""
    if backend == "bwrap":
        tool = shutil.which("bwrap")
        if tool is None:
            return None
        return [
            tool,
            "--unshare-all",  # pid, net, ipc, uts, cgroup (and user where possible)
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            # The program is PID 1 of its namespace (as with unshare below): when it ends, the
            # kernel kills everything left in the namespace before bwrap sees it exit. With
            # bwrap's own init, bwrap would exit first and the rest die a moment later.
            "--as-pid-1",
            "--clearenv",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--remount-ro",
            "/dev",
            "--proc",
            "/proc",
            "--bind",
            workdir,
            "/tmp",
            "--chdir",
            "/tmp",
            "--",
        ], "/tmp"
    if backend == "unshare":
        tool = shutil.which("unshare")
        if tool is None:
            return None
        # The program is PID 1 of its namespace: when it ends, the kernel kills every process
        # left in it; --kill-child kills it when unshare is killed at the time-out.
        return [
            tool,
            "--user",
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--mount-proc",
            "--ipc",
            "--uts",
            "--",
        ], workdir
    if backend == "none":
        return [], workdir
    raise ValueError(f"unknown sandbox backend {backend!r}; allowed: {', '.join(BACKENDS)}")


def _missing(backend: str, run_as_nobody: bool, root: bool, python: str) -> dict[str, str]:
    missing: dict[str, str] = {}
    if not sys.platform.startswith("linux") or backend == "none":
        missing["network"] = "the program can open sockets (no network namespace)"
        missing["descendants"] = (
            "a child that starts its own session (setsid) outlives the program (no PID namespace; "
            "only the program's process group is killed)"
        )
    if backend != "bwrap":
        who = "user nobody (uid 65534), e.g. in /tmp," if run_as_nobody else "the current user"
        missing["file system"] = f"the program can write wherever {who} can (bubblewrap not used)"
    if root and not run_as_nobody:
        missing["processes"] = (
            f"the program runs as root, whom the kernel never holds to RLIMIT_NPROC ({python} cannot be "
            f"run by user nobody, uid {NOBODY_UID}: install Python where it can, or run as a normal user)"
        )
    elif backend == "none" and not run_as_nobody:
        missing["processes"] = (
            "no process limit (without a user namespace RLIMIT_NPROC would count all of the user's processes)"
        )
    if os.name != "posix":
        missing["resource limits"] = "no setrlimit on this platform"
        missing["processes"] = "no setrlimit on this platform"
    return missing


class Sandbox:
    """Runs model-written Python programs with the strongest isolation this machine allows.

    The first backend of ``backends`` that works here is used (found by running one trivial
    program, once); what it lacks is logged as a warning before the first program runs.

    Args:
        limits: resource limits for every program.
        backends: the backends to try, in order (default: all, strongest first).
        python: the interpreter that runs the programs (default: this one, ``sys.executable``).

    Raises:
        ValueError: an unknown backend name; or (on first use) no backend can run a program here.

    Example:
        >>> Sandbox(backends=("none",)).run("raise SystemExit(3)", timeout_s=20.0)
        ProgramResult(returncode=3, timed_out=False)
    """

    def __init__(
        self, *, limits: SandboxLimits | None = None, backends: Sequence[str] = BACKENDS, python: str | None = None
    ):
        unknown = [name for name in backends if name not in BACKENDS]
        if unknown or not backends:
            raise ValueError(f"unknown sandbox backend(s) {unknown or list(backends)}; allowed: {', '.join(BACKENDS)}")
        self.limits = limits or SandboxLimits()
        self.backends = tuple(backends)
        self.python = python or sys.executable
        self._isolation: Isolation | None = None
        self._lock = threading.Lock()

    @property
    def isolation(self) -> Isolation:
        """The backend in use and what it lacks (probed on first use, then cached).

        Example:
            >>> Sandbox(backends=("none",)).isolation.backend
            'none'
        """
        with self._lock:
            if self._isolation is None:
                self._isolation = self._probe()
                self._announce(self._isolation)
            return self._isolation

    def _probe(self) -> Isolation:
        root = hasattr(os, "geteuid") and os.geteuid() == 0
        failures = []
        for backend in self.backends:
            if backend != "none" and not sys.platform.startswith("linux"):
                failures.append(f"{backend}: not Linux")
                continue
            for run_as_nobody in (True, False) if root else (False,):
                isolation = Isolation(backend, _missing(backend, run_as_nobody, root, self.python), run_as_nobody)
                try:
                    result, stderr = self._execute(isolation, "pass", timeout_s=30.0, capture=True)
                except FileNotFoundError as error:
                    failures.append(f"{backend}: {error.strerror or error}")
                    break
                except OSError as error:  # e.g. the interpreter cannot be run by nobody
                    failures.append(f"{backend}{' as nobody' if run_as_nobody else ''}: {error}")
                    continue
                if result.passed:
                    if failures:
                        logger.info("sandbox configurations unavailable here: %s", "; ".join(failures))
                    return isolation
                first_line = (stderr.strip().splitlines() or [f"exit status {result.returncode}"])[0]
                failures.append(f"{backend}{' as nobody' if run_as_nobody else ''}: {first_line}")
        raise ValueError(f"cannot run model-written code here: no sandbox backend works: {'; '.join(failures)}")

    def _announce(self, isolation: Isolation) -> None:
        if isolation.missing:
            logger.warning(
                "sandbox for model-written code: backend %s; MISSING protections: %s",
                isolation.backend,
                "; ".join(f"{k}: {v}" for k, v in isolation.missing.items()),
            )
        else:
            logger.info("sandbox for model-written code: %s", isolation.describe())

    def run(self, program: str, timeout_s: float) -> ProgramResult:
        """Run ``program`` (Python source) in the sandbox; output is discarded.

        Args:
            program: the Python source to execute.
            timeout_s: wall-clock limit in seconds; the program and all it started are killed then.

        Raises:
            ValueError: ``timeout_s`` is not a positive number.

        Example:
            >>> Sandbox(backends=("none",)).run("while True: pass", timeout_s=0.5).timed_out
            True
        """
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        result, _ = self._execute(self.isolation, program, timeout_s=float(timeout_s), capture=False)
        return result

    def _execute(self, isolation: Isolation, program: str, *, timeout_s: float, capture: bool):
        limits = self.limits
        with tempfile.TemporaryDirectory(prefix="quantsweep-code-") as workdir:
            prefix, inner_dir = _backend_command(isolation.backend, workdir) or (None, None)
            if prefix is None:
                raise FileNotFoundError(2, f"{isolation.backend} is not installed")
            with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as handle:
                handle.write(program)
            if isolation.run_as_nobody:
                os.chown(workdir, NOBODY_UID, NOBODY_UID)
            # RLIMIT_NPROC counts per user (per user namespace): only inside a namespace, or as
            # nobody, does it count the sandbox's processes alone.
            nproc = 0 if "processes" in isolation.missing else limits.processes
            cpu_s = math.ceil(timeout_s) + 1
            command = [
                *prefix,
                self.python,
                "-I",
                "-S",
                "-c",
                _BOOTSTRAP,
                str(limits.memory_bytes),
                str(cpu_s),
                str(nproc),
                str(limits.file_bytes),
                str(limits.open_files),
                self.python,
                "-I",
                os.path.join(inner_dir, "program.py"),
            ]
            if os.name != "posix":  # no setrlimit, no preexec: plain interpreter
                command = [self.python, "-I", os.path.join(workdir, "program.py")]
            process = subprocess.Popen(
                command,
                cwd=workdir,
                env={},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_drop_to_nobody if isolation.run_as_nobody else None,
            )
            try:
                _, stderr = process.communicate(timeout=timeout_s)
                result = ProgramResult(process.returncode, timed_out=False)
            except subprocess.TimeoutExpired:
                if isolation.backend != "none":
                    # Kill the namespace's first process (the launcher's child): the kernel then
                    # kills everything in the PID namespace before the launcher sees it exit,
                    # so nothing is left once the launcher is reaped.
                    for child in _children(process.pid):
                        _kill(child)
                    try:
                        _, stderr = process.communicate(timeout=5.0)
                    except subprocess.TimeoutExpired:
                        _kill_group(process.pid)
                else:
                    _kill_group(process.pid)
                _, stderr = process.communicate()
                result = ProgramResult(None, timed_out=True)
            # Whatever is left in the program's process group goes too (the PID namespace
            # already took care of it where there is one).
            _kill_group(process.pid)
        return result, (stderr or b"").decode("utf-8", "replace")


def _children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (``/proc``; empty where there is none)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            # The parent PID is the second field after the parenthesised command name.
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(pgid: int) -> None:
    if not hasattr(os, "killpg"):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_DEFAULT: Sandbox | None = None
_DEFAULT_LOCK = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process-wide sandbox (default limits, strongest backend), created on first use.

    Example:
        >>> default_sandbox() is default_sandbox()
        True
    """
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Sandbox()
        return _DEFAULT
