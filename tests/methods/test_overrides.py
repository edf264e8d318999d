"""Per-module overrides take effect (RTN and GPTQ), and bits per weight counts them."""

import pytest
import torch
from tiny_llama import calibration_ids, minmax_asym, tiny_llama

import quantsweep
from quantsweep.measure.cost import cost_fields
from quantsweep.methods.registry import RecipeError
from quantsweep.models.layout import decoder_linears
from quantsweep.recipes import recipe_from_dict

SKIPPED = "model.layers.0.mlp.down_proj"
EIGHT_BIT = "model.layers.3.self_attn.o_proj"
W2_EXCEPT_TWO = {
    "name": "w2-except-two",
    "method": "rtn",
    "bits": 2,
    "group_size": 64,
    "symmetric": False,
    "overrides": [
        {"match": SKIPPED, "skip": True},
        {"match": ["model.layers.3.self_attn.{o,x}_proj"], "bits": 8, "group_size": None, "symmetric": True},
        {"match": "model.layers.3.*", "bits": 4},  # o_proj matched the entry above first
    ],
}


def _rtn_sym_per_channel(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The test's own symmetric per-output-channel RTN with float16-stored scales."""
    qmax = 2 ** (bits - 1) - 1
    scale = (weight.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
    scale = scale.clamp(2.0**-24, 65504.0).half().float()
    return torch.clamp(torch.round(weight / scale), -qmax - 1, qmax) * scale


def _rtn_asym_grouped(weight: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    out = torch.empty_like(weight)
    for start in range(0, weight.shape[1], group):
        block = weight[:, start : start + group]
        scale, zero = minmax_asym(block, bits)
        codes = torch.clamp(torch.round(block / scale[:, None]) + zero[:, None], 0, 2**bits - 1)
        out[:, start : start + group] = (codes - zero[:, None]) * scale[:, None]
    return out


def test_rtn_w2_except_two_named_layers():
    model, _ = quantsweep.load_model("toy")
    fp = {name: linear.weight.detach().clone() for name, linear in decoder_linears(model).items()}
    recipe = recipe_from_dict(W2_EXCEPT_TWO)
    result = quantsweep.apply_recipe(model, recipe)
    linears = decoder_linears(model)
    assert torch.equal(linears[SKIPPED].weight, fp[SKIPPED])  # skip: full precision
    assert torch.equal(linears[EIGHT_BIT].weight, _rtn_sym_per_channel(fp[EIGHT_BIT], 8))
    assert SKIPPED not in result.packed and result.packed[EIGHT_BIT].bits == (8,)
    for name, linear in linears.items():
        if name in (SKIPPED, EIGHT_BIT):
            continue
        bits = 4 if name.startswith("model.layers.3.") else 2
        assert torch.equal(linear.weight, _rtn_asym_grouped(fp[name], bits, 64)), name

    # Bits per weight, counted here module by module: codes + fp16 scales (+ zero points when asymmetric);
    # everything not quantized (embeddings, norms, the skipped Linear, the head) at 32 bits.
    total_bits = total_weights = 0
    seen = set()
    for name, module in model.named_modules():
        for _, param in module.named_parameters(recurse=False):
            if param.data_ptr() in seen:
                continue
            seen.add(param.data_ptr())
            count = param.numel()
            total_weights += count
            if name in linears and param is linears[name].weight and name != SKIPPED:
                out_features, in_features = param.shape
                if name == EIGHT_BIT:
                    total_bits += 8 * count + 16 * out_features
                else:
                    bits = 4 if name.startswith("model.layers.3.") else 2
                    total_bits += bits * count + (16 + bits) * out_features * (in_features // 64)
            else:
                total_bits += 32 * count
    fields = cost_fields(model, recipe, result)
    assert fields["theoretical_bits_per_weight"] == pytest.approx(total_bits / total_weights, rel=1e-12)
    assert fields["weights"] == total_weights
    assert fields["quantized_weights"] == sum(lin.weight.numel() for n, lin in linears.items() if n != SKIPPED)


def test_gptq_skips_and_widens_the_named_layers():
    model = tiny_llama()
    fp = {name: linear.weight.detach().clone() for name, linear in decoder_linears(model).items()}
    skipped, widened = "model.layers.1.mlp.up_proj", "model.layers.0.self_attn.v_proj"
    recipe = recipe_from_dict(
        {
            "name": "w2-gptq-except",
            "method": "gptq",
            "bits": 2,
            "group_size": 64,
            "overrides": [{"match": skipped, "skip": True}, {"match": widened, "bits": 8}],
        }
    )
    result = quantsweep.apply_recipe(model, recipe, calibration=calibration_ids())
    linears = decoder_linears(model)
    assert torch.equal(linears[skipped].weight, fp[skipped])
    assert skipped not in result.packed
    assert set(result.packed[widened].bits) == {8} and set(result.packed["model.layers.0.self_attn.q_proj"].bits) == {2}
    # each weight is what its packed codes decode to, so the 8-bit layer lies on an 8-bit grid
    packed = result.packed[widened]
    assert torch.equal(packed.dequantize(torch.float32), linears[widened].weight)
    assert int(packed.codes.max()) > 3  # more than 2-bit codes (0..3)
    error_8 = (linears[widened].weight - fp[widened]).abs().max()
    error_2 = (linears["model.layers.0.self_attn.q_proj"].weight - fp["model.layers.0.self_attn.q_proj"]).abs().max()
    assert error_8 < error_2 / 10


def test_an_override_that_matches_nothing_fails_before_any_weight_changes():
    model, _ = quantsweep.load_model("toy")
    before = [p.detach().clone() for p in model.parameters()]
    recipe = recipe_from_dict(
        {"name": "x", "method": "rtn", "bits": 2, "overrides": [{"match": "model.layers.9.*", "skip": True}]}
    )
    with pytest.raises(RecipeError, match=r"override 'model.layers.9.\*' matches no module the recipe quantizes"):
        quantsweep.apply_recipe(model, recipe)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    head = recipe_from_dict({"name": "x", "method": "rtn", "overrides": [{"match": "lm_head", "bits": 8}]})
    with pytest.raises(RecipeError, match="override 'lm_head' matches no module"):  # the head is not a target
        quantsweep.apply_recipe(model, head)


@pytest.mark.parametrize("method", ["rtn", "gptq"])  # gptq: the head goes through quantize_extra_targets
def test_the_head_is_overridden_when_the_recipe_quantizes_it(method):
    model, _ = quantsweep.load_model("toy")
    head_fp = model.lm_head.weight.detach().clone()
    recipe = recipe_from_dict(
        {
            "name": "x",
            "method": method,
            "bits": 2,
            "quantize_lm_head": True,
            "overrides": [{"match": "lm_head", "bits": 8, "group_size": None, "symmetric": True}],
        }
    )
    quantsweep.apply_recipe(model, recipe, calibration=torch.randint(0, 123, (2, 16)) if method == "gptq" else None)
    assert torch.equal(model.lm_head.weight, _rtn_sym_per_channel(head_fp, 8))


def test_skipped_modules_get_no_activation_quantization():
    from quantsweep.methods.activation import activation_bits

    model, _ = quantsweep.load_model("toy")
    recipe = recipe_from_dict(
        {
            "name": "x",
            "stages": [{"weight": "rtn", "bits": 4}, {"activations": {"bits": 8}}],
            "overrides": [{"match": SKIPPED, "skip": True}],
        }
    )
    quantsweep.apply_recipe(model, recipe)
    bits = {name: activation_bits(linear) for name, linear in decoder_linears(model).items()}
    assert bits.pop(SKIPPED) is None and set(bits.values()) == {8}
