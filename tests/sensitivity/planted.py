"""Models with one planted fragile layer, and the tests' own perplexity and mixed-precision reference.

A fragile layer is planted without changing what the model computes: one input channel of
the layer's q/k/v and gate/up projections is scaled up by ``scale`` and the RMSNorm scale
that feeds it down by the same factor. The full-precision model is the same function, but
every row of those weights now holds one outlier ``scale`` times its neighbours, so a
min-max quantizer's step grows ``scale``-fold in that layer and rounds the other weights away.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from helpers.checkpoints import VOCAB, write_fast_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM


def plant_fragile_layer(model, layer: int, *, channel: int = 5, scale: float = 64.0) -> None:
    """Make decoder layer ``layer`` of a Llama-style model fragile under quantization, keeping its function."""
    block = model.model.layers[layer]
    with torch.no_grad():
        for norm, linears in (
            (block.input_layernorm, (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj)),
            (block.post_attention_layernorm, (block.mlp.gate_proj, block.mlp.up_proj)),
        ):
            norm.weight[channel] /= scale
            for linear in linears:
                linear.weight[:, channel] *= scale


def random_llama(layers: int = 8, seed: int = 0) -> LlamaForCausalLM:
    """A random Llama over the character vocabulary of ``helpers.checkpoints`` (hidden 128, groups of 128 fit)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(VOCAB) + 1,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.08,  # logits far from uniform, so that quantization errors show in the KL
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def amplify_layer(model, layer: int, factor: float) -> None:
    """Scale what decoder layer ``layer`` writes into the residual stream (o_proj, down_proj) by ``factor``:
    its contribution, and so its quantization error, outweighs the other layers'."""
    block = model.model.layers[layer]
    with torch.no_grad():
        block.self_attn.o_proj.weight.mul_(factor)
        block.mlp.down_proj.weight.mul_(factor)


def write_planted_llama(
    directory: Path, *, layers: int = 8, fragile: int = 5, scale: float = 64.0, amplify: float = 1.0, seed: int = 0
):
    """Save :func:`random_llama` with a planted fragile layer and a character tokenizer; return the model."""
    model = random_llama(layers, seed)
    plant_fragile_layer(model, fragile, scale=scale)
    amplify_layer(model, fragile, amplify)
    model.save_pretrained(str(directory))
    write_fast_tokenizer(directory)
    return model


@torch.no_grad()
def perplexity(model, ids: torch.Tensor) -> float:
    """exp of the mean next-token negative log-likelihood of ``ids`` ``[n, L]`` (the test's own reference)."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].double()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return math.exp(float(nll))


@torch.no_grad()
def sample_text(model, n: int = 16, length: int = 64, seed: int = 1) -> torch.Tensor:
    """``n`` sequences sampled from ``model`` itself: text on which the fp model is the best predictor."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, len(VOCAB), (n, 1), generator=generator)
    for _ in range(length - 1):
        probs = torch.softmax(model(input_ids=ids, use_cache=False).logits[:, -1].double(), dim=-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return ids


@torch.no_grad()
def apply_mixed_by_hand(model, snapshot, low, high, promoted) -> None:
    """The tests' reference for a mixed recipe: quantize all with ``low`` and with ``high``, take ``high``'s
    parameters under the promoted module paths and ``low``'s elsewhere."""
    from quantsweep.recipes import apply_recipe

    states = []
    for config in (low, high):
        snapshot.restore(model)
        apply_recipe(model, config)
        states.append({name: tensor.clone() for name, tensor in model.state_dict().items()})
    snapshot.restore(model)
    for name, tensor in model.state_dict().items():
        chosen = states[1] if any(name.startswith(unit + ".") for unit in promoted) else states[0]
        tensor.copy_(chosen[name])
