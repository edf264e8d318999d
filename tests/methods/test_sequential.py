"""The sequential engine reproduces a plain forward and propagates quantized outputs."""

from __future__ import annotations

import pytest
import torch
from tiny_llama import calibration_ids, layer_inputs, tiny_llama

from quantsweep.methods.engine.sequential import LayerReport, capture_layer_inputs, run_sequential
from quantsweep.quant import fake_quantize


def _recording_quantizer(store, change=None):
    def quantizer(ctx):
        store.append(torch.cat([x.clone() for x in ctx.inputs]))
        if change is not None:
            change(ctx)
        return {"seen": ctx.index}

    return quantizer


def test_identity_quantizer_reproduces_plain_forward():
    model = tiny_llama()
    ids = calibration_ids(n_samples=5, seq_len=24)
    expected = layer_inputs(model, ids)
    seen: list[torch.Tensor] = []
    final: list[torch.Tensor] = []
    model.model.layers[-1].register_forward_hook(lambda m, a, out: final.append(out.detach()))
    reports = run_sequential(model, ids, "cpu", _recording_quantizer(seen), batch_size=2)
    assert [r.index for r in reports] == [0, 1]
    assert all(isinstance(r, LayerReport) and r.seconds > 0 for r in reports)
    assert [r.info["seen"] for r in reports] == [0, 1]
    assert reports[0].name == "model.layers.0"
    assert reports[0].peak_device_bytes is None  # CPU has no allocator counter
    for got, want in zip(seen, expected[:2]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The engine's last recompute (batches 2, 2, 1) is the last layer's output.
    torch.testing.assert_close(torch.cat(final[-3:]), expected[-1], rtol=1e-5, atol=1e-5)


def test_next_layer_sees_quantized_outputs():
    model = tiny_llama(seed=1)
    ids = calibration_ids(n_samples=3, seq_len=16, seed=1)

    def quantize_layer(ctx):
        for linear in ctx.linears().values():
            linear.weight.data = fake_quantize(linear.weight.data, 2, 32, False)

    seen: list[torch.Tensor] = []
    run_sequential(model, ids, "cpu", _recording_quantizer(seen, quantize_layer))
    # Every layer is quantized now, so a plain forward gives the stream the engine carried.
    expected = layer_inputs(model, ids)
    torch.testing.assert_close(seen[1], expected[1], rtol=1e-5, atol=1e-5)
    fp_expected = layer_inputs(tiny_llama(seed=1), ids)
    assert not torch.allclose(seen[1], fp_expected[1], atol=1e-3)


def test_propagate_fp_carries_full_precision_stream():
    model = tiny_llama(seed=2)
    ids = calibration_ids(n_samples=2, seq_len=16, seed=2)
    fp_expected = layer_inputs(tiny_llama(seed=2), ids)
    fp_seen, pairs = [], []

    def quantizer(ctx):
        fp_seen.append(torch.cat(ctx.fp_inputs))
        q_proj = ctx.linears()["self_attn.q_proj"]

        def observe(name, x, x_fp):
            pairs.append((ctx.index, name, x.shape, x_fp.shape, torch.equal(x, x_fp)))

        ctx.capture_inputs({"self_attn.q_proj": q_proj}, observe, with_fp=True)
        for linear in ctx.linears().values():
            linear.weight.data = fake_quantize(linear.weight.data, 2, 32, False)

    run_sequential(model, ids, "cpu", quantizer, propagate_fp=True)
    for got, want in zip(fp_seen, fp_expected[:2]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert [p[:2] for p in pairs] == [(0, "self_attn.q_proj")] * 2 + [(1, "self_attn.q_proj")] * 2
    assert pairs[0][2] == (16, 128) and pairs[0][3] == (16, 128)
    assert pairs[0][4] is True  # layer 0: both streams are the same embeddings
    assert pairs[-1][4] is False  # layer 1: the quantized stream has drifted


def test_capture_inputs_with_fp_needs_propagate_fp():
    model = tiny_llama()

    def quantizer(ctx):
        ctx.capture_inputs(ctx.linears(), lambda *a: None, with_fp=True)

    with pytest.raises(ValueError, match="propagate_fp=True"):
        run_sequential(model, calibration_ids(2, 8), "cpu", quantizer)


def test_capture_restores_layer_zero_and_records_kwargs():
    model = tiny_llama()
    layer0 = model.model.layers[0]
    hidden, kwargs = capture_layer_inputs(model, calibration_ids(3, 8), "cpu", batch_size=2)
    assert model.model.layers[0] is layer0
    assert [h.shape[0] for h in hidden] == [2, 1]
    assert "position_embeddings" in kwargs[0]
    cos, sin = kwargs[0]["position_embeddings"]
    assert cos.shape[-2] == 8


def test_bad_calibration_and_batch_size():
    model = tiny_llama()
    with pytest.raises(TypeError, match="LongTensor"):
        run_sequential(model, torch.zeros(8, dtype=torch.long), "cpu", lambda ctx: None)
    with pytest.raises(ValueError, match="batch_size"):
        run_sequential(model, calibration_ids(2, 8), "cpu", lambda ctx: None, batch_size=0)


def test_linear_groups_follow_shared_inputs():
    model = tiny_llama()
    found = []
    run_sequential(
        model, calibration_ids(2, 8), "cpu", lambda ctx: found.append([sorted(g) for g in ctx.linear_groups()])
    )
    assert found[0] == [
        ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]


def test_require_calibration_says_how_to_supply_it():
    from quantsweep.methods.engine.sequential import require_calibration
    from quantsweep.methods.registry import RecipeConfig

    config = RecipeConfig(name="w4-x", method="x")
    with pytest.raises(ValueError, match="needs calibration data.*--calib-source"):
        require_calibration(None, config)
    with pytest.raises(TypeError, match="LongTensor"):
        require_calibration(torch.zeros(2, 3), config)
    ids = calibration_ids(1, 4)
    assert require_calibration(ids, config) is ids


def test_engine_handles_layers_called_with_positional_arguments():
    # GPT-2 blocks receive the cache and mask positionally; the engine must replay them.
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 100, (3, 16))
    seen: list[torch.Tensor] = []
    run_sequential(model, ids, "cpu", _recording_quantizer(seen))
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    for got, want in zip(seen, hidden[:2]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
