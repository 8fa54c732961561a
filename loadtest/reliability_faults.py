"""Fault injection for the reliability benchmark and tests: SIGKILL a pool's Serve
replica, or only its vLLM engine core, while it serves load (local stacks only)."""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import time
from typing import Any, Dict

import httpx

from loadtest.reliability_client import Outcome, Tally, chat, send, wait_ready

def engine_replica(pid: int, pool: str = "fast"):
    """The Serve replica process of a pool's engine in the stack's process tree."""
    import psutil

    needle = f"ServeReplica:qwen-serve:pool-{pool}"
    for p in [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True):
        try:
            if needle in " ".join(p.cmdline()):
                return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def engine_core(replica):
    """The vLLM engine-core process (`VLLM::EngineCore`) under a pool's replica process."""
    import psutil

    for p in replica.children(recursive=True):
        try:
            if "EngineCor" in p.name() or "EngineCore" in " ".join(p.cmdline()):  # comm is cut at 15 chars
                return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def engine_cores(pid: int) -> int:
    """How many vLLM engine-core processes run in the stack's process tree."""
    import psutil

    n = 0
    for p in psutil.Process(pid).children(recursive=True):
        try:
            n += "EngineCor" in p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return n


def kill_replica_under_load(url: str, headers: Dict[str, str], pid: int, concurrency: int = 8,
                            load_s: float = 20, kill_at_s: float = 6, recover_s: float = 300,
                            target: str = "replica", deadline_s: float = 30) -> Dict[str, Any]:
    """SIGKILL the fast pool's replica (target="replica") or only its vLLM engine core
    (target="engine_core": the replica lives on, its health check fails) while fast
    requests are in flight; count outcomes; wait for Serve to replace it; then check that
    fresh requests succeed. /ready is polled throughout: it must report the pool down."""
    replica = engine_replica(pid)
    if replica is None:
        raise RuntimeError("no pool-fast replica process found under the given pid")
    victim = replica if target == "replica" else engine_core(replica)
    if victim is None:
        raise RuntimeError(f"no {target} process found under the pool-fast replica")
    killed: Dict[str, Any] = {"target": target}
    cores_before = engine_cores(pid)
    # Every request carries a deadline well inside the client's patience: a request that
    # waits for the restarted replica must end in a clean 504, never hang.
    bounded = {**headers, "x-request-timeout": f"{deadline_s:g}"}
    ready_codes: collections.Counter = collections.Counter()

    async def run() -> Tally:
        async def killer() -> None:
            await asyncio.sleep(kill_at_s)
            killed["pid"] = victim.pid
            killed["at"] = time.monotonic()
            victim.send_signal(signal.SIGKILL)

        task = asyncio.create_task(killer())
        rng = random.Random(3)
        tally = Tally()
        stop_at = time.monotonic() + load_s

        async def worker() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=90) as c:
                while time.monotonic() < stop_at:
                    stream = rng.random() < 0.5
                    body = chat("qwen3-fast", "Write a paragraph.", 200, stream=stream, ignore_eos=True)
                    tally.outcomes.append(await send(c, body, bounded, 90))
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await task
        return tally

    t0 = time.monotonic()
    tally = asyncio.run(run())
    recovered_at = None
    after_ok = 0
    deadline_at = time.monotonic() + recover_s
    probes = Tally()
    while time.monotonic() < deadline_at:
        try:
            ready_codes[httpx.get(f"{url}/ready", timeout=30).status_code] += 1
        except httpx.HTTPError:
            ready_codes["unreachable"] += 1
        probe = asyncio.run(_probe(url, bounded))
        probes.outcomes.append(probe)
        if probe.kind == "ok":
            recovered_at = time.monotonic()
            break
        time.sleep(2)
    if recovered_at is not None:
        for _ in range(5):
            r = httpx.post(f"{url}/v1/chat/completions", json=chat("qwen3-fast", "hi", 4), headers=headers, timeout=60)
            after_ok += r.status_code == 200
    ready = wait_ready(url, 120)
    # The dead replica's engine core must not linger as an orphan (a GB of memory each).
    cores_after = engine_cores(pid)
    for _ in range(15):
        if cores_after <= cores_before:
            break
        time.sleep(2)
        cores_after = engine_cores(pid)
    return {**tally.summary(), "target": target, "killed_pid": killed.get("pid"),
            "probes_while_down": probes.summary(), "ready_codes": dict(ready_codes),
            "slowest_refusal_while_down_s": max((o.seconds for o in probes.outcomes if o.kind == "error"), default=None),
            "engine_cores_before": cores_before, "engine_cores_after": cores_after,
            "recovered_s": (recovered_at - killed["at"]) if recovered_at and "at" in killed else None,
            "after_restart_ok": after_ok, "ready_after": ready is not None, "wall_s": time.monotonic() - t0,
            "error_statuses": sorted({o.status for o in tally.outcomes if o.kind == "error"})}


async def _probe(url: str, headers: Dict[str, str]) -> Outcome:
    async with httpx.AsyncClient(base_url=url, timeout=90) as c:
        return await send(c, chat("qwen3-fast", "hi", 4), headers, 90)
