"""Toy training: bit-for-bit reproducible, and writes a checkpoint transformers loads without remote code."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantsweep.toy.tokenizer import build_tokenizer
from quantsweep.toy.train import TrainConfig, batches, learning_rate, main, model_config, train

TINY = TrainConfig(steps=4, batch_size=2, seq_len=24, warmup_steps=2, n_entities=20)


def test_short_training_is_bit_for_bit_reproducible(tmp_path):
    a = train(TINY, tmp_path / "a", progress=False)
    b = train(TINY, tmp_path / "b", progress=False)
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    # and training actually moved the weights away from the seed's initialisation
    torch.manual_seed(TINY.seed)
    from transformers import LlamaForCausalLM

    init = LlamaForCausalLM(model_config(TINY, len(build_tokenizer()))).state_dict()
    assert not torch.equal(init["model.layers.0.mlp.up_proj.weight"], weights_a["model.layers.0.mlp.up_proj.weight"])
    assert (a / "PROVENANCE.md").read_text().count("sha256") == 1


def test_other_seed_gives_other_weights(tmp_path):
    a = load_file(train(TINY, tmp_path / "a", progress=False) / "model.safetensors")
    b = load_file(
        train(TrainConfig(**{**TINY.__dict__, "seed": 1}), tmp_path / "b", progress=False) / "model.safetensors"
    )
    assert not torch.equal(a["lm_head.weight"], b["lm_head.weight"])


def test_checkpoint_has_the_openpangu_embedded_layout(tmp_path):
    out = train(TINY, tmp_path / "m", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["attention_bias"] is True and config["mlp_bias"] is False
    assert config["tie_word_embeddings"] is False and config["hidden_act"] == "silu"
    model = AutoModelForCausalLM.from_pretrained(out)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert all(p.bias is not None for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
    assert all(p.bias is None for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    assert attn.k_proj.out_features * 2 == attn.q_proj.out_features  # GQA: 2 KV heads for 4 heads
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok.encode("ba ko mi lives in rome .\n")) == "ba ko mi lives in rome .\n"


def test_batches_start_at_line_boundaries():
    tok = build_tokenizer()
    batch = next(batches(TrainConfig(batch_size=8, seq_len=16), tok))
    assert batch.shape == (8, 16)
    first = tok.convert_ids_to_tokens(batch[:, 0].tolist())
    assert all(t == "<s>" or not t.startswith("▁") for t in first)
    assert "<s>" in first and any(t != "<s>" for t in first)


def test_learning_rate_schedule():
    config = TrainConfig(steps=100, lr=1.0, warmup_steps=10)
    assert learning_rate(9, config) == pytest.approx(1.0)
    assert learning_rate(99, config) == pytest.approx(0.1, abs=1e-3)
    assert all(learning_rate(s, config) >= learning_rate(s + 1, config) for s in range(10, 99))


def test_bad_config_and_cli_errors():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="num_heads"):
        TrainConfig(num_heads=3)
    with pytest.raises(SystemExit) as error:
        main(["--out", "/tmp/never", "--steps", "-1"])
    assert error.value.code == 2
