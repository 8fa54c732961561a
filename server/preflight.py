"""Start-up checks that fail fast with a clear message instead of a hang.

Run by `qwen-serve up` before Ray is touched: the port must be free, every local model
path must exist (tiny models are built here, once), CPU pools' KV caches must fit in the
memory that is free, and, when `up` starts its own Ray, GPU pools must fit this machine's
GPUs (count per replica and in all, and accelerator_type): otherwise Ray would wait for
resources that never come. `qwen-serve check --here FILE` runs the same checks.
"""

from __future__ import annotations

import errno
import socket
from typing import Callable, List, Optional

from server.config import AppConfig
from server.gpus import GpuInventory
from server.models import ModelSourceError, is_tiny, resolve_model_source

# Resident memory of one CPU engine replica besides its KV cache (LLMServer, engine core and
# worker processes), as measured on the tiny models; real models add their weights.
CPU_REPLICA_OVERHEAD_GIB = 2.5
GIB = 1024**3


class PreflightError(RuntimeError):
    pass


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise PreflightError(f"port {port} on {host} is already in use; stop that server or set server.port") from None
            raise PreflightError(f"cannot bind {host}:{port}: {err.strerror}") from None


def check_models(config: AppConfig, progress: Callable[[str], None] = print) -> None:
    for name, pool in config.pools.items():
        try:
            if is_tiny(pool.model):
                progress(f"pool {name}: preparing tiny model {pool.model}")
            resolve_model_source(pool.model)
        except ModelSourceError as err:
            raise PreflightError(f"pool {name}: {err}") from None


def cpu_memory_need_gib(config: AppConfig) -> float:
    need = 0.0
    for pool in config.pools.values():
        if pool.accelerator != "cpu":
            continue
        per_replica = pool.cpu.kvcache_space_gib + CPU_REPLICA_OVERHEAD_GIB * pool.parallelism.world_size
        need += per_replica * max(pool.served_replicas, 1)
    return need


def check_memory(config: AppConfig, available_bytes: Optional[int] = None) -> None:
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    have = available_bytes / GIB
    for name, pool in config.pools.items():
        if pool.accelerator == "cpu" and pool.cpu.kvcache_space_gib > have:
            raise PreflightError(
                f"pool {name}: cpu.kvcache_space_gib={pool.cpu.kvcache_space_gib:g} GiB of KV cache asked for, "
                f"but only {have:.1f} GiB of memory is available"
            )
    need = cpu_memory_need_gib(config)
    if need > have:
        raise PreflightError(
            f"the CPU pools need about {need:.1f} GiB (KV caches plus {CPU_REPLICA_OVERHEAD_GIB:g} GiB per engine worker), "
            f"but only {have:.1f} GiB of memory is available; lower cpu.kvcache_space_gib or replicas"
        )


def _gpu_pools(config: AppConfig):
    return [(name, pool) for name, pool in config.pools.items() if pool.accelerator == "gpu"]


def _layout(pool) -> str:
    par = pool.parallelism
    return f"tensor_parallel_size {par.tensor_parallel_size} x pipeline_parallel_size {par.pipeline_parallel_size}"


def check_gpus(config: AppConfig, gpus: GpuInventory) -> None:
    """GPU pools against the GPUs a Ray started on this machine would offer (pure)."""
    pools = _gpu_pools(config)
    if not pools:
        return
    if gpus.count == 0:
        names = ", ".join(name for name, _ in pools)
        subject = f"pool {names} runs" if len(pools) == 1 else f"pools {names} run"
        raise PreflightError(
            f"{subject} on GPUs (accelerator: gpu) but this machine has {gpus.describe()}; "
            "use a CPU configuration (accelerator: cpu; the embedded default is one) or join a GPU cluster "
            "with --address"
        )
    total = 0
    for name, pool in pools:
        per_replica = pool.parallelism.world_size
        if per_replica > gpus.count:
            raise PreflightError(
                f"pool {name}: one replica needs {per_replica} GPUs ({_layout(pool)}) but this machine has "
                f"{gpus.describe()}; lower the parallelism (qwen-serve plan) or join a larger cluster with --address"
            )
        wanted = pool.accelerator_type
        if wanted and gpus.accelerator_type and wanted != gpus.accelerator_type:
            raise PreflightError(
                f"pool {name}: accelerator_type {wanted} asked for, but this machine's GPUs are "
                f"{gpus.accelerator_type} ({gpus.describe()}), so Ray would never place it; "
                f"set accelerator_type: {gpus.accelerator_type} or remove it"
            )
        total += per_replica * pool.served_replicas
    if total > gpus.count:
        parts = ", ".join(f"{name} {pool.parallelism.world_size} x {pool.served_replicas}" for name, pool in pools)
        raise PreflightError(
            f"the GPU pools need {total} GPUs to start ({parts} replicas) but this machine has {gpus.describe()}; "
            "lower replicas or join a larger cluster with --address"
        )


def run_all(
    config: AppConfig,
    *,
    check_bind: bool = True,
    progress: Callable[[str], None] = print,
    gpus: Optional[GpuInventory] = None,
) -> List[str]:
    """Every check for a server started here; GPUs are checked only when `up` starts its own Ray."""
    done = []
    if check_bind:
        check_port(config.server.host, config.server.port)
        done.append("port")
    check_memory(config)
    done.append("memory")
    if config.server.ray_address is None and _gpu_pools(config):
        if gpus is None:
            from server.gpus import local_gpus

            gpus = local_gpus()
        progress(f"GPUs here: {gpus.describe()}")
        check_gpus(config, gpus)
        done.append("gpus")
    check_models(config, progress)
    done.append("models")
    return done
