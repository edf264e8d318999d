"""The scan on toy: a planted fragile layer ranks first; records resume; keys follow the content."""

import json

import pytest
import torch
from planted import plant_fragile_layer

import quantsweep
from quantsweep.sensitivity.units import scan_units

FRAGILE = 2


@pytest.fixture(scope="module")
def scan(toy_text):
    """The scan settings of these tests: 512 tokens of toy bios in windows of 64."""
    return {"text": str(toy_text), "tokens": 512, "seq_len": 64, "device": "cpu"}


@pytest.fixture(scope="module")
def planted_toy(tmp_path_factory):
    """The toy model with layer 2 made fragile (same function in full precision), saved as a checkpoint."""
    model, tokenizer = quantsweep.load_model("toy", device="cpu")
    plant_fragile_layer(model, FRAGILE, scale=64.0)
    folder = tmp_path_factory.mktemp("planted-toy")
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_planting_keeps_the_function():
    model, _ = quantsweep.load_model("toy", device="cpu")
    ids = torch.arange(4, 68).reshape(2, 32)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        plant_fragile_layer(model, FRAGILE, scale=64.0)
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_the_planted_layer_ranks_first_and_the_others_keep_their_order(planted_toy, tmp_path, scan):
    planted = quantsweep.sensitivity(str(planted_toy), "w3-rtn", out=tmp_path / "planted", **scan)
    plain = quantsweep.sensitivity("toy", "w3-rtn", out=tmp_path / "plain", **scan)
    assert planted.rows[0]["unit"] == f"model.layers.{FRAGILE}"
    by_unit = {row["unit"]: row["kl_mean"] for row in plain.rows}
    # the planted layer hurts many times more than it did, and more than any layer of the plain toy
    assert planted.rows[0]["kl_mean"] > 5 * max(by_unit.values())
    others = [row["unit"] for row in planted.rows[1:]]
    assert others == [row["unit"] for row in plain.rows if row["unit"] != f"model.layers.{FRAGILE}"]
    for row in planted.rows[1:]:  # the untouched layers measure the same in both models
        assert row["kl_mean"] == pytest.approx(by_unit[row["unit"]], rel=1e-3)


@pytest.mark.slow  # 28 forwards: about 40 s on a loaded 2-core machine
def test_linear_granularity_ranks_a_planted_linear_first(planted_toy, tmp_path, scan):
    result = quantsweep.sensitivity(str(planted_toy), "w3-rtn", out=tmp_path, granularity="linear", **scan)
    assert len(result.rows) == 28
    planted_linears = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"}
    top = result.rows[0]
    assert top["layer"] == FRAGILE and top["module"] in planted_linears


@pytest.mark.slow  # four scans of the toy
def test_a_rerun_resumes_from_the_store(tmp_path, scan):
    first = quantsweep.sensitivity("toy", "w2-rtn", out=tmp_path, **scan)
    assert len(first.measured) == 4
    cells = sorted((tmp_path / "cells").glob("*.json"))
    assert len(cells) == 4 and all(json.loads(p.read_text())["kind"] == "sensitivity" for p in cells)

    second = quantsweep.sensitivity("toy", "w2-rtn", out=tmp_path, **scan)
    assert second.measured == ()  # nothing recomputed
    assert second.rows == first.rows

    lost = json.loads(cells[1].read_text())["unit"]
    cells[1].unlink()  # as if the scan had died before this layer
    third = quantsweep.sensitivity("toy", "w2-rtn", out=tmp_path, **scan)
    assert third.measured == (lost,)
    assert [r["kl_mean"] for r in third.rows] == pytest.approx([r["kl_mean"] for r in first.rows], rel=1e-6)

    forced = quantsweep.sensitivity("toy", "w2-rtn", out=tmp_path, force=True, **scan)
    assert len(forced.measured) == 4
    assert [r["kl_mean"] for r in forced.rows] == pytest.approx([r["kl_mean"] for r in first.rows], rel=1e-6)


@pytest.mark.slow  # three scans of the toy
def test_keys_follow_the_recipe_and_the_text(tmp_path, scan):
    quantsweep.sensitivity("toy", "w2-rtn", out=tmp_path, **scan)
    other_recipe = quantsweep.sensitivity("toy", "w3-rtn", out=tmp_path, **scan)
    other_text = quantsweep.sensitivity("toy", "w2-rtn", out=tmp_path, **{**scan, "tokens": 256})
    assert len(other_recipe.measured) == 4 and len(other_text.measured) == 4
    assert len(list((tmp_path / "cells").glob("*.json"))) == 12


def test_the_model_is_back_in_full_precision_after_a_scan():
    from quantsweep.sensitivity.scan import run_scan
    from quantsweep.sweep.prepare import PreparedModel
    from quantsweep.sweep.spec import model_from_dict
    from quantsweep.sweep.store import CellStore

    prepared = PreparedModel(model_from_dict({"path": "toy", "device": "cpu"}))
    model, _ = prepared.load()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    import tempfile

    run_scan(
        prepared,
        "w2-rtn",
        scan_units(model),
        torch.ones(2, 16, dtype=torch.long),
        CellStore(tempfile.mkdtemp()),
        key_fields={},
    )
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"recipe": "fp"}, "quantizes nothing"),
        ({"budget": -1}, "budget must be a positive number"),
        ({"budget": 2.0}, "below what w2-rtn itself takes"),
        ({"high_bits": 4}, "give a budget too"),
        ({"granularity": "block"}, "granularity must be one of"),
        ({"tokens": 0}, "tokens must be a positive integer"),
        ({"text": "missing.txt"}, "does not exist"),
        ({"recipe": "w8a8-smoothquant", "budget": 9.0}, "has no 'bits' setting"),
        ({"recipe": "w4a4-rotate-rtn"}, "has a rotate transform"),
        ({"recipe": "w2-rtn-mixed.yaml", "budget": 3.0}, "is composed of stages"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):  # each before the scan: fast
    if kwargs.get("recipe") == "w2-rtn-mixed.yaml":  # a recipe with overrides is a one-stage composed recipe
        kwargs["recipe"] = str(tmp_path.parent / "w2-rtn-mixed.yaml")
        (tmp_path.parent / "w2-rtn-mixed.yaml").write_text(
            "name: m\nmethod: rtn\nbits: 2\noverrides:\n- match: model.layers.0.*\n  bits: 4\n"
        )
    arguments = {"recipe": "w2-rtn", **kwargs}
    with pytest.raises(ValueError, match=message):
        quantsweep.sensitivity("toy", arguments.pop("recipe"), out=tmp_path, device="cpu", **arguments)
    assert not (tmp_path / "cells").exists() or not list((tmp_path / "cells").iterdir())


def test_a_sweep_store_is_refused(tmp_path):
    from quantsweep.sweep.store import CellStore

    CellStore(tmp_path).write_cell({"key": "abc", "status": "done", "recipe": "fp"})
    with pytest.raises(ValueError, match="is a sweep store"):
        quantsweep.sensitivity("toy", "w2-rtn", out=tmp_path, device="cpu")


def test_the_scan_text_is_drawn_with_the_calibration_seed_plus_one(tmp_path):
    """With the default text (the calibration source), the windows are not the calibration's own."""
    from quantsweep.calibration import load_calibration

    result = quantsweep.sensitivity("toy", "w2-rtn", out=tmp_path, tokens=128, seq_len=64, device="cpu")
    text = result.records[0]["text"]
    _, tokenizer = quantsweep.load_model("toy", device="cpu")
    calibration = load_calibration(text["source"], tokenizer, n_samples=2, seq_len=64, seed=0)
    drawn = load_calibration(text["source"], tokenizer, n_samples=2, seq_len=64, seed=1)
    assert text["seed"] == 1 and text["fingerprint"] == drawn.fingerprint()
    assert text["fingerprint"] != calibration.fingerprint()
