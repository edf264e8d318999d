"""Bad input gets one clear line on stderr and exit code 2, never a traceback."""

import subprocess
import sys

from helpers.checkpoints import write_hf_model

from quantsweep.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unknown_recipe_suggests_closest(capsys):
    code, _, err = run_cli(capsys, "run", "--model", "toy", "--recipe", "w4-rnt", "--tasks", "toy_mc4")
    assert code == 2
    assert "unknown recipe 'w4-rnt'" in err and "did you mean 'w4-rtn'" in err


def test_unknown_task_lists_search_paths(capsys):
    code, _, err = run_cli(capsys, "run", "--model", "toy", "--recipe", "fp", "--tasks", "toy_mc5")
    assert code == 2
    assert "unknown task 'toy_mc5'" in err and "tasks" in err and "lm-eval's built-in registry" in err


def test_missing_model_path(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--model", str(tmp_path / "nope"), "--recipe", "fp", "--tasks", "toy_mc4")
    assert code == 2
    assert "does not exist" in err and "nope" in err


def test_path_that_is_not_a_causal_lm(capsys, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "architectures": ["BertForMaskedLM"]}')
    code, _, err = run_cli(capsys, "run", "--model", str(tmp_path), "--recipe", "fp", "--tasks", "toy_mc4")
    assert code == 2
    assert "BertForMaskedLM" in err or "bert" in err


def test_malformed_recipe_yaml_names_file_and_key(capsys, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\nmethod: rtn\nbitz: 4\n")
    code, _, err = run_cli(capsys, "run", "--model", "toy", "--recipe", str(recipe), "--tasks", "toy_mc4")
    assert code == 2
    assert "mine.yaml" in err and "'bitz'" in err


def test_group_size_that_does_not_divide_names_layer_and_sizes(capsys, tmp_path):
    write_hf_model(tmp_path / "llama")  # hidden 32, intermediate 64: group 128 divides neither
    code, _, err = run_cli(
        capsys,
        "run",
        "--model",
        str(tmp_path / "llama"),
        "--recipe",
        "w4-rtn",
        "--tasks",
        "toy_mc4",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2
    assert "group_size 128 does not divide in_features 32" in err and "model.layers.0." in err


def test_npu_requested_without_torch_npu(capsys):
    code, _, err = run_cli(capsys, "run", "--model", "toy", "--recipe", "fp", "--tasks", "toy_mc4", "--device", "npu")
    assert code == 2
    assert "torch_npu" in err and "quantsweep[npu]" in err


def test_bad_device_string(capsys):
    code, _, err = run_cli(capsys, "run", "--model", "toy", "--recipe", "fp", "--tasks", "toy_mc4", "--device", "gpu")
    assert code == 2 and "unknown device 'gpu'" in err


def test_no_traceback_in_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "quantsweep", "run", "--model", "toy", "--recipe", "w4-rnt", "--tasks", "toy_mc4"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("quantsweep: error:")


def test_recipes_command_lists_registered(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    for name in ("fp", "w8-rtn", "w4-rtn", "w2-rtn", "w1-rtn"):
        assert name in out
    assert "rotate+gptq+a4+kv4" in out  # a composed recipe, labelled by its stages
    grids = out.strip().splitlines()[-1]
    assert grids.startswith("grids:") and "rescue-grid" in grids and "paper-grid" in grids


def test_calibrated_recipe_without_calibration_data_on_a_real_model(capsys, tmp_path):
    write_hf_model(tmp_path / "llama")
    code, _, err = run_cli(
        capsys,
        "run",
        "--model",
        str(tmp_path / "llama"),
        "--recipe",
        "w4-gptq",
        "--tasks",
        "toy_mc4",
        "--device",
        "cpu",
    )
    assert code == 2
    assert "w4-gptq" in err and "--calib-source" in err


def test_missing_calibration_file(capsys, tmp_path):
    code, _, err = run_cli(
        capsys,
        "run",
        "--model",
        "toy",
        "--recipe",
        "w4-gptq",
        "--tasks",
        "toy_mc4",
        "--device",
        "cpu",
        "--calib-source",
        str(tmp_path / "absent.txt"),
    )
    assert code == 2
    assert "absent.txt" in err


def test_code_tasks_need_the_opt_in(capsys):
    code, _, err = run_cli(capsys, "run", "--model", "toy", "--recipe", "fp", "--tasks", "humaneval_offline")
    assert code == 2
    assert "--allow-code-execution" in err or "allow_code_execution" in err


def test_suite_task_without_data_and_without_hub_fails_fast(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "run", "--model", "toy", "--recipe", "fp", "--tasks", "arc_easy,toy_mc4")
    assert code == 2
    assert "arc_easy" in err and "--data-dir" in err and "HF_ENDPOINT" in err


def test_bad_limit_and_empty_task_list(capsys):
    code, _, err = run_cli(capsys, "run", "--model", "toy", "--recipe", "fp", "--tasks", "toy_mc4", "--limit", "0")
    assert code == 2 and "--limit must be positive" in err
    code, _, err = run_cli(capsys, "run", "--model", "toy", "--recipe", "fp", "--tasks", ",")
    assert code == 2 and "--tasks needs at least one task name" in err


def test_failed_baseline_exits_1_and_says_so(capsys, monkeypatch):
    """The run finished but answered nothing: not a user error (2), not success (0)."""
    from types import SimpleNamespace

    import quantsweep.sweep.runner as runner

    def fake_run(spec, on_outcome=None, **kwargs):
        record = {
            "recipe": "fp",
            "task": "toy_mc4",
            "metric": None,
            "value": None,
            "verdict": "error",
            "error": "RuntimeError: out of memory",
        }
        return [SimpleNamespace(recipe=SimpleNamespace(name="fp"), records=[record], error=record["error"])]

    monkeypatch.setattr(runner, "run", fake_run)
    code, _, err = run_cli(capsys, "run", "--model", "toy", "--recipe", "w8-rtn", "--tasks", "toy_mc4")
    assert code == 1
    assert "the baseline 'fp' failed (RuntimeError: out of memory)" in err


def test_a_file_system_error_is_one_line_and_exit_1(capsys, monkeypatch):
    import quantsweep.cli as cli

    def unreadable(args):
        raise PermissionError(13, "Permission denied", "store/cells/ab/abc.json")

    monkeypatch.setitem(cli.COMMANDS, "recipes", unreadable)
    assert main(["recipes"]) == 1
    err = capsys.readouterr().err
    assert err == "quantsweep: error: [Errno 13] Permission denied: 'store/cells/ab/abc.json'\n"
