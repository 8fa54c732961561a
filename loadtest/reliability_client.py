"""The reliability benchmark's client side: one request and how it ended, the router's
and the engines' counters, readiness, and the resources of a local stack's process tree.

Every request ends in exactly one outcome: `ok` (a 200 with a complete answer), `error`
(an OpenAI-shaped HTTP error, or an SSE error frame followed by [DONE]), `cancelled` (the
client hung up on purpose) or `lost` (no answer in time, or a connection dropped without
an error).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import httpx

@dataclass
class Outcome:
    kind: str  # ok | error | cancelled | lost
    status: int = 0
    detail: str = ""
    retry_after: Optional[str] = None
    seconds: float = 0.0


@dataclass
class Tally:
    outcomes: List[Outcome] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)

    def by_status(self) -> Dict[str, int]:
        return dict(sorted(collections.Counter(f"{o.kind}:{o.status}" for o in self.outcomes).items()))

    def server_errors(self) -> List[Outcome]:
        """5xx answers and SSE error frames that say a 5xx (the server failed us)."""
        out = []
        for o in self.outcomes:
            if o.status >= 500 or (o.kind == "error" and o.status == 200 and '"type":"server_error"' in o.detail):
                out.append(o)
        return out

    def summary(self) -> Dict[str, Any]:
        return {"sent": self.sent, "ok": self.count("ok"), "clean_errors": self.count("error"),
                "cancelled": self.count("cancelled"), "lost": self.count("lost"), "by_status": self.by_status()}


def _shaped(raw: bytes) -> bool:
    try:
        err = json.loads(raw)["error"]
        return {"message", "type", "param", "code"} <= set(err)
    except (ValueError, KeyError, TypeError):
        return False


async def send(client: httpx.AsyncClient, body: Dict[str, Any], headers: Dict[str, str], timeout_s: float,
               cancel_after_chunks: Optional[int] = None, path: str = "/v1/chat/completions") -> Outcome:
    """Send one request and classify how it ended (see the module docstring)."""
    started = time.monotonic()
    stream = bool(body.get("stream"))

    async def run() -> Outcome:
        async with client.stream("POST", path, json=body, headers=headers) as r:
            ra = r.headers.get("retry-after")
            if r.status_code != 200:
                raw = await r.aread()
                return Outcome("error" if _shaped(raw) else "lost", r.status_code, raw[:300].decode(errors="replace"), ra)
            if not stream:
                raw = await r.aread()
                try:
                    ok = bool(json.loads(raw).get("choices"))
                except ValueError:
                    ok = False
                return Outcome("ok" if ok else "lost", 200, "" if ok else raw[:200].decode(errors="replace"), ra)
            text = ""
            events = 0
            async for part in r.aiter_text():
                text += part
                events = text.count("\n\ndata: ")
                if cancel_after_chunks is not None and events >= cancel_after_chunks:
                    return Outcome("cancelled", 200)
            if not text.rstrip().endswith("data: [DONE]"):
                return Outcome("lost", 200, "stream ended without [DONE]: " + text[-200:])
            if '"error":{' in text:
                tail = text[text.rfind('data: {"error"'):]
                return Outcome("error", 200, tail[:300])
            return Outcome("ok", 200)

    try:
        out = await asyncio.wait_for(run(), timeout_s)
    except asyncio.TimeoutError:
        out = Outcome("lost", 0, f"no answer in {timeout_s:g}s")
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as err:
        out = Outcome("lost", 0, f"connection dropped: {type(err).__name__}")
    except httpx.ConnectError as err:
        out = Outcome("error", 0, f"connection refused: {type(err).__name__}")
    out.seconds = time.monotonic() - started
    return out


def chat(model: str, text: str, max_tokens: int, stream: bool = False, **extra: Any) -> Dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "stream": stream, **extra}


# --- metrics -----------------------------------------------------------------------------

def prom_samples(text: str):
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            yield s.name, s.labels, s.value


def router_counts(url: str, headers: Dict[str, str]) -> Dict[str, float]:
    """qwen_serve_requests_total by status, summed over pools and modes."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
    counts: Dict[str, float] = collections.Counter()
    for name, labels, value in prom_samples(text):
        if name == "qwen_serve_requests_total":
            counts[labels["status"]] += value
    return dict(counts)


def count_delta(after: Dict[str, float], before: Dict[str, float]) -> Dict[str, int]:
    keys = set(after) | set(before)
    return {k: int(round(after.get(k, 0) - before.get(k, 0))) for k in sorted(keys)
            if round(after.get(k, 0) - before.get(k, 0))}


def engine_counter(port: int, name: str, pool: str) -> Optional[float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    found = [v for n, lab, v in prom_samples(text) if n == name and lab.get("model_name") == pool]
    return sum(found) if found else None


def settled_engine_counter(port: int, name: str, pool: str, timeout_s: float = 60) -> Optional[float]:
    """The counter once two scrapes 4 s apart agree (Ray exports every few seconds)."""
    last = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = engine_counter(port, name, pool)
        if value is not None and value == last:
            return value
        last = value if value is not None else last
        time.sleep(4)
    return None


def wait_idle(url: str, timeout_s: float = 60) -> bool:
    """The router has nothing in flight for any pool."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            report = httpx.get(f"{url}/health?verbose=1", timeout=30).json()
            if all(p.get("in_flight", 0) == 0 for p in report["pools"].values()):
                return True
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(1)
    return False


def wait_ready(url: str, timeout_s: float = 300) -> Optional[float]:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if httpx.get(f"{url}/ready", timeout=20).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(2)
    return None


def tree_resources(pid: int) -> Dict[str, float]:
    """Resident memory (bytes) and open file descriptors of a process tree."""
    import psutil

    rss = fds = procs = 0
    try:
        root = psutil.Process(pid)
        members = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return {"rss": 0.0, "fds": 0.0, "procs": 0.0}
    for p in members:
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
            procs += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {"rss": float(rss), "fds": float(fds), "procs": float(procs)}
