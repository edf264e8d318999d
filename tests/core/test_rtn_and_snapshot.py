"""RTN on a tiny Llama: which layers change, restore, group-size errors."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import quantsweep
from quantsweep.models.layout import decoder_linears
from quantsweep.models.snapshot import WeightSnapshot, attach_hook
from quantsweep.recipes import recipe_from_dict


def tiny_llama(intermediate=384):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=128,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        mlp_bias=False,
    )
    return LlamaForCausalLM(config).eval()


def test_rtn_quantizes_decoder_linears_only():
    model = tiny_llama()
    before = {n: p.clone() for n, p in model.named_parameters()}
    quantsweep.quantize(model, "w4-rtn")
    linear_weights = {f"{n}.weight" for n in decoder_linears(model)}
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in linear_weights), name
    weight = model.model.layers[0].mlp.down_proj.weight
    for row in weight[:4]:
        for group in row.split(128):
            assert group.unique().numel() <= 16


def test_rtn_matches_primitive_per_layer():
    model = tiny_llama()
    original = model.model.layers[1].self_attn.q_proj.weight.clone()
    quantsweep.quantize(model, "w2-rtn")
    from quantsweep.quant import fake_quantize

    assert torch.equal(model.model.layers[1].self_attn.q_proj.weight, fake_quantize(original, 2, 128, False))


def test_lm_head_and_embeddings_configurable():
    model = tiny_llama()
    head, emb = model.lm_head.weight.clone(), model.model.embed_tokens.weight.clone()
    quantsweep.quantize(
        model,
        recipe_from_dict(
            {
                "name": "all",
                "method": "rtn",
                "bits": 2,
                "group_size": None,
                "quantize_lm_head": True,
                "quantize_embeddings": True,
            }
        ),
    )
    assert not torch.equal(head, model.lm_head.weight) and not torch.equal(emb, model.model.embed_tokens.weight)


def test_binary_recipe_gives_two_values_per_row():
    model = tiny_llama()
    quantsweep.quantize(model, "w1-rtn")
    for row in model.model.layers[0].mlp.up_proj.weight:
        assert row.unique().numel() <= 2


def test_group_size_error_names_layer_and_leaves_model_intact():
    model = tiny_llama(intermediate=200)
    before = model.model.layers[0].self_attn.q_proj.weight.clone()
    with pytest.raises(
        ValueError, match=r"group_size 128 does not divide in_features 200 of layer 'model.layers.0.mlp.down_proj'"
    ):
        quantsweep.quantize(model, "w4-rtn")
    assert torch.equal(before, model.model.layers[0].self_attn.q_proj.weight)


def test_snapshot_restores_weights_and_removes_hooks():
    model = tiny_llama()
    ids = torch.randint(0, 64, (1, 12))
    reference = model(ids).logits
    snapshot = WeightSnapshot(model)
    quantsweep.quantize(model, "w1-rtn")
    linear = model.model.layers[0].self_attn.q_proj
    attach_hook(linear, linear.register_forward_pre_hook(lambda mod, args: (args[0] * 0,)))
    assert not torch.allclose(model(ids).logits, reference)
    snapshot.restore(model)
    assert torch.equal(model(ids).logits, reference)
