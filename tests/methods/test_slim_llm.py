"""SliM-LLM: exact average bit width, salience-ordered allocation, codebook sizes, beats GPTQ at 2 bits."""

from __future__ import annotations

import pytest
import torch
from tiny_llama import calibration_ids, tiny_llama

import quantsweep
from quantsweep.methods.engine.obs import HessianAccumulator, gptq_quantize
from quantsweep.methods.registry import RecipeError
from quantsweep.methods.slim_llm import SliMLLMConfig, allocate_bits, slim_llm_quantize
from quantsweep.quant import binarize, fake_quantize


def _data(out=16, features=512, tokens=800, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, features, generator=generator) * torch.linspace(0.2, 3, features)
    # Column groups of very different importance, which is what SliM-LLM exploits.
    weight = (
        torch.randn(out, features, generator=generator)
        * torch.rand(features // 32, generator=generator).repeat_interleave(32)
        * 3
    )
    acc = HessianAccumulator(features)
    acc.add(x)
    return weight, x, acc.hessian


@pytest.mark.parametrize("bits", [2, 3])
def test_average_bits_exact_and_codebooks(bits):
    weight, x, hessian = _data()
    quantized, info = slim_llm_quantize(weight, hessian, bits=bits, group_size=32)
    widths = info["group_bits"]
    assert len(widths) == 16 and set(widths) <= {bits - 1, bits, bits + 1}
    assert sum(widths) == bits * len(widths) and info["average_bits"] == bits
    assert widths.count(bits + 1) == widths.count(bits - 1) == info["promoted"]
    assert info["promoted"] > 0  # heterogeneous groups: mixing precision pays
    for g, width in enumerate(widths):
        group = quantized[:, g * 32 : (g + 1) * 32]
        assert max(row.unique().numel() for row in group) <= 2**width


def test_allocation_minimises_the_stated_objective():
    weight, _, hessian = _data(seed=1)
    diag = torch.rand(512) + 0.5
    widths, r = allocate_bits(weight, hessian, diag, bits=2, group_size=64, symmetric=False)
    groups = weight.reshape(16, 8, 64)
    salience = (groups.pow(2) / diag.reshape(1, 8, 64).pow(2)).sum(dim=(0, 2))
    order = torch.argsort(salience, descending=True).tolist()

    def objective(alloc):
        total = 0.0
        for g, width in enumerate(alloc):
            block = groups[:, g]
            approx = binarize(block) if width == 1 else fake_quantize(block, width, None, False)
            delta = block - approx
            cols = slice(g * 64, (g + 1) * 64)
            total += float(((delta @ hessian[cols, cols]) * delta).sum())
        return total

    candidates = []
    for k in range(0, 5):
        alloc = [2] * 8
        for g in order[:k]:
            alloc[g] = 3
        for g in order[8 - k :]:
            alloc[g] = 1
        candidates.append((objective(alloc), k, alloc))
    best = min(candidates)
    assert (r, widths) == (best[1], best[2])
    assert all(widths[order[i]] >= widths[order[j]] for i in range(8) for j in range(i + 1, 8))


def test_beats_gptq_at_two_bits():
    weight, x, hessian = _data(seed=2)
    slim, _ = slim_llm_quantize(weight, hessian, bits=2, group_size=32)
    gptq, _ = gptq_quantize(weight, hessian, bits=2, group_size=32, symmetric=False, act_order=False)
    assert ((weight - slim) @ x.T).norm() < ((weight - gptq) @ x.T).norm()


def test_quantize_model_average_is_two_bits_everywhere():
    config = SliMLLMConfig(name="w2-slim-g32", method="slim-llm", bits=2, group_size=32)
    layers = quantsweep.apply_recipe(tiny_llama(), config, calibration=calibration_ids(4, 32)).report["layers"]
    all_widths = []
    for layer in layers:
        for info in layer["info"]["linears"].values():
            assert info["average_bits"] == 2.0
            all_widths += info["group_bits"]
    assert sum(all_widths) == 2 * len(all_widths) and len(all_widths) == 2 * (6 * 4 + 12)
    default = quantsweep.apply_recipe(tiny_llama(), "w2-slim-llm", calibration=calibration_ids(2, 16))
    assert default.method == "slim-llm" and default.report["layers"]


def test_bad_input_errors():
    with pytest.raises(RecipeError, match=r"slim-llm supports bits \[2, 3, 4\]"):
        SliMLLMConfig(name="x", method="slim-llm", bits=1)
    with pytest.raises(ValueError, match="needs calibration data"):
        quantsweep.quantize(tiny_llama(), "w2-slim-llm")
