"""Every integer recipe returns a packed form whose dequantization is the fake-quant model exactly."""

from __future__ import annotations

import pytest
import torch
from tiny_llama import calibration_ids, tiny_llama

import quantsweep
from quantsweep.methods.catalog import get_method
from quantsweep.models.layout import decoder_linears
from quantsweep.recipes import get_recipe

PACKED_METHODS = ("rtn", "gptq", "gptaq", "slim-llm")
INT_RECIPES = [name for name in quantsweep.list_recipes() if get_recipe(name).method in PACKED_METHODS]


def test_every_packed_method_has_a_recipe():
    assert {get_recipe(name).method for name in INT_RECIPES} == set(PACKED_METHODS)


@pytest.mark.parametrize("recipe", INT_RECIPES)
def test_dequantized_representation_is_the_fake_quant_weight(recipe):
    model = tiny_llama(seed=1, layers=1)
    config = get_recipe(recipe)
    calibration = calibration_ids(4, 32) if get_method(config.method).needs_calibration else None
    result = quantsweep.apply_recipe(model, recipe, calibration=calibration)
    linears = decoder_linears(model)
    assert set(result.packed) == set(linears)
    for name, linear in linears.items():
        packed = result.packed[name]
        assert torch.equal(packed.dequantize(linear.weight.dtype), linear.weight.data), name
        assert packed.shape == tuple(linear.weight.shape)
    widths = {b for packed in result.packed.values() for b in packed.bits}
    if config.method == "slim-llm":
        assert widths <= {config.bits - 1, config.bits, config.bits + 1}
    else:
        assert widths == {config.bits}


def test_bf16_gptq_representation_matches_in_model_dtype():
    model = tiny_llama(seed=2, layers=1).to(torch.bfloat16)
    result = quantsweep.apply_recipe(model, "w4-gptq", calibration=calibration_ids(4, 32))
    for name, linear in decoder_linears(model).items():
        assert torch.equal(result.packed[name].dequantize(torch.bfloat16), linear.weight.data), name
