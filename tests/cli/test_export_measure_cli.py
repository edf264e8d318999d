"""`quantsweep export` and `quantsweep measure`: user errors exit 2 with one line; toy runs work."""

from __future__ import annotations

import json

import pytest

from quantsweep.cli import build_parser, main


def test_export_accepts_run_calibration_flags_with_the_same_defaults():
    parser = build_parser()
    run = parser.parse_args(["run", "--model", "toy", "--recipe", "fp", "--tasks", "toy_mc4"])
    export = parser.parse_args(["export", "--model", "toy", "--recipe", "w4-gptq", "--out", "x"])
    for flag in ("calib_source", "calib_samples", "calib_seq_len", "calib_seed"):
        assert getattr(run, flag) == getattr(export, flag), flag


def test_export_refuses_recipes_without_packed_form(capsys, tmp_path):
    assert main(["export", "--model", "toy", "--recipe", "w1-billm", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recipe 'w1-billm'" in err and "w4-gptq" in err


def test_export_refuses_a_non_empty_folder(capsys, tmp_path):
    (tmp_path / "x").write_text("x")
    assert main(["export", "--model", "toy", "--recipe", "w4-rtn", "--out", str(tmp_path)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err


def test_measure_toy_labels_fake_quant(capsys, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "m.jsonl"
    code = main(
        [
            "measure",
            "--model",
            "toy",
            "--recipe",
            "w8-bnb",
            "--recipe",
            "w4-rtn",
            "--prompt-tokens",
            "32",
            "--new-tokens",
            "4",
            "--repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    records = {r["recipe"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert list(records) == ["fp", "w8-bnb", "w4-rtn"]
    assert (
        records["w8-bnb"]["kernel"] == "bitsandbytes"
        and records["w8-bnb"]["speed_measured_on"] == "bitsandbytes kernels"
    )
    assert records["w4-rtn"]["speed_measured_on"] == "fp model (fake-quant)"
    assert records["w4-rtn"]["decode_tokens_per_s"] == records["fp"]["decode_tokens_per_s"]
    assert records["w8-bnb"]["stored_bytes"] < records["fp"]["stored_bytes"] == records["w4-rtn"]["stored_bytes"]
    assert "fake-quant rows repeat the fp model" in capsys.readouterr().out
