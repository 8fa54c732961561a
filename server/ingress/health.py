"""Pool health: healthy, degraded (serving but over its TTFT SLO or near a full queue) or
unhealthy (no replica answers a health check), each with its reason."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Dict, Optional

from server.config import AppConfig, PoolConfig
from server.ingress.backend import PoolBackend
from server.metrics import ServeMetrics
from server.routing.load import LoadTracker

CHECK_TIMEOUT_S = 5.0
CACHE_S = 1.0
RECHECK_UNHEALTHY_S = 1.0
MAX_CHECKS = 5

logger = logging.getLogger("qwen_serve.health")


def classify(answered: bool, error: str, in_flight: int, slots: int, queue_limit: int,
             recent_ttft_s: Any, ttft_slo_s: float, near_full_ratio: float = 0.9) -> Dict[str, Any]:
    """Pure classification of one pool's state."""
    if not answered:
        return {"status": "unhealthy", "reason": f"no replica answered the health check ({error})"}
    reasons = []
    if recent_ttft_s is not None and recent_ttft_s > ttft_slo_s:
        reasons.append(f"recent TTFT {recent_ttft_s:.3f}s over SLO {ttft_slo_s:.3f}s")
    limit = slots + queue_limit
    if limit and in_flight >= near_full_ratio * limit:
        reasons.append(f"{in_flight} requests in flight of {limit} allowed")
    if reasons:
        return {"status": "degraded", "reason": "; ".join(reasons)}
    return {"status": "healthy", "reason": "engine answers; within SLO"}


def check_attempts(pool: PoolConfig) -> int:
    most = pool.autoscaling.max_replicas if pool.autoscaling else pool.replicas
    return 1 if most <= 1 else min(most + 1, MAX_CHECKS)


class HealthChecker:
    def __init__(self, config: AppConfig, backend: PoolBackend, tracker: LoadTracker, metrics: ServeMetrics) -> None:
        self.config = config
        self.backend = backend
        self.tracker = tracker
        self.metrics = metrics
        self._cached: Dict[str, Any] = {}
        self._cached_at = 0.0
        self._lock = asyncio.Lock()
        self._refreshing: Optional[asyncio.Future] = None
        self._attempts = {name: check_attempts(p) for name, p in config.pools.items()}
        self._down: Dict[str, Optional[asyncio.Future]] = {name: None for name in config.pools}

    def down_signal(self, pool: str) -> asyncio.Future:
        """Done when a check finds `pool` down; requests still waiting for its first answer
        then end with 503 instead of waiting for a replacement until their deadline. One
        future per pool, shared by its waiting requests (no task per request)."""
        fut = self._down[pool]
        if fut is None:
            fut = self._down[pool] = asyncio.get_running_loop().create_future()
        return fut

    def _mark(self, pool: str, answered: bool) -> None:
        self.tracker.set_healthy(pool, answered)
        if not answered:
            fut = self.down_signal(pool)
            if not fut.done():
                fut.set_result(None)
        elif self._down[pool] is not None and self._down[pool].done():
            self._down[pool] = None  # requests from now on wait on a fresh signal

    async def _check(self, pool: str) -> tuple:
        """(answered, error): one check per replica the pool may have (plus one, at most
        MAX_CHECKS). Serve sends each to a replica of its choosing, spreading concurrent
        ones; one answer means the pool serves, so a single broken replica of several
        does not take the pool out of routing (Serve replaces that replica itself)."""
        results = await asyncio.gather(*(self._check_once(pool) for _ in range(self._attempts[pool])))
        return next((r for r in results if r[0]), results[0])

    async def _check_once(self, pool: str) -> tuple:
        try:
            await self.backend.check(pool, CHECK_TIMEOUT_S)
            return True, ""
        except asyncio.TimeoutError:
            return False, f"timed out after {CHECK_TIMEOUT_S:.0f}s"
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            return False, type(exc).__name__

    async def report(self) -> Dict[str, Any]:
        async with self._lock:
            if time.monotonic() - self._cached_at < CACHE_S and self._cached:
                return self._cached
            names = list(self.config.pools)
            before = self.tracker.snapshot()
            # A health check goes through the pool's handle like a request: when every slot
            # is taken it waits in Serve's queue behind them and times out, although the
            # engine is serving. A pool that busy is not checked; its requests show it lives.
            busy = {n for n in names if before[n].in_flight >= before[n].slots}
            results = await asyncio.gather(*(self._check(n) for n in names if n not in busy))
            checked = dict(zip([n for n in names if n not in busy], results))
            snapshot = self.tracker.snapshot()
            pools = {}
            for name in names:
                answered, error = checked.get(name, (True, ""))
                load = snapshot[name]
                self._mark(name, answered)
                entry = classify(answered, error, load.in_flight, load.slots, load.queue_limit,
                                 load.recent_ttft_s, self.config.metrics.ttft_slo_s)
                if name in busy and entry["status"] == "healthy":
                    entry["reason"] = f"all {load.slots} engine slots in use; within SLO"
                self.metrics.set_pool_status(name, entry["status"])
                entry.update(in_flight=load.in_flight, slots=load.slots, queue_limit=load.queue_limit,
                             recent_ttft_s=load.recent_ttft_s)
                pools[name] = entry
            statuses = {p["status"] for p in pools.values()}
            overall = "unhealthy" if "unhealthy" in statuses else "degraded" if "degraded" in statuses else "healthy"
            self._cached = {"status": overall, "pools": pools}
            self._cached_at = time.monotonic()
            return self._cached

    async def run(self, interval_s: float) -> None:
        """Check every pool every `interval_s` until cancelled (started by the app's lifespan),
        so the router stops sending requests to a pool that does not answer, and resumes
        when it answers again, without waiting for someone to call /health."""
        unhealthy: frozenset = frozenset()
        answered_once: set = set()  # a pool that never answered is still starting, not down
        while True:
            try:
                report = await self.report()
                now = frozenset(n for n, p in report["pools"].items() if p["status"] == "unhealthy")
                up = set(report["pools"]) - now
                for name in sorted(now - unhealthy):
                    if name in answered_once:
                        logger.warning("pool %s is unhealthy (%s); it takes no new requests until it answers",
                                       name, report["pools"][name]["reason"])
                    else:
                        logger.info("pool %s does not answer yet (starting); it takes requests once it answers", name)
                for name in sorted(up - answered_once):
                    logger.info("pool %s answers; it takes requests", name)
                for name in sorted((unhealthy - now) & answered_once):
                    logger.warning("pool %s answers again; it takes requests", name)
                answered_once |= up
                unhealthy = now
            except Exception:  # noqa: BLE001 - the loop outlives any one failed round
                logger.exception("pool health check round failed")
            # While a pool is down, check again soon: its replacement (or, at start-up, the
            # pool itself) takes requests as soon as a check reaches it.
            await asyncio.sleep(min(interval_s, RECHECK_UNHEALTHY_S) if unhealthy else interval_s)

    async def refresh(self, wait_s: float) -> None:
        """Refresh the health gauges for a scrape, waiting at most `wait_s`: a slow check
        finishes in the background and the next scrape shows it."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.report())
            self._refreshing.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(asyncio.shield(self._refreshing), wait_s)
        except Exception:  # noqa: BLE001 - a scrape never fails on a health check
            pass
