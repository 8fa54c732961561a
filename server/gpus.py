"""What GPUs this machine gives a local Ray, read the way Ray reads them.

`qwen-serve up` starts a local Ray unless it joins a cluster. Ray then offers the GPUs
that NVML counts (narrowed by CUDA_VISIBLE_DEVICES) and an `accelerator_type:<T>` resource
named from the first GPU's NVML name. A pool that needs more GPUs per replica than that,
or names another accelerator_type, is never placed: Ray waits for resources forever. The
preflight check (server/preflight.py) compares the config with this inventory first.

NVML comes from Ray's vendored pynvml when Ray is importable, else from nvidia-ml-py's
`pynvml`; the accelerator type comes from Ray's own name mapping. No NVML means no GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple


@dataclass(frozen=True)
class GpuInventory:
    count: int
    names: Tuple[str, ...] = ()
    accelerator_type: Optional[str] = None
    error: Optional[str] = None  # why NVML gave nothing, when it did not

    def describe(self) -> str:
        if self.count == 0:
            return "no GPU" + (f" ({self.error})" if self.error else "")
        kinds = sorted(set(self.names))
        return f"{self.count} GPU{'s' if self.count != 1 else ''} ({', '.join(kinds)})"


def _nvml() -> Any:
    try:
        import ray._private.thirdparty.pynvml as pynvml  # the copy Ray itself uses

        return pynvml
    except ImportError:
        import pynvml  # nvidia-ml-py

        return pynvml


def accelerator_type_of(name: str) -> Optional[str]:
    """Ray's `accelerator_type` for an NVML device name (None when Ray is not installed)."""
    try:
        from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager
    except ImportError:
        return None
    return NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(name)


def visible_ids(environ: Any = os.environ) -> Optional[List[str]]:
    """CUDA_VISIBLE_DEVICES as Ray reads it: None when unset, [] when empty or NoDevFiles."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    if value in ("", "NoDevFiles"):
        return []
    return value.split(",")


def local_gpus(environ: Any = os.environ, nvml: Any = None) -> GpuInventory:
    """The GPUs a Ray started here would offer."""
    try:
        nvml = nvml or _nvml()
        nvml.nvmlInit()
    except Exception as err:  # no library, no driver, no device: no GPUs
        return GpuInventory(0, error=f"NVML unavailable: {type(err).__name__}")
    try:
        names = []
        for i in range(nvml.nvmlDeviceGetCount()):
            name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
    finally:
        nvml.nvmlShutdown()
    visible = visible_ids(environ)
    if visible is not None:
        keep = [names[int(v)] for v in visible if v.strip().isdigit() and int(v) < len(names)]
        # UUIDs or MIG ids: Ray counts them without mapping names; keep the count.
        names = keep if len(keep) == len(visible) else names[: len(visible)]
    return GpuInventory(
        count=len(names),
        names=tuple(names),
        accelerator_type=accelerator_type_of(names[0]) if names else None,
    )
