"""bitsandbytes recipes: real bnb modules, outputs within LLM.int8()'s error, swaps undone by restore."""

from __future__ import annotations

import pytest
import torch
from tiny_llama import calibration_ids, tiny_llama
from torch import nn

import quantsweep
from quantsweep import device as devices
from quantsweep.methods.registry import RecipeError
from quantsweep.models.layout import decoder_linears
from quantsweep.models.snapshot import WeightSnapshot
from quantsweep.recipes import get_recipe, recipe_from_yaml

bnb = pytest.importorskip("bitsandbytes")


def _linear(seed=0, in_features=256, out_features=64):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=True)
    with torch.no_grad():
        linear.bias.normal_(0, 0.02)
    return linear


@pytest.mark.parametrize(
    "recipe, module_type", [("w8-bnb", "Linear8bitLt"), ("w4-bnb-nf4", "Linear4bit"), ("w4-bnb-fp4", "Linear4bit")]
)
def test_decoder_linears_become_bnb_modules_and_restore_undoes_it(recipe, module_type):
    model = tiny_llama(seed=0, layers=2)
    ids = calibration_ids(2, 16)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    names = list(decoder_linears(model))
    snapshot = WeightSnapshot(model)
    result = quantsweep.apply_recipe(model, recipe)
    assert result.kernel == "bitsandbytes" and result.packed == {}
    for name in names:
        module = model.get_submodule(name)
        assert type(module).__name__ == module_type and isinstance(module, getattr(bnb.nn, module_type)), name
    weight = model.get_submodule(names[0]).weight
    assert weight.dtype == (torch.int8 if recipe == "w8-bnb" else torch.uint8)
    with torch.no_grad():
        quantized = model(input_ids=ids).logits
    assert torch.isfinite(quantized).all() and not torch.equal(quantized, before)
    snapshot.restore(model)
    assert all(type(model.get_submodule(name)) is nn.Linear for name in names)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
    quantsweep.apply_recipe(model, recipe)  # a second recipe after restore swaps again
    snapshot.restore(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def int8_reference(module, x):
    """Dequantized LLM.int8() weight W = CB * SCB / 127 per row; the matmul in float32."""
    scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB  # moved there by forward
    weight = module.weight.data.float() * scb.float().unsqueeze(1) / 127
    return x @ weight.T + module.bias, weight


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_layer_matches_its_dequantized_reference_within_int8_error(threshold):
    """LLM.int8() quantizes each activation row by its absmax to int8: each entry is off by at
    most half a step, absmax / 127 / 2, so |y - x W^T| <= absmax(x_row) / 254 * sum_k |W_jk|.
    Outlier features (|x| > threshold) run in floating point and only shrink the error."""
    linear = _linear(1)
    config = get_recipe("w8-bnb")
    config = recipe_from_yaml(config.to_yaml().replace("threshold: 6.0", f"threshold: {threshold}"))
    from quantsweep.methods.bnb import _bnb_linear

    module = _bnb_linear(bnb, linear, config, torch.device("cpu"))
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(2))
    x[:, 3] *= 20  # one outlier feature, as LLM.int8() expects in real activations
    with torch.no_grad():
        y = module(x)
        y_ref, weight = int8_reference(module, x)
    bound = x.abs().amax(dim=1, keepdim=True) / 254 * weight.abs().sum(dim=1) + 1e-5
    assert bool(((y - y_ref).abs() <= bound).all())
    # and the weight itself: bnb casts it to fp16, then per-row absmax int8 (fp16 arithmetic):
    # within half a step, plus fp16 rounding (2**-11 relative, twice)
    step = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    slack = step * 2.0**-10 + linear.weight.abs() * 2.0**-10
    assert bool(((weight - linear.weight).abs() <= step / 2 + slack).all())


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_layer_is_its_dequantized_weight_times_x(quant_type):
    linear = _linear(3)
    from quantsweep.methods.bnb import _bnb_linear

    module = _bnb_linear(bnb, linear, get_recipe(f"w4-bnb-{quant_type}"), torch.device("cpu"))
    weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(module(x), x @ weight.T + module.bias, rtol=1e-5, atol=1e-5)
    # NF4/FP4 with absmax blocks of 64: the dequantized weight stays close to the original
    relative = (weight - linear.weight.detach()).norm() / linear.weight.detach().norm()
    assert float(relative) < 0.15


def test_bad_configs_are_refused():
    with pytest.raises(RecipeError, match="quant_type must be one of int8, nf4, fp4"):
        recipe_from_yaml("name: x\nmethod: bnb\nquant_type: int4\n")
    with pytest.raises(RecipeError, match="decoder Linears only"):
        recipe_from_yaml("name: x\nmethod: bnb\nquantize_lm_head: true\n")


def test_missing_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setattr(devices, "bitsandbytes_version", lambda: None)
    model = tiny_llama(seed=0, layers=1)
    with pytest.raises(ValueError, match=r"pip install 'quantsweep\[bnb\]'"):
        quantsweep.apply_recipe(model, "w8-bnb")
    assert all(type(m) is nn.Linear for m in decoder_linears(model).values())


def test_unsupported_device_names_device_and_version():
    assert not devices.bitsandbytes_supports("npu:0", version="0.50.2", backends=("cpu", "cuda"))
    assert not devices.bitsandbytes_supports("cpu", version="0.47.0", backends=("cpu", "cuda"))
    assert devices.bitsandbytes_supports("cpu", version="0.48.0", backends=("cpu", "cuda"))
    assert devices.bitsandbytes_supports("npu:0", version="0.60.0", backends=("cpu", "npu"))
    with pytest.raises(
        devices.DeviceUnavailableError, match=rf"bitsandbytes {bnb.__version__} does not support device 'npu:0'"
    ):
        devices.check_bitsandbytes_device("npu:0")
