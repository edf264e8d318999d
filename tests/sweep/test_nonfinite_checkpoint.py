"""The issue's broken checkpoint: toy with one Inf weight in ``model.layers.1.mlp.down_proj``.

Every recipe's cell is ``non-finite`` or refused, each names the module, and the checkpoint is
diagnosed once per model.
"""

from __future__ import annotations

import logging

import pytest
import torch

import quantsweep

BROKEN = "model.layers.1.mlp.down_proj"


@pytest.fixture(scope="module")
def broken_toy(tmp_path_factory):
    model, tokenizer = quantsweep.load_model("toy")
    with torch.no_grad():
        model.get_submodule(BROKEN).weight[0, 0] = float("inf")
    directory = tmp_path_factory.mktemp("broken-toy")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.slow  # about 50 s on 2 shared cores: six cells through lm-eval
def test_every_cell_of_a_broken_checkpoint_is_non_finite_or_refused_and_names_the_module(broken_toy, tmp_path, caplog):
    spec = {
        "models": [
            {"path": str(broken_toy), "device": "cpu", "calibration": {"source": "toy", "samples": 4, "seq_len": 32}}
        ],
        "recipes": ["fp", "w8-rtn", "w4-gptq"],
        "tasks": ["toy_mc4", "toy_ppl"],
        "limit": 16,
    }
    with caplog.at_level(logging.WARNING, logger="quantsweep.sweep.prepare"):
        frame = quantsweep.sweep(spec, out=tmp_path / "store", progress=False)
    diagnosed = [r for r in caplog.records if r.name == "quantsweep.sweep.prepare" and "non-finite" in r.getMessage()]
    assert len(diagnosed) == 1 and BROKEN in diagnosed[0].getMessage()  # once per model
    primary = frame[frame["primary"]].set_index(["recipe", "task"])
    assert len(primary) == 6
    for (recipe, task), row in primary.iterrows():
        expected = "error" if recipe == "w4-gptq" else "non-finite"
        assert row["verdict"] == expected, (recipe, task, row["reason"], row["error"])
        why = row["error"] if expected == "error" else row["reason"]
        assert f"{BROKEN}.weight" in why, (recipe, task, why)
        assert f"{BROKEN}.weight" in str(row["diagnosis"]), (recipe, task)
    assert (
        "GPTQ" in primary.loc[("w4-gptq", "toy_mc4"), "error"] or "gptq" in primary.loc[("w4-gptq", "toy_mc4"), "error"]
    )
