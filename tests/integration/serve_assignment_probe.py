"""Real Ray Serve, no engine: does `RayPoolBackend.assigned` tell a request a replica has
taken from one still waiting for a replica, and does a replica that took a request still
answer it while its app is deleted (a graceful shutdown)? Prints one line of JSON,
prefixed with ``PROBE_JSON=``. ``test_backend_assignment.py`` runs it in a subprocess,
so the test process never joins this Ray instance.
"""

from __future__ import annotations

import asyncio
import json
import time

import ray
from ray import serve

from server.ingress.backend import RayPoolBackend

FIRST_ITEM_AFTER_S = 6.0


@serve.deployment(max_ongoing_requests=1, graceful_shutdown_timeout_s=30, graceful_shutdown_wait_loop_s=0.5)
class SlowPool:
    """One request at a time (like an engine with every slot taken), slow first item."""

    async def chat(self, delay_s: float):
        await asyncio.sleep(delay_s)
        yield "first"
        yield "second"

    async def check_health(self) -> None:
        return None


async def main() -> dict:
    handle = serve.run(SlowPool.bind(), name="probe", route_prefix=None)
    backend = RayPoolBackend({"pool": handle})
    await backend.check("pool", 30)
    taken = backend.call("chat", "pool", FIRST_ITEM_AFTER_S)
    await asyncio.sleep(1.0)
    waiting = backend.call("chat", "pool", 0.0)  # the only slot is busy: it waits for a replica
    await asyncio.sleep(1.0)
    facts = {"taken_assigned": backend.assigned(taken), "waiting_assigned": backend.assigned(waiting)}
    deleted_at = time.monotonic()
    serve.delete("probe", _blocking=False)  # graceful shutdown: the replica drains what it took
    await asyncio.sleep(2.0)
    try:
        await asyncio.wait_for(backend.check("pool", 3), 5)
        facts["check_during_drain"] = "answered"
    except Exception as exc:  # noqa: BLE001 - the expected outcome
        facts["check_during_drain"] = type(exc).__name__
    items = [item async for item in taken]
    facts.update(taken_items=items, taken_answered_after_delete_s=round(time.monotonic() - deleted_at, 1),
                 waiting_assigned_at_end=backend.assigned(waiting))
    waiting.cancel()
    return facts


if __name__ == "__main__":
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print("PROBE_JSON=" + json.dumps(asyncio.run(main())), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
