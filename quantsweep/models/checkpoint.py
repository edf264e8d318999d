"""A checkpoint on disk: its directory, ``config.json``, weight files and tensors, accounted for.

Every tensor a load reads is checked against what the model needs: a tensor the model
does not use, a parameter the checkpoint does not fill, or a shape that disagrees is a
:class:`ModelLoadError` naming the keys. A model with silently random weights is never
returned. Nothing is downloaded: every source is a local directory.

Example:
    >>> path = resolve_model_path("toy")
    >>> read_config(path)["model_type"]
    'llama'
    >>> [file.name for file in find_weight_files(path)]
    ['model.safetensors']
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from quantsweep._text import safe_text

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
        >>> isinstance(ModelLoadError("no config.json in /tmp/x"), ValueError)
        True
    """


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Turn ``"toy"`` or a path into an existing checkpoint directory.

    Raises:
        ModelLoadError: the path does not exist, is not a directory, or has no config.json.

    Example:
        >>> resolve_model_path("toy").name
        'toy'
        >>> resolve_model_path("/no/such/dir")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        quantsweep.models.checkpoint.ModelLoadError: model path /no/such/dir does not exist; ...
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
        >>> read_config(resolve_model_path("toy"))["model_type"]
        'llama'
    """
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path / 'config.json'} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path / 'config.json'} must hold a JSON object, got {type(config).__name__}")
    return config


def find_weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint: one file, or every shard named by an index.

    Raises:
        ModelLoadError: no weights file, or a shard the index names is missing.

    Example:
        >>> [file.name for file in find_weight_files(resolve_model_path("toy"))]
        ['model.safetensors']
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
        >>> tensors = dict(iter_checkpoint_tensors(resolve_model_path("toy"), torch.float16))
        >>> tensors["model.embed_tokens.weight"].dtype
        torch.float16
    """
    from safetensors import safe_open
    from tqdm.auto import tqdm

    files, weight_map = _weight_layout(path)
    seen: set[str] = set()
    for shard in tqdm(files, desc=safe_text(f"Reading {path.name} weights"), unit="shard"):
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
        >>> check_tensors_match({"w": torch.Size([2])}, {"w": torch.Size([3])}, "ckpt")
        Traceback (most recent call last):
        ...
        quantsweep.models.checkpoint.ModelLoadError: ckpt: 1 tensor(s) have the wrong shape: w (checkpoint [3], model [2])
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
