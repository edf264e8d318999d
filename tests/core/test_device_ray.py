"""What Ray gives a worker, as a device string, and the resources asked for a unit (no Ray, no hardware)."""

import sys
import types

import pytest
import torch

from quantsweep import device as dev


@pytest.fixture
def fake_npu_one_visible(monkeypatch):
    """A stand-in torch_npu seeing one device, as a Ray worker granted NPU 5 does.

    Ray sets ASCEND_RT_VISIBLE_DEVICES=5 for that worker, so torch_npu reports one
    device, index 0; the stand-in reports what the variable leaves visible.
    """
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "5")
    import os

    visible = lambda: len([d for d in os.environ["ASCEND_RT_VISIBLE_DEVICES"].split(",") if d])  # noqa: E731
    npu = types.SimpleNamespace(is_available=lambda: visible() > 0, device_count=visible)
    dev._import_torch_npu.cache_clear()
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    yield
    dev._import_torch_npu.cache_clear()


def _ray_ids(**granted):
    """The shape of ray.get_runtime_context().get_accelerator_ids() in Ray 2.60 (every kind listed)."""
    ids = {kind: [] for kind in ("GPU", "NPU", "TPU", "HPU", "neuron_cores", "RBLN")}
    ids.update({kind: list(values) for kind, values in granted.items()})
    return ids


@pytest.mark.parametrize(
    "granted,expected",
    [
        ({"NPU": ["5"]}, "npu:0"),  # Ray's id 5 is the worker's npu:0
        ({"NPU": ["0"]}, "npu:0"),
        ({"GPU": ["3"]}, "cuda:0"),
        ({"NPU": ["2"], "GPU": ["1"]}, "npu:0"),
        ({}, "cpu"),
    ],
)
def test_worker_device_from_ray_accelerator_ids(granted, expected):
    assert dev.worker_device(_ray_ids(**granted)) == expected


def test_worker_device_without_ids_is_cpu():
    assert dev.worker_device(None) == "cpu"
    assert dev.worker_device({}) == "cpu"


def test_worker_device_rejects_a_list():
    with pytest.raises(TypeError, match="accelerator_ids"):
        dev.worker_device(["0"])


def test_worker_npu_device_resolves_inside_the_worker(fake_npu_one_visible):
    # the string worker_device returns is one the device layer accepts on that worker
    device = dev.worker_device(_ray_ids(NPU=["5"]))
    assert dev.resolve_device(device) == "npu:0"
    with pytest.raises(dev.DeviceUnavailableError, match="only 1 npu"):
        dev.resolve_device("npu:5")  # the global id is not visible inside the worker


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("npu", {"resources": {"NPU": 1}}),
        ("npu:3", {"resources": {"NPU": 1}}),
        ("cuda", {"num_gpus": 1}),
        ("cpu", {"num_cpus": 1}),
    ],
)
def test_ray_resources_per_device_kind(kind, expected):
    assert dev.ray_resources(kind) == expected


def test_ray_resources_cpu_count():
    assert dev.ray_resources("cpu", cpus_per_unit=4) == {"num_cpus": 4}
    with pytest.raises(ValueError, match="cpus_per_unit"):
        dev.ray_resources("cpu", cpus_per_unit=0)
    with pytest.raises(ValueError, match="unknown device kind 'tpu'"):
        dev.ray_resources("tpu")


@pytest.mark.parametrize(
    "resources,expected",
    [
        ({"CPU": 192.0, "NPU": 16.0, "GPU": 0.0}, "npu"),
        ({"CPU": 64.0, "GPU": 8.0}, "cuda"),
        ({"CPU": 2.0, "NPU": 0.0}, "cpu"),
    ],
)
def test_ray_device_kind_from_cluster_resources(resources, expected):
    assert dev.ray_device_kind(resources) == expected
