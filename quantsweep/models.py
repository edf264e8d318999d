"""Load a causal LM and its tokenizer: ``load_model(name_or_path) -> (model, tokenizer)``.

Three kinds of source are understood:

- ``"toy"``: the small Llama model that ships with quantsweep (``quantsweep.toy``).
- openPangu-Embedded checkpoints (``model_type: PanguEmbedded``), loaded through
  transformers' Llama classes by :mod:`quantsweep.openpangu` unless this host is an
  Ascend NPU and the user allows the checkpoint's own code.
- any local Hugging Face causal-LM directory (Llama, GPT-2, Qwen2, ...).

Every load is checked: a tensor the model does not use, a parameter the checkpoint
does not fill, or a shape that disagrees is a :class:`ModelLoadError` naming the
keys. A model with silently random weights is never returned. Nothing is downloaded:
every source is a local directory.

Example:
    >>> import quantsweep
    >>> model, tokenizer = quantsweep.load_model("toy", device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from quantsweep.device import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

TOY_MODEL_ID = "toy"

# Single-file and sharded weight layouts, in the order Hugging Face prefers them.
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
_WEIGHT_LAYOUTS = (SAFETENSORS_INDEX, SAFETENSORS_FILE, PYTORCH_INDEX, PYTORCH_FILE)

# How many key names an error message lists before it just gives the count.
_KEYS_SHOWN = 5


class ModelLoadError(ValueError):
    """A model cannot be loaded as asked: bad path, wrong kind of model, or weights that do not fit.

    Example:
        >>> raise ModelLoadError("no config.json in /tmp/x")  # doctest: +SKIP
    """


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
        >>> model, tokenizer = load_model("toy", device="cpu")  # doctest: +SKIP
        >>> model.training  # doctest: +SKIP
        False
    """
    if not isinstance(trust_remote_code, bool):
        raise TypeError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    path, config = check_checkpoint(name_or_path, trust_remote_code)

    from quantsweep import openpangu  # local import: openpangu builds on this module

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
    from quantsweep import openpangu  # local import: openpangu builds on this module

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

    from quantsweep import openpangu

    path, config = check_checkpoint(name_or_path, trust_remote_code)
    if openpangu.is_openpangu_config(config):
        hf_config = openpangu.llama_config_from_pangu(config)
    else:
        hf_config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Turn ``"toy"`` or a path into an existing checkpoint directory.

    Raises:
        ModelLoadError: the path does not exist, is not a directory, or has no config.json.

    Example:
        >>> resolve_model_path("/no/such/dir")  # doctest: +SKIP
        ModelLoadError: model path /no/such/dir does not exist ...
    """
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"name_or_path must be a string or Path, got {type(name_or_path).__name__}")
    if str(name_or_path) == TOY_MODEL_ID:
        from quantsweep.toy import toy_model_dir  # imported lazily: builds the toy assets on demand

        try:
            path = Path(toy_model_dir() if callable(toy_model_dir) else toy_model_dir)
        except FileNotFoundError as error:  # assets not built: a clear user-facing error
            raise ModelLoadError(str(error)) from None
    else:
        path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"model path {path} does not exist; pass 'toy' or a local Hugging Face checkpoint "
            "directory (nothing is downloaded at run time)"
        )
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is a file; pass the checkpoint directory that holds config.json")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json, so it is not a Hugging Face checkpoint directory")
    return path


def read_config(path: Path) -> dict:
    """The checkpoint's ``config.json`` as a dict, read without running any remote code.

    Example:
        >>> read_config(Path("ckpt"))["model_type"]  # doctest: +SKIP
        'llama'
    """
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path / 'config.json'} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path / 'config.json'} must hold a JSON object, got {type(config).__name__}")
    return config


def check_causal_lm_config(config: dict, path: Path, trust_remote_code: bool) -> None:
    """Raise unless ``config`` describes a causal LM that transformers (or its remote code) can build.

    A config counts as a causal LM when one of its ``architectures`` is a causal-LM class
    that transformers knows, or (with no architectures listed) its ``model_type`` has one;
    remote-code models count when their ``auto_map`` names an ``AutoModelForCausalLM``.

    Example:
        >>> check_causal_lm_config({"model_type": "bert", "architectures": ["BertForMaskedLM"]},
        ...                        Path("x"), False)  # doctest: +SKIP
        ModelLoadError: x is a BertForMaskedLM (model_type 'bert'), not a causal LM ...
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


def find_weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint: one file, or every shard named by an index.

    Raises:
        ModelLoadError: no weights file, or a shard the index names is missing.

    Example:
        >>> find_weight_files(Path("ckpt"))  # doctest: +SKIP
        [PosixPath('ckpt/model.safetensors')]
    """
    return _weight_layout(path)[0]


def _weight_layout(path: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a checkpoint and, when sharded, the index's tensor -> shard map."""
    for layout in _WEIGHT_LAYOUTS:
        candidate = path / layout
        if not candidate.is_file():
            continue
        if not layout.endswith(".index.json"):
            return [candidate], None
        weight_map = _read_weight_map(candidate)
        shards = [path / name for name in dict.fromkeys(weight_map.values())]
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise ModelLoadError(f"{candidate} names shard(s) that are not in {path}: {describe_keys(missing)}")
        return shards, weight_map
    raise ModelLoadError(f"{path} has no weights: expected one of {', '.join(_WEIGHT_LAYOUTS)}")


def _read_weight_map(index_file: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_file.read_text()).get("weight_map")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ModelLoadError(f"{index_file} is not a valid shard index: {error}") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(f"{index_file} has no 'weight_map' naming tensors and shards")
    return weight_map


def iter_checkpoint_tensors(path: Path, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield every ``(name, tensor)`` of a checkpoint on CPU, shard by shard, with a progress bar.

    Floating-point tensors are cast to ``dtype`` as they are read (None keeps them as stored).
    Reads ``model.safetensors``, a sharded ``model.safetensors.index.json``, or
    ``pytorch_model.bin`` (single or sharded; loaded with ``weights_only=True``).

    Raises:
        ModelLoadError: no weights, a missing shard, a tensor name stored twice, or a tensor
            the shard index names but its shard does not hold.

    Example:
        >>> names = [name for name, _ in iter_checkpoint_tensors(Path("ckpt"))]  # doctest: +SKIP
    """
    from safetensors import safe_open
    from tqdm.auto import tqdm

    files, weight_map = _weight_layout(path)
    seen: set[str] = set()
    for shard in tqdm(files, desc=f"Reading {path.name} weights", unit="shard"):
        if shard.suffix == ".safetensors":
            with safe_open(str(shard), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    yield _checked(name, handle.get_tensor(name), dtype, shard, seen)
        else:
            state = torch.load(str(shard), map_location="cpu", weights_only=True, mmap=True)
            for name, tensor in state.items():
                yield _checked(name, tensor, dtype, shard, seen)
            del state
    if weight_map is not None:
        absent = sorted(set(weight_map) - seen)
        if absent:
            raise ModelLoadError(
                f"the shard index of {path} names tensors that no shard holds: {describe_keys(absent)}"
            )


def _checked(name: str, tensor: torch.Tensor, dtype, shard: Path, seen: set[str]) -> tuple[str, torch.Tensor]:
    if name in seen:
        raise ModelLoadError(f"tensor {name!r} is stored twice (again in {shard.name})")
    seen.add(name)
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return name, tensor


def check_tensors_match(
    expected: dict[str, torch.Size],
    found: dict[str, torch.Size],
    source: str,
    optional: Iterable[str] = (),
) -> None:
    """Raise unless the checkpoint's tensors fill the model exactly: same names, same shapes.

    Args:
        expected: parameter/buffer name -> shape the model needs.
        found: tensor name -> shape the checkpoint holds.
        source: what the checkpoint is (a path), for the message.
        optional: expected names the checkpoint may omit (tied weights).

    Example:
        >>> check_tensors_match({"w": torch.Size([2])}, {"w": torch.Size([3])}, "ckpt")  # doctest: +SKIP
        ModelLoadError: ckpt: 1 tensor(s) have the wrong shape: w (checkpoint [3], model [2])
    """
    optional = set(optional)
    missing = sorted(set(expected) - set(found) - optional)
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensor(s) missing from the checkpoint: {describe_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint tensor(s) the model does not use: {describe_keys(unexpected)}")
    mismatched = [
        f"{name} (checkpoint {list(found[name])}, model {list(expected[name])})"
        for name in sorted(set(expected) & set(found))
        if tuple(found[name]) != tuple(expected[name])
    ]
    if mismatched:
        problems.append(f"{len(mismatched)} tensor(s) have the wrong shape: {describe_keys(mismatched)}")
    if problems:
        raise ModelLoadError(f"{source}: " + "; ".join(problems))


def describe_keys(keys: Iterable[str], limit: int = _KEYS_SHOWN) -> str:
    """The first ``limit`` keys and, if there are more, how many in all.

    Example:
        >>> describe_keys(["a", "b", "c"], limit=2)
        'a, b, ... (3 in all)'
    """
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... ({len(keys)} in all)"


def check_loading_info(info: dict, source: str) -> None:
    """Raise unless transformers' ``output_loading_info`` reports a complete, exact load.

    transformers already leaves out tied weights and buffers its models declare as
    ignorable, so anything left is a real mismatch.

    Example:
        >>> check_loading_info({"missing_keys": set(), "unexpected_keys": set(),
        ...                     "mismatched_keys": set(), "error_msgs": []}, "ckpt")
    """
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    errors = list(info.get("error_msgs") or ())
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensor(s) missing from the checkpoint: {describe_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint tensor(s) the model does not use: {describe_keys(unexpected)}")
    if mismatched:
        described = [
            f"{entry[0]} (checkpoint {list(entry[1])}, model {list(entry[2])})"
            if isinstance(entry, tuple)
            else str(entry)
            for entry in mismatched
        ]
        problems.append(f"{len(mismatched)} tensor(s) have the wrong shape: {describe_keys(described)}")
    if errors:
        problems.append(f"errors while loading: {describe_keys(errors, limit=2)}")
    if problems:
        raise ModelLoadError(f"{source}: " + "; ".join(problems))


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
        >>> tokenizer = load_tokenizer(Path("ckpt"), trust_remote_code=False)  # doctest: +SKIP
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
        >>> remote_tokenizer_class(Path("openpangu-1b"))  # doctest: +SKIP
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
