"""The store: atomic cell files, readable-or-absent, claims that exclude, and refusals that touch nothing."""

import json
import multiprocessing
import os
import time

import pytest

from quantsweep.sweep import store as store_module
from quantsweep.sweep.store import CellStore, StoreError


def test_a_cell_file_is_whole_or_absent(tmp_path):
    store = CellStore(tmp_path)
    store.write_cell({"key": "k1", "status": "done", "value": float("inf"), "nan": float("nan")})
    assert store.read_cell("k1") == {"key": "k1", "status": "done", "value": "inf", "nan": None}
    assert [p.name for p in (tmp_path / "cells").iterdir()] == ["k1.json"]  # no temporary file left
    assert store.read_cell("k2") is None and store.status("k2") is None
    with pytest.raises(ValueError, match="status of 'done' or 'failed'"):
        store.write_cell({"key": "k3", "status": "running"})


def test_an_interrupted_write_leaves_the_previous_file(tmp_path, monkeypatch):
    store = CellStore(tmp_path)
    store.write_cell({"key": "k", "status": "done", "version": 1})

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(store_module.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write_cell({"key": "k", "status": "done", "version": 2})
    monkeypatch.undo()
    assert store.read_cell("k")["version"] == 1
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["k.json"]  # the temporary file is gone


def test_a_hand_edited_invalid_cell_is_kept_aside_and_read_as_absent(tmp_path, caplog):
    store = CellStore(tmp_path)
    store.write_cell({"key": "k", "status": "done"})
    store.cell_path("k").write_text('{"key": "k", "status": "do')
    assert store.read_cell("k") is None
    assert "unreadable" in caplog.text and "computed again" in caplog.text
    (aside,) = list((tmp_path / "cells").glob("k.json.corrupt-*"))
    assert aside.read_text() == '{"key": "k", "status": "do'  # nothing is deleted
    store.write_cell({"key": "wrong", "status": "done"})
    os.replace(store.cell_path("wrong"), store.cell_path("other"))  # a file whose key does not match its name
    assert store.read_cell("other") is None


def test_a_claim_excludes_others_until_released(tmp_path):
    store = CellStore(tmp_path)
    first = store.claim("k")
    assert first is not None and store.claim("k") is None
    assert store.claim_owner("k")["pid"] == os.getpid()
    first.release()
    assert store.claim_owner("k") is None
    second = store.claim("k")
    assert second is not None
    second.release()


def test_a_dead_owners_claim_is_taken_over(tmp_path):
    store = CellStore(tmp_path)
    child = multiprocessing.get_context("fork").Process(target=lambda: None)
    child.start()
    child.join()  # a pid that no longer runs
    path = tmp_path / "claims" / "k.claim"
    path.write_text(json.dumps({"host": os.uname().nodename, "pid": child.pid, "started": time.time()}))
    claim = store.claim("k")
    assert claim is not None
    claim.release()
    # another host's claim: taken over only once its heartbeat is older than stale_after_s
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": time.time()}))
    assert CellStore(tmp_path, stale_after_s=60).claim("k") is None
    old = time.time() - 120
    os.utime(path, (old, old))
    taken = CellStore(tmp_path, stale_after_s=60).claim("k")
    assert taken is not None
    taken.release()


def _try_claim(directory, key, queue):
    claim = CellStore(directory).claim(key)
    queue.put(claim is not None)
    time.sleep(1.0)  # hold it while the others try


def test_one_of_many_processes_wins_a_claim(tmp_path):
    CellStore(tmp_path)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_try_claim, args=(tmp_path, "k", queue)) for _ in range(6)]
    for worker in workers:
        worker.start()
    wins = [queue.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join()
    assert sum(wins) == 1


def test_incompatible_or_pre_store_folders_are_refused_untouched(tmp_path):
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "store.json").write_text(json.dumps({"format": 99, "quantsweep_version": "9.0"}))
    with pytest.raises(StoreError, match="written by quantsweep 9.0 in store format 99"):
        CellStore(tmp_path / "future")
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.jsonl").write_text('{"recipe": "fp"}\n')
    with pytest.raises(StoreError, match="left untouched"):
        CellStore(old)
    assert sorted(p.name for p in old.iterdir()) == ["results.jsonl"]
    assert (old / "results.jsonl").read_text() == '{"recipe": "fp"}\n'
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is not a directory"):
        CellStore(tmp_path / "file")


def test_releasing_twice_never_removes_a_later_claim(tmp_path):
    store = CellStore(tmp_path)
    first = store.claim("k")
    first.release()
    second = store.claim("k")
    first.release()  # a stale handle released again
    assert store.claim_owner("k") is not None and store.claim("k") is None
    second.release()


def test_verdict_thresholds_live_in_the_store_and_older_stores_fall_back_once(tmp_path):
    """A store from before store.json kept thresholds: judge reads them from results.jsonl once, then records them."""
    import json

    import quantsweep
    from quantsweep.sweep.store import CellStore

    CellStore(tmp_path)
    (tmp_path / "results.jsonl").write_text(json.dumps({"verdict_config": {"accuracy_tolerance": 0.02}}) + "\n")
    assert CellStore(tmp_path).verdict_thresholds() is None
    quantsweep.judge(tmp_path, alpha=0.01)
    assert CellStore(tmp_path).verdict_thresholds()["accuracy_tolerance"] == 0.02
    (tmp_path / "results.jsonl").write_text("")  # no longer read: the store's own metadata answers
    quantsweep.judge(tmp_path)
    kept = CellStore(tmp_path).verdict_thresholds()
    assert (kept["alpha"], kept["accuracy_tolerance"]) == (0.01, 0.02)


# ------------------------------------------------------------------ unreadable is not corrupt


def _unreadable(monkeypatch, target, method="read_text", error=PermissionError):
    """Make ``Path.<method>`` raise ``error`` for ``target`` only (chmod 000 binds no root)."""
    import errno
    import pathlib

    original = getattr(pathlib.Path, method)

    def refuse(self, *args, **kwargs):
        if self == target:
            code = errno.EACCES if error is PermissionError else errno.EIO
            raise error(code, os.strerror(code), str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, method, refuse)


@pytest.mark.parametrize("error", [PermissionError, OSError])
def test_an_unreadable_cell_file_is_not_set_aside(tmp_path, monkeypatch, error):
    store = CellStore(tmp_path)
    store.write_cell({"key": "k", "status": "done", "value": 0.5})
    with monkeypatch.context() as patch:
        _unreadable(patch, store.cell_path("k"), error=error)
        with pytest.raises(error):
            store.read_cell("k")
        with pytest.raises(error):
            store.status("k")
        with pytest.raises(error):
            list(store.cells())
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["k.json"]  # nothing moved away
    assert store.read_cell("k")["value"] == 0.5


def test_an_unreadable_store_json_is_refused_not_set_aside(tmp_path, monkeypatch):
    store = CellStore(tmp_path)
    store.record_verdict_thresholds({"alpha": 0.01})
    before = (tmp_path / "store.json").read_bytes()
    with monkeypatch.context() as patch:
        _unreadable(patch, tmp_path / "store.json")
        with pytest.raises(StoreError, match="cannot read .*store.json.*nothing was changed"):
            CellStore(tmp_path)
    assert (tmp_path / "store.json").read_bytes() == before
    assert not list(tmp_path.glob("store.json.corrupt-*"))
    assert CellStore(tmp_path).verdict_thresholds() == {"alpha": 0.01}


def test_an_unreadable_claim_is_not_taken_over(tmp_path, monkeypatch):
    store = CellStore(tmp_path, stale_after_s=0.0)  # were it read as garbage, it would be taken over at once
    claim = store.claim("k")
    path = store._claim_path("k")
    with monkeypatch.context() as patch:
        _unreadable(patch, path)
        with pytest.raises(PermissionError):
            store.claim("k")
        with pytest.raises(PermissionError):
            store.claim_owner("k")
        claim.release()  # cannot tell whose it is: left in place, no traceback
        assert path.is_file()
    assert sorted(p.name for p in (tmp_path / "claims").iterdir()) == ["k.claim"]
    assert store._claim_path("k").read_text() and json.loads(path.read_text())["token"] == claim.owner["token"]


def test_an_unreadable_name_file_is_refused_not_set_aside(tmp_path, monkeypatch):
    from quantsweep.sweep.names import _path, remember

    store = CellStore(tmp_path)
    remember(store, "recipe", "w8-rtn", {"bits": 8})
    path = _path(store, "recipe", "w8-rtn")
    with monkeypatch.context() as patch:
        _unreadable(patch, path)
        with pytest.raises(StoreError, match="cannot read the name file .*nothing was run"):
            remember(store, "recipe", "w8-rtn", {"bits": 1})
    assert sorted(p.name for p in (tmp_path / "names").iterdir()) == [path.name]
    with pytest.raises(StoreError, match="bits is 8 there, 1 here"):  # its meaning was kept
        remember(store, "recipe", "w8-rtn", {"bits": 1})


def test_an_unreadable_results_file_is_not_set_aside(tmp_path, monkeypatch):
    from quantsweep.sweep.api import refresh_derived

    store = CellStore(tmp_path)
    results = store.write_derived("results.jsonl", '{"model": "toy"}\n')
    with monkeypatch.context() as patch:
        _unreadable(patch, results, method="open")
        with pytest.raises(PermissionError):
            refresh_derived(tmp_path)
    assert results.read_text() == '{"model": "toy"}\n'
    assert not list(tmp_path.glob("results.jsonl.corrupt-*"))


# ------------------------------------------------------------------ write probes


def _no_space(monkeypatch, call):
    """Make the write probe's ``os.write`` or ``os.fsync`` fail as on a full disk (others pass through)."""
    import errno

    original = getattr(os, call)

    def full(fd, *args):
        if call == "fsync" or bytes(args[0]).startswith(b"quantsweep write probe"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(fd, *args)

    monkeypatch.setattr(os, call, full)


@pytest.mark.parametrize("call", ["write", "fsync"])
@pytest.mark.parametrize("existing", [True, False], ids=["existing-store", "new-store"])
def test_a_full_disk_is_refused_before_any_work(tmp_path, monkeypatch, call, existing):
    from quantsweep.sweep.store import check_store_writable

    if existing:
        CellStore(tmp_path / "store")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with monkeypatch.context() as patch:
        _no_space(patch, call)
        with pytest.raises(StoreError, match="No space left on device"):
            check_store_writable(tmp_path / "store")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # no probe file left behind


def test_each_folder_a_run_writes_is_probed(tmp_path, monkeypatch):
    import errno
    import tempfile

    store = CellStore(tmp_path)
    original = tempfile.mkstemp
    for name in ("cells", "claims", "logs", "references", "names"):

        def read_only(*args, dir=None, _name=name, **kwargs):
            if dir is not None and os.path.basename(dir) == _name:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return original(*args, dir=dir, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(store_module.tempfile, "mkstemp", read_only)
            with pytest.raises(StoreError, match=f"cannot write into .*{name} .*Read-only file system"):
                store.check_writable()


def test_a_run_onto_a_full_disk_exits_2_before_any_work(tmp_path, monkeypatch, capsys):
    from quantsweep.cli import main

    out = tmp_path / "store"
    with monkeypatch.context() as patch:
        _no_space(patch, "fsync")
        code = main(
            [
                "run",
                "--model",
                "toy",
                "--device",
                "cpu",
                "--tasks",
                "toy_mc4",
                "--recipe",
                "w8-rtn",
                "--limit",
                "4",
                "--out",
                str(out),
            ]
        )
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0, error
    assert error.startswith("quantsweep: error: ") and str(tmp_path) in error and "No space left" in error
    assert not out.exists()  # nothing was made, nothing evaluated


# ------------------------------------------------------------------ exclusive creation


def test_a_name_recorded_first_by_another_run_is_never_overwritten(tmp_path, monkeypatch):
    from quantsweep.sweep import names

    store = CellStore(tmp_path)
    names.remember(store, "recipe", "w8-rtn", {"bits": 1})  # the other run, which won the race
    path = names._path(store, "recipe", "w8-rtn")
    first = path.read_bytes()
    real_read, looks = names._read, []

    def late_look(where):  # this run looked before the other run's file was there
        looks.append(where)
        return None if len(looks) == 1 else real_read(where)

    monkeypatch.setattr(names, "_read", late_look)
    with pytest.raises(StoreError, match="bits is 1 there, 8 here"):
        names.remember(store, "recipe", "w8-rtn", {"bits": 8})
    assert path.read_bytes() == first
    assert sorted(p.name for p in (tmp_path / "names").iterdir()) == [path.name]  # no temporary file left


def test_an_exclusive_create_that_fails_to_write_leaves_nothing(tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module.os, "link", full)
    with pytest.raises(OSError, match="No space left"):
        store_module.create_exclusive(tmp_path / "x.json", "{}")
    assert list(tmp_path.iterdir()) == []
