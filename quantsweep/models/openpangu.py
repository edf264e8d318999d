"""openPangu-Embedded checkpoints, loaded through transformers' Llama classes.

openPangu-Embedded (1B, 7B) is a Llama-shaped decoder: the same layer names, RMSNorm,
SwiGLU MLP and RoPE, with a bias on the q/k/v/o projections (``"bias": true``) and none
in the MLP. Its published modeling code imports torch_npu at import time, so it fails on
every non-Ascend host; this module maps the ``PanguEmbedded`` config onto a
``LlamaConfig(attention_bias=True, mlp_bias=False)`` and fills a ``LlamaForCausalLM``
with the checkpoint's tensors, checking that every tensor is used and every parameter
filled. On an Ascend host, with ``trust_remote_code=True``, the checkpoint's own code is
used instead.

Example:
    >>> from quantsweep.models.openpangu import llama_config_from_pangu
    >>> config = llama_config_from_pangu({"model_type": "PanguEmbedded", "hidden_size": 64,
    ...     "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
    ...     "num_key_value_heads": 2, "vocab_size": 100, "bias": True})
    >>> config.attention_bias, config.mlp_bias
    (True, False)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from quantsweep.device import is_npu_available
from quantsweep.models.checkpoint import (
    ModelLoadError,
    check_loading_info,
    check_tensors_match,
    iter_checkpoint_tensors,
)

logger = logging.getLogger(__name__)

PANGU_MODEL_TYPE = "PanguEmbedded"
PANGU_ARCHITECTURE = "PanguEmbeddedForCausalLM"

# PanguEmbedded config keys copied unchanged onto LlamaConfig. "bias" and "rope_theta"
# are translated separately (attention_bias, rope_parameters).
_REQUIRED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_OPTIONAL_FIELDS = (
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "initializer_range",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "attention_dropout",
    "use_cache",
)
# Keys that describe the checkpoint, not the network; they need no mapping.
_DESCRIPTIVE_FIELDS = (
    "architectures",
    "auto_map",
    "model_type",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "bias",
    "rope_theta",
    "rope_scaling",
    "_name_or_path",
)
_DEFAULT_ROPE_THETA = 10000.0


def is_openpangu_config(config: dict) -> bool:
    """Whether a ``config.json`` dict describes an openPangu-Embedded checkpoint.

    Example:
        >>> is_openpangu_config({"model_type": "PanguEmbedded"})
        True
        >>> is_openpangu_config({"model_type": "llama"})
        False
    """
    return config.get("model_type") == PANGU_MODEL_TYPE or PANGU_ARCHITECTURE in (config.get("architectures") or [])


def llama_config_from_pangu(config: dict):
    """Translate a PanguEmbedded ``config.json`` dict into an equivalent ``LlamaConfig``.

    q/k/v/o get biases (``attention_bias`` from the config's ``bias``, true for every
    published checkpoint); the MLP has none. ``rope_theta`` (and ``rope_scaling``, if
    present) become transformers' ``rope_parameters``.

    Raises:
        ModelLoadError: a field the network shape depends on is missing.

    Example:
        >>> config = llama_config_from_pangu({"model_type": "PanguEmbedded", "hidden_size": 4096,
        ...     "intermediate_size": 12800, "num_hidden_layers": 34, "num_attention_heads": 32,
        ...     "num_key_value_heads": 8, "vocab_size": 153376, "bias": True, "rope_theta": 16000000.0})
        >>> config.num_key_value_heads, config.attention_bias, config.rope_parameters["rope_theta"]
        (8, True, 16000000.0)
    """
    from transformers import LlamaConfig

    missing = [field for field in _REQUIRED_FIELDS if field not in config]
    if missing:
        raise ModelLoadError(f"the PanguEmbedded config lacks {', '.join(missing)}, so the model shape is unknown")
    unmapped = sorted(set(config) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS) - set(_DESCRIPTIVE_FIELDS))
    if unmapped:
        # Not an error: the published configs have none, and an unknown key usually
        # describes rather than changes the network; the tensor check still guards shapes.
        logger.warning("PanguEmbedded config keys not mapped onto Llama (ignored): %s", ", ".join(unmapped))
    rope_parameters = {"rope_type": "default", "rope_theta": float(config.get("rope_theta", _DEFAULT_ROPE_THETA))}
    rope_scaling = config.get("rope_scaling")
    if rope_scaling:
        rope_parameters.update({("rope_type" if key == "type" else key): value for key, value in rope_scaling.items()})
    fields = {field: config[field] for field in _REQUIRED_FIELDS + _OPTIONAL_FIELDS if field in config}
    return LlamaConfig(
        **fields,
        attention_bias=bool(config.get("bias", True)),
        mlp_bias=False,
        rope_parameters=rope_parameters,
        architectures=["LlamaForCausalLM"],
    )


def load_openpangu(path: Path, config: dict, dtype: torch.dtype, trust_remote_code: bool, llama_config=None):
    """Load an openPangu-Embedded checkpoint on CPU in ``dtype``, with every tensor accounted for.

    With ``trust_remote_code=True`` on an Ascend host the checkpoint's own modeling code is
    used; everywhere else the weights go into a ``LlamaForCausalLM`` (see module docstring),
    built from ``llama_config`` (default: :func:`llama_config_from_pangu` of ``config``).

    Raises:
        ModelLoadError: a tensor is missing, unexpected or mis-shaped.

    Example:
        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> from transformers import LlamaForCausalLM
        >>> config = {"model_type": "PanguEmbedded", "hidden_size": 64, "intermediate_size": 160,
        ...     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        ...     "vocab_size": 100, "bias": True, "tie_word_embeddings": False}
        >>> llama_config = llama_config_from_pangu(config)
        >>> folder = Path(tempfile.mkdtemp())  # a tiny openPangu-shaped checkpoint
        >>> save_file(LlamaForCausalLM(llama_config).state_dict(), str(folder / "model.safetensors"))
        >>> model = load_openpangu(folder, config, torch.float32, trust_remote_code=False)
        >>> type(model).__name__, model.model.layers[0].self_attn.q_proj.bias is not None
        ('LlamaForCausalLM', True)
    """
    has_code = "AutoModelForCausalLM" in (config.get("auto_map") or {})
    if trust_remote_code and has_code and is_npu_available():
        logger.info("loading %s with its own modeling code (Ascend NPU present, trust_remote_code=True)", path)
        return _load_with_remote_code(path, dtype)
    if not trust_remote_code:
        reason = "trust_remote_code is False"
    elif not has_code:
        reason = "its config.json names no AutoModelForCausalLM code"
    else:
        reason = "its modeling code imports torch_npu, and no Ascend NPU is available here"
    logger.info("loading openPangu-Embedded %s through transformers' Llama classes (%s)", path, reason)
    return load_as_llama(path, llama_config or llama_config_from_pangu(config), dtype)


def _load_with_remote_code(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=dtype,
        trust_remote_code=True,
        local_files_only=True,
        output_loading_info=True,
        ignore_mismatched_sizes=True,
    )
    check_loading_info(info, str(path))
    return model


def load_as_llama(path: Path, llama_config, dtype: torch.dtype):
    """Fill a ``LlamaForCausalLM(llama_config)`` with a checkpoint's tensors, exactly.

    Every checkpoint tensor must be a parameter of the model with the same shape, and
    every parameter must come from the checkpoint; only ``lm_head.weight`` may be absent,
    when the embeddings are tied.

    Raises:
        ModelLoadError: naming the missing, unexpected or mis-shaped keys.

    Example:
        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> from transformers import LlamaForCausalLM
        >>> config = {"model_type": "PanguEmbedded", "hidden_size": 64, "intermediate_size": 160,
        ...     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        ...     "vocab_size": 100, "bias": True, "tie_word_embeddings": False}
        >>> llama_config = llama_config_from_pangu(config)
        >>> folder = Path(tempfile.mkdtemp())  # a tiny openPangu-shaped checkpoint
        >>> save_file(LlamaForCausalLM(llama_config).state_dict(), str(folder / "model.safetensors"))
        >>> model = load_as_llama(folder, llama_config, torch.float32)
        >>> model.model.layers[0].mlp.up_proj.bias is None
        True
    """
    from transformers import LlamaForCausalLM

    # A skeleton on the meta device costs no memory and gives the exact names and shapes.
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(llama_config)
    expected = {name: tensor.shape for name, tensor in skeleton.state_dict().items()}
    del skeleton
    tied = bool(llama_config.tie_word_embeddings)

    state = dict(iter_checkpoint_tensors(path, dtype))
    check_tensors_match(
        expected,
        {name: tensor.shape for name, tensor in state.items()},
        str(path),
        optional=("lm_head.weight",) if tied else (),
    )
    if tied and "lm_head.weight" in state:
        # A tied head stored anyway must equal the embeddings, or dropping it loses weights.
        if not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
            raise ModelLoadError(
                f"{path}: tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight"
            )
        del state["lm_head.weight"]
    model, info = LlamaForCausalLM.from_pretrained(
        None, config=llama_config, state_dict=state, dtype=dtype, output_loading_info=True
    )
    check_loading_info(info, str(path))
    return model
