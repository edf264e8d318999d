"""Store faults: unreadable files are set aside and recomputed, unwritable stores are refused before any work,
and a name means one recipe (and one model) per store.

Each fault runs the real command line; a refusal must exit 2 with one line and no traceback, leave every
stored file as it was, and start no cell (no new cell, log or claim file).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quantsweep.cli import main

RUN = ["run", "--model", "toy", "--device", "cpu", "--tasks", "toy_mc4", "--limit", "20"]


def _snapshot(store: Path) -> dict[str, bytes]:
    """Every file of a store (derived files aside) and its bytes."""
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and (p.parent != store or p.name == "store.json")
    }


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    """fp and w8-rtn on toy_mc4, 20 documents, run once through the command line."""
    out = tmp_path_factory.mktemp("base") / "store"
    assert main([*RUN, "--recipe", "w8-rtn", "--out", str(out)]) == 0
    return out


@pytest.fixture
def store(base_store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(base_store, copy)
    return copy


def _w8_cell(store: Path) -> Path:
    (path,) = [p for p in (store / "cells").glob("*.json") if json.loads(p.read_text())["recipe"] == "w8-rtn"]
    return path


def _primary(store: Path) -> dict[tuple[str, str], float]:
    rows = [json.loads(line) for line in (store / "results.jsonl").read_text().splitlines()]
    return {(r["model"], r["recipe"]): r["value"] for r in rows if r["primary"]}


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(lambda text: b"\x00\x9f\xff\xfe binary \x80\x81" * 50, id="binary"),
        pytest.param(lambda text: text.encode("utf-16"), id="utf-16"),
        pytest.param(lambda text: text[: len(text) // 2].encode(), id="truncated"),
        pytest.param(lambda text: json.dumps({"key": "other", "status": "done"}).encode(), id="wrong-schema"),
    ],
)
def test_an_unreadable_cell_is_set_aside_and_recomputed_by_run_judge_and_report(store, garbage, capsys, caplog):
    before = _primary(store)
    cell = _w8_cell(store)
    original = cell.read_text()
    bad = garbage(original)
    cell.write_bytes(bad)

    assert main(["judge", str(store)]) == 0  # not blocked: the file is set aside, its cell is missing
    (aside,) = list((store / "cells").glob(f"{cell.name}.corrupt-*"))
    assert aside.read_bytes() == bad  # nothing lost: kept for inspection
    assert any(str(cell) in message and aside.name in message for message in caplog.messages)
    assert ("toy", "w8-rtn") not in _primary(store) and ("toy", "fp") in _primary(store)
    assert main(["report", str(store)]) == 0

    assert main([*RUN, "--recipe", "w8-rtn", "--out", str(store)]) == 0
    assert json.loads(cell.read_text())["status"] == "done"  # computed again under its own key
    assert _primary(store) == before  # the same numbers as before the fault
    capsys.readouterr()


def test_a_corrupt_results_file_is_rebuilt_by_report(store, capsys):
    before = _primary(store)
    (store / "results.jsonl").write_bytes(b'{"model": "toy"\n\xff\xfe garbage\n')
    assert main(["report", str(store)]) == 0
    assert _primary(store) == before
    assert len(list(store.glob("results.jsonl.corrupt-*"))) == 1
    capsys.readouterr()


def test_an_unreadable_claim_file_does_not_stall_a_run(store, capsys):
    import time

    claim = store / "claims" / f"{_w8_cell(store).stem}.claim"
    claim.write_bytes(b"\xff\xfe not json")
    start = time.monotonic()
    assert main([*RUN, "--recipe", "w8-rtn", "--out", str(store), "--force"]) == 0
    assert time.monotonic() - start < 60  # a stale-claim wait would be 120 s
    capsys.readouterr()


# ------------------------------------------------------------------ unwritable stores


def _without_root_override() -> list[str]:
    """The prefix that makes file permissions bind this test's subprocess, or skip."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder would still be writable")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def _cli(*argv: str) -> subprocess.CompletedProcess:
    command = [*_without_root_override(), sys.executable, "-m", "quantsweep.cli", *argv]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def _refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantsweep: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_read_only_cells_folder_is_refused_before_any_work(store):
    before = _snapshot(store)
    (store / "cells").chmod(0o555)
    try:
        result = _cli(*RUN, "--recipe", "w8-rtn", "--recipe", "w4-rtn", "--out", str(store))
    finally:
        (store / "cells").chmod(0o755)
    _refused(result, str(store / "cells"), "nothing was run")
    assert _snapshot(store) == before  # no cell, log or claim written; nothing changed


def test_an_out_folder_that_cannot_be_created_is_refused_before_any_work(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = _cli(*RUN, "--recipe", "w8-rtn", "--out", str(parent / "store"))
    finally:
        parent.chmod(0o755)
    _refused(result, str(parent), "nothing was run")
    assert list(parent.iterdir()) == []


def test_a_report_into_an_unwritable_folder_is_refused(store, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = _cli("report", str(store), "--out", str(parent / "report.html"))
    finally:
        parent.chmod(0o755)
    _refused(result, str(parent))
    assert list(parent.iterdir()) == []


def test_report_out_never_replaces_files_it_did_not_write(store, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "results.csv").write_text("my own table\n")
    assert main(["report", str(store), "--out", str(folder / "x.html")]) == 2
    assert "results.csv" in capsys.readouterr().err
    assert (folder / "results.csv").read_text() == "my own table\n" and not (folder / "x.html").exists()
    other = tmp_path / "fresh"
    assert main(["report", str(store), "--out", str(other / "x.html")]) == 0
    assert main(["report", str(store), "--out", str(other / "x.html")]) == 0  # its own files: replaced


# ------------------------------------------------------------------ one name, one recipe


def test_a_misnamed_recipe_then_the_real_one_is_refused_naming_the_differences(tmp_path, capsys):
    store = tmp_path / "store"
    misnamed = tmp_path / "misnamed.yaml"
    misnamed.write_text("name: w8-rtn\nmethod: rtn\nbits: 1\ngroup_size: null\nsymmetric: true\n")
    assert main([*RUN, "--recipe", str(misnamed), "--out", str(store)]) == 0
    before = _snapshot(store)
    stored_value = _primary(store)[("toy", "w8-rtn")]
    capsys.readouterr()

    assert main([*RUN, "--recipe", "w8-rtn", "--out", str(store)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "recipe name 'w8-rtn' already means another recipe" in error
    assert "bits is 1 there, 8 here" in error
    assert _snapshot(store) == before  # nothing stored under the wrong name, nothing evaluated
    assert _primary(store)[("toy", "w8-rtn")] == stored_value


def test_a_model_name_keeps_its_checkpoint_and_dtype(tmp_path, capsys):
    store = tmp_path / "store"
    spec = {"models": [{"name": "m", "path": "toy", "device": "cpu", "dtype": "float32"}], "tasks": ["toy_mc4"]}
    from quantsweep.sweep.api import run_sweep

    run_sweep({**spec, "limit": 10}, store, progress=False)
    spec["models"][0]["dtype"] = "bfloat16"
    with pytest.raises(ValueError, match="model name 'm' already means another model.*dtype is \"float32\" there"):
        run_sweep({**spec, "limit": 10}, store, progress=False)
    spec["models"][0]["name"] = "m-bf16"  # another name for another meaning: accepted, shown apart
    run_sweep({**spec, "limit": 10}, store, progress=False)
    summary = json.loads((store / "summary.json").read_text())
    assert sorted(summary["models"]) == ["m", "m-bf16"]


def test_an_unreadable_store_json_or_name_file_is_set_aside_and_written_again(tmp_path):
    from quantsweep.sweep.names import remember
    from quantsweep.sweep.store import CellStore

    store = CellStore(tmp_path / "store")
    remember(store, "recipe", "w8-rtn", {"bits": 8})
    (name_file,) = list((store.directory / "names").glob("recipe-*.json"))
    name_file.write_bytes(b"\xff\x00")
    (store.directory / "store.json").write_bytes(b"\x00\x01 not json")
    again = CellStore(store.directory)  # a folder with cells/ is a store: its metadata is written again
    assert json.loads((again.directory / "store.json").read_text())["format"] == 1
    assert len(list(again.directory.glob("store.json.corrupt-*"))) == 1
    remember(again, "recipe", "w8-rtn", {"bits": 1})  # the unreadable meaning is set aside, this one recorded
    assert len(list((again.directory / "names").glob("recipe-*.json.corrupt-*"))) == 1
    with pytest.raises(ValueError, match="bits is 1 there, 8 here"):
        remember(again, "recipe", "w8-rtn", {"bits": 8})


def test_a_corrupt_store_json_beside_results_jsonl_is_written_again_and_stays_usable(tmp_path):
    from quantsweep.sweep.store import CellStore

    store = CellStore(tmp_path / "store")
    (store.directory / "results.jsonl").write_text("")  # every store that ran has one
    (store.directory / "store.json").write_text("{not json")
    for _ in range(2):  # the first opening sets it aside and writes it again; the next opens as usual
        again = CellStore(store.directory)
        assert json.loads((again.directory / "store.json").read_text())["format"] == 1
    assert len(list(store.directory.glob("store.json.corrupt-*"))) == 1
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.jsonl").write_text("")  # a pre-cell-store folder: still refused, untouched
    with pytest.raises(ValueError, match="without cell stores"):
        CellStore(tmp_path / "old")
