"""Small random Llama models and calibration ids shared by the calibrated-method tests."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 256


def tiny_llama(seed: int = 0, layers: int = 2, hidden: int = 128, intermediate: int = 384) -> LlamaForCausalLM:
    """A random 2-layer Llama with q/k/v/o biases (like openPangu), fp32, eval mode."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attention_bias=True,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random biases: the HF init leaves them at zero
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.02)
    return model


def minmax_asym(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tests' own asymmetric min-max quantizer for one group ``[out, g]``: (scale, zero) per row."""
    lo = values.min(dim=1).values.clamp(max=0)
    hi = values.max(dim=1).values.clamp(min=0)
    scale = ((hi - lo) / (2**bits - 1)).clamp(min=1e-12)
    scale = scale.clamp(2.0**-24, 65504.0).half().float()  # weight scales are stored as float16
    return scale, torch.round(-lo / scale)


def calibration_ids(n_samples: int = 4, seq_len: int = 32, seed: int = 0) -> torch.Tensor:
    """Random token ids ``[n_samples, seq_len]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n_samples, seq_len), generator=generator)


def layer_inputs(model, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Hidden states entering each decoder layer in a plain forward, plus the last layer's output."""
    captured: list[torch.Tensor] = []
    layers = model.model.layers

    def pre_hook(module, args, kwargs):
        captured.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    def post_hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        captured.append(out.detach().clone())

    handles = [layer.register_forward_pre_hook(pre_hook, with_kwargs=True) for layer in layers]
    handles.append(layers[-1].register_forward_hook(post_hook))
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def outlier_llama(kv_heads: int = 2, outlier_scale: float | None = 20.0) -> LlamaForCausalLM:
    """A random 2-layer Llama (hidden 128, biases on q/k/v/o) whose RMSNorm weights carry
    a few outlier channels (x ``outlier_scale``; None for none), as real LLM activations do.
    Used by the AWQ and SmoothQuant tests, whose point is those outliers."""
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
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
                if outlier_scale is not None:
                    parameter[:4] *= outlier_scale
            elif name.endswith("bias"):
                parameter.normal_(0, 0.5)
    return model
