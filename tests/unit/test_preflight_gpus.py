"""GPU preflight: the pure check against an inventory, and the inventory from NVML (faked)."""

from __future__ import annotations

import pytest

from server.config import parse_config
from server.gpus import GpuInventory, local_gpus, visible_ids
from server.preflight import PreflightError, check_gpus


def _config(**pools):
    first = next(iter(pools))
    router = {"modes": {"thinking": {"pool": first}, "fast": {"pool": first}}}
    return parse_config({"pools": pools, "router": router}, "test")


def _gpu_pool(tp=1, pp=1, replicas=1, accelerator_type=None):
    pool = {"model": "Qwen/Qwen3-8B", "accelerator": "gpu", "replicas": replicas,
            "parallelism": {"tensor_parallel_size": tp, "pipeline_parallel_size": pp}}
    if accelerator_type:
        pool["accelerator_type"] = accelerator_type
    return pool


CPU = {"model": "tiny-qwen3-dense", "accelerator": "cpu"}
H200x1 = GpuInventory(1, ("NVIDIA H200",), "H200")
H100x8 = GpuInventory(8, ("NVIDIA H100 80GB HBM3",) * 8, "H100")
NONE = GpuInventory(0, error="NVML unavailable: NVMLError_LibraryNotFound")


@pytest.mark.parametrize("pools,gpus,error", [
    ({"a": CPU}, NONE, None),                                           # CPU pools need no GPU
    ({"a": _gpu_pool()}, H200x1, None),
    ({"a": _gpu_pool(tp=4, pp=2)}, H100x8, None),
    ({"a": _gpu_pool(tp=4, replicas=2)}, H100x8, None),
    ({"a": _gpu_pool(accelerator_type="H200")}, H200x1, None),
    ({"a": _gpu_pool(accelerator_type="H100")}, GpuInventory(1, ("x",), None), None),  # type unknown: Ray decides
    ({"a": _gpu_pool()}, NONE, "pool a runs on GPUs (accelerator: gpu) but this machine has no GPU (NVML unavailable"),
    ({"a": _gpu_pool(tp=8)}, H200x1, "pool a: one replica needs 8 GPUs (tensor_parallel_size 8 x pipeline_parallel_size 1)"
                                     " but this machine has 1 GPU (NVIDIA H200)"),
    ({"a": _gpu_pool(tp=4, pp=4)}, H100x8, "one replica needs 16 GPUs"),
    ({"a": _gpu_pool(accelerator_type="H100")}, H200x1, "pool a: accelerator_type H100 asked for, but this machine's GPUs"
                                                        " are H200 (1 GPU (NVIDIA H200)), so Ray would never place it"),
    ({"a": _gpu_pool(tp=4, replicas=3)}, H100x8, "the GPU pools need 12 GPUs to start (a 4 x 3 replicas)"),
    ({"a": _gpu_pool(tp=4), "b": _gpu_pool(tp=4), "c": _gpu_pool(tp=1)}, H100x8, "need 9 GPUs to start"),
    ({"a": _gpu_pool(), "b": _gpu_pool()}, NONE, "pools a, b run on GPUs (accelerator: gpu) but this machine has no GPU"),
])
def test_check_gpus(pools, gpus, error):
    config = _config(**pools)
    if error is None:
        check_gpus(config, gpus)
    else:
        with pytest.raises(PreflightError) as info:
            check_gpus(config, gpus)
        assert error in str(info.value)


class FakeNvml:
    """Stands in for NVML's Python binding (pure logic under test, no driver here)."""

    def __init__(self, names=(), fail=False):
        self.names, self.fail, self.shutdown = list(names), fail, 0

    def nvmlInit(self):
        if self.fail:
            raise RuntimeError("no driver")

    def nvmlDeviceGetCount(self):
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, handle):
        return self.names[handle].encode()

    def nvmlShutdown(self):
        self.shutdown += 1


@pytest.mark.parametrize("env,expected", [
    ({}, None), ({"CUDA_VISIBLE_DEVICES": ""}, []), ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, []),
    ({"CUDA_VISIBLE_DEVICES": "0,2"}, ["0", "2"]),
])
def test_visible_ids(env, expected):
    assert visible_ids(env) == expected


def test_local_gpus_reads_nvml_and_narrows_to_visible_devices():
    nvml = FakeNvml(["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA A10G"])
    inv = local_gpus({}, nvml)
    assert inv.count == 3 and inv.names[2] == "NVIDIA A10G" and nvml.shutdown == 1
    assert inv.accelerator_type == "H100"  # Ray's own name mapping, from the first device
    assert local_gpus({"CUDA_VISIBLE_DEVICES": "2"}, nvml).names == ("NVIDIA A10G",)
    assert local_gpus({"CUDA_VISIBLE_DEVICES": "GPU-aaaa,GPU-bbbb"}, nvml).count == 2
    assert local_gpus({"CUDA_VISIBLE_DEVICES": ""}, nvml).count == 0


def test_no_nvml_means_no_gpus():
    inv = local_gpus({}, FakeNvml(fail=True))
    assert inv.count == 0 and "RuntimeError" in inv.error
    assert inv.describe() == "no GPU (NVML unavailable: RuntimeError)"


def test_this_machine_without_a_driver_reports_no_gpu():
    # The real NVML binding on a machine without an NVIDIA driver (this one, CI's).
    assert local_gpus({}).count == 0


@pytest.mark.parametrize("kind,nvml_name", [
    ("h200", "NVIDIA H200"),                # read on a real H200
    ("h100", "NVIDIA H100 80GB HBM3"),
    ("a100-80g", "NVIDIA A100-SXM4-80GB"),
    ("a100-40g", "NVIDIA A100-SXM4-40GB"),
    ("l4", "NVIDIA L4"),
])
def test_catalog_accelerator_types_are_what_ray_derives(kind, nvml_name):
    from server.catalog import load_catalog
    from server.gpus import accelerator_type_of

    assert load_catalog().gpu(kind).ray_accelerator_type == accelerator_type_of(nvml_name)
