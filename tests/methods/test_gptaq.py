"""GPTAQ: asymmetric calibration matches a direct least-squares reference and beats GPTQ on its objective."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_llama import calibration_ids, layer_inputs, minmax_asym, tiny_llama

import quantsweep
from quantsweep.methods.activation import activation_bits
from quantsweep.methods.engine.obs import HessianAccumulator, gptq_quantize
from quantsweep.methods.engine.sequential import run_sequential
from quantsweep.methods.gptaq import GPTAQConfig
from quantsweep.methods.registry import RecipeError


def _streams(tokens=400, features=32, noise=0.3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=generator) / features**0.5 + torch.eye(features)
    x_fp = (torch.randn(tokens, features, generator=generator) @ mix) * torch.linspace(0.3, 2, features)
    # The quantized stream drifts systematically (as after quantized layers) plus a little noise.
    distortion = torch.eye(features) + noise * torch.randn(features, features, generator=generator) / features**0.5
    x_q = x_fp @ distortion + 0.05 * torch.randn(tokens, features, generator=generator)
    return x_fp, x_q


def reference_gptaq(weight, x_fp, x_q, bits, group_size, damp=0.01):
    """Column by column: fix column q, then least-squares-fit the remaining columns (on X̃)
    to what was lost: e X̃_q + w0_q (X_q - X̃_q). Explicit inverses of the trailing block."""
    w0 = weight.double()
    w = w0.clone()
    xf, xq = x_fp.double(), x_q.double()
    n, tokens = w.shape[1], xq.shape[0]
    h = 2 * xq.T @ xq / tokens
    d = 2 * (xf - xq).T @ xq / tokens
    h += damp * torch.diagonal(h).mean() * torch.eye(n, dtype=h.dtype)
    out = torch.zeros_like(w)
    for q in range(n):
        if q % group_size == 0:
            scale, zero = minmax_asym(w[:, q : q + group_size], bits)
        quantized = (torch.clamp(torch.round(w[:, q] / scale) + zero, 0, 2**bits - 1) - zero) * scale
        out[:, q] = quantized
        e = w[:, q] - quantized
        if q + 1 < n:
            inv = torch.linalg.inv(h[q + 1 :, q + 1 :])
            w[:, q + 1 :] += (e[:, None] * h[q, q + 1 :][None] + w0[:, q : q + 1] * d[q, q + 1 :][None]) @ inv
    return out.float()


def _accumulate(x_fp, x_q):
    acc = HessianAccumulator(x_q.shape[1], asymmetric=True)
    acc.add(x_q[:150], x_fp[:150])
    acc.add(x_q[150:], x_fp[150:])
    return acc


def test_matches_direct_least_squares_reference():
    x_fp, x_q = _streams()
    weight = torch.randn(10, 32, generator=torch.Generator().manual_seed(3))
    acc = _accumulate(x_fp, x_q)
    ours, _ = gptq_quantize(
        weight, acc.hessian, bits=3, group_size=8, symmetric=False, act_order=False, block_size=12, cross=acc.cross
    )
    ref = reference_gptaq(weight, x_fp, x_q, 3, 8)
    assert torch.isclose(ours, ref, atol=1e-4).float().mean() > 0.98


def test_reduces_asymmetric_error_and_reduces_to_gptq_without_drift():
    x_fp, x_q = _streams(noise=0.5, seed=1)
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(4))
    acc = _accumulate(x_fp, x_q)
    common = dict(bits=4, group_size=16, symmetric=False, act_order=True)
    gptaq, _ = gptq_quantize(weight, acc.hessian, cross=acc.cross, **common)
    gptq, _ = gptq_quantize(weight, acc.hessian, **common)
    target = weight @ x_fp.T
    err_gptaq = (target - gptaq @ x_q.T).norm()
    err_gptq = (target - gptq @ x_q.T).norm()
    assert err_gptaq < 0.8 * err_gptq, (float(err_gptaq), float(err_gptq))
    # Identical streams: the cross term vanishes and GPTAQ is GPTQ exactly.
    same = _accumulate(x_q, x_q)
    assert same.cross.abs().max() == 0
    torch.testing.assert_close(
        gptq_quantize(weight, same.hessian, cross=same.cross, **common)[0],
        gptq_quantize(weight, same.hessian, **common)[0],
    )


def test_fp_target_of_later_groups_comes_from_the_unquantized_layer():
    model = tiny_llama()
    ids = calibration_ids(2, 16)
    expected = {}
    fp_model = tiny_llama()
    fp_model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(
        lambda m, args: expected.setdefault("o", args[0].reshape(-1, args[0].shape[-1]).clone())
    )
    layer_inputs(fp_model, ids[:1])
    seen = {}

    def quantizer(ctx):
        fp_layer = copy.deepcopy(ctx.layer)
        for name, linear in ctx.linears().items():
            if name != "self_attn.o_proj":
                linear.weight.data.mul_(0.5)  # stands in for quantizing the q/k/v group first
        o_proj = {"self_attn.o_proj": ctx.linears()["self_attn.o_proj"]}
        ctx.capture_inputs(
            o_proj, lambda n, x, x_fp: seen.setdefault(ctx.index, (x, x_fp)), with_fp=True, fp_layer=fp_layer
        )

    run_sequential(model, ids, "cpu", quantizer, propagate_fp=True)
    x, x_fp = seen[1]
    torch.testing.assert_close(x_fp, expected["o"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(x, x_fp, atol=1e-3)


def test_quantize_model_weight_only_and_w4a4():
    ids = calibration_ids(2, 16)
    model = tiny_llama()
    result = quantsweep.apply_recipe(model, "w4-gptaq", calibration=ids)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert all(g.unique().numel() <= 16 for g in weight.reshape(-1, 128)[:32])
    assert result.method == "gptaq" and len(result.report["layers"]) == 2
    assert "quantsweep_layer_reports" not in model.__dict__  # no side channel
    assert activation_bits(model.model.layers[0].mlp.down_proj) is None
    w4a4 = quantsweep.quantize(tiny_llama(), "w4a4-gptaq", calibration=ids)
    linears = [m for m in w4a4.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 14 and all(activation_bits(m) == 4 for m in linears)
    with torch.no_grad():
        assert torch.isfinite(w4a4(ids).logits).all()


def test_bad_input_errors():
    with pytest.raises(RecipeError, match=r"activation_bits \[4, 8\]"):
        GPTAQConfig(name="x", method="gptaq", activation_bits=3)
    with pytest.raises(RecipeError, match=r"supports bits \[2, 3, 4, 8\]"):
        GPTAQConfig(name="x", method="gptaq", bits=6)
    with pytest.raises(ValueError, match="needs calibration data"):
        quantsweep.quantize(tiny_llama(), "w4-gptaq")
