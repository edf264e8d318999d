"""Records -> DataFrames: the one reader of results, and bits per weight."""

from __future__ import annotations

import math

import pytest
from helpers.report_records import record, write_records

from quantsweep.report.frames import bits_per_weight, load_records, primary_frame, records_frame


def test_load_records_says_what_is_missing_and_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no results.jsonl in .*looked for .*results.jsonl"):
        load_records(tmp_path)
    (tmp_path / "results.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no result records"):
        load_records(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"recipe": "fp"}\nnot json\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2 is not a JSON record"):
        load_records(tmp_path)


def test_frame_has_every_optional_column_and_numbers_as_floats(tmp_path):
    rows = [
        record("fp", "t", "baseline", 0.9, method="none", dtype="bfloat16"),
        record("w4", "t", "lossless", "inf", group_size=None, kernel="fake-quant"),
        {**record("w4", "t", "lossless", 0.8), "primary": False, "metric": "acc_norm"},
    ]
    frame = records_frame(load_records(write_records(tmp_path, rows)))
    assert list(frame.columns[:4]) == ["model", "model_fingerprint", "recipe", "method"]
    assert frame["value"].tolist()[:2] == [0.9, math.inf]  # "inf" as the store writes it
    assert frame["model_fingerprint"].isna().all()  # optional field absent: an empty column
    assert frame.loc[1, "kernel"] == "fake-quant" and frame["kernel"].isna().tolist() == [True, False, True]
    assert frame["recipe_config"].map(type).eq(str).all()  # nested configs as JSON text for CSV/Parquet
    assert len(primary_frame(rows)) == 2


def test_bits_per_weight_counts_group_scales():
    assert bits_per_weight({"theoretical_bits_per_weight": 4.156}) == 4.156  # a recorded figure wins
    assert bits_per_weight({"recipe_config": {"bits": 4, "group_size": 128, "symmetric": True}}) == 4 + 16 / 128
    assert bits_per_weight({"recipe_config": {"bits": 2, "group_size": 64, "symmetric": False}}) == 2 + 32 / 64
    assert bits_per_weight({"recipe_config": {"bits": 8, "group_size": None}}) == 8
    assert bits_per_weight({"recipe_config": {"method": "none"}, "dtype": "float32"}) == 32
    assert bits_per_weight({"recipe_config": {"method": "none"}}) is None
