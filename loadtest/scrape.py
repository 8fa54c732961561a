"""The server's view: Prometheus ``/metrics`` scraped before and after a run, gauges polled.

Each metric role (requests, prompt tokens, generation tokens, the TTFT, TPOT and
end-to-end latency histograms, KV-cache usage) has a list of candidate names; the first
name present on the server is used, summed over its label sets (optionally only those
matching ``labels``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Dict, List, Optional

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .config import COUNTER_ROLES, HISTOGRAM_ROLES, MetricsConfig


def parse_samples(text: str, labels: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Sample name -> value summed over label sets (those matching ``labels``)."""
    out: Dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if labels and any(s.labels.get(k) != v for k, v in labels.items()):
                continue
            if s.name.endswith("_created"):
                continue
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


def pick(samples: Dict[str, float], names: List[str]) -> "tuple[Optional[str], Optional[float]]":
    for name in names:
        if name in samples:
            return name, samples[name]
    return None, None


class Scraper:
    """Before/after snapshots and a background gauge poller for one metrics URL."""

    def __init__(self, cfg: MetricsConfig, headers: Optional[Dict[str, str]] = None) -> None:
        self.cfg = cfg
        self.headers = headers or {}
        self.before: Dict[str, float] = {}
        self.after: Dict[str, float] = {}
        self.kv_samples: List[tuple] = []
        self.errors: List[str] = []
        self._task: Optional[asyncio.Task] = None
        self._session: Optional[aiohttp.ClientSession] = None

    async def __aenter__(self) -> "Scraper":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop_polling()
        if self._session is not None:
            await self._session.close()

    async def scrape(self) -> Dict[str, float]:
        assert self._session is not None
        try:
            async with self._session.get(self.cfg.url, headers=self.headers) as resp:
                resp.raise_for_status()
                text = await resp.text()
            return parse_samples(text, self.cfg.labels)
        except Exception as exc:  # a scrape failure must not end the load test
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return {}

    async def snapshot_before(self) -> None:
        self.before = await self.scrape()

    async def snapshot_after(self) -> None:
        self.after = await self.scrape()

    def start_polling(self, deadline_s: float = 24 * 3600) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll(deadline_s))

    async def stop_polling(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _poll(self, deadline_s: float) -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < deadline_s:
            samples = await self.scrape()
            _, kv = pick(samples, self.cfg.kv_cache_usage)
            if kv is not None:
                self.kv_samples.append((time.perf_counter() - t0, kv))
            await asyncio.sleep(self.cfg.poll_interval_s)

    def report(self) -> Dict[str, object]:
        """Deltas of the counters, latency means, KV-cache peak, and which names were used."""
        return server_view(self.cfg, self.before, self.after, self.kv_samples, self.errors)


def histogram_mean_ms(before: Dict[str, float], after: Dict[str, float], base: str) -> Optional[float]:
    """Mean of histogram `base` over the observations between two scrapes, in ms (its
    _sum and _count are exact, unlike quantiles read from buckets); None without any."""
    count = after.get(base + "_count", 0.0) - before.get(base + "_count", 0.0)
    if count <= 0:
        return None
    return 1000.0 * (after.get(base + "_sum", 0.0) - before.get(base + "_sum", 0.0)) / count


def server_view(cfg: MetricsConfig, before: Dict[str, float], after: Dict[str, float],
                kv_samples: List[tuple], errors: Optional[List[str]] = None) -> Dict[str, object]:
    out: Dict[str, object] = {"url": cfg.url, "names": {}, "errors": list(errors or [])}
    for role in COUNTER_ROLES:
        name, end = pick(after, getattr(cfg, role))
        start = before.get(name, 0.0) if name else None
        out["names"][role] = name
        out[role] = None if end is None else end - (start or 0.0)
    extra = {}
    for name in cfg.extra_counters:
        if name in after:
            extra[name] = after[name] - before.get(name, 0.0)
    out["extra"] = extra
    out["mean_ms"] = {}
    for role in HISTOGRAM_ROLES:
        name, _ = pick(after, [base + "_count" for base in getattr(cfg, role)])
        base = name.removesuffix("_count") if name else None
        out["names"][role] = base
        out["mean_ms"][role] = histogram_mean_ms(before, after, base) if base else None
    name, last = pick(after, cfg.kv_cache_usage)
    values = [v for _, v in kv_samples] + ([last] if last is not None else [])
    out["names"]["kv_cache_usage"] = name
    out["kv_cache_usage_peak"] = max(values) if values else None
    out["kv_cache_samples"] = len(kv_samples)
    return out
