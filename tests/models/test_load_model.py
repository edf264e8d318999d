"""load_model on generic Hugging Face causal-LM directories, its errors, devices and the toy model."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from helpers.checkpoints import VOCAB, write_hf_model, write_pangu_checkpoint
from safetensors.torch import load_file, save_file

import quantsweep
from quantsweep.device import DeviceUnavailableError, is_torch_npu_importable
from quantsweep.models.checkpoint import ModelLoadError, check_tensors_match, describe_keys


@pytest.fixture(scope="module")
def input_ids():
    return torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2))


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generic_causal_lm_loads_with_the_saved_weights(tmp_path, input_ids, kind):
    saved = write_hf_model(tmp_path / kind, kind=kind)
    model, tokenizer = quantsweep.load_model(tmp_path / kind, device="cpu")
    assert type(model) is type(saved)
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert model.dtype == torch.float32  # auto on CPU
    assert torch.equal(logits(model, input_ids), logits(saved, input_ids))
    assert tokenizer("ab", add_special_tokens=False).input_ids == [VOCAB["a"], VOCAB["b"]]


def test_accepts_string_path_and_dtype(tmp_path):
    write_hf_model(tmp_path / "llama")
    model, _ = quantsweep.load_model(str(tmp_path / "llama"), device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def _rewrite_weights(path, edit):
    state = load_file(str(path / "model.safetensors"))
    edit(state)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_generic_missing_tensor_is_named(tmp_path):
    write_hf_model(tmp_path / "llama")
    _rewrite_weights(tmp_path / "llama", lambda state: state.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ModelLoadError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        quantsweep.load_model(tmp_path / "llama", device="cpu")


def test_generic_unexpected_tensor_is_named(tmp_path):
    write_hf_model(tmp_path / "llama")
    _rewrite_weights(tmp_path / "llama", lambda state: state.update({"model.layers.0.extra.weight": torch.ones(3)}))
    with pytest.raises(ModelLoadError, match=r"does not use.*model\.layers\.0\.extra\.weight"):
        quantsweep.load_model(tmp_path / "llama", device="cpu")


def test_generic_wrong_shape_is_named(tmp_path):
    write_hf_model(tmp_path / "gpt2", kind="gpt2")
    _rewrite_weights(
        tmp_path / "gpt2", lambda state: state.update({"transformer.h.0.attn.c_attn.weight": torch.zeros(32, 95)})
    )
    with pytest.raises(ModelLoadError, match=r"wrong shape.*transformer\.h\.0\.attn\.c_attn\.weight"):
        quantsweep.load_model(tmp_path / "gpt2", device="cpu")


def test_non_causal_lm_names_its_architecture(tmp_path):
    from transformers import BertConfig

    BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        architectures=["BertForMaskedLM"],
    ).save_pretrained(str(tmp_path / "bert"))
    with pytest.raises(ModelLoadError, match=r"BertForMaskedLM \(model_type 'bert'\), not a causal LM"):
        quantsweep.load_model(tmp_path / "bert", device="cpu")


def test_unknown_remote_code_model_needs_trust(tmp_path):
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "my_lm",
                "architectures": ["MyLMForCausalLM"],
                "auto_map": {"AutoModelForCausalLM": "modeling_my.MyLMForCausalLM"},
            }
        )
    )
    with pytest.raises(ModelLoadError, match=r"MyLMForCausalLM.*trust_remote_code=True"):
        quantsweep.load_model(tmp_path / "custom", device="cpu")


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"does not exist.*'toy'"):
        quantsweep.load_model(tmp_path / "nowhere", device="cpu")


def test_directory_without_config_is_an_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        quantsweep.load_model(tmp_path, device="cpu")


def test_file_instead_of_directory_is_an_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file"):
        quantsweep.load_model(tmp_path / "model.safetensors", device="cpu")


@pytest.mark.parametrize("kind", ["llama", "pangu"])
def test_missing_weights_are_an_error(tmp_path, kind):
    if kind == "llama":
        write_hf_model(tmp_path / kind)
    else:
        write_pangu_checkpoint(tmp_path / kind)
    (tmp_path / kind / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"has no weights: expected one of model\.safetensors\.index\.json"):
        quantsweep.load_model(tmp_path / kind, device="cpu", trust_remote_code=True)


def test_errors_are_value_errors():
    assert issubclass(ModelLoadError, ValueError)


def test_describe_keys_caps_the_list():
    assert describe_keys(["a", "b"]) == "a, b"
    assert describe_keys([f"k{i}" for i in range(8)], limit=3) == "k0, k1, k2, ... (8 in all)"


def test_check_tensors_match_reports_all_three_problems():
    expected = {"a": torch.Size([2]), "b": torch.Size([3]), "c": torch.Size([4])}
    found = {"b": torch.Size([3]), "c": torch.Size([5]), "d": torch.Size([1])}
    with pytest.raises(ModelLoadError) as raised:
        check_tensors_match(expected, found, "ckpt")
    message = str(raised.value)
    assert "missing from the checkpoint: a" in message
    assert "does not use: d" in message
    assert "c (checkpoint [5], model [4])" in message
    check_tensors_match(expected, {"b": torch.Size([3]), "c": torch.Size([4])}, "ckpt", optional=["a"])


def test_cpu_device_is_used(tmp_path):
    write_hf_model(tmp_path / "llama")
    model, _ = quantsweep.load_model(tmp_path / "llama", device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.skipif(is_torch_npu_importable(), reason="torch_npu is installed here")
def test_npu_without_torch_npu_fails_before_reading_anything(tmp_path):
    # The path does not even exist: the device error must come first.
    with pytest.raises(DeviceUnavailableError, match="torch_npu"):
        quantsweep.load_model(tmp_path / "nowhere", device="npu")


def test_bad_device_string_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown device"):
        quantsweep.load_model(tmp_path / "nowhere", device="tpu")


def _toy_dir_or_skip():
    try:
        toy = importlib.import_module("quantsweep.toy")
    except ImportError:
        pytest.skip("quantsweep.toy does not exist yet")
    if not hasattr(toy, "toy_model_dir"):
        pytest.skip("quantsweep.toy has no toy_model_dir yet")
    try:
        return toy.toy_model_dir()
    except FileNotFoundError as error:
        pytest.skip(f"toy model assets are not built yet: {error}")


def test_toy_model_loads_and_gives_finite_logits():
    _toy_dir_or_skip()
    model, tokenizer = quantsweep.load_model("toy", device="cpu")
    assert not model.training
    input_ids = tokenizer("the", return_tensors="pt").input_ids
    out = logits(model, input_ids)
    assert out.shape[-1] == model.config.vocab_size
    assert torch.isfinite(out).all()


def test_toy_id_loads_the_toy_directory(tmp_path, monkeypatch, input_ids):
    # Independent of the committed assets: point the toy at a tiny Llama written here.
    toy = pytest.importorskip("quantsweep.toy")
    saved = write_hf_model(tmp_path / "toy-stand-in")
    monkeypatch.setattr(toy, "toy_model_dir", lambda: tmp_path / "toy-stand-in")
    model, _ = quantsweep.load_model("toy", device="cpu")
    assert torch.equal(logits(model, input_ids), logits(saved, input_ids))


def test_toy_without_assets_is_a_clear_error(monkeypatch):
    toy = pytest.importorskip("quantsweep.toy")

    def missing():
        raise FileNotFoundError("toy model files missing from assets/toy: config.json")

    monkeypatch.setattr(toy, "toy_model_dir", missing)
    with pytest.raises(ModelLoadError, match="toy model files missing"):
        quantsweep.load_model("toy", device="cpu")
