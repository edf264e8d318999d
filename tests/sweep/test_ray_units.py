"""The Ray backend's own logic, without a cluster: chunking, capacity, addresses, a missing Ray."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from quantsweep.sweep import ray as ray_backend
from quantsweep.sweep.plan import group_units


def _cells(model: str, recipes: list[str], tasks=("t1", "t2")):
    spec = SimpleNamespace(name=model, device="auto")
    return [
        SimpleNamespace(
            key=f"{model}/{r}/{t}",
            model=spec,
            recipe=SimpleNamespace(name=r),
            task=t,
            is_baseline=(r == "fp"),
            control=None,
        )
        for r in recipes
        for t in tasks
    ]


def _recipes(unit):
    return [r.name for r in unit.recipes]


def test_chunks_hold_whole_recipes_with_the_baseline_leading():
    cells = _cells("m", ["w8", "fp", "w4", "w2", "w1"])  # the baseline is moved to the front
    units = group_units(cells, {"m": 2})
    assert [_recipes(u) for u in units] == [["fp", "w8"], ["w4", "w2", "w1"]]
    assert sorted(c.key for u in units for c in u.cells) == sorted(c.key for c in cells)  # each cell once


def test_no_more_units_than_recipes_or_slots():
    assert len(group_units(_cells("m", ["fp", "w8"]), {"m": 16})) == 2
    assert len(group_units(_cells("m", ["fp", "w8", "w4"]), {"m": 1})) == 1


def test_every_models_first_unit_is_submitted_first():
    cells = _cells("a", ["fp", "w8", "w4"]) + _cells("b", ["fp", "w8", "w4"])
    units = group_units(cells, {"a": 2, "b": 2})
    assert [(u.model.name, _recipes(u)) for u in units] == [
        ("a", ["fp"]),
        ("b", ["fp"]),
        ("a", ["w8", "w4"]),
        ("b", ["w8", "w4"]),
    ]


def test_slots_share_the_cluster_between_models():
    kinds = {"a": "npu", "b": "npu"}
    assert ray_backend._slots_per_model(kinds, {"CPU": 192.0, "NPU": 16.0}, 1) == {"a": 8, "b": 8}
    assert ray_backend._slots_per_model({"a": "cpu"}, {"CPU": 8.0}, 2) == {"a": 4}


def test_a_cluster_without_npus_is_refused_with_its_resources():
    units = group_units(_cells("m", ["fp", "w8"]), {"m": 2})
    with pytest.raises(ValueError, match=r"offers no NPU resource.*CPU 8"):
        ray_backend._check_capacity(units, {"m": "npu"}, {"CPU": 8.0}, {"CPU": 8.0}, 1)


def test_more_units_than_free_npus_says_how_many_wait(caplog):
    units = group_units(_cells("m", ["fp", "w8", "w4", "w2"]), {"m": 4})
    with caplog.at_level(logging.WARNING, logger="quantsweep.sweep.ray"):
        ray_backend._check_capacity(units, {"m": "npu"}, {"NPU": 8.0}, {"NPU": 1.0}, 1)
    assert "4 unit(s) ask for one NPU each; the cluster has 8 NPU, 1 free now: 3 unit(s) wait" in caplog.text


def test_cluster_device_kind_follows_the_cluster_for_auto():
    auto, cpu = SimpleNamespace(device="auto"), SimpleNamespace(device="cpu")
    assert ray_backend.cluster_device_kind(auto, {"CPU": 4.0, "NPU": 8.0}) == "npu"
    assert ray_backend.cluster_device_kind(auto, {"CPU": 4.0, "GPU": 1.0}) == "cuda"
    assert ray_backend.cluster_device_kind(cpu, {"CPU": 4.0, "NPU": 8.0}) == "cpu"
    assert ray_backend.cluster_device_kind(SimpleNamespace(device="npu:3"), {"CPU": 4.0}) == "npu"


@pytest.mark.parametrize("address", ["localhost", "10.0.0.1:port", ":6379"])
def test_malformed_address(address):
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        ray_backend.probe_address(address)


def test_unreachable_address_fails_within_seconds():
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ValueError, match=rf"no Ray cluster at '127.0.0.1:{port}'.*ray start --head"):
        ray_backend.probe_address(f"127.0.0.1:{port}")
    assert time.monotonic() - started < ray_backend.PROBE_TIMEOUT_S + 1


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ValueError, match=r"quantsweep\[ray\]") as info:
        ray_backend.import_ray()
    assert isinstance(info.value, ImportError)


@pytest.mark.slow
def test_cli_address_with_no_cluster_exits_2_within_seconds(tmp_path):
    from ray_helpers import write_spec

    pytest.importorskip("ray")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantsweep",
            "sweep",
            str(write_spec(tmp_path)),
            "--out",
            str(tmp_path / "out"),
            "--backend",
            "ray",
            "--address",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"quantsweep: error: no Ray cluster at '127.0.0.1:{port}'" in done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 60  # imports included; the probe itself takes at most PROBE_TIMEOUT_S


def test_a_cell_failed_again_under_force_or_retry_counts_as_stored(tmp_path):
    """--force / --retry-failed with a failing recipe: the new failed file ends the wait (no endless recomputing)."""
    from quantsweep.sweep.store import CellStore

    is_stored = CellStore.is_settled

    store = CellStore(tmp_path)
    store.write_cell({"key": "k", "status": "failed", "error": "ValueError: bad recipe"})
    written = store.cell_path("k").stat().st_mtime

    def context(started_at, force=False, retry_failed=False):
        return SimpleNamespace(started_at=started_at, force=force, retry_failed=retry_failed)

    assert is_stored(store, "k", context(written + 10))  # kept as a finding
    assert not is_stored(store, "k", context(written + 10, force=True))  # stored before this --force run
    assert not is_stored(store, "k", context(written + 10, retry_failed=True))  # stored before this retry
    assert is_stored(store, "k", context(written - 10, force=True))  # failed again during it
    assert is_stored(store, "k", context(written - 10, retry_failed=True))
    assert not is_stored(store, "absent", context(0.0))


def test_cli_backend_ray_without_ray_exits_2_naming_the_extra(monkeypatch, tmp_path, capsys):
    from ray_helpers import write_spec

    from quantsweep.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["sweep", str(write_spec(tmp_path)), "--out", str(tmp_path / "out"), "--backend", "ray"])
    assert code == 2
    assert "quantsweep: error: the Ray backend needs Ray: pip install 'quantsweep[ray]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "address,current,same",
    [
        ("127.0.0.1:6379", "127.0.0.1:6379", True),
        ("localhost:6379", "127.0.0.1:6379", True),
        ("10.0.0.2:6379", "10.0.0.1:6379", False),
        ("127.0.0.1:6380", "127.0.0.1:6379", False),
    ],
)
def test_same_address(address, current, same):
    assert ray_backend._same_address(address, current) is same
