"""A checkpoint with one Inf weight stays broken through every method and format, or is refused by name.

The broken weight sits where the issue put it in the toy model: ``model.layers.1.mlp.down_proj``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_llama import calibration_ids, tiny_llama

import quantsweep
from quantsweep.models.layout import decoder_linears
from quantsweep.quant import fake_quantize
from quantsweep.quant.finite import NonFiniteWeightsError, nonfinite_weights

BROKEN = "model.layers.1.mlp.down_proj"


def _broken_model(value: float = float("inf")):
    model = tiny_llama(seed=0, layers=2)
    with torch.no_grad():
        model.get_submodule(BROKEN).weight[0, 5] = value
    return model


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=calibration_ids(2, 16)).logits


@pytest.mark.parametrize(
    ("recipe", "value"), [("w8-rtn", float("inf")), ("w4-rtn", float("-inf")), ("w1-rtn", float("nan"))]
)
def test_rtn_keeps_the_broken_group_non_finite_and_the_rest_unchanged(recipe, value):
    config = quantsweep.get_recipe(recipe)
    clean, broken = tiny_llama(seed=0, layers=2), _broken_model(value)
    quantsweep.apply_recipe(clean, recipe)
    quantsweep.apply_recipe(broken, recipe)
    weight, reference = broken.get_submodule(BROKEN).weight, clean.get_submodule(BROKEN).weight
    group = config.group_size or weight.shape[1]
    bad_group = slice(0, group)  # column 5 lies in the first group of row 0
    assert not torch.isfinite(weight[0, bad_group]).any()  # the whole group: its scale is non-finite
    # Every other group is quantized exactly as in the clean model (groups are independent).
    mask = torch.ones_like(weight, dtype=torch.bool)
    mask[0, bad_group] = False
    assert torch.equal(weight[mask], reference[mask])
    assert list(nonfinite_weights(broken)) == [f"{BROKEN}.weight"]
    assert not torch.isfinite(_logits(broken)).all()


def test_the_float16_scale_rule_keeps_finite_weights_as_before():
    # A finite scale beyond float16's range is still clamped to its largest value (numbers unchanged).
    w = torch.tensor([[1.0e8, 2.0, -3.0, 4.0]])
    assert 1.0e8 / 127 > 65504.0
    expected = torch.tensor([[127 * 65504.0, 0.0, 0.0, 0.0]])
    assert torch.equal(fake_quantize(w, bits=8), expected)


@pytest.mark.parametrize("recipe", ["w4-awq", "w8a8-smoothquant", "w4a4-smoothquant"])
def test_calibrated_scaling_methods_stay_non_finite(recipe):
    model = _broken_model()
    config = quantsweep.get_recipe(recipe)
    if recipe == "w4-awq":  # a coarser search keeps the test fast; the clipping search stays on
        config = dataclasses.replace(config, n_grid=4, max_clip_tokens=64, calibration_batch_size=4)
        assert config.clip_search
    quantsweep.apply_recipe(model, config, calibration=calibration_ids(4, 32))
    assert f"{BROKEN}.weight" in nonfinite_weights(model)
    assert not torch.isfinite(_logits(model)).all()


@pytest.mark.parametrize("recipe", ["w4-gptq", "w4-gptaq", "w1-billm", "w2-slim-llm"])
def test_hessian_methods_refuse_naming_the_module_before_any_change(recipe):
    model = _broken_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(NonFiniteWeightsError, match=rf"non-finite weights in {BROKEN}\.weight \(1 Inf of \d+\)"):
        quantsweep.apply_recipe(model, recipe, calibration=calibration_ids(4, 32))
    after = dict(model.named_parameters())
    assert all(
        torch.equal(
            before[name],
            after[name].detach(),
        )
        or name == f"{BROKEN}.weight"
        for name in before
    )
    assert torch.equal(before[f"{BROKEN}.weight"], after[f"{BROKEN}.weight"].detach())  # Inf == Inf, unchanged


@pytest.mark.parametrize("recipe", ["w8-bnb", "w4-bnb-nf4", "w4-bnb-fp4"])
def test_bitsandbytes_stays_non_finite(recipe):
    pytest.importorskip("bitsandbytes")
    model = _broken_model()
    clean = tiny_llama(seed=0, layers=2)
    quantsweep.apply_recipe(model, recipe)
    quantsweep.apply_recipe(clean, recipe)
    assert torch.isfinite(_logits(clean)).all()  # the same format on finite weights is finite
    assert not torch.isfinite(_logits(model)).all()
    assert type(model.get_submodule(BROKEN)).__name__ in ("Linear8bitLt", "Linear4bit")


def test_the_gptq_export_refuses_naming_the_module(tmp_path):
    from quantsweep.export.gptq import export_gptq

    model = _broken_model()
    names = list(decoder_linears(model))
    assert BROKEN in names
    result = quantsweep.apply_recipe(model, "w4-rtn")
    out = tmp_path / "export"
    with pytest.raises(NonFiniteWeightsError, match=rf"{BROKEN}\.weight.*GPTQ export refuses"):
        export_gptq(model, result, out, config=quantsweep.get_recipe("w4-rtn"))
    assert not out.exists() or not any(out.iterdir())  # nothing written
