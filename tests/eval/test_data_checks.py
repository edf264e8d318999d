"""Local data and calibration files are parsed whole before any work; an error names the file and the line.

A malformed line deep in a file used to surface after the model had loaded, as a failed baseline
(exit 1) that named neither file nor line; a malformed calibration file gave a failed cell and exit 0.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import quantsweep.models.loading as loading
from quantsweep.cli import main
from quantsweep.eval.offline import MissingDataError, check_data_file, local_task_configs

PIQA = [{"goal": f"goal {i}", "sol1": "a", "sol2": "b", "label": i % 2} for i in range(10)]


def _jsonl(path: Path, rows, *, broken_line: int | None = None, text: str = '{"goal": "g", "sol1": "a"') -> Path:
    lines = [json.dumps(row) for row in rows]
    if broken_line is not None:
        lines[broken_line - 1] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(loading, "load_model", refuse)


COLUMNS = ("goal", "sol1", "sol2", "label")


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ('{"goal": "g", "sol1": "a"', ":6: not valid JSON"),
        ('{"goal": "g", "sol1": "a", "sol2": "b"}', ":6: record lacks column(s) label"),
        (
            '{"goal": "g", "sol1": "a", "sol2": "b", "label": "1"}',
            ":6: column 'label' is a string here but a number at 1",
        ),
        ("[1, 2]", ":6: expected a JSON object"),
    ],
)
def test_a_bad_line_deep_in_a_jsonl_file_is_named_by_line(tmp_path, broken, expected):
    path = _jsonl(tmp_path / "validation.jsonl", PIQA, broken_line=6, text=broken)
    with pytest.raises(ValueError) as info:
        check_data_file(path, COLUMNS)
    assert str(info.value).startswith(f"{path}{expected}")


def test_every_record_is_counted_when_the_file_is_whole(tmp_path):
    assert check_data_file(_jsonl(tmp_path / "validation.jsonl", PIQA), COLUMNS) == len(PIQA)


def test_a_byte_that_is_not_utf8_is_named_by_line(tmp_path):
    path = _jsonl(tmp_path / "validation.jsonl", PIQA)
    lines = path.read_bytes().split(b"\n")
    lines[7] = lines[7].replace(b"goal 7", b"goal \xff")
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=r"validation\.jsonl:8: not UTF-8 text"):
        check_data_file(path, COLUMNS)


def test_gzipped_json_lines_json_arrays_and_csv_are_parsed_whole(tmp_path):
    lines = [json.dumps(row) for row in PIQA]
    lines[8] = "{oops"
    gz = tmp_path / "a" / "validation.jsonl.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(ValueError, match=r"validation\.jsonl\.gz:9: not valid JSON"):
        check_data_file(gz, COLUMNS)

    array = tmp_path / "validation.json"
    array.write_text(json.dumps(PIQA[:3] + [{"goal": "g"}] + PIQA[3:], indent=1))
    with pytest.raises(ValueError, match=r"validation\.json:record 4: record lacks column\(s\) sol1, sol2, label"):
        check_data_file(array, COLUMNS)

    table = tmp_path / "validation.csv"
    table.write_text("goal,sol1,sol2,label\n" + "".join(f"g{i},a,b,{i % 2}\n" for i in range(6)) + "g,a,b\n")
    with pytest.raises(ValueError, match=r"validation\.csv:8: 3 fields, the header has 4"):
        check_data_file(table, COLUMNS)


def test_a_truncated_parquet_file_is_refused_naming_it(tmp_path):
    import pandas as pd

    path = tmp_path / "validation.parquet"
    pd.DataFrame(PIQA).to_parquet(path)
    assert check_data_file(path, COLUMNS) == len(PIQA)
    path.write_bytes(path.read_bytes()[:-100])  # cut short: the footer that maps the file is gone
    with pytest.raises(ValueError, match=str(path)):
        check_data_file(path, COLUMNS)


def test_the_task_names_the_file_and_line_when_configs_are_built(tmp_path):
    path = _jsonl(tmp_path / "piqa" / "validation.jsonl", PIQA, broken_line=9)
    with pytest.raises(MissingDataError, match=rf"task 'piqa': {path}:9: not valid JSON"):
        local_task_configs(["piqa"], tmp_path)


def test_a_malformed_data_line_exits_2_before_the_model_loads(tmp_path, capsys, no_model_load):
    path = _jsonl(tmp_path / "data" / "piqa" / "validation.jsonl", PIQA, broken_line=6)
    code = main(
        [
            "run",
            "--model",
            "toy",
            "--recipe",
            "fp",
            "--device",
            "cpu",
            "--tasks",
            "piqa",
            "--data-dir",
            str(tmp_path / "data"),
        ]
        + ["--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert f"{path}:6: not valid JSON" in err
    assert not (tmp_path / "out").exists()  # nothing created: refused before any work


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"text": "one"}\n{"text": "two"}\n{"text": 3}\n', ":3: each JSONL line needs a string 'text' field"),
        ('{"text": "one"}\n\n{"text": "two"\n', ":3: not valid JSON"),
        (b'{"text": "one"}\n{"text": "tw\xff"}\n', ":2: not UTF-8 text"),
    ],
)
def test_a_malformed_calibration_file_exits_2_before_the_model_loads(
    tmp_path, capsys, no_model_load, content, expected
):
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_bytes(content if isinstance(content, bytes) else content.encode())
    code = main(
        ["run", "--model", "toy", "--device", "cpu", "--tasks", "toy_mc4", "--recipe", "w4-gptq"]
        + ["--calib-source", str(calibration), "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert f"{calibration}{expected}" in err
    assert not (tmp_path / "out").exists()
