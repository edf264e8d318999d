"""Device layer: parsing, auto selection, NPU dispatch logic without the hardware."""

import sys
import types

import pytest
import torch

from quantsweep import device as dev


@pytest.fixture
def no_npu(monkeypatch):
    dev._import_torch_npu.cache_clear()
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # makes `import torch_npu` raise ImportError
    yield
    dev._import_torch_npu.cache_clear()


@pytest.fixture
def fake_npu(monkeypatch):
    """A stand-in torch_npu that registers torch.npu with 2 devices (logic only; no hardware)."""
    calls = []
    npu = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        synchronize=lambda index=0: calls.append(("synchronize", index)),
        empty_cache=lambda: calls.append(("empty_cache",)),
        reset_peak_memory_stats=lambda index=0: calls.append(("reset", index)),
        max_memory_allocated=lambda index=0: 1234,
        get_device_name=lambda index=0: "Ascend910B",
    )
    dev._import_torch_npu.cache_clear()
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    yield calls
    dev._import_torch_npu.cache_clear()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("cpu", ("cpu", None)),
        ("cuda", ("cuda", None)),
        ("cuda:1", ("cuda", 1)),
        ("npu", ("npu", None)),
        ("npu:1", ("npu", 1)),
        ("AUTO", ("auto", None)),
    ],
)
def test_parse_device_accepts_documented_forms(text, expected):
    assert dev.parse_device(text) == expected


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "cpu:0", "npu:-1", ""])
def test_parse_device_rejects_unknown_forms(text):
    with pytest.raises(ValueError, match="device"):
        dev.parse_device(text)


def test_parse_device_rejects_non_strings():
    with pytest.raises(TypeError):
        dev.parse_device(3)


def test_auto_falls_back_to_cpu_without_accelerators(no_npu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto") == "cpu"


def test_auto_prefers_npu_then_cuda(fake_npu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.resolve_device("auto") == "npu:0"


def test_auto_picks_cuda_when_no_npu(no_npu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dev.resolve_device("auto") == "cuda:0"


def test_bare_npu_is_normalised_to_index_zero(fake_npu):
    # lm-eval's HFLM silently ignores a bare "npu"; we never hand it one
    assert dev.resolve_device("npu") == "npu:0"
    assert dev.resolve_device("npu:1") == "npu:1"


def test_npu_index_out_of_range(fake_npu):
    with pytest.raises(dev.DeviceUnavailableError, match="only 2 npu"):
        dev.resolve_device("npu:5")


def test_npu_without_torch_npu_names_extra_and_cann(no_npu):
    with pytest.raises(dev.DeviceUnavailableError) as info:
        dev.resolve_device("npu")
    message = str(info.value)
    assert "quantsweep[npu]" in message and "CANN" in message


def test_cuda_requested_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(dev.DeviceUnavailableError, match="CUDA is not available"):
        dev.resolve_device("cuda:0")


def test_npu_helpers_dispatch_to_torch_npu(fake_npu):
    dev.synchronize("npu:1")
    dev.empty_cache("npu:0")
    dev.reset_peak_memory("npu:1")
    assert dev.peak_memory_bytes("npu:0") == 1234
    assert fake_npu == [("synchronize", 1), ("empty_cache",), ("reset", 1)]
    assert dev.describe("npu:0") == "npu:0 (Ascend910B)"


def test_cpu_helpers_are_noops():
    dev.synchronize("cpu")
    dev.empty_cache("cpu")
    dev.reset_peak_memory("cpu")
    assert dev.peak_memory_bytes("cpu") is None


def test_default_dtypes(monkeypatch):
    assert dev.default_dtype("cpu") == torch.float32
    assert dev.default_dtype("npu:0") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert dev.default_dtype("cuda:0") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert dev.default_dtype("cuda:0") == torch.bfloat16


def test_resolve_dtype_overrides_and_errors():
    assert dev.resolve_dtype("auto", "cpu") == torch.float32
    assert dev.resolve_dtype("fp16", "cpu") == torch.float16
    assert dev.resolve_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'fp7'"):
        dev.resolve_dtype("fp7", "cpu")


def test_cholesky_runs_on_host_for_npu():
    assert dev.cholesky_device("npu:1") == "cpu"
    assert dev.cholesky_device("cuda:1") == "cuda:1"


def test_broken_torch_npu_is_reported_unavailable(monkeypatch):
    broken = types.ModuleType("torch_npu")
    dev._import_torch_npu.cache_clear()
    monkeypatch.setitem(sys.modules, "torch_npu", broken)
    monkeypatch.setattr(
        torch,
        "npu",
        types.SimpleNamespace(is_available=lambda: (_ for _ in ()).throw(RuntimeError("CANN"))),
        raising=False,
    )
    try:
        assert dev.is_npu_available() is False
    finally:
        dev._import_torch_npu.cache_clear()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this host")
def test_cuda_peak_memory_roundtrip():
    dev.reset_peak_memory("cuda:0")
    x = torch.ones(1024, 1024, device="cuda:0")
    dev.synchronize("cuda:0")
    assert dev.peak_memory_bytes("cuda:0") >= x.numel() * 4


def test_reset_peak_memory_before_first_allocation_is_a_no_op(monkeypatch):
    """torch raises 'Invalid device argument' when resetting an uninitialised CUDA context."""
    calls = []
    state = {"initialized": False}
    backend = types.SimpleNamespace(
        is_initialized=lambda: state["initialized"],
        reset_peak_memory_stats=lambda index=0: calls.append(index),
    )
    monkeypatch.setattr(dev, "_backend_module", lambda name: backend)
    dev.reset_peak_memory("cuda:1")
    assert calls == []
    state["initialized"] = True
    dev.reset_peak_memory("cuda:1")
    assert calls == [1]
