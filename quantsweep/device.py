"""The only module that knows about hardware: CPU, CUDA and Ascend NPU.

Everything else in quantsweep asks this module which device to use, which dtype
suits it, and how to synchronise, empty caches and read peak memory. torch_npu is
imported lazily, inside functions, and only when an NPU is asked for or probed,
so ``import quantsweep`` never touches an accelerator.

Example:
    >>> from quantsweep.device import resolve_device, default_dtype
    >>> resolve_device("cpu")
    'cpu'
    >>> default_dtype("cpu")
    torch.float32
"""

from __future__ import annotations

import functools
import importlib
import logging
import re

import torch

logger = logging.getLogger(__name__)

NPU_INSTALL_HINT = (
    "Ascend NPU support needs torch_npu, which needs the CANN toolkit and driver "
    "installed on the host (source set_env.sh from CANN first). Install it with "
    "`pip install 'quantsweep[npu]'`, choosing the torch-npu release that matches "
    "your torch and CANN versions."
)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|npu)(?::(\d+))?$")


class DeviceUnavailableError(ValueError):
    """Raised when a device is asked for that this host cannot provide."""


@functools.lru_cache(maxsize=1)
def _import_torch_npu():
    """Import torch_npu once; return the module or the exception that stopped it."""
    try:
        return importlib.import_module("torch_npu")
    except Exception as error:  # noqa: BLE001 - a broken CANN install raises anything
        return error


def is_torch_npu_importable() -> bool:
    """Whether ``import torch_npu`` succeeds (this registers the ``npu`` device).

    Example:
        >>> isinstance(is_torch_npu_importable(), bool)
        True
    """
    return not isinstance(_import_torch_npu(), BaseException)


def is_npu_available() -> bool:
    """Whether an Ascend NPU can be used: torch_npu imports and reports a device.

    Survives a broken torch_npu or CANN install by answering False.

    Example:
        >>> is_npu_available()  # on a host without Ascend hardware
        False
    """
    if not is_torch_npu_importable():
        return False
    try:
        return bool(torch.npu.is_available())  # type: ignore[attr-defined]
    except Exception as error:  # noqa: BLE001
        logger.debug("torch.npu.is_available() failed: %s", error)
        return False


def is_cuda_available() -> bool:
    """Whether a CUDA device is usable.

    Example:
        >>> isinstance(is_cuda_available(), bool)
        True
    """
    return torch.cuda.is_available()


def parse_device(device: str | torch.device) -> tuple[str, int | None]:
    """Split a device string into (backend, index), validating its form.

    Example:
        >>> parse_device("npu:1")
        ('npu', 1)
        >>> parse_device("cpu")
        ('cpu', None)
    """
    if isinstance(device, torch.device):
        return device.type, device.index
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'npu:0', got {type(device).__name__}")
    match = _DEVICE_PATTERN.match(device.strip().lower())
    if match is None:
        raise ValueError(f"unknown device {device!r}; expected one of: auto, cpu, cuda, cuda:N, npu, npu:N")
    backend, index = match.group(1), match.group(2)
    if backend in ("auto", "cpu") and index is not None:
        raise ValueError(f"device {device!r} takes no index; use {backend!r}")
    return backend, None if index is None else int(index)


def resolve_device(device: str | torch.device = "auto") -> str:
    """Turn a user's device request into a concrete, normalised device string.

    ``auto`` picks an NPU when torch_npu imports and a device is present, then
    CUDA, then CPU. A bare ``npu`` or ``cuda`` becomes ``npu:0`` / ``cuda:0``,
    because lm-eval's HFLM silently ignores a bare ``npu``.

    Raises:
        DeviceUnavailableError: the device was asked for but this host lacks it.

    Example:
        >>> resolve_device("cpu")
        'cpu'
    """
    backend, index = parse_device(device)
    if backend == "auto":
        if is_npu_available():
            backend = "npu"
        elif is_cuda_available():
            backend = "cuda"
        else:
            return "cpu"
        index = 0
        logger.info("device=auto resolved to %s:0", backend)
    if backend == "cpu":
        return "cpu"
    index = 0 if index is None else index
    if backend == "npu":
        loaded = _import_torch_npu()
        if isinstance(loaded, BaseException):
            raise DeviceUnavailableError(
                f"device 'npu' was requested but torch_npu cannot be imported ({loaded}). " + NPU_INSTALL_HINT
            )
        count = _device_count("npu")
        if count == 0:
            raise DeviceUnavailableError(
                "device 'npu' was requested but torch.npu reports no device; check the "
                "driver, and that ASCEND_RT_VISIBLE_DEVICES lists devices in ascending order."
            )
    else:
        if not is_cuda_available():
            raise DeviceUnavailableError(
                f"device {device!r} was requested but CUDA is not available (is a CUDA build of torch installed?)"
            )
        count = _device_count("cuda")
    if index >= count:
        raise DeviceUnavailableError(
            f"device {backend}:{index} was requested but only {count} {backend} device(s) are visible"
        )
    return f"{backend}:{index}"


def _backend_module(backend: str):
    """The torch submodule (torch.cuda or torch.npu) for an accelerator backend."""
    if backend == "npu":
        loaded = _import_torch_npu()
        if isinstance(loaded, BaseException):
            raise DeviceUnavailableError(NPU_INSTALL_HINT)
        return torch.npu  # type: ignore[attr-defined]
    if backend == "cuda":
        return torch.cuda
    raise ValueError(f"backend {backend!r} has no accelerator module")


def _device_count(backend: str) -> int:
    try:
        return int(_backend_module(backend).device_count())
    except Exception as error:  # noqa: BLE001
        logger.debug("%s.device_count() failed: %s", backend, error)
        return 0


def default_dtype(device: str | torch.device) -> torch.dtype:
    """The default compute dtype for a device: fp32 on CPU, bf16 on CUDA and NPU.

    CUDA devices without bf16 support (before Ampere) get fp16.

    Example:
        >>> default_dtype("cpu")
        torch.float32
    """
    backend, _ = parse_device(device)
    if backend == "cpu":
        return torch.float32
    if backend == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """Resolve ``"auto"``, a dtype name or a torch dtype for a device.

    Example:
        >>> resolve_dtype("auto", "cpu")
        torch.float32
        >>> resolve_dtype("bf16", "cpu")
        torch.bfloat16
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a string or torch.dtype, got {type(dtype).__name__}")
    if dtype == "auto":
        return default_dtype(device)
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto or one of {sorted(_DTYPES)}") from None


def synchronize(device: str | torch.device) -> None:
    """Wait for all queued work on ``device`` (a no-op on CPU).

    Example:
        >>> synchronize("cpu")
    """
    backend, index = parse_device(device)
    if backend in ("cuda", "npu"):
        _backend_module(backend).synchronize(index or 0)


def empty_cache(device: str | torch.device) -> None:
    """Release cached allocator blocks on ``device`` (a no-op on CPU).

    Example:
        >>> empty_cache("cpu")
    """
    backend, _ = parse_device(device)
    if backend in ("cuda", "npu"):
        _backend_module(backend).empty_cache()


def reset_peak_memory(device: str | torch.device) -> None:
    """Reset the peak-memory counter of ``device`` (a no-op on CPU).

    Example:
        >>> reset_peak_memory("cpu")
    """
    backend, index = parse_device(device)
    if backend in ("cuda", "npu"):
        module = _backend_module(backend)
        # Before the backend's first allocation there is no peak to reset, and torch
        # raises "Invalid device argument" (seen on CUDA, torch 2.11, H200).
        is_initialized = getattr(module, "is_initialized", None)
        if is_initialized is not None and not is_initialized():
            return
        module.reset_peak_memory_stats(index or 0)


def peak_memory_bytes(device: str | torch.device) -> int | None:
    """Peak bytes allocated on ``device`` since the last reset; None on CPU.

    On CPU there is no allocator counter; benchmarks measure host RSS instead.

    Example:
        >>> peak_memory_bytes("cpu") is None
        True
    """
    backend, index = parse_device(device)
    if backend in ("cuda", "npu"):
        return int(_backend_module(backend).max_memory_allocated(index or 0))
    return None


_OUT_OF_MEMORY_MESSAGES = (
    "out of memory",  # CUDA and NPU allocators ("CUDA out of memory", "NPU out of memory")
    "can't allocate memory",  # torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory")
    "not enough memory",  # other CPU allocators
)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says an allocation failed, on any backend.

    CUDA raises ``torch.OutOfMemoryError``; torch-npu raises a ``RuntimeError`` saying
    "NPU out of memory"; the CPU allocator raises ``RuntimeError`` or ``MemoryError``.

    Example:
        >>> is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        True
        >>> is_out_of_memory(ValueError("bad recipe"))
        False
    """
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    if isinstance(error, RuntimeError):
        text = str(error).lower()
        return any(message in text for message in _OUT_OF_MEMORY_MESSAGES)
    return False


def cholesky_device(device: str | torch.device) -> str:
    """Where GPTQ-family methods should factorise a Hessian.

    torch-npu has been seen to fall back to the CPU for ``torch.linalg.cholesky``
    silently and slowly; we make that hop explicit and move only the Hessian.

    Example:
        >>> cholesky_device("cpu")
        'cpu'
        >>> cholesky_device("npu:0")
        'cpu'
    """
    backend, index = parse_device(device)
    if backend == "npu":
        return "cpu"
    return "cpu" if backend == "cpu" else f"{backend}:{index or 0}"


def describe(device: str | torch.device) -> str:
    """A human-readable name of the device, for result provenance.

    Example:
        >>> describe("cpu")
        'cpu'
    """
    backend, index = parse_device(device)
    if backend == "cpu":
        return "cpu"
    try:
        name = _backend_module(backend).get_device_name(index or 0)
    except Exception:  # noqa: BLE001
        name = "unknown"
    return f"{backend}:{index or 0} ({name})"


# ---------------------------------------------------------------------- Ray workers
# What a Ray cluster gives a task, turned into a device string (and back into the
# resources to ask Ray for). Ray's accelerator managers set ASCEND_RT_VISIBLE_DEVICES
# (NPU) or CUDA_VISIBLE_DEVICES (GPU) for each worker to the ids it was granted, so
# inside the worker the first visible device is always index 0.
RAY_DEVICE_KINDS = ("cpu", "cuda", "npu")


def worker_device(accelerator_ids: dict | None = None) -> str:
    """The device a Ray worker should use, from the accelerator ids Ray granted it.

    Args:
        accelerator_ids: ``ray.get_runtime_context().get_accelerator_ids()``, a mapping
            such as ``{"NPU": ["3"], "GPU": []}``; ``None`` or no ids means CPU.

    Ray sets ``ASCEND_RT_VISIBLE_DEVICES`` / ``CUDA_VISIBLE_DEVICES`` to the granted ids,
    so the worker sees its first device as ``npu:0`` / ``cuda:0`` whatever the id was.
    An NPU wins over a GPU when a task was (unusually) granted both.

    Example:
        >>> worker_device({"NPU": ["3"], "GPU": []})
        'npu:0'
        >>> worker_device({"GPU": ["1"]})
        'cuda:0'
        >>> worker_device(None)
        'cpu'
    """
    if accelerator_ids is None:
        return "cpu"
    if not isinstance(accelerator_ids, dict):
        raise TypeError(
            f"accelerator_ids must be a dict such as {{'NPU': ['0']}}, got {type(accelerator_ids).__name__}"
        )
    if accelerator_ids.get("NPU"):
        return "npu:0"
    if accelerator_ids.get("GPU"):
        return "cuda:0"
    return "cpu"


def ray_resources(device_kind: str, cpus_per_unit: int = 1) -> dict:
    """The resources to request from Ray for one work unit on ``device_kind``.

    One unit holds one accelerator: ``{"resources": {"NPU": 1}}`` on Ascend (Ray's
    built-in NPU resource), ``{"num_gpus": 1}`` on CUDA, else ``cpus_per_unit`` CPUs.
    The result is passed as ``remote_function.options(**ray_resources(...))``.

    Raises:
        ValueError: an unknown device kind or a CPU count below 1.

    Example:
        >>> ray_resources("npu")
        {'resources': {'NPU': 1}}
        >>> ray_resources("cuda")
        {'num_gpus': 1}
        >>> ray_resources("cpu", cpus_per_unit=2)
        {'num_cpus': 2}
    """
    kind = parse_device(device_kind)[0] if isinstance(device_kind, str) and ":" in device_kind else device_kind
    if kind not in RAY_DEVICE_KINDS:
        raise ValueError(f"unknown device kind {device_kind!r} for Ray; expected one of {', '.join(RAY_DEVICE_KINDS)}")
    if kind == "npu":
        return {"resources": {"NPU": 1}}
    if kind == "cuda":
        return {"num_gpus": 1}
    if isinstance(cpus_per_unit, bool) or not isinstance(cpus_per_unit, int) or cpus_per_unit < 1:
        raise ValueError(f"cpus_per_unit must be an integer >= 1, got {cpus_per_unit!r}")
    return {"num_cpus": cpus_per_unit}


def ray_device_kind(resources: dict) -> str:
    """The device kind a Ray cluster offers, from ``ray.cluster_resources()``.

    An ``NPU`` resource (Ray detects Ascend NPUs itself) wins, then ``GPU``, else CPU.

    Example:
        >>> ray_device_kind({"CPU": 192.0, "NPU": 16.0})
        'npu'
        >>> ray_device_kind({"CPU": 2.0})
        'cpu'
    """
    if resources.get("NPU", 0) > 0:
        return "npu"
    if resources.get("GPU", 0) > 0:
        return "cuda"
    return "cpu"


# --- bitsandbytes: which devices the installed release runs on (issue 11) ------------------
# bitsandbytes ships one backend folder per device type (bitsandbytes/backends/<type>);
# CPU kernels are official since 0.48. An Ascend backend is not in its main branch, so
# "npu" is refused unless an installed release brings a backends/npu folder.

BNB_INSTALL_HINT = "bitsandbytes recipes need the `bnb` extra: pip install 'quantsweep[bnb]'"
BNB_MIN_VERSION = {"cpu": "0.48"}  # device type -> first release with official kernels for it
_BNB_NON_DEVICE_FOLDERS = {"default", "triton", "utils", "__pycache__"}


def bitsandbytes_version() -> str | None:
    """The installed bitsandbytes version, or None when it is not installed (nothing is imported).

    Example:
        >>> bitsandbytes_version() is None or bitsandbytes_version()[0].isdigit()
        True
    """
    from importlib import metadata

    try:
        return metadata.version("bitsandbytes")
    except metadata.PackageNotFoundError:
        return None


def bitsandbytes_backends() -> tuple[str, ...]:
    """Device types the installed bitsandbytes has a backend for (empty when not installed).

    Example:
        >>> isinstance(bitsandbytes_backends(), tuple)
        True
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or not spec.submodule_search_locations:
        return ()
    folders = [Path(location) / "backends" for location in spec.submodule_search_locations]
    found = {p.name for folder in folders if folder.is_dir() for p in folder.iterdir() if p.is_dir()}
    return tuple(sorted(found - _BNB_NON_DEVICE_FOLDERS))


def bitsandbytes_supports(
    device: str | torch.device, version: str | None = None, backends: tuple[str, ...] | None = None
) -> bool:
    """Whether bitsandbytes (the installed one, or ``version`` / ``backends``) runs on ``device``.

    Example:
        >>> bitsandbytes_supports("cpu", version="0.47.0", backends=("cpu", "cuda"))
        False
        >>> bitsandbytes_supports("npu:0", version="0.50.2", backends=("cpu", "cuda"))
        False
    """
    from packaging.version import Version

    version = bitsandbytes_version() if version is None else version
    backends = bitsandbytes_backends() if backends is None else backends
    backend, _ = parse_device(device)
    if version is None or backend not in backends:
        return False
    minimum = BNB_MIN_VERSION.get(backend)
    return minimum is None or Version(version) >= Version(minimum)


def check_bitsandbytes_device(device: str | torch.device) -> str:
    """Return the bitsandbytes version if it runs on ``device``; else raise naming what is missing.

    Raises:
        ValueError: bitsandbytes is not installed (names the ``bnb`` extra).
        DeviceUnavailableError: the installed release has no kernels for this device
            (names the device and the version).

    Example:
        >>> installed = bitsandbytes_version()
        >>> installed is None or not bitsandbytes_supports("cpu") or check_bitsandbytes_device("cpu") == installed
        True
        >>> try:
        ...     check_bitsandbytes_device("npu:0")  # no bitsandbytes release has NPU kernels
        ... except ValueError as error:  # DeviceUnavailableError is a ValueError too
        ...     print("bitsandbytes" in str(error))
        True
    """
    version = bitsandbytes_version()
    if version is None:
        raise ValueError(BNB_INSTALL_HINT)
    if not bitsandbytes_supports(device, version):
        backend, _ = parse_device(device)
        minimum = BNB_MIN_VERSION.get(backend)
        needs = f"; CPU kernels need bitsandbytes>={minimum}" if minimum else ""
        raise DeviceUnavailableError(
            f"bitsandbytes {version} does not support device {str(device)!r} (its backends: "
            f"{', '.join(bitsandbytes_backends()) or 'none'}{needs}); run bitsandbytes recipes on "
            "cpu or cuda, or use a fake-quant recipe such as w8-rtn / w4-rtn"
        )
    return version


def has_allocator_stats(device: str | torch.device) -> bool:
    """Whether ``device`` has an allocator peak counter (CUDA, NPU); CPU has none.

    Example:
        >>> has_allocator_stats("cpu")
        False
    """
    backend, _ = parse_device(device)
    return backend in ("cuda", "npu")
