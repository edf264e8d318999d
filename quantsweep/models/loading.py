"""Load a causal LM and its tokenizer: ``load_model(name_or_path) -> (model, tokenizer)``.

Three kinds of source are understood:

- ``"toy"``: the small Llama model that ships with quantsweep (``quantsweep.toy``).
- openPangu-Embedded checkpoints (``model_type: PanguEmbedded``), loaded through
  transformers' Llama classes by :mod:`quantsweep.models.openpangu` unless this host is an
  Ascend NPU and the user allows the checkpoint's own code.
- any local Hugging Face causal-LM directory (Llama, GPT-2, Qwen2, ...).

Every load is checked tensor by tensor (:mod:`quantsweep.models.checkpoint`). Nothing is
downloaded: every source is a local directory.

Example:
    >>> model, tokenizer = load_model("toy", device="cpu")
    >>> type(model).__name__
    'LlamaForCausalLM'
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from quantsweep.device import resolve_device, resolve_dtype
from quantsweep.models import openpangu
from quantsweep.models.checkpoint import (
    ModelLoadError,
    check_loading_info,
    find_weight_files,
    read_config,
    resolve_model_path,
)

logger = logging.getLogger(__name__)


def load_model(
    name_or_path: str | Path,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer, in eval mode, on one device.

    Args:
        name_or_path: ``"toy"`` or a local Hugging Face checkpoint directory.
        device: ``auto``, ``cpu``, ``cuda[:N]`` or ``npu[:N]``; see
            :func:`quantsweep.device.resolve_device`. Checked before any weight is read.
        dtype: ``auto`` (fp32 on CPU, bf16 on CUDA and NPU), a dtype name or a torch dtype.
        trust_remote_code: allow Python code shipped inside the checkpoint to run. Needed for
            tokenizers that are custom classes (openPangu's) and, on an Ascend host, lets
            openPangu load through its own modeling code.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on the resolved device.

    Raises:
        ModelLoadError: the path is missing, is not a causal LM, or its weights do not
            match the model exactly (missing, unexpected or mis-shaped tensors).
        quantsweep.device.DeviceUnavailableError: the device is not present on this host.

    Example:
        >>> model, tokenizer = load_model("toy", device="cpu")
        >>> model.training, next(model.parameters()).dtype
        (False, torch.float32)
    """
    if not isinstance(trust_remote_code, bool):
        raise TypeError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    path, config = check_checkpoint(name_or_path, trust_remote_code)

    is_pangu = openpangu.is_openpangu_config(config)
    # The tokenizer is cheap; loading it first means a refused remote-code tokenizer
    # fails in a second, not after minutes of reading a 7B checkpoint.
    # openPangu's config class is remote code; AutoTokenizer gets the mapped LlamaConfig instead.
    llama_config = openpangu.llama_config_from_pangu(config) if is_pangu else None
    tokenizer = load_tokenizer(path, trust_remote_code, config=llama_config)

    logger.info("loading %s on %s as %s", path, resolved_device, resolved_dtype)
    if is_pangu:
        model = openpangu.load_openpangu(path, config, resolved_dtype, trust_remote_code, llama_config)
    else:
        model = _load_hf_causal_lm(path, resolved_dtype, trust_remote_code)
    model = model.to(resolved_device)
    model.eval()
    logger.info(
        "loaded %s (%s, %.1fM parameters) on %s as %s",
        path.name,
        type(model).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
        resolved_device,
        resolved_dtype,
    )
    return model, tokenizer


def check_checkpoint(name_or_path: str | Path, trust_remote_code: bool = False) -> tuple[Path, dict]:
    """Check, without reading any tensor, that a path is a loadable causal LM checkpoint.

    Returns its directory and ``config.json``. A sweep calls this for every model before
    any work starts.

    Raises:
        ModelLoadError: missing path, no config, not a causal LM, or no weight files.

    Example:
        >>> check_checkpoint("toy")[0].name
        'toy'
    """
    path = resolve_model_path(name_or_path)
    config = read_config(path)
    if not openpangu.is_openpangu_config(config):
        check_causal_lm_config(config, path, trust_remote_code)
    find_weight_files(path)  # fail on missing weights before the tokenizer or any tensor is read
    return path, config


def meta_model(name_or_path: str | Path, trust_remote_code: bool = False):
    """The model's module structure on the meta device: shapes only, no weights read, no memory.

    Used to check recipes against a model's layer shapes before any work starts.

    Example:
        >>> meta_model("toy").model.layers[0].mlp.down_proj.weight.device.type
        'meta'
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path, config = check_checkpoint(name_or_path, trust_remote_code)
    if openpangu.is_openpangu_config(config):
        hf_config = openpangu.llama_config_from_pangu(config)
    else:
        hf_config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)


def check_causal_lm_config(config: dict, path: Path, trust_remote_code: bool) -> None:
    """Raise unless ``config`` describes a causal LM that transformers (or its remote code) can build.

    A config counts as a causal LM when one of its ``architectures`` is a causal-LM class
    that transformers knows, or (with no architectures listed) its ``model_type`` has one;
    remote-code models count when their ``auto_map`` names an ``AutoModelForCausalLM``.

    Example:
        >>> check_causal_lm_config({"model_type": "llama"}, Path("x"), False)  # passes: returns None
        >>> bert = {"model_type": "bert", "architectures": ["BertForMaskedLM"]}
        >>> check_causal_lm_config(bert, Path("x"), False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        quantsweep.models.checkpoint.ModelLoadError: x is a BertForMaskedLM (model_type 'bert'), not a causal LM ...
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    architectures = list(config.get("architectures") or [])
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if architectures:
        native = any(name in causal_classes for name in architectures)
    else:
        native = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if native:
        return
    if "AutoModelForCausalLM" in (config.get("auto_map") or {}):
        if trust_remote_code:
            return
        raise ModelLoadError(
            f"{path} is a {_describe_architecture(config)} defined by code shipped in the checkpoint; "
            "pass trust_remote_code=True (CLI: --trust-remote-code) to run that code"
        )
    raise ModelLoadError(
        f"{path} is a {_describe_architecture(config)}, not a causal LM that transformers can load; "
        "quantsweep loads causal LMs (e.g. Llama, Qwen2, GPT-2, openPangu-Embedded)"
    )


def _describe_architecture(config: dict) -> str:
    architectures = ", ".join(config.get("architectures") or []) or "model with no architectures listed"
    return f"{architectures} (model_type {config.get('model_type')!r})"


def load_tokenizer(path: Path, trust_remote_code: bool, config=None):
    """Load the checkpoint's tokenizer, refusing custom tokenizer code unless it is trusted.

    Args:
        path: checkpoint directory.
        trust_remote_code: allow a tokenizer class shipped as Python in the checkpoint.
        config: a transformers config to hand to AutoTokenizer instead of reading
            ``config.json`` (used for openPangu, whose config class is remote code).

    Raises:
        ModelLoadError: the tokenizer is custom code and ``trust_remote_code`` is False, or
            the directory holds no tokenizer transformers can load.

    Example:
        >>> tokenizer = load_tokenizer(resolve_model_path("toy"), trust_remote_code=False)
        >>> len(tokenizer("the cat").input_ids) > 0
        True
    """
    from transformers import AutoTokenizer

    remote_class = remote_tokenizer_class(path)
    if remote_class is not None and not trust_remote_code:
        raise ModelLoadError(
            f"the tokenizer of {path} is a custom class ({remote_class}) shipped as Python code in the "
            "checkpoint, and transformers cannot build it without running that code; pass "
            "trust_remote_code=True (CLI: --trust-remote-code) once you have checked the file"
        )
    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    if config is not None:
        kwargs["config"] = config
    try:
        return AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load the tokenizer of {path}: {error}") from error


def remote_tokenizer_class(path: Path) -> str | None:
    """The custom tokenizer class a checkpoint ships as code (``auto_map``), or None.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> remote_tokenizer_class(folder) is None  # no tokenizer_config.json at all
        True
        >>> auto_map = {"AutoTokenizer": ["tokenization_openpangu.PanguTokenizer", None]}
        >>> _ = (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": auto_map}))
        >>> remote_tokenizer_class(folder)
        'tokenization_openpangu.PanguTokenizer'
    """
    config_file = path / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    try:
        tokenizer_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{config_file} is not valid JSON: {error}") from None
    auto_map = tokenizer_config.get("auto_map")
    if isinstance(auto_map, dict):
        auto_map = auto_map.get("AutoTokenizer")
    if not auto_map:
        return None
    if isinstance(auto_map, str):
        return auto_map
    named = [entry for entry in auto_map if entry]
    return named[-1] if named else None


def _load_hf_causal_lm(path: Path, dtype: torch.dtype, trust_remote_code: bool):
    """Load an ordinary Hugging Face causal LM on CPU and check the load was exact."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        local_files_only=True,
        output_loading_info=True,
        # Shape mismatches are reported by check_loading_info, naming the keys, instead
        # of transformers' own RuntimeError.
        ignore_mismatched_sizes=True,
    )
    check_loading_info(info, str(path))
    return model
