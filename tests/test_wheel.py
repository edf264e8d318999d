"""What a cluster worker runs: the wheel, installed into a fresh venv outside the checkout.

The first version's wheel shipped without its recipes and tasks, and editable
installs hid it. This test builds the wheel, installs it (torch from the wheel
already on disk, the rest from the package index or pip's cache) into a new
virtual environment, and runs ``quantsweep recipes``, a small ``quantsweep run`` on
``toy`` and ``quantsweep sweep`` of the shipped toy spec, all from a folder that is
not the checkout.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _sh(args, cwd, timeout=900, env=None):
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", REPO], cwd=root)
    (wheel,) = list((root / "dist").glob("quantsweep-*.whl"))
    _sh([sys.executable, "-m", "venv", root / "venv"], cwd=root)
    pip = root / "venv" / "bin" / "pip"
    _sh([pip, "install", "-q", "torch==2.13.0"], cwd=root)
    _sh([pip, "install", "-q", wheel], cwd=root)
    torch_version = _sh([root / "venv" / "bin" / "python", "-c", "import torch; print(torch.__version__)"], cwd=root)
    assert torch_version.strip() == "2.13.0+cpu"  # installing the wheel did not replace torch
    work = root / "elsewhere"
    work.mkdir()
    return root / "venv" / "bin", work


def test_installed_wheel_lists_recipes_from_another_folder(installed):
    bin_dir, work = installed
    out = _sh([bin_dir / "quantsweep", "recipes"], cwd=work)
    for name in ("fp", "w8-rtn", "w4-gptq", "w1-billm"):
        assert f"\n{name} " in "\n" + out
    assert "paper-grid" in out
    location = _sh([bin_dir / "python", "-c", "import quantsweep._paths as p; print(p.shipped_dir('tasks'))"], cwd=work)
    assert "site-packages" in location and str(REPO) not in location


def test_installed_wheel_runs_toy_and_the_shipped_sweep_spec(installed):
    bin_dir, work = installed
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    _sh(
        [
            bin_dir / "quantsweep",
            "run",
            "--model",
            "toy",
            "--recipe",
            "fp",
            "--recipe",
            "w8-rtn",
            "--tasks",
            "toy_mc4,toy_ppl",
            "--limit",
            "30",
            "--device",
            "cpu",
            "--out",
            work / "run",
        ],
        cwd=work,
        env=env,
    )
    records = [json.loads(line) for line in (work / "run" / "results.jsonl").read_text().splitlines()]
    assert {(r["recipe"], r["task"]) for r in records} == {
        (r, t) for r in ("fp", "w8-rtn") for t in ("toy_mc4", "toy_ppl")
    }
    spec = _sh(
        [
            bin_dir / "python",
            "-c",
            "import quantsweep._paths as p; print(p.shipped_dir('recipes') / 'sweeps' / 'toy.yaml')",
        ],
        cwd=work,
    ).strip()
    assert Path(spec).is_file()
    text = Path(spec).read_text().replace("limit: 400", "limit: 20")
    (work / "toy.yaml").write_text(text)
    out = _sh([bin_dir / "quantsweep", "sweep", work / "toy.yaml", "--out", work / "sweep"], cwd=work, env=env)
    assert "0 of 20 cells already done; 20 to run" in out
    report = _sh([bin_dir / "quantsweep", "report", work / "sweep"], cwd=work, env=env)
    assert (work / "sweep" / "report.html").is_file() and "report written" in report
