"""Rotation (QuaRot-style): function-preserving in fp32 on every architecture quantsweep serves,
undone exactly by WeightSnapshot.restore, learned matrices from files, and refusals before any change."""

import pytest
import torch
from helpers.checkpoints import pangu_tensor_shapes, random_state_dict, tiny_pangu_config, write_pangu_checkpoint
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import quantsweep
from quantsweep.methods.activation import attach_activation_quant
from quantsweep.methods.rotation import check_rotatable, rotate_model
from quantsweep.models.snapshot import WeightSnapshot
from quantsweep.quant.hadamard import hadamard_matrix

TOLERANCE = 1e-4  # the bound on |rotated - original| logits in fp32


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def llama(hidden=128, heads=4, kv_heads=2, intermediate=384, tied=False, vocab=96, layers=2, seed=0):
    """A random Llama with q/k/v/o biases and non-trivial norm scales (else folding is not tested)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        attention_bias=True,
        tie_word_embeddings=tied,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                parameter.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def pangu_dir(tmp_path_factory):
    """A 2-layer openPangu-Embedded checkpoint (7B shape scaled down: GQA 4:2, q/k/v/o biases)."""
    directory = tmp_path_factory.mktemp("pangu")
    write_pangu_checkpoint(directory)
    return directory


def assert_rotation_preserves_and_restores(model, ids, **rotate_kwargs):
    reference = logits(model, ids)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    snapshot = WeightSnapshot(model)
    info = rotate_model(model, **rotate_kwargs)
    rotated = logits(model, ids)
    assert float((rotated - reference).abs().max()) < TOLERANCE
    # The rotation really changed the weights (a no-op would also pass the line above).
    assert not torch.allclose(model.get_input_embeddings().weight, state["model.embed_tokens.weight"], atol=1e-3)
    snapshot.restore(model)
    assert torch.equal(logits(model, ids), reference)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    return info


def test_toy_rotation_preserves_logits_and_restores_exactly():
    model, _ = quantsweep.load_model("toy")
    ids = torch.randint(4, 123, (2, 40), generator=torch.Generator().manual_seed(0))
    info = assert_rotation_preserves_and_restores(model, ids, seed=0)
    assert (info.hidden_size, info.online, info.source, info.extra_parameters, info.untied) == (
        128,
        ("down_proj",),
        "hadamard",
        0,
        False,
    )
    assert not any(module._forward_pre_hooks for module in model.modules())  # restore removed the online hooks


def test_toy_rotation_with_online_o_proj_and_no_online():
    model, _ = quantsweep.load_model("toy")
    ids = torch.randint(4, 123, (1, 32), generator=torch.Generator().manual_seed(1))
    assert_rotation_preserves_and_restores(model, ids, seed=3, online=["down_proj", "o_proj"])
    assert_rotation_preserves_and_restores(model, ids, seed=3, online=[])


def test_openpangu_shaped_model(pangu_dir):
    model, _ = quantsweep.load_model(pangu_dir, device="cpu", trust_remote_code=True)
    attention = model.model.layers[0].self_attn
    assert attention.o_proj.bias is not None and attention.k_proj.out_features < attention.q_proj.out_features
    ids = torch.randint(4, 100, (2, 48), generator=torch.Generator().manual_seed(0))
    bias_before = attention.q_proj.bias.clone()
    reference = logits(model, ids)
    rotate_model(model, seed=0, online=["down_proj", "o_proj"])
    assert torch.equal(attention.q_proj.bias, bias_before)  # input rotation leaves q/k/v biases alone
    assert float((logits(model, ids) - reference).abs().max()) < TOLERANCE


def test_o_proj_bias_is_rotated():
    """The written residual is y Q, so o_proj's bias becomes b Q (checked against Q built here)."""
    model = llama(layers=1)
    bias = model.model.layers[0].self_attn.o_proj.bias.detach().clone().double()
    rotate_model(model, seed=5, online=[])
    signs = torch.randint(0, 2, (128,), generator=torch.Generator().manual_seed(5)).double() * 2 - 1
    q = signs[:, None] * hadamard_matrix(128) / 128**0.5
    torch.testing.assert_close(model.model.layers[0].self_attn.o_proj.bias.double(), bias @ q, rtol=0, atol=1e-6)


def test_tied_embeddings_are_untied_and_retied_by_restore():
    model = llama(tied=True)
    embedding = model.model.embed_tokens.weight
    assert model.lm_head.weight is embedding
    ids = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(0))
    reference = logits(model, ids)
    snapshot = WeightSnapshot(model)
    info = rotate_model(model, seed=0)
    assert info.untied and model.lm_head.weight is not embedding and not model.config.tie_word_embeddings
    model.tie_weights()  # lm-eval's HFLM calls this; it must not tie the rotated model back
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert float((logits(model, ids) - reference).abs().max()) < TOLERANCE
    snapshot.restore(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.config.tie_word_embeddings
    assert torch.equal(logits(model, ids), reference)


def test_width_576_uses_a_kronecker_hadamard():
    # SmolLM-135M's shape: hidden 576 = 9 x 64 (Hadamard 36 x 16), intermediate 1536 = 12 x 128, 9 heads, 3 KV heads.
    model = llama(hidden=576, heads=9, kv_heads=3, intermediate=1536, layers=1)
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    info = assert_rotation_preserves_and_restores(model, ids, seed=0, online=["down_proj", "o_proj"])
    assert info.hidden_size == 576


def test_learned_matrix_from_a_file_on_a_width_without_hadamard(tmp_path):
    model = llama(hidden=100, heads=5, kv_heads=1, intermediate=160, layers=1)
    with pytest.raises(ValueError, match="100-wide residual stream with a Hadamard"):
        rotate_model(model)
    q = torch.linalg.qr(torch.randn(100, 100, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    save_file({"R1": q.float().contiguous()}, str(tmp_path / "r1.safetensors"))
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    info = assert_rotation_preserves_and_restores(model, ids, matrix=tmp_path / "r1.safetensors")
    assert info.extra_parameters == 100 * 100 and info.source.endswith("r1.safetensors")


@pytest.mark.parametrize(
    "content, message",
    [
        (torch.randn(128, 128), "not orthogonal"),
        (torch.eye(64), r"shape \(64, 64\); the model needs \(128, 128\)"),
        ({"a": torch.eye(128), "b": torch.eye(128)}, "expected one tensor or a key 'R1'"),
    ],
)
def test_bad_learned_matrices_are_refused_before_any_change(tmp_path, content, message):
    model = llama(layers=1)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    torch.save(content, tmp_path / "r.pt")
    with pytest.raises(ValueError, match=message):
        rotate_model(model, matrix=tmp_path / "r.pt")
    with pytest.raises(ValueError, match="not found"):
        rotate_model(model, matrix=tmp_path / "missing.pt")
    assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize("name", ["r.safetensors", "r.pt"])
def test_a_corrupt_matrix_file_is_a_value_error_naming_it(tmp_path, name):
    (tmp_path / name).write_bytes(b"\xff" * 64)  # neither a safetensors header nor a pickle
    with pytest.raises(ValueError, match=rf"cannot read rotation matrix file .*{name}"):
        rotate_model(llama(layers=1), matrix=tmp_path / name)


def test_layernorm_and_non_llama_layouts_are_refused_naming_the_module():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.input_layernorm"):
        rotate_model(gpt2)
    model = llama(layers=2)
    model.model.layers[1].post_attention_layernorm = torch.nn.LayerNorm(128)  # has a bias
    state = {name: tensor.clone() for name, tensor in model.state_dict().items() if "layers.1.post" not in name}
    with pytest.raises(ValueError, match=r"model\.layers\.1\.post_attention_layernorm is a LayerNorm"):
        check_rotatable(model)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.post_attention_layernorm is a LayerNorm"):
        rotate_model(model)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())  # layer 0 untouched


def test_gemma_style_norm_is_refused():
    model = llama(layers=1)

    class OnePlusRMSNorm(torch.nn.Module):  # Gemma's (1 + weight) scale cannot be folded as it is
        def __init__(self, hidden):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(hidden))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)

    model.model.norm = OnePlusRMSNorm(128)
    with pytest.raises(ValueError, match=r"model\.norm .*does not compute x / rms\(x\) \* weight"):
        rotate_model(model)


def test_bad_arguments_and_hooked_models_are_refused():
    model = llama(layers=1)
    with pytest.raises(ValueError, match=r"unknown online Hadamard target 'up_proj' .*; allowed: down_proj, o_proj"):
        rotate_model(model, online=["up_proj"])
    with pytest.raises(TypeError, match="list of Linear names"):
        rotate_model(model, online="down_proj")
    attach_activation_quant(model.model.layers[0].mlp.up_proj, bits=4)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj already carries quantsweep hooks"):
        rotate_model(model)


def test_activation_quantizer_attached_after_rotation_sees_the_hadamard_input():
    model = llama(layers=1)
    rotate_model(model, seed=0)
    down = model.model.layers[0].mlp.down_proj
    seen = []
    down.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x = torch.randn(3, 384, dtype=torch.float64).float()
    down(x)
    torch.testing.assert_close(seen[0], (x.double() @ hadamard_matrix(384) / 384**0.5).float())


@pytest.mark.parametrize("tied", [False, True])
def test_openpangu_random_state_with_tied_embeddings(tmp_path, tied):
    config = tiny_pangu_config(tie_word_embeddings=tied)
    write_pangu_checkpoint(tmp_path / "p", config=config, state=random_state_dict(pangu_tensor_shapes(config), seed=1))
    model, _ = quantsweep.load_model(tmp_path / "p", device="cpu", trust_remote_code=True)
    ids = torch.randint(4, 100, (1, 32), generator=torch.Generator().manual_seed(0))
    info = assert_rotation_preserves_and_restores(model, ids, seed=2)
    assert info.untied is tied


def test_online_hadamard_on_a_width_without_one_is_refused():
    model = llama(layers=1, intermediate=100)  # 100: no Hadamard matrix is known here
    with pytest.raises(ValueError, match=r"online Hadamard on model\.layers\.0\.mlp\.down_proj: .*order 100"):
        rotate_model(model)
    info = rotate_model(model, online=[])  # without the online transform the residual rotation works
    assert info.online == ()
