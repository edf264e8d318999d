"""Hostile programs against the sandbox for model-written code, on every backend this machine has.

Each test checks afterwards that the attack was contained (no file written, no process left,
no secret read), or, where the backend lacks the protection here, that the sandbox warned
about exactly that and skips with its reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from quantsweep.eval import sandbox as sandbox_module
from quantsweep.eval.sandbox import BACKENDS, Sandbox, SandboxLimits

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox tests need a POSIX system")

SMALL = SandboxLimits(memory_bytes=256 * 1024 * 1024, processes=8, file_bytes=1024 * 1024)


def _make_sandbox(backend: str, caplog, python: str | None = None) -> Sandbox:
    sandbox = Sandbox(backends=(backend,), limits=SMALL, python=python)
    with caplog.at_level(logging.INFO, logger="quantsweep.eval.sandbox"):
        try:
            isolation = sandbox.isolation
        except ValueError as error:
            pytest.skip(f"backend {backend} cannot run here: {error}")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if isolation.missing:  # said before any program ran, naming every missing protection
        assert len(warnings) == 1
        assert all(f"{name}: {reason}" in warnings[0] for name, reason in isolation.missing.items())
    else:
        assert warnings == []
    return sandbox


@pytest.fixture(params=BACKENDS)
def sandbox(request, caplog) -> Sandbox:
    return _make_sandbox(request.param, caplog)


def _require(sandbox: Sandbox, protection: str) -> None:
    reason = sandbox.isolation.missing.get(protection)
    if reason is not None:
        pytest.skip(f"{sandbox.isolation.backend}: {protection} not protected here: {reason}")


def _alive(marker: str) -> list[int]:
    """PIDs of live processes whose command line holds ``marker`` (any PID namespace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def open_dirs():
    """World-writable folders outside the sandbox (in /tmp and /var/tmp), removed afterwards."""
    made = []
    for base in ("/tmp", "/var/tmp"):
        if os.path.isdir(base):
            path = tempfile.mkdtemp(prefix="quantsweep-outside-", dir=base)
            os.chmod(path, 0o777)
            made.append(path)
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def _late_writer(path: str, delay_s: float, marker: str) -> str:
    """Source that replaces the current process by one writing ``path`` after ``delay_s``."""
    child = f"import time; time.sleep({delay_s}); open({path!r}, 'w').write('escaped')"
    return f"os.execv(sys.executable, [sys.executable, '-c', {child!r}, {marker!r}])"


# ---------------------------------------------------------------- scores do not change


def test_programs_pass_and_fail_as_before(sandbox):
    assert sandbox.run("assert sum([1, 2]) == 3", timeout_s=20.0).passed
    assert sandbox.run("import math, re, collections, itertools, heapq\nassert math.gcd(4, 6) == 2", 20.0).passed
    assert sandbox.run("assert 1 == 2", timeout_s=20.0).returncode == 1
    assert sandbox.run("open('scratch.txt', 'w').write('x' * 1000)", timeout_s=20.0).passed  # its own folder
    start = time.monotonic()
    result = sandbox.run("while True:\n    pass\n", timeout_s=0.5)
    assert result.timed_out and not result.passed
    assert time.monotonic() - start < 10.0


def test_warns_once_before_the_first_program(caplog):
    with caplog.at_level(logging.WARNING, logger="quantsweep.eval.sandbox"):
        sandbox = Sandbox(backends=("none",))
        assert sandbox.run("pass", timeout_s=20.0).passed
        assert sandbox.run("pass", timeout_s=20.0).passed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "MISSING protections" in warnings[0] and "network" in warnings[0] and "descendants" in warnings[0]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        Sandbox(backends=("docker",))
    with pytest.raises(ValueError, match="processes"):
        SandboxLimits(processes=0)
    with pytest.raises(ValueError, match="timeout_s"):
        Sandbox(backends=("none",)).run("pass", timeout_s=0)


# ---------------------------------------------------------------- hostile programs


def test_no_network(sandbox):
    _require(sandbox, "network")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.2)
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')\n"
        assert sandbox.run(program, timeout_s=10.0).returncode == 1  # the connection failed
        with pytest.raises(TimeoutError):
            server.accept()  # nobody came


def test_parent_environment_is_not_readable(sandbox, monkeypatch):
    _require(sandbox, "environment")
    monkeypatch.setenv("QUANTSWEEP_TEST_SECRET", "s3cret-token")
    program = (
        "import os, sys\n"
        # Python itself may add LC_CTYPE (PEP 538) and bwrap PWD; nothing else may be there.
        "if os.environ.get('QUANTSWEEP_TEST_SECRET') or set(os.environ) - {'LC_CTYPE', 'PWD'}:\n"
        "    sys.exit(0)\n"
        "for pid in (os.getppid(), 1):\n"
        "    try:\n"
        "        if b's3cret-token' in open(f'/proc/{pid}/environ', 'rb').read():\n"
        "            sys.exit(0)\n"
        "    except OSError:\n"
        "        pass\n"
        "sys.exit(1)\n"
    )
    assert sandbox.run(program, timeout_s=10.0).returncode == 1


def test_nothing_writable_outside_its_folder(sandbox, open_dirs, tmp_path):
    _require(sandbox, "file system")
    targets = [os.path.join(path, "outside.txt") for path in [*open_dirs, str(tmp_path)]]
    targets.append(os.path.join(os.path.dirname(sandbox_module.__file__), "outside.txt"))
    program = (
        "import sys\n"
        "open('inside.txt', 'w').write('fine')\n"  # its own folder stays writable
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('escaped')\n"
        "        sys.exit(0)\n"
        "    except OSError:\n"
        "        pass\n"
        "sys.exit(1)\n"
    )
    assert sandbox.run(program, timeout_s=10.0).returncode == 1
    assert [path for path in targets if os.path.exists(path)] == []


def test_a_forked_child_dies_with_the_program(sandbox, open_dirs):
    _require(sandbox, "descendants")
    marker, late = f"qs-marker-{uuid.uuid4().hex}", os.path.join(open_dirs[0], "late.txt")
    program = f"import os, sys\nif os.fork() == 0:\n    {_late_writer(late, 0.5, marker)}\nsys.exit(0)\n"
    assert sandbox.run(program, timeout_s=10.0).passed
    assert _alive(marker) == []
    time.sleep(1.0)
    assert not os.path.exists(late)


def test_a_setsid_grandchild_dies_at_the_time_out(sandbox, open_dirs):
    _require(sandbox, "descendants")
    marker, late = f"qs-marker-{uuid.uuid4().hex}", os.path.join(open_dirs[0], "late.txt")
    program = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        {_late_writer(late, 1.5, marker)}\n"
        "    os._exit(0)\n"
        "time.sleep(30)\n"
    )
    result = sandbox.run(program, timeout_s=1.0)
    assert result.timed_out
    assert _alive(marker) == []
    time.sleep(1.0)
    assert not os.path.exists(late)


def test_memory_is_bounded(sandbox):
    _require(sandbox, "resource limits")
    # 1 GiB in 32 MiB pieces: fine without a limit, a MemoryError under SMALL's 256 MiB.
    program = "chunks = [bytearray(32 * 1024 * 1024) for _ in range(32)]\n"
    assert sandbox.run(program, timeout_s=20.0).returncode == 1


def _fork_bomb_sandbox(backend: str, caplog) -> Sandbox:
    sandbox = _make_sandbox(backend, caplog)
    if "processes" in sandbox.isolation.missing and os.geteuid() == 0:
        # This interpreter cannot be run by nobody (e.g. it lives under /root): check the
        # mechanism with a system interpreter that can, if there is one.
        system_python = shutil.which("python3", path="/usr/local/bin:/usr/bin")
        if system_python:
            caplog.clear()
            sandbox = _make_sandbox(backend, caplog, python=system_python)
    return sandbox


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fork_bomb_stops_at_the_process_limit(backend, caplog):
    sandbox = _fork_bomb_sandbox(backend, caplog)
    _require(sandbox, "processes")
    marker = f"qs-marker-{uuid.uuid4().hex}"
    program = (
        "import os, sys, time\n"
        "for _ in range(64):\n"  # far above SMALL's 8 processes
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', {marker!r}])\n"
        "sys.exit(0)\n"
    )
    result = sandbox.run(program, timeout_s=10.0)
    assert result.returncode == 1  # a fork failed (BlockingIOError) long before the 64th
    if "descendants" not in sandbox.isolation.missing:
        assert _alive(marker) == []
