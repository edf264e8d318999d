"""Architecture maps for SmoothQuant / AWQ: resolution, GQA expansion, folding, unmatched layers."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from quantsweep.methods.mappings import (
    expand_to_consumer,
    fold_scales,
    mappings_for,
    model_family,
    reduce_to_source,
)


def tiny_llama(kv_heads: int = 2, model_type: str | None = None) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=96,
        attention_bias=True,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    if model_type is not None:
        model.config.model_type = model_type
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                parameter.normal_(0, 0.5)
    return model


def test_llama_awq_and_smoothquant_pairs():
    model = tiny_llama()
    awq = mappings_for(model, "awq")
    assert len(awq) == 2
    names = [(p.source_name, p.target_names) for p in awq[1]]
    assert names == [
        ("model.layers.1.input_layernorm", [f"model.layers.1.self_attn.{n}_proj" for n in "qkv"]),
        ("model.layers.1.self_attn.v_proj", ["model.layers.1.self_attn.o_proj"]),
        ("model.layers.1.post_attention_layernorm", ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]),
        ("model.layers.1.mlp.up_proj", ["model.layers.1.mlp.down_proj"]),
    ]
    # GQA: v_proj has 2 KV heads x 32, o_proj reads 4 heads x 32.
    v_to_o = awq[0][1]
    assert (v_to_o.repeat, v_to_o.head_dim, v_to_o.channels) == (2, 32, 64)
    smooth = mappings_for(model, "smoothquant")
    assert [p.source_name for p in smooth[0]] == [
        "model.layers.0.input_layernorm",
        "model.layers.0.post_attention_layernorm",
    ]


def test_expand_and_reduce_match_reference():
    model = tiny_llama()
    pair = mappings_for(model, "awq")[0][1]
    scales = torch.arange(64, dtype=torch.float32)
    # Reference: query head h reads KV head h // repeat, head_dim channels each.
    expected = torch.cat([scales[(h // 2) * 32 : (h // 2 + 1) * 32] for h in range(4)])
    torch.testing.assert_close(expand_to_consumer(scales, pair), expected)
    per_query = torch.arange(128, dtype=torch.float32)
    reduced = reduce_to_source(per_query, pair)
    expected_reduced = torch.cat(
        [
            (per_query[(2 * k) * 32 : (2 * k + 1) * 32] + per_query[(2 * k + 1) * 32 : (2 * k + 2) * 32]) / 2
            for k in range(2)
        ]
    )
    torch.testing.assert_close(reduced, expected_reduced)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_folding_every_awq_pair_is_exact_and_scales_v_bias(kv_heads):
    model = tiny_llama(kv_heads=kv_heads)
    tokens = torch.randint(0, 96, (2, 24))
    with torch.no_grad():
        reference = model(tokens).logits
    v_bias = model.model.layers[0].self_attn.v_proj.bias.detach().clone()
    generator = torch.Generator().manual_seed(1)
    for layer in mappings_for(model, "awq"):
        for pair in layer:
            fold_scales(pair, torch.rand(pair.channels, generator=generator) * 8 + 0.25)
    with torch.no_grad():
        folded = model(tokens).logits
    torch.testing.assert_close(folded, reference, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(model.model.layers[0].self_attn.v_proj.bias, v_bias)


def test_pangu_model_type_maps_to_llama():
    assert model_family(tiny_llama(model_type="PanguEmbedded")) == "llama"
    # An unknown model_type with Llama layer names is still mapped.
    model = tiny_llama(model_type="my-llama-clone")
    assert model_family(model) is None
    assert len(mappings_for(model, "smoothquant")[0]) == 2


def test_unmatched_layers_name_the_modules():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(ValueError) as error:
        mappings_for(model, "awq")
    message = str(error.value)
    for module in ("transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "transformer.h.0.ln_1"):
        assert module in message
    with pytest.raises(ValueError, match="allowed: smoothquant, awq"):
        mappings_for(tiny_llama(), "gptq")


def test_wrong_number_of_scales_raises():
    pair = mappings_for(tiny_llama(), "awq")[0][0]
    with pytest.raises(ValueError, match="expected 128 scales"):
        fold_scales(pair, torch.ones(5))
