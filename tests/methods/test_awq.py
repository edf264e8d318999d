"""AWQ: scale search beats RTN on outlier channels, folding is exact, clipping, whole-model run, bad input."""

import pytest
import torch
from tiny_llama import outlier_llama
from transformers import LlamaForCausalLM

import quantsweep
from quantsweep.methods.awq import AWQConfig, apply_clip, search_clip, search_scales
from quantsweep.methods.mappings import fold_scales, mappings_for
from quantsweep.methods.registry import RecipeError
from quantsweep.models.snapshot import WeightSnapshot
from quantsweep.quant import fake_quantize

CONFIG = AWQConfig(name="test-awq", method="awq", bits=3, group_size=32)


def tiny_llama(kv_heads: int = 2, outliers: bool = True) -> LlamaForCausalLM:
    return outlier_llama(kv_heads=kv_heads, outlier_scale=20.0 if outliers else None)


def outlier_inputs(tokens=512, features=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, features, generator=generator)
    x[:, :6] *= 25.0
    return x


def test_awq_layer_error_not_above_rtn_with_outlier_channels():
    x = outlier_inputs()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    result = search_scales(x, [w], CONFIG)
    reference = x @ w.T
    # Errors recomputed here, independently of the search's bookkeeping.
    rtn = fake_quantize(w, CONFIG.bits, CONFIG.group_size, CONFIG.symmetric)
    awq = fake_quantize(w * result.scales, CONFIG.bits, CONFIG.group_size, CONFIG.symmetric) / result.scales
    rtn_error = float((x @ rtn.T - reference).norm())
    awq_error = float((x @ awq.T - reference).norm())
    assert result.alpha > 0
    assert awq_error <= rtn_error
    assert awq_error < 0.9 * rtn_error
    assert result.error == pytest.approx(awq_error**2, rel=1e-3)
    # Held-out tokens of the same distribution: the chosen scales still help.
    held_out = outlier_inputs(seed=5)
    assert float((held_out @ (awq - w).T).norm()) < float((held_out @ (rtn - w).T).norm())


def test_alpha_zero_is_rtn():
    x = outlier_inputs(64)
    w = torch.randn(16, 128)
    result = search_scales(x, [w], AWQConfig(name="a", method="awq", n_grid=1))
    assert result.alpha == 0.0
    torch.testing.assert_close(result.scales, torch.ones(128))
    assert result.error == result.rtn_error


def test_clip_search_never_hurts_each_group():
    x = outlier_inputs(128)
    w = torch.randn(8, 128)
    w[:, 7] = 9.0  # one large weight per row stretches its group's range
    bound = search_clip(x, w, CONFIG)
    original = w.reshape(8, 4, 32).abs().amax(-1)
    assert bound.shape == (8, 4) and bool((bound <= original).all()) and bool((bound >= 0.5 * original - 1e-6).all())
    clipped = fake_quantize(apply_clip(w, bound, 32), CONFIG.bits, 32, CONFIG.symmetric)
    plain = fake_quantize(w, CONFIG.bits, 32, CONFIG.symmetric)
    xg, wg = x.reshape(128, 4, 32), w.reshape(8, 4, 32)
    group_error = lambda w_hat: (torch.einsum("tgk,ogk->otg", xg, w_hat.reshape(8, 4, 32) - wg)).pow(2).mean(1)
    assert bool((group_error(clipped) <= group_error(plain) + 1e-5).all())


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_folding_searched_scales_is_exact(kv_heads):
    model = tiny_llama(kv_heads=kv_heads)
    tokens = torch.randint(0, 96, (2, 24))
    with torch.no_grad():
        reference = model(tokens).logits
    v_proj = model.model.layers[0].self_attn.v_proj
    v_weight, v_bias = v_proj.weight.detach().clone(), v_proj.bias.detach().clone()
    for layer in mappings_for(model, "awq"):
        for pair in layer:
            result = search_scales(
                outlier_inputs(64, pair.targets[0].in_features),
                [t.weight.data for t in pair.targets],
                CONFIG,
                reduce=lambda v, p=pair: v.reshape(-1, p.repeat, p.head_dim).mean(1).reshape(-1) if p.repeat > 1 else v,
                expand=lambda v, p=pair: (
                    v.reshape(-1, p.head_dim).repeat_interleave(p.repeat, 0).reshape(-1) if p.repeat > 1 else v
                ),
            )
            fold_scales(pair, result.scales)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, reference, rtol=1e-4, atol=1e-4)
    # v_proj's rows and bias were divided by the same v -> o scales (the bias path openPangu
    # needs); its column 0 was also multiplied by the norm's scale s_0, the same for every row.
    bias_ratio = v_bias / v_proj.bias.detach()
    column_factor = bias_ratio / (v_weight[:, 0] / v_proj.weight[:, 0].detach())
    torch.testing.assert_close(column_factor, column_factor[:1].expand_as(column_factor), rtol=1e-4, atol=1e-4)
    assert float(bias_ratio.max() / bias_ratio.min()) > 1.5


def test_whole_model_awq_beats_rtn_and_restores():
    model = tiny_llama()
    calibration = torch.randint(0, 96, (8, 32))
    tokens = torch.randint(0, 96, (4, 32))
    with torch.no_grad():
        reference = model(tokens).logits
    snapshot = WeightSnapshot(model)
    errors = {}
    for recipe in ("w4-rtn", "w4-awq"):
        snapshot.restore(model)
        quantsweep.quantize(model, recipe, calibration=calibration)
        with torch.no_grad():
            errors[recipe] = float((model(tokens).logits - reference).norm() / reference.norm())
    assert errors["w4-awq"] < errors["w4-rtn"]
    snapshot.restore(model)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, reference)


def test_bad_input():
    model = tiny_llama()
    before = model.model.layers[0].mlp.up_proj.weight.clone()
    with pytest.raises(ValueError, match="needs calibration data"):
        quantsweep.quantize(model, "w4-awq")
    with pytest.raises(RecipeError, match=r"awq supports bits \[2, 3, 4, 5, 6, 7, 8\]"):
        AWQConfig(name="bad", method="awq", bits=1)
    with pytest.raises(ValueError, match="group_size 96 does not divide"):
        quantsweep.quantize(
            model, AWQConfig(name="g", method="awq", group_size=96), calibration=torch.zeros(1, 4, dtype=torch.long)
        )
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, before)


def test_openpangu_checkpoint_folds_exactly_and_quantizes(tmp_path):
    """A tiny openPangu-Embedded checkpoint (q/k/v/o biases, GQA) loaded through load_model."""
    from helpers.checkpoints import write_pangu_checkpoint

    write_pangu_checkpoint(tmp_path / "pangu", tokenizer="fast")
    model, _ = quantsweep.load_model(tmp_path / "pangu", device="cpu", dtype=torch.float32)
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        reference = model(tokens).logits
    snapshot = WeightSnapshot(model)
    generator = torch.Generator().manual_seed(0)
    for layer in mappings_for(model, "awq"):
        for pair in layer:
            fold_scales(pair, torch.rand(pair.channels, generator=generator) * 4 + 0.25)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, reference, rtol=1e-4, atol=1e-4)
    errors = {}
    for config in (
        AWQConfig(name="awq-g32", method="awq", group_size=32, n_grid=10),
        quantsweep.get_recipe("w8a8-smoothquant"),
    ):
        snapshot.restore(model)
        quantsweep.quantize(model, config, calibration=torch.randint(0, 64, (4, 32)))
        with torch.no_grad():
            out = model(tokens).logits
        assert torch.isfinite(out).all()
        errors[config.name] = float((out - reference).norm() / reference.norm())
    assert 0 < errors["w8a8-smoothquant"] < 0.05 and 0 < errors["awq-g32"] < 0.5


def test_rtn_error_is_plain_rtn_also_with_duo_scaling():
    """With duo scaling the grid's alpha = 0 point is not RTN; the reported baseline must still be plain RTN."""
    torch.manual_seed(0)
    x, w = torch.randn(64, 128), torch.randn(16, 128) * torch.linspace(0.1, 3.0, 128)
    config = AWQConfig(name="a", method="awq", duo_scaling=True)
    result = search_scales(x, [w], config)
    plain_rtn = float((x @ fake_quantize(w, config.bits, config.group_size, config.symmetric).T - x @ w.T).pow(2).sum())
    assert result.rtn_error == pytest.approx(plain_rtn, rel=1e-6)
