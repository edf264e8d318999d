"""Cost fields: theory counted by hand in the test, stored bytes measured, honest kernel labels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import quantsweep
from quantsweep.measure.cost import cost_fields
from quantsweep.models.layout import decoder_linears
from quantsweep.recipes import get_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from tiny_llama import calibration_ids, tiny_llama  # noqa: E402


def _by_hand(model, linear_bits_per_weight):
    """Total bits: decoder Linear weights at the given rate, every other parameter at 32 bits (fp32)."""
    linears = decoder_linears(model)
    weight_ids = {id(m.weight) for m in linears.values()}
    total_bits, count = 0.0, 0
    for name, param in model.named_parameters():
        count += param.numel()
        total_bits += param.numel() * (linear_bits_per_weight(name) if id(param) in weight_ids else 32)
    return total_bits, count


def test_fp_is_32_bits_and_its_own_size():
    model = tiny_llama(seed=0, layers=1)
    fields = cost_fields(model, get_recipe("fp"), quantsweep.apply_recipe(model, "fp"))
    n = sum(p.numel() for p in model.parameters())
    assert fields["kernel"] == "none" and fields["theoretical_bits_per_weight"] == 32.0
    assert fields["stored_bytes"] == fields["fp_bytes"] == n * 4 and fields["weights"] == n
    json.dumps(fields)


def test_w4_rtn_counts_codes_scales_zeros_and_fp_tensors():
    model = tiny_llama(seed=0, layers=1)
    result = quantsweep.apply_recipe(model, "w4-rtn")  # asymmetric, groups of 128
    fields = cost_fields(model, get_recipe("w4-rtn"), result)
    bits, count = _by_hand(model, lambda name: 4 + (16 + 4) / 128)
    assert fields["theoretical_bits_per_weight"] == pytest.approx(bits / count)
    assert fields["theoretical_bytes"] == round(bits / 8)
    assert fields["kernel"] == "fake-quant" and fields["stored_bytes_kind"] == "fp_model_in_memory (fake-quant)"
    assert fields["stored_bytes"] == count * 4 and "fp model" in fields["measured_as"]


def test_w8_rtn_per_channel_symmetric_has_no_zero_points():
    model = tiny_llama(seed=0, layers=1)
    fields = cost_fields(model, get_recipe("w8-rtn"), quantsweep.apply_recipe(model, "w8-rtn"))
    in_features = {name: m.in_features for name, m in decoder_linears(model).items()}
    bits, count = _by_hand(model, lambda name: 8 + 16 / in_features[name.removesuffix(".weight")])
    assert fields["theoretical_bits_per_weight"] == pytest.approx(bits / count)


def test_awq_without_packed_form_uses_the_recipe():
    model = tiny_llama(seed=0, layers=1)
    result = quantsweep.apply_recipe(model, "w4-awq", calibration=calibration_ids(2, 32))
    fields = cost_fields(model, get_recipe("w4-awq"), result)
    config = get_recipe("w4-awq")
    zero = 0 if config.symmetric else 4
    bits, count = _by_hand(model, lambda name: 4 + (16 + zero) / config.group_size)
    assert fields["theoretical_basis"] == "recipe"
    assert fields["theoretical_bits_per_weight"] == pytest.approx(bits / count)


def test_export_size_on_disk_is_stored_bytes(tmp_path):
    model = tiny_llama(seed=0, layers=1)
    result = quantsweep.apply_recipe(model, "w4-rtn")
    from quantsweep.export import export_gptq

    out = export_gptq(model, result, tmp_path / "e", config=get_recipe("w4-rtn"))
    fields = cost_fields(model, get_recipe("w4-rtn"), result, export_dir=out)
    assert fields["stored_bytes_kind"] == "export_on_disk"
    assert fields["stored_bytes"] == (out / "model.safetensors").stat().st_size
    assert fields["stored_bytes"] < fields["fp_bytes"]


@pytest.mark.parametrize(
    "recipe, bits_per_weight",
    [
        ("w8-bnb", lambda in_features: 8 + 32 / in_features),
        ("w4-bnb-nf4", lambda in_features: 4 + 32 / 64),
    ],
)
def test_bnb_theory_and_bytes_in_memory(recipe, bits_per_weight):
    bnb = pytest.importorskip("bitsandbytes")
    model = tiny_llama(seed=0, layers=1)
    shapes = {name: (m.out_features, m.in_features) for name, m in decoder_linears(model).items()}
    fp_count = sum(p.numel() for p in model.parameters())
    result = quantsweep.apply_recipe(model, recipe)
    with torch.no_grad():
        model(input_ids=calibration_ids(1, 8))  # int8 moves its row scales on the first forward: still counted
    fields = cost_fields(model, get_recipe(recipe), result)
    linear_weights = sum(o * i for o, i in shapes.values())
    linear_bits = sum(o * i * bits_per_weight(i) for o, i in shapes.values())
    expected = (linear_bits + (fp_count - linear_weights) * 32) / fp_count
    assert fields["kernel"] == "bitsandbytes" and fields["weights"] == fp_count
    assert fields["theoretical_bits_per_weight"] == pytest.approx(expected)
    # in memory: codes + fp32 statistics + the fp tensors, counted from the modules by hand
    stored = 0
    for name, (o, i) in shapes.items():
        module = model.get_submodule(name)
        assert isinstance(module, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))
        stored += o * i * (1 if recipe == "w8-bnb" else 0.5) + (
            o * 4 if recipe == "w8-bnb" else (o * i / 64) * 4 + 16 * 4
        )
    stored += (fp_count - linear_weights) * 4
    assert fields["stored_bytes"] == pytest.approx(stored)
    assert fields["stored_bytes_kind"] == "bitsandbytes_in_memory"
