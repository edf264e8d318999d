"""openPangu-Embedded loading through the Llama mapping, checked against a reference in the test."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.checkpoints import (
    VOCAB,
    pangu_llama_config,
    pangu_tensor_shapes,
    random_state_dict,
    tiny_pangu_config,
    write_pangu_checkpoint,
)
from transformers import LlamaForCausalLM

import quantsweep
import quantsweep.models.openpangu as openpangu
from quantsweep.models.checkpoint import ModelLoadError

# The published openPangu-Embedded-7B config.json, copied here so the test needs no shared files.
REAL_7B_CONFIG = {
    "architectures": ["PanguEmbeddedForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_openpangu_dense.PanguEmbeddedConfig",
        "AutoModel": "modeling_openpangu_dense.PanguEmbeddedModel",
        "AutoModelForCausalLM": "modeling_openpangu_dense.PanguEmbeddedForCausalLM",
    },
    "bias": True,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "pad_token_id": 0,
    "eos_token_id": 45892,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 12800,
    "max_position_embeddings": 32768,
    "model_type": "PanguEmbedded",
    "num_attention_heads": 32,
    "num_hidden_layers": 34,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 16000000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.53.2",
    "use_cache": True,
    "vocab_size": 153376,
}


def reference_model(config: dict, state: dict) -> LlamaForCausalLM:
    """The same weights loaded by hand into a Llama with q/k/v/o biases (the test's reference)."""
    reference = LlamaForCausalLM(pangu_llama_config(config))
    reference.load_state_dict(state, strict=not config["tie_word_embeddings"])
    return reference.eval()


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits


@pytest.fixture(scope="module")
def input_ids():
    return torch.randint(0, 100, (2, 11), generator=torch.Generator().manual_seed(1))


def test_is_openpangu_config():
    assert openpangu.is_openpangu_config(REAL_7B_CONFIG)
    assert openpangu.is_openpangu_config({"architectures": ["PanguEmbeddedForCausalLM"]})
    assert not openpangu.is_openpangu_config({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})


def test_real_7b_config_maps_every_field():
    config = openpangu.llama_config_from_pangu(REAL_7B_CONFIG)
    for field in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "rms_norm_eps",
        "max_position_embeddings",
        "vocab_size",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "hidden_act",
    ):
        assert getattr(config, field) == REAL_7B_CONFIG[field], field
    assert config.rope_parameters["rope_theta"] == 16000000.0
    assert config.attention_bias is True and config.mlp_bias is False
    assert config.head_dim == 128


def test_real_7b_shapes_match_hand_written_layout():
    # Built on the meta device: the full 7B layout is checked without allocating it.
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(openpangu.llama_config_from_pangu(REAL_7B_CONFIG))
    built = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    assert built == pangu_tensor_shapes(REAL_7B_CONFIG)
    # "7B" counts the decoder blocks (6.77e9); untied 153k-vocab embeddings and head add 1.26e9.
    hidden, inter, kv_width, layers, vocab = 4096, 12800, 8 * 128, 34, 153376
    attention = 2 * (hidden * hidden + hidden) + 2 * (hidden * kv_width + kv_width)
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    expected = layers * per_layer + 2 * vocab * hidden + hidden
    assert sum(p.numel() for p in skeleton.parameters()) == expected == 8_030_887_936


def test_missing_shape_field_is_an_error():
    config = dict(REAL_7B_CONFIG)
    del config["hidden_size"]
    with pytest.raises(ModelLoadError, match="hidden_size"):
        openpangu.llama_config_from_pangu(config)


@pytest.mark.parametrize(
    ("shards", "fmt"), [(1, "safetensors"), (2, "safetensors"), (3, "safetensors"), (1, "bin"), (2, "bin")]
)
def test_logits_equal_reference_llama(tmp_path, input_ids, shards, fmt):
    config, state = write_pangu_checkpoint(tmp_path / "pangu", shards=shards, fmt=fmt)
    model, tokenizer = quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.dtype == torch.float32
    assert torch.equal(logits(model, input_ids), logits(reference_model(config, state), input_ids))


def test_attention_biases_are_loaded_not_dropped(tmp_path, input_ids):
    config, state = write_pangu_checkpoint(tmp_path / "pangu")
    model, _ = quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)
    without_bias = {name: (torch.zeros_like(t) if name.endswith("proj.bias") else t) for name, t in state.items()}
    # If the loader ignored the biases its logits would equal this model's; they must not.
    assert not torch.allclose(logits(model, input_ids), logits(reference_model(config, without_bias), input_ids))
    assert torch.equal(model.model.layers[1].self_attn.o_proj.bias, state["model.layers.1.self_attn.o_proj.bias"])


def test_tied_embeddings_may_omit_lm_head(tmp_path, input_ids):
    config = tiny_pangu_config(tie_word_embeddings=True)
    config, state = write_pangu_checkpoint(tmp_path / "pangu", config=config)
    assert "lm_head.weight" not in state
    model, _ = quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(logits(model, input_ids), logits(reference_model(config, state), input_ids))


def test_dtype_is_applied(tmp_path):
    write_pangu_checkpoint(tmp_path / "pangu")
    model, _ = quantsweep.load_model(tmp_path / "pangu", device="cpu", dtype="bf16", trust_remote_code=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("shards", [1, 2])
def test_missing_tensor_is_named(tmp_path, shards):
    state = random_state_dict(pangu_tensor_shapes(tiny_pangu_config()))
    del state["model.layers.1.self_attn.k_proj.bias"]
    write_pangu_checkpoint(tmp_path / "pangu", state=state, shards=shards)
    with pytest.raises(ModelLoadError, match=r"missing.*model\.layers\.1\.self_attn\.k_proj\.bias"):
        quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)


def test_unexpected_tensor_is_named(tmp_path):
    state = random_state_dict(pangu_tensor_shapes(tiny_pangu_config()))
    state["model.layers.0.mlp.gate_proj.bias"] = torch.zeros(160)
    write_pangu_checkpoint(tmp_path / "pangu", state=state)
    with pytest.raises(ModelLoadError, match=r"does not use.*model\.layers\.0\.mlp\.gate_proj\.bias"):
        quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)


def test_wrong_shape_is_named(tmp_path):
    state = random_state_dict(pangu_tensor_shapes(tiny_pangu_config()))
    state["model.layers.0.self_attn.v_proj.weight"] = torch.zeros(48, 64)
    write_pangu_checkpoint(tmp_path / "pangu", state=state)
    with pytest.raises(
        ModelLoadError, match=r"wrong shape.*v_proj\.weight \(checkpoint \[48, 64\], model \[32, 64\]\)"
    ):
        quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)


def test_many_missing_tensors_are_summarised(tmp_path):
    state = random_state_dict(pangu_tensor_shapes(tiny_pangu_config()))
    dropped = [name for name in state if name.startswith("model.layers.1.")]
    for name in dropped:
        del state[name]
    write_pangu_checkpoint(tmp_path / "pangu", state=state)
    with pytest.raises(ModelLoadError, match=rf"\.\.\. \({len(dropped)} in all\)"):
        quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)


def test_missing_shard_is_named(tmp_path):
    write_pangu_checkpoint(tmp_path / "pangu", shards=2)
    (tmp_path / "pangu" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model-00002-of-00002.safetensors"):
        quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)


def test_index_naming_an_absent_tensor_is_an_error(tmp_path):
    write_pangu_checkpoint(tmp_path / "pangu", shards=2)
    index_file = tmp_path / "pangu" / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["model.layers.0.extra"] = "model-00001-of-00002.safetensors"
    index_file.write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"no shard holds: model\.layers\.0\.extra"):
        quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)


def test_remote_tokenizer_needs_trust_remote_code(tmp_path, monkeypatch):
    write_pangu_checkpoint(tmp_path / "pangu")

    def must_not_run(*args, **kwargs):
        raise AssertionError("weights were read before the tokenizer was refused")

    monkeypatch.setattr(openpangu, "load_openpangu", must_not_run)
    with pytest.raises(ModelLoadError, match=r"TinyPanguTokenizer.*trust_remote_code=True.*--trust-remote-code"):
        quantsweep.load_model(tmp_path / "pangu", device="cpu")


def test_remote_tokenizer_loads_with_trust_remote_code(tmp_path):
    write_pangu_checkpoint(tmp_path / "pangu")
    _, tokenizer = quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)
    assert type(tokenizer).__name__ == "TinyPanguTokenizer"  # the checkpoint's own class ran
    assert tokenizer("hi!", add_special_tokens=False).input_ids == [VOCAB["h"], VOCAB["i"], VOCAB["!"]]
    assert tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 0


def test_builtin_tokenizer_needs_no_remote_code(tmp_path, input_ids):
    config, state = write_pangu_checkpoint(tmp_path / "pangu", tokenizer="fast")
    model, tokenizer = quantsweep.load_model(tmp_path / "pangu", device="cpu")
    assert tokenizer("ab", add_special_tokens=False).input_ids == [VOCAB["a"], VOCAB["b"]]
    assert torch.equal(logits(model, input_ids), logits(reference_model(config, state), input_ids))


def test_ascend_host_uses_checkpoint_code(tmp_path, monkeypatch, input_ids):
    # The NPU probe is patched: this runs the remote-code branch on CPU with a modeling
    # file that works here. No Ascend hardware is involved.
    config, state = write_pangu_checkpoint(tmp_path / "pangu", remote_code="cpu")
    monkeypatch.setattr(openpangu, "is_npu_available", lambda: True)
    model, _ = quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)
    assert type(model).__name__ == "PanguEmbeddedForCausalLM"
    assert torch.equal(logits(model, input_ids), logits(reference_model(config, state), input_ids))


def test_npu_only_code_is_not_imported_off_ascend(tmp_path):
    # The checkpoint's modeling file imports torch_npu; loading must not touch it here.
    write_pangu_checkpoint(tmp_path / "pangu", remote_code="npu-only")
    model, _ = quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)
    assert type(model) is LlamaForCausalLM


def test_ascend_host_without_model_code_falls_back_to_llama(tmp_path, monkeypatch, input_ids):
    config = tiny_pangu_config()
    del config["auto_map"]
    config, state = write_pangu_checkpoint(tmp_path / "pangu", config=config)
    monkeypatch.setattr(openpangu, "is_npu_available", lambda: True)
    model, _ = quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)
    assert type(model) is LlamaForCausalLM
    assert torch.equal(logits(model, input_ids), logits(reference_model(config, state), input_ids))


def test_logs_which_path_was_taken(tmp_path, caplog):
    write_pangu_checkpoint(tmp_path / "pangu")
    with caplog.at_level("INFO", logger="quantsweep"):
        quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)
    assert "through transformers' Llama classes (its modeling code imports torch_npu" in caplog.text
    assert "on cpu as torch.float32" in caplog.text
