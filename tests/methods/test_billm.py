"""BiLLM: codebook size per (row, block), binarization pieces vs references, beats binary RTN."""

from __future__ import annotations

import pytest
import torch
from tiny_llama import calibration_ids, tiny_llama

import quantsweep
from quantsweep.methods.billm import (
    BREAK_POINT_FRACTIONS,
    BiLLMConfig,
    billm_quantize,
    residual_binarize,
    split_binarize,
)
from quantsweep.methods.engine.obs import HessianAccumulator
from quantsweep.methods.registry import RecipeError
from quantsweep.quant import binarize


def _data(out=24, features=256, tokens=600, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, features, generator=generator) * torch.linspace(0.2, 3, features)
    weight = torch.randn(out, features, generator=generator)
    weight[:, 7] *= 6  # a few salient columns, as LLMs have
    weight[:, 150] *= 6
    acc = HessianAccumulator(features)
    acc.add(x)
    return weight, x, acc.hessian


def test_residual_binarize_matches_definition():
    values = torch.randn(5, 9)
    approx, a1, a2 = residual_binarize(values)
    sign = torch.where(values >= 0, 1.0, -1.0)
    alpha1 = values.abs().mean(1, keepdim=True)
    residual = values - alpha1 * sign
    expected = alpha1 * sign + residual.abs().mean(1, keepdim=True) * torch.where(residual >= 0, 1.0, -1.0)
    torch.testing.assert_close(approx, expected)
    assert all(row.unique().numel() <= 4 for row in approx)
    assert (values - approx).pow(2).sum() < (values - alpha1 * sign).pow(2).sum()


def test_split_binarize_picks_best_break_point():
    values = torch.randn(6, 40)
    weights = torch.rand(40) + 0.5
    approx, p, _, _ = split_binarize(values, weights)
    best = None
    for fraction in BREAK_POINT_FRACTIONS.tolist():  # brute force over the same grid, row by row
        cut = fraction * values.abs().max().item()
        candidate = torch.zeros_like(values)
        for i, row in enumerate(values):
            for part in (row.abs() <= cut, row.abs() > cut):
                if part.any():
                    candidate[i, part] = torch.where(row[part] >= 0, 1.0, -1.0) * row[part].abs().mean()
        error = ((values - candidate).pow(2) * weights).sum().item()
        if best is None or error < best[0] - 1e-6:
            best = (error, candidate, cut)
    torch.testing.assert_close(approx, best[1])
    assert p == pytest.approx(best[2])


def test_at_most_eight_values_per_row_and_block():
    weight, x, hessian = _data()
    quantized, info = billm_quantize(weight, hessian, block_size=128)
    counts = [group.unique().numel() for group in quantized.reshape(24, 2, 128).reshape(-1, 128)]
    assert max(counts) <= 8  # {±α1±α2} on salient columns, {±α_c, ±α_s} elsewhere
    assert min(counts) >= 2
    assert 1 <= info["mean_salient_columns"] <= 32


def test_beats_binary_rtn_on_layer_error():
    weight, x, hessian = _data(seed=1)
    quantized, _ = billm_quantize(weight, hessian)
    rtn = binarize(weight, 128)
    assert ((weight - quantized) @ x.T).norm() < 0.8 * ((weight - rtn) @ x.T).norm()


def test_quantize_model_end_to_end():
    ids = calibration_ids(4, 32)
    fp = tiny_llama()
    with torch.no_grad():
        reference = fp(ids).logits
    billm = tiny_llama()
    billm_result = quantsweep.apply_recipe(billm, "w1-billm", calibration=ids)
    rtn = quantsweep.quantize(tiny_llama(), "w1-rtn")
    with torch.no_grad():
        err_billm = (billm(ids).logits - reference).pow(2).mean()
        err_rtn = (rtn(ids).logits - reference).pow(2).mean()
    assert err_billm < err_rtn
    weight = billm.model.layers[1].mlp.down_proj.weight  # in_features 384: three blocks
    assert max(g.unique().numel() for g in weight.reshape(-1, 128)) <= 8
    assert billm_result.method == "billm" and billm_result.report["layers"]


def test_bad_input_errors():
    with pytest.raises(RecipeError, match=r"billm supports bits \[1\]"):
        BiLLMConfig(name="x", method="billm", bits=2)
    with pytest.raises(ValueError, match="needs calibration data"):
        quantsweep.quantize(tiny_llama(), "w1-billm")
    with pytest.raises(ValueError, match="does not divide"):
        quantsweep.quantize(
            tiny_llama(), BiLLMConfig(name="x", method="billm", block_size=100), calibration=calibration_ids(2, 8)
        )
