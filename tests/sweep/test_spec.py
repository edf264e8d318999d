"""The sweep spec is validated as strictly as a recipe, before any model loads."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quantsweep.cli import main
from quantsweep.sweep.runner import RunSpec
from quantsweep.sweep.spec import SpecError, load_spec, spec_from_dict

REPO = Path(__file__).resolve().parents[2]


def test_unknown_keys_are_named_with_did_you_mean_at_every_level():
    with pytest.raises(SpecError, match=r"unknown key 'recipies' \(did you mean 'recipes'\?\)"):
        spec_from_dict({"models": ["toy"], "tasks": ["toy_mc4"], "recipies": ["w8-rtn"]})
    with pytest.raises(SpecError, match=r"models\[0\]: unknown key 'dtpye' \(did you mean 'dtype'\?\)"):
        spec_from_dict({"models": [{"path": "toy", "dtpye": "float32"}], "tasks": ["toy_mc4"]})
    with pytest.raises(SpecError, match=r"calibration: unknown key 'sample' \(did you mean 'samples'\?\)"):
        spec_from_dict({"models": [{"path": "toy", "calibration": {"sample": 3}}], "tasks": ["toy_mc4"]})
    with pytest.raises(SpecError, match=r"verdict: unknown key 'alpah' \(did you mean 'alpha'\?\)"):
        spec_from_dict({"models": ["toy"], "tasks": ["toy_mc4"], "verdict": {"alpah": 0.01}})


def test_wrong_types_and_impossible_numbers_are_refused():
    with pytest.raises(SpecError, match="'limit' must be"):
        spec_from_dict({"models": ["toy"], "tasks": ["toy_mc4"], "limit": "ten"})
    with pytest.raises(SpecError, match="batch size must be a positive integer, got 0"):
        spec_from_dict({"models": ["toy"], "tasks": ["toy_mc4"], "batch_size": 0})
    with pytest.raises(SpecError, match="num_fewshot must be an integer >= 0, got -3"):
        spec_from_dict({"models": ["toy"], "tasks": ["toy_mc4"], "num_fewshot": -3})
    with pytest.raises(SpecError, match="alpha must be a number in"):
        spec_from_dict({"models": ["toy"], "tasks": ["toy_mc4"], "verdict": {"alpha": 2}})
    with pytest.raises(SpecError, match="two models are named 'toy'"):
        spec_from_dict({"models": ["toy", "toy"], "tasks": ["toy_mc4"]})


def test_calibration_defaults_belong_to_the_model_not_the_cli():
    assert RunSpec(model="toy", recipes=[], tasks=["t"]).to_sweep_spec().models[0].calibration.to_dict() == {
        "source": "toy",
        "samples": 32,
        "seq_len": 64,
        "seed": 0,
    }
    checkpoint = spec_from_dict({"models": [{"path": "/ckpt/model"}], "tasks": ["t"]}).models[0]
    assert (checkpoint.calibration.source, checkpoint.calibration.samples, checkpoint.calibration.seq_len) == (
        None,
        128,
        2048,
    )
    assert checkpoint.name == "model"


def test_shipped_specs_parse_and_the_study_names_its_missing_paths(tmp_path):
    toy = load_spec(REPO / "recipes" / "sweeps" / "toy.yaml")
    assert toy.models[0].path == "toy" and "w1-rtn" in toy.recipes
    study = load_spec(REPO / "recipes" / "sweeps" / "openpangu-study.yaml")
    assert [m.name for m in study.models] == ["openPangu-Embedded-1B", "openPangu-Embedded-7B"]
    assert study.recipes == ("paper-grid",) and study.tasks == ("openpangu18",)
    from quantsweep.sweep.api import run_sweep

    data = yaml.safe_load((REPO / "recipes" / "sweeps" / "openpangu-study.yaml").read_text())
    data["data_dir"], data["tasks"] = None, ["toy_mc4"]
    with pytest.raises(ValueError, match="/models/openPangu-Embedded-1B does not exist"):
        run_sweep(data, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out" / "cells").glob("*"))  # refused before any cell


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "quantsweep", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_bad_spec_is_one_line_and_exit_2(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("models: [toy]\ntasks: [toy_mc4]\nlimt: 10\n")
    result = _cli("sweep", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"quantsweep: error: {spec}: unknown key 'limt' (did you mean 'limit'?); allowed keys: models, tasks, recipes, "
        "baseline, limit, num_fewshot, seed, batch_size, data_dir, include_path, allow_code_execution, verdict, measure, "
        "max_length, aa_control"
    ]
    missing = _cli("sweep", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 2 and "nope.yaml' does not exist" in missing.stderr


def test_batch_size_0_and_num_fewshot_minus_3_are_refused_before_the_model_loads(monkeypatch, capsys):
    import quantsweep.models.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(quantsweep.models.loading, "load_model", no_loading)
    assert main(["run", "--model", "toy", "--recipe", "w8-rtn", "--tasks", "toy_mc4", "--batch-size", "0"]) == 2
    assert "--batch-size must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["run", "--model", "toy", "--recipe", "w8-rtn", "--tasks", "toy_mc4", "--num-fewshot", "-3"]) == 2
    assert "--num-fewshot must be 0 or more, got -3" in capsys.readouterr().err


def test_a_refused_run_creates_no_folder(tmp_path, capsys):
    out = tmp_path / "never"
    assert (
        main(
            [
                "run",
                "--model",
                "toy",
                "--recipe",
                "w4-gptq",
                "--tasks",
                "toy_mc4",
                "--calib-source",
                str(tmp_path / "absent.txt"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "absent.txt" in capsys.readouterr().err and not out.exists()


def test_a_typo_in_a_model_key_is_named_before_the_key_it_hides_is_missed():
    with pytest.raises(SpecError, match=r"models\[0\]: unknown key 'pth' \(did you mean 'path'\?\)"):
        spec_from_dict({"models": [{"pth": "toy"}], "tasks": ["toy_mc4"]})
    with pytest.raises(SpecError, match=r"unknown key 'model' \(did you mean 'models'\?\)"):
        spec_from_dict({"model": [{"path": "toy"}], "tasks": ["toy_mc4"]})


def test_a_learned_rotation_matrix_enters_the_cell_keys_hashed_once(tmp_path, monkeypatch):
    """Its contents change results, so they change every cell key; the file is hashed once per plan, not per task."""
    import os

    import torch
    import yaml

    from quantsweep.sweep import plan as plan_module

    matrix = tmp_path / "r1.pt"
    recipe = tmp_path / "learned.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"name": "learned", "stages": [{"transform": "rotate", "matrix": str(matrix)}, {"weight": "rtn"}]}
        )
    )
    spec = spec_from_dict({"models": ["toy"], "recipes": [str(recipe)], "tasks": ["toy_mc4", "toy_ppl"]})
    hashed = []
    real_digest = plan_module.file_digest
    monkeypatch.setattr(plan_module, "file_digest", lambda path: hashed.append(path) or real_digest(path))

    def learned_keys():
        return [c.key for c in plan_module.plan_cells(spec).cells if c.recipe.name == "learned"]

    torch.save({"R1": torch.eye(128)}, matrix)
    first = learned_keys()
    assert len(first) == 2 and len(hashed) == 1
    assert learned_keys() == first  # the same contents: the same keys
    torch.save({"R1": -torch.eye(128)}, matrix)
    later = matrix.stat().st_mtime_ns + 10**9  # digests are cached by size and mtime: a rewrite is a later file
    os.utime(matrix, ns=(later, later))
    assert set(learned_keys()).isdisjoint(first)  # other contents: every cell is new
