"""Write tiny checkpoints on disk for tests: openPangu-Embedded form, plain Llama, GPT-2.

The openPangu form copies what a real checkpoint holds: a ``PanguEmbedded`` config
(the real 7B shape scaled down), an ``auto_map`` to modeling code that imports
torch_npu at import time (so any attempt to run it off an Ascend host fails, as the
real one does), q/k/v/o biases, and a custom character-level tokenizer shipped as
Python code with an ``auto_map``. Tensor names and shapes are written out here by hand,
independently of transformers, so tests check the loader against a second source.

Other tests may reuse this module: ``sys.path`` must hold ``tests/`` (see
``tests/models/conftest.py``), then ``from helpers.checkpoints import ...``.

Example:
    >>> config, state = write_pangu_checkpoint(tmp_path / "pangu")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# The real openPangu-Embedded-7B config (../shared/reference) scaled down: 4096 -> 64
# hidden, 32 -> 4 heads, 8 -> 2 kv heads (same 4:1 grouping), 12800 -> 160 intermediate,
# 34 -> 2 layers, 153376 -> 100 vocab. rope_theta, eps and the biases are kept.
TINY_PANGU_CONFIG = {
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
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 160,
    "max_position_embeddings": 128,
    "model_type": "PanguEmbedded",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05,
    "rope_theta": 16000000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.53.2",
    "use_cache": True,
    "vocab_size": 100,
}

# Special tokens first (ids 0-3, matching pad/bos/eos above), then printable ASCII:
# 4 + 95 = 99 tokens, inside the vocab of 100.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = [chr(code) for code in range(32, 127)]
VOCAB = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}

# Mirrors the published modeling file: it imports torch_npu first thing.
_NPU_ONLY_MODELING = '''"""Stand-in for openPangu's modeling file, which needs Ascend hardware."""
import torch_npu  # noqa: F401  (fails on every non-Ascend host, as the real file does)
'''

_REMOTE_TOKENIZER = '''"""A tiny character-level tokenizer shipped as remote code, like openPangu's sentencepiece class."""
import json
import os

from transformers import PreTrainedTokenizer


class TinyPanguTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tiny_vocab.json"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                 pad_token="<pad>", **kwargs):
        with open(vocab_file, encoding="utf-8") as handle:
            self.encoder = json.load(handle)
        self.decoder = {index: token for token, index in self.encoder.items()}
        self.vocab_file = vocab_file
        super().__init__(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token,
                         pad_token=pad_token, **kwargs)

    @property
    def vocab_size(self):
        return len(self.encoder)

    def get_vocab(self):
        return dict(self.encoder)

    def _tokenize(self, text, **kwargs):
        return list(text)

    def _convert_token_to_id(self, token):
        return self.encoder.get(token, self.encoder["<unk>"])

    def _convert_id_to_token(self, index):
        return self.decoder.get(index, "<unk>")

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens)

    def save_vocabulary(self, save_directory, filename_prefix=None):
        name = (filename_prefix + "-" if filename_prefix else "") + "tiny_vocab.json"
        path = os.path.join(save_directory, name)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.encoder, handle)
        return (path,)
'''

# Remote modeling code that does run on CPU: used to exercise the Ascend branch of the
# loader (checkpoint's own code) with the NPU probe patched to True.
_CPU_CONFIGURATION = """from transformers import LlamaConfig


class PanguEmbeddedConfig(LlamaConfig):
    model_type = "PanguEmbedded"

    def __post_init__(self, **kwargs):
        self.attention_bias = bool(kwargs.pop("bias", True))
        super().__post_init__(**kwargs)
"""

_CPU_MODELING = """from transformers import LlamaForCausalLM, LlamaModel

from .configuration_openpangu_dense import PanguEmbeddedConfig


class PanguEmbeddedModel(LlamaModel):
    config_class = PanguEmbeddedConfig


class PanguEmbeddedForCausalLM(LlamaForCausalLM):
    config_class = PanguEmbeddedConfig
"""


def tiny_pangu_config(**overrides) -> dict:
    """A copy of :data:`TINY_PANGU_CONFIG` with ``overrides`` applied.

    Example:
        >>> tiny_pangu_config(num_hidden_layers=3)["num_hidden_layers"]
        3
    """
    config = json.loads(json.dumps(TINY_PANGU_CONFIG))
    config.update(overrides)
    return config


def pangu_tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of an openPangu-Embedded checkpoint, written out by hand.

    Example:
        >>> pangu_tensor_shapes(TINY_PANGU_CONFIG)["model.layers.0.self_attn.k_proj.bias"]
        (32,)
    """
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads", heads) * head_dim
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        shapes.update(
            {
                prefix + "input_layernorm.weight": (hidden,),
                prefix + "post_attention_layernorm.weight": (hidden,),
                prefix + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                prefix + "self_attn.q_proj.bias": (heads * head_dim,),
                prefix + "self_attn.k_proj.weight": (kv, hidden),
                prefix + "self_attn.k_proj.bias": (kv,),
                prefix + "self_attn.v_proj.weight": (kv, hidden),
                prefix + "self_attn.v_proj.bias": (kv,),
                prefix + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                prefix + "self_attn.o_proj.bias": (hidden,),
                prefix + "mlp.gate_proj.weight": (inter, hidden),
                prefix + "mlp.up_proj.weight": (inter, hidden),
                prefix + "mlp.down_proj.weight": (hidden, inter),
            }
        )
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0, dtype=torch.float32) -> dict:
    """Random tensors of the given shapes; norms near 1 and weights near 0.02 scale.

    Biases get the same scale as weights (not zero), so a dropped bias changes the logits.

    Example:
        >>> random_state_dict({"w": (2, 3)})["w"].shape
        torch.Size([2, 3])
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        values = torch.randn(shape, generator=generator)
        state[name] = (1.0 + 0.1 * values if "norm" in name else 0.05 * values).to(dtype)
    return state


def write_weights(directory: Path, state: dict, shards: int = 1, fmt: str = "safetensors") -> list[Path]:
    """Save ``state`` as one file or ``shards`` shards with a Hugging Face index.

    Example:
        >>> write_weights(tmp_path, state, shards=2)  # doctest: +SKIP
    """
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"fmt must be 'safetensors' or 'bin', got {fmt!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem, suffix = ("model", ".safetensors") if fmt == "safetensors" else ("pytorch_model", ".bin")
    names = list(state)
    groups = [names[index::shards] for index in range(shards)]
    written = []
    weight_map = {}
    for number, group in enumerate(groups, start=1):
        filename = f"{stem}{suffix}" if shards == 1 else f"{stem}-{number:05d}-of-{shards:05d}{suffix}"
        part = {name: state[name].contiguous() for name in group}
        if fmt == "safetensors":
            save_file(part, str(directory / filename), metadata={"format": "pt"})
        else:
            torch.save(part, directory / filename)
        weight_map.update(dict.fromkeys(group, filename))
        written.append(directory / filename)
    if shards > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": weight_map,
        }
        (directory / f"{stem}{suffix}.index.json").write_text(json.dumps(index, indent=2))
    return written


def write_remote_tokenizer(directory: Path) -> None:
    """Write the custom character-level tokenizer as remote code plus its ``auto_map``.

    Example:
        >>> write_remote_tokenizer(tmp_path)  # doctest: +SKIP
    """
    directory = Path(directory)
    (directory / "tokenization_tiny_pangu.py").write_text(_REMOTE_TOKENIZER)
    (directory / "tiny_vocab.json").write_text(json.dumps(VOCAB))
    tokenizer_config = {
        "tokenizer_class": "TinyPanguTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_tiny_pangu.TinyPanguTokenizer", None]},
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))


def write_fast_tokenizer(directory: Path):
    """Save an ordinary (built-in) character-level fast tokenizer with ``save_pretrained``.

    Example:
        >>> write_fast_tokenizer(tmp_path).encode("ab")  # doctest: +SKIP
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def write_pangu_checkpoint(
    directory: Path,
    config: dict | None = None,
    state: dict | None = None,
    shards: int = 1,
    fmt: str = "safetensors",
    tokenizer: str | None = "remote",
    remote_code: str = "npu-only",
    seed: int = 0,
) -> tuple[dict, dict]:
    """Write a tiny openPangu-Embedded checkpoint; return its ``(config, state_dict)``.

    Args:
        config: config.json dict (default :data:`TINY_PANGU_CONFIG`).
        state: tensors to save (default: random tensors of :func:`pangu_tensor_shapes`).
        shards / fmt: weight layout, see :func:`write_weights`.
        tokenizer: ``"remote"`` (custom class as code), ``"fast"`` (built-in) or None.
        remote_code: ``"npu-only"`` (modeling file imports torch_npu, like the real one)
            or ``"cpu"`` (a modeling file that works here, to exercise the Ascend branch).

    Example:
        >>> config, state = write_pangu_checkpoint(tmp_path / "pangu", shards=2)  # doctest: +SKIP
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_pangu_config() if config is None else config
    state = random_state_dict(pangu_tensor_shapes(config), seed=seed) if state is None else state
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if remote_code == "npu-only":
        (directory / "modeling_openpangu_dense.py").write_text(_NPU_ONLY_MODELING)
        (directory / "configuration_openpangu_dense.py").write_text(_NPU_ONLY_MODELING)
    elif remote_code == "cpu":
        (directory / "modeling_openpangu_dense.py").write_text(_CPU_MODELING)
        (directory / "configuration_openpangu_dense.py").write_text(_CPU_CONFIGURATION)
    else:
        raise ValueError(f"remote_code must be 'npu-only' or 'cpu', got {remote_code!r}")
    write_weights(directory, state, shards=shards, fmt=fmt)
    if tokenizer == "remote":
        write_remote_tokenizer(directory)
    elif tokenizer == "fast":
        write_fast_tokenizer(directory)
    elif tokenizer is not None:
        raise ValueError(f"tokenizer must be 'remote', 'fast' or None, got {tokenizer!r}")
    return config, state


def write_hf_model(directory: Path, kind: str = "llama", seed: int = 0):
    """Save a tiny random Llama or GPT-2 with ``save_pretrained`` plus a fast tokenizer.

    Example:
        >>> model = write_hf_model(tmp_path / "gpt2", kind="gpt2")  # doctest: +SKIP
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    special = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=100,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                **special,
            )
        )
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, **special))
    else:
        raise ValueError(f"kind must be 'llama' or 'gpt2', got {kind!r}")
    model.eval()
    model.save_pretrained(str(directory))
    write_fast_tokenizer(directory)
    return model


__all__ = [
    "TINY_PANGU_CONFIG",
    "VOCAB",
    "pangu_llama_config",
    "pangu_shaped_llama",
    "pangu_tensor_shapes",
    "random_state_dict",
    "tiny_pangu_config",
    "write_fast_tokenizer",
    "write_hf_model",
    "write_pangu_checkpoint",
    "write_remote_tokenizer",
    "write_weights",
]


def pangu_llama_config(pangu: dict, **overrides):
    """The ``LlamaConfig`` of an openPangu-Embedded ``config.json`` (q/k/v/o biases, no MLP bias), written by hand.

    The tests' own reading of the format, independent of quantsweep's loader; ``overrides``
    replace any field.
    """
    from transformers import LlamaConfig

    fields = {
        "vocab_size": pangu["vocab_size"],
        "hidden_size": pangu["hidden_size"],
        "intermediate_size": pangu["intermediate_size"],
        "num_hidden_layers": pangu["num_hidden_layers"],
        "num_attention_heads": pangu["num_attention_heads"],
        "num_key_value_heads": pangu["num_key_value_heads"],
        "rms_norm_eps": pangu["rms_norm_eps"],
        "max_position_embeddings": pangu["max_position_embeddings"],
        "rope_parameters": {"rope_type": "default", "rope_theta": pangu["rope_theta"]},
        "tie_word_embeddings": pangu["tie_word_embeddings"],
        "attention_bias": pangu["bias"],
        "mlp_bias": False,
    }
    return LlamaConfig(**{**fields, **overrides})


def pangu_shaped_llama(tokenizer, *, bias_std: float, initializer_range: float | None = None, seed: int = 0):
    """A random Llama in the tiny openPangu-Embedded shape (q/k/v/o biases, 4 heads over 2 KV heads) on ``tokenizer``.

    The biases (zero at initialisation) are drawn with ``bias_std`` so that they matter;
    ``initializer_range`` widens the weights (None: the Hugging Face default).
    """
    from transformers import LlamaForCausalLM

    extra = {} if initializer_range is None else {"initializer_range": initializer_range}
    config = pangu_llama_config(
        TINY_PANGU_CONFIG,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, bias_std)
    return model
