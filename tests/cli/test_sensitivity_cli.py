"""``quantsweep sensitivity``: the table, plot and recipe it writes, the recipe run by ``quantsweep run``, and its errors."""

import csv

import pytest

from quantsweep.cli import main

TEXT = "the pet of ba ko mi is a cat .\nthe city of ba ko mi is lo ra .\n" * 40


@pytest.mark.slow  # a toy scan, then the written recipe through `quantsweep run`
def test_sensitivity_writes_table_plot_and_a_recipe_that_run_accepts(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "scan"
    arguments = ["--model", "toy", "--recipe", "w2-rtn", "--out", str(out), "--text", str(text), "--device", "cpu"]
    code = main(["sensitivity", *arguments, "--budget", "2.7", "--tokens", "256", "--seq-len", "64"])
    printed = capsys.readouterr().out
    assert code == 0
    with (out / "sensitivity.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["rank"]) for row in rows] == [1, 2, 3, 4]
    assert rows[0]["bits"] == "4" and {row["bits"] for row in rows[1:]} == {"2"}
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    recipe = out / "w2-rtn-mixed-2.7bpw.yaml"
    assert f"recipe written to {recipe}" in printed and rows[0]["unit"] in printed

    assert main(["sensitivity", *arguments, "--budget", "2.7", "--tokens", "256", "--seq-len", "64"]) == 0
    assert "4 of 4 units already measured" in capsys.readouterr().out

    code = main(
        ["run", "--model", "toy", "--recipe", str(recipe), "--tasks", "toy_ppl", "--limit", "20"]
        + ["--device", "cpu", "--out", str(tmp_path / "run")]
    )
    assert code == 0 and "w2-rtn-mixed-2.7bpw" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--recipe", "w2-rtn", "--budget", "1.5"], "below what w2-rtn itself takes"),
        (["--recipe", "w2-rtm"], "unknown recipe 'w2-rtm'"),
        (["--recipe", "w2-rtn", "--tokens", "0"], "tokens must be a positive integer"),
    ],
)
def test_sensitivity_user_errors_exit_2_with_one_line(tmp_path, capsys, extra, message):
    code = main(["sensitivity", "--model", "toy", "--out", str(tmp_path), "--device", "cpu", *extra])
    error = capsys.readouterr().err
    ours = [line for line in error.replace("\r", "\n").splitlines() if line.startswith("quantsweep:")]
    assert code == 2 and len(ours) == 1 and message in ours[0] and "Traceback" not in error
