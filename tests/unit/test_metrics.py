"""server/metrics.py on fresh registries, and the metrics the ingress records on its real
request path (create_app over a fake pool backend: no Ray, no engine)."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import string
import subprocess
from typing import Any, Dict, List, Optional

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from server.config import parse_config
from server.metrics import (
    DOWNGRADE_REASONS, MODES, POOL_STATUSES, PREFIX, REJECTION_REASONS, ROUTE_REASONS, ServeMetrics,
)

ALLOWED_LABELS = {"pool", "mode", "status", "reason"}
COUNTER_UNITS = ("requests", "decisions", "downgrades", "rejections", "tokens")
GAUGE_UNITS = ("_requests",)
BOOLEAN_GAUGES = {f"{PREFIX}_pool_healthy", f"{PREFIX}_pool_status"}
KEYS = "main:sk-unit-main,limited:sk-unit-limited"


def families(metrics: ServeMetrics) -> Dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def sample(metrics: ServeMetrics, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent)."""
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def total(metrics: ServeMetrics, name: str, **labels: str) -> float:
    out = 0.0
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out += s.value
    return out


# --- the definitions ------------------------------------------------------------------
def test_fresh_registries_are_independent():
    a = ServeMetrics(registry=CollectorRegistry(), pools=["fast"])
    b = ServeMetrics(registry=CollectorRegistry(), pools=["fast"])
    a.requests.labels("fast", "fast", "200").inc()
    assert sample(a, "qwen_serve_requests_total", pool="fast") == 1
    assert sample(b, "qwen_serve_requests_total", pool="fast") == 0
    # A registry of its own when none is given, so two apps in one process do not clash.
    ServeMetrics(pools=["fast"]), ServeMetrics(pools=["fast"])


def test_names_prefix_units_and_no_vllm_names():
    fams = families(ServeMetrics(pools=["fast", "thinking"]))
    assert len(fams) >= 17
    for name, fam in fams.items():
        assert name.startswith(PREFIX + "_"), name
        assert "vllm" not in name and ":" not in name, name
        if fam.type == "histogram":
            assert name.endswith("_seconds"), name
        elif fam.type == "counter":
            assert name.split("_")[-1] in COUNTER_UNITS, name
            assert all(s.name.endswith("_total") for s in fam.samples), name
        else:
            assert fam.type == "gauge"
            assert name.endswith(GAUGE_UNITS) or name in BOOLEAN_GAUGES, name


def test_labels_are_few_and_from_the_bounded_set():
    m = ServeMetrics(pools=["fast", "thinking"])
    for collector in m.registry._collector_to_names:  # every metric object
        names = set(getattr(collector, "_labelnames", ()))
        assert names <= ALLOWED_LABELS, (collector, names)
        assert len(names) <= 3


def test_created_series_are_not_exported():
    m = ServeMetrics(pools=["fast"])
    m.requests.labels("fast", "fast", "200").inc()
    m.e2e.labels("fast", "fast").observe(0.3)
    text = m.render().decode()
    assert "_created" not in text
    assert 'qwen_serve_requests_total{mode="fast",pool="fast",status="200"} 1.0' in text


def test_known_label_values_exist_before_the_first_event():
    m = ServeMetrics(pools=["fast", "thinking"])
    for reason in REJECTION_REASONS:
        assert f'qwen_serve_rejections_total{{reason="{reason}"}} 0.0' in m.render().decode()
    decisions = [s for s in families(m)["qwen_serve_route_decisions"].samples]
    assert {(s.labels["mode"], s.labels["reason"]) for s in decisions} == {(mo, r) for mo in MODES for r in ROUTE_REASONS}
    downgrades = families(m)["qwen_serve_downgrades"].samples
    assert {(s.labels["pool"], s.labels["reason"]) for s in downgrades} == {(p, r) for p in ("fast", "thinking") for r in DOWNGRADE_REASONS}
    assert sample(m, "qwen_serve_in_flight_requests", pool="thinking") == 0
    assert sample(m, "qwen_serve_queued_requests", pool="thinking") == 0


def test_buckets_cover_the_slo_and_long_thinking():
    m = ServeMetrics(pools=["fast"])
    m.ttft.labels("fast", "fast").observe(1.9)
    m.ttfat.labels("fast", "fast").observe(200)
    bounds = {s.labels["le"] for s in families(m)["qwen_serve_time_to_first_token_seconds"].samples if "le" in s.labels}
    assert "2.0" in bounds  # the default TTFT SLO is a bucket boundary
    assert sample(m, "qwen_serve_time_to_first_answer_token_seconds_bucket", le="160.0") == 0
    assert sample(m, "qwen_serve_time_to_first_answer_token_seconds_bucket", le="320.0") == 1


class _Limits:
    def __init__(self, slots: int, queue_limit: int) -> None:
        self.slots, self.queue_limit = slots, queue_limit


def test_queued_is_in_flight_beyond_the_slots():
    m = ServeMetrics(pools=["thinking"])
    m.set_pool_limits({"thinking": _Limits(8, 8)})
    assert sample(m, "qwen_serve_pool_slot_limit_requests", pool="thinking") == 8
    assert sample(m, "qwen_serve_pool_queue_limit_requests", pool="thinking") == 8
    for n, queued in ((0, 0), (5, 0), (8, 0), (9, 1), (16, 8)):
        m.set_load("thinking", n)
        assert sample(m, "qwen_serve_in_flight_requests", pool="thinking") == n
        assert sample(m, "qwen_serve_queued_requests", pool="thinking") == queued


def test_pool_status_is_one_hot():
    m = ServeMetrics(pools=["fast"])
    for status in POOL_STATUSES:
        m.set_pool_status("fast", status)
        values = {s: sample(m, "qwen_serve_pool_status", pool="fast", status=s) for s in POOL_STATUSES}
        assert values == {s: (1.0 if s == status else 0.0) for s in POOL_STATUSES}
        assert sample(m, "qwen_serve_pool_healthy", pool="fast") == (0.0 if status == "unhealthy" else 1.0)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (deploy/install.sh --test)")
def test_promtool_check_metrics_passes_on_a_busy_registry():
    m = ServeMetrics(pools=["fast", "thinking"])
    m.set_pool_limits({"fast": _Limits(64, 64), "thinking": _Limits(8, 8)})
    for pool, mode in (("fast", "fast"), ("thinking", "thinking")):
        m.requests.labels(pool, mode, "200").inc()
        for h in (m.e2e, m.ttft, m.ttfat, m.itl):
            h.labels(pool, mode).observe(0.05)
        m.prompt_tokens.labels(pool, mode).inc(10)
        m.set_pool_status(pool, "healthy")
    m.decision_latency.observe(0.0001)
    out = subprocess.run(["promtool", "check", "metrics"], input=m.render(), capture_output=True, timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert out.stdout.decode().strip() == "" and out.stderr.decode().strip() == ""


# --- recorded on the ingress's request path -----------------------------------------------
def _frame(body: Dict[str, Any]) -> str:
    return "data: " + orjson.dumps(body).decode() + "\n\n"


def _delta(**delta: Any) -> str:
    return _frame({"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})


USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12, "completion_tokens_details": {"reasoning_tokens": 2}}


class FakeStream:
    def __init__(self, items: List[Any], error: Optional[BaseException] = None, gate: Optional[asyncio.Event] = None) -> None:
        self.items = list(items)
        self.error = error
        self.gate = gate
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.error is not None:
            raise self.error
        if self.gate is not None:
            await self.gate.wait()
        if not self.items:
            raise StopAsyncIteration
        await asyncio.sleep(0.001)
        return self.items.pop(0)

    def cancel(self) -> None:
        self.cancelled = True


class BackPressureError(Exception):
    """Named like Ray Serve's: the forwarder maps it to queue_full."""


class FakeBackend:
    def __init__(self) -> None:
        self.healthy = {"fast": True, "thinking": True}
        self.gate: Optional[asyncio.Event] = None
        self.fail_with: Optional[BaseException] = None
        self.engine_error: Optional[int] = None
        self.check_delay = {"fast": 0.0, "thinking": 0.0}
        self.checked: List[str] = []

    def call(self, kind: str, pool: str, request: Any) -> FakeStream:
        if self.fail_with is not None:
            return FakeStream([], error=self.fail_with)
        if self.engine_error is not None:
            err = type("ErrorResponse", (), {})()
            err.error = type("Info", (), {"code": self.engine_error, "message": "This model's maximum context length is 10 tokens", "param": None})()
            return FakeStream([err])
        if not getattr(request, "stream", False):
            return FakeStream([{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}], "usage": USAGE}])
        frames = [_delta(role="assistant", content=""), _delta(reasoning="let"), _delta(reasoning=" me"),
                  [_delta(content="Hi"), _delta(content=" there")], _delta(content="!"),
                  _frame({"id": "x", "choices": [], "usage": USAGE}), "data: [DONE]\n\n"]
        return FakeStream(frames, gate=self.gate)

    async def check(self, pool: str, timeout_s: float) -> None:
        self.checked.append(pool)
        if self.check_delay[pool]:
            await asyncio.wait_for(asyncio.sleep(self.check_delay[pool]), timeout_s)
        if not self.healthy[pool]:
            raise ConnectionError("replica died")


def make_app(monkeypatch, **overrides):
    from server.ingress.api import create_app

    monkeypatch.setenv("QWEN_SERVE_UNIT_KEYS", KEYS)
    doc = {
        "pools": {"fast": {"model": "tiny-qwen3-dense", "max_ongoing_requests": 4, "max_queued_requests": 4},
                  "thinking": {"model": "tiny-qwen3-moe", "max_ongoing_requests": 2, "max_queued_requests": 2}},
        "security": {"api_keys_env": "QWEN_SERVE_UNIT_KEYS", "per_key_limits": {"limited": {"requests_per_minute": 2}}},
        "router": {"load": {"ttft_slo_s": 60}},
        **overrides,
    }
    config = parse_config(doc, "unit")
    backend = FakeBackend()
    metrics = ServeMetrics(registry=CollectorRegistry(), pools=config.pools)
    return create_app(config, backend, metrics), backend, metrics


def _client(app, key: str = "sk-unit-main") -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers, timeout=10)


def _chat(model: str, stream: bool = False, text: str = "hello", **extra) -> Dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "stream": stream, **extra}


def test_requests_tokens_and_latency_histograms_on_the_path(monkeypatch):
    app, _, m = make_app(monkeypatch)

    async def run():
        async with _client(app) as c:
            r1 = await c.post("/v1/chat/completions", json=_chat("qwen3-fast"))
            r2 = await c.post("/v1/chat/completions", json=_chat("qwen3-thinking", stream=True))
            r3 = await c.post("/v1/chat/completions", json=_chat("qwen3-fast", stream=True))
            return r1, r2, r3

    r1, r2, r3 = asyncio.run(run())
    assert [r.status_code for r in (r1, r2, r3)] == [200, 200, 200]
    assert r2.headers["x-route-mode"] == "thinking" and r3.headers["x-route-mode"] == "fast"
    assert "usage" not in r3.text  # the client did not ask for it; the router still counted it
    assert sample(m, "qwen_serve_requests_total", pool="fast", mode="fast", status="200") == 2
    assert sample(m, "qwen_serve_requests_total", pool="thinking", mode="thinking", status="200") == 1
    assert sample(m, "qwen_serve_route_decisions_total", mode="fast", reason="alias") == 2
    assert sample(m, "qwen_serve_request_duration_seconds_count", pool="fast", mode="fast") == 2
    # TTFT, answer-token and ITL come from streamed requests only.
    assert sample(m, "qwen_serve_time_to_first_token_seconds_count", pool="fast", mode="fast") == 1
    assert sample(m, "qwen_serve_time_to_first_token_seconds_count", pool="thinking", mode="thinking") == 1
    assert sample(m, "qwen_serve_time_to_first_answer_token_seconds_count", pool="thinking", mode="thinking") == 1
    # Token frames: "let", " me", "Hi", " there", "!" -> 4 gaps per stream.
    assert sample(m, "qwen_serve_inter_token_latency_seconds_count", pool="thinking", mode="thinking") == 4
    assert sample(m, "qwen_serve_prompt_tokens_total", pool="fast", mode="fast") == 14
    assert sample(m, "qwen_serve_completion_tokens_total", pool="thinking", mode="thinking") == 5
    assert sample(m, "qwen_serve_reasoning_tokens_total", pool="thinking", mode="thinking") == 2
    assert sample(m, "qwen_serve_route_decision_seconds_count") == 3
    assert sample(m, "qwen_serve_in_flight_requests", pool="fast") == 0


def test_rejections_by_reason_on_the_path(monkeypatch):
    app, backend, m = make_app(monkeypatch)

    async def run():
        statuses = []
        async with _client(app, key="") as anon:
            statuses.append((await anon.post("/v1/chat/completions", json=_chat("qwen3"))).status_code)
        async with _client(app, key="sk-wrong") as wrong:
            statuses.append((await wrong.post("/v1/chat/completions", json=_chat("qwen3"))).status_code)
        async with _client(app) as c:
            statuses.append((await c.post("/v1/chat/completions", content=b"{not json")).status_code)
            statuses.append((await c.post("/v1/chat/completions", json=_chat("no-such-model"))).status_code)
            backend.engine_error = 400  # the engine's own validation (context length)
            statuses.append((await c.post("/v1/chat/completions", json=_chat("qwen3-fast"))).status_code)
            backend.engine_error = None
            backend.fail_with = BackPressureError()  # Serve's queue is full
            statuses.append((await c.post("/v1/chat/completions", json=_chat("qwen3-fast"))).status_code)
            backend.fail_with = None
        async with _client(app, key="sk-unit-limited") as limited:
            for _ in range(3):
                statuses.append((await limited.post("/v1/chat/completions", json=_chat("qwen3-fast"))).status_code)
        return statuses

    statuses = asyncio.run(run())
    assert statuses == [401, 401, 400, 404, 400, 503, 200, 200, 429]
    assert sample(m, "qwen_serve_rejections_total", reason="auth") == 2
    assert sample(m, "qwen_serve_rejections_total", reason="bad_request") == 3
    assert sample(m, "qwen_serve_rejections_total", reason="queue_full") == 1
    assert sample(m, "qwen_serve_rejections_total", reason="rate_limit") == 1
    assert sample(m, "qwen_serve_requests_total", pool="none", mode="none", status="400") == 1
    assert sample(m, "qwen_serve_requests_total", pool="none", mode="none", status="404") == 1
    assert sample(m, "qwen_serve_requests_total", pool="fast", mode="fast", status="400") == 1
    assert sample(m, "qwen_serve_requests_total", pool="fast", mode="fast", status="503") == 1
    assert sample(m, "qwen_serve_requests_total", pool="fast", mode="fast", status="429") == 1
    assert sample(m, "qwen_serve_in_flight_requests", pool="fast") == 0


def test_queued_gauge_downgrade_and_pool_full_on_the_path(monkeypatch):
    # thinking: 2 slots + 2 queued. Hold 4 streams open: the pool is degraded (near a full
    # queue), 2 requests are queued, and an auto request that wants thinking is downgraded.
    app, backend, m = make_app(monkeypatch)
    hard = "Prove step by step that the sum of two even integers is even, then solve x^2 - 5x + 6 = 0."

    async def run():
        backend.gate = asyncio.Event()
        async with _client(app) as c:
            held = [asyncio.create_task(c.post("/v1/chat/completions", json=_chat("qwen3-thinking", stream=True))) for _ in range(4)]
            for _ in range(200):
                await asyncio.sleep(0.01)
                if sample(m, "qwen_serve_in_flight_requests", pool="thinking") == 4:
                    break
            during = {
                "in_flight": sample(m, "qwen_serve_in_flight_requests", pool="thinking"),
                "queued": sample(m, "qwen_serve_queued_requests", pool="thinking"),
                "health": (await c.get("/health", params={"verbose": 1})).json(),
                "ready": (await c.get("/ready")).status_code,
            }
            backend.gate.set()  # the auto request streams too, so open the gate first
            auto = await c.post("/v1/chat/completions", json=_chat("qwen3", text=hard))
            done = await asyncio.gather(*held)
        return during, auto, done

    during, auto, done = asyncio.run(run())
    assert during["in_flight"] == 4 and during["queued"] == 2
    assert during["health"]["pools"]["thinking"]["status"] == "degraded"
    assert "in flight" in during["health"]["pools"]["thinking"]["reason"]
    assert during["ready"] == 200  # degraded still serves
    assert auto.headers["x-route-reason"] == "downgrade_fast" and auto.headers["x-route-mode"] == "fast"
    assert sample(m, "qwen_serve_downgrades_total", pool="thinking", reason="downgrade_fast") == 1
    assert sample(m, "qwen_serve_route_decisions_total", mode="fast", reason="downgrade_fast") == 1
    assert [r.status_code for r in done] == [200] * 4
    assert sample(m, "qwen_serve_queued_requests", pool="thinking") == 0


def test_pool_full_is_a_queue_full_rejection(monkeypatch):
    app, backend, m = make_app(monkeypatch)

    async def run():
        backend.gate = asyncio.Event()
        async with _client(app) as c:
            held = [asyncio.create_task(c.post("/v1/chat/completions", json=_chat("qwen3-thinking", stream=True))) for _ in range(4)]
            for _ in range(200):
                await asyncio.sleep(0.01)
                if sample(m, "qwen_serve_in_flight_requests", pool="thinking") == 4:
                    break
            refused = await c.post("/v1/chat/completions", json=_chat("qwen3-thinking"))
            backend.gate.set()
            await asyncio.gather(*held)
        return refused

    refused = asyncio.run(run())
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "pool_at_capacity"
    assert sample(m, "qwen_serve_rejections_total", reason="queue_full") == 1
    assert sample(m, "qwen_serve_requests_total", pool="thinking", mode="thinking", status="429") == 1


def test_scrape_refreshes_pool_health(monkeypatch):
    app, backend, m = make_app(monkeypatch)

    async def run():
        async with _client(app, key="") as c:  # /metrics is public in this config
            first = (await c.get("/metrics")).text
            backend.healthy["thinking"] = False
            await asyncio.sleep(1.1)  # the health report is cached for a second
            second = (await c.get("/metrics")).text
            ready = await c.get("/ready")
            verbose = await c.get("/health", params={"verbose": 1})
        return first, second, ready, verbose

    first, second, ready, verbose = asyncio.run(run())
    assert 'qwen_serve_pool_healthy{pool="thinking"} 1.0' in first
    assert 'qwen_serve_pool_status{pool="thinking",status="healthy"} 1.0' in first
    assert 'qwen_serve_pool_healthy{pool="thinking"} 0.0' in second
    assert 'qwen_serve_pool_status{pool="thinking",status="unhealthy"} 1.0' in second
    assert 'qwen_serve_pool_status{pool="fast",status="healthy"} 1.0' in second
    assert ready.status_code == 503 and ready.json()["pools"] == {"fast": "healthy", "thinking": "unhealthy"}
    body = verbose.json()
    assert verbose.status_code == 503 and body["status"] == "unhealthy"
    assert "no replica answered" in body["pools"]["thinking"]["reason"] and "ConnectionError" in body["pools"]["thinking"]["reason"]


def test_label_values_stay_bounded_under_hostile_input(monkeypatch):
    """Model names, prompts, keys and headers chosen by clients never become label values."""
    app, _, m = make_app(monkeypatch)
    rng = random.Random(7)

    def junk(n: int) -> str:
        return "".join(rng.choice(string.ascii_letters + string.digits + "{}\"=,") for _ in range(n))

    async def run():
        async with _client(app) as c:
            for i in range(40):
                model = rng.choice(["qwen3", "qwen3-fast", "qwen3-thinking", "fast", "thinking", junk(12)])
                body = _chat(model, stream=rng.random() < 0.5, text=junk(40) + rng.choice([" /think", " /no_think", ""]))
                if rng.random() < 0.3:
                    body["reasoning_effort"] = rng.choice(["low", "high", "none", junk(5)])
                if rng.random() < 0.2:
                    body["max_tokens"] = rng.choice([-1, "x", 10**9])
                await c.post("/v1/chat/completions", json=body, headers={"x-request-id": junk(20)})
        async with _client(app, key=junk(16)) as bad:
            await bad.post("/v1/chat/completions", json=_chat("qwen3"))

    asyncio.run(run())
    allowed = {
        "pool": {"fast", "thinking", "none"},
        "mode": {"fast", "thinking", "none"},
        "reason": set(ROUTE_REASONS) | set(REJECTION_REASONS) | {"engine_error", "server_error", "timeout", "client_closed"},
        "status": None,  # a 3-digit HTTP status
    }
    seen = 0
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            for key, value in s.labels.items():
                if key == "le":
                    continue
                if key == "status" and family.name != "qwen_serve_pool_status":
                    assert re.fullmatch(r"[1-5]\d\d", value), (s.name, value)
                elif key == "status":
                    assert value in POOL_STATUSES
                else:
                    assert value in allowed[key], (s.name, key, value)
                seen += 1
    assert seen > 50


def test_a_busy_pool_is_not_health_checked_behind_its_own_requests(monkeypatch):
    # Every slot taken: a check would wait in Serve's queue behind the requests (on the
    # real stack it timed out and called a serving pool unhealthy).
    app, backend, m = make_app(monkeypatch)

    async def run():
        backend.gate = asyncio.Event()
        backend.check_delay["thinking"] = 30  # would time out if it were awaited
        async with _client(app) as c:
            held = [asyncio.create_task(c.post("/v1/chat/completions", json=_chat("qwen3-thinking", stream=True))) for _ in range(2)]
            for _ in range(200):
                await asyncio.sleep(0.01)
                if sample(m, "qwen_serve_in_flight_requests", pool="thinking") == 2:
                    break
            backend.checked.clear()
            t0 = asyncio.get_running_loop().time()
            verbose = (await c.get("/health", params={"verbose": 1})).json()
            took = asyncio.get_running_loop().time() - t0
            checked = list(backend.checked)
            backend.gate.set()
            await asyncio.gather(*held)
        return verbose, took, checked

    verbose, took, checked = asyncio.run(run())
    assert checked == ["fast"] and took < 2
    thinking = verbose["pools"]["thinking"]
    assert thinking["status"] == "healthy" and thinking["reason"] == "all 2 engine slots in use; within SLO"
    assert thinking["in_flight"] == 2 and verbose["status"] == "healthy"


def test_a_scrape_does_not_wait_for_a_slow_health_check(monkeypatch):
    app, backend, m = make_app(monkeypatch)

    async def run():
        backend.check_delay["fast"] = 2.0
        backend.healthy["fast"] = False
        loop = asyncio.get_running_loop()
        async with _client(app, key="") as c:
            t0 = loop.time()
            first = (await c.get("/metrics")).text
            took = loop.time() - t0
            await asyncio.sleep(1.5)  # the check finishes in the background
            second = (await c.get("/metrics")).text
        return took, first, second

    took, first, second = asyncio.run(run())
    assert took < 1.8
    assert 'qwen_serve_pool_status{pool="fast",status="unhealthy"} 1.0' not in first
    assert 'qwen_serve_pool_status{pool="fast",status="unhealthy"} 1.0' in second
    assert 'qwen_serve_pool_healthy{pool="fast"} 0.0' in second


def test_classify_pool_health():
    from server.ingress.health import classify

    assert classify(True, "", 0, 8, 8, None, 2.0) == {"status": "healthy", "reason": "engine answers; within SLO"}
    assert classify(True, "", 0, 8, 8, 1.9, 2.0)["status"] == "healthy"
    slow = classify(True, "", 1, 8, 8, 3.5, 2.0)
    assert slow == {"status": "degraded", "reason": "recent TTFT 3.500s over SLO 2.000s"}
    assert classify(True, "", 14, 8, 8, None, 2.0)["status"] == "healthy"  # 14 < 0.9 * 16
    full = classify(True, "", 15, 8, 8, 2.5, 2.0)
    assert full["status"] == "degraded" and full["reason"] == "recent TTFT 2.500s over SLO 2.000s; 15 requests in flight of 16 allowed"
    dead = classify(False, "timed out after 5s", 15, 8, 8, 9.0, 2.0)
    assert dead == {"status": "unhealthy", "reason": "no replica answered the health check (timed out after 5s)"}


# --- the mirror into Ray Serve's metrics (server.metrics.ray_metric on the stack) -------
class FakeMirrorMetric:
    """What ray.serve.metrics records, per tag set: a counter's sum, a gauge's last value,
    a histogram's count and sum."""

    def __init__(self, kind: str, name: str, labels: tuple, buckets: Optional[tuple]) -> None:
        self.kind, self.name, self.labels, self.buckets = kind, name, labels, buckets
        self.values: Dict[tuple, Any] = {}
        self.sets = 0

    def _key(self, tags: Dict[str, str]) -> tuple:
        assert set(tags) == set(self.labels) and all(isinstance(v, str) for v in tags.values()), tags
        return tuple(sorted(tags.items()))

    def inc(self, value: float, tags: Dict[str, str]) -> None:
        assert value > 0  # Ray's counters raise on 0
        key = self._key(tags)
        self.values[key] = self.values.get(key, 0) + value

    def set(self, value: float, tags: Dict[str, str]) -> None:
        self.values[self._key(tags)] = value
        self.sets += 1

    def observe(self, value: float, tags: Dict[str, str]) -> None:
        count, total_ = self.values.get(self._key(tags), (0, 0.0))
        self.values[self._key(tags)] = (count + 1, total_ + value)


def test_every_update_is_mirrored_with_the_same_labels_and_values(monkeypatch):
    made: Dict[str, FakeMirrorMetric] = {}

    def factory(kind, name, documentation, labels, buckets):
        assert documentation and (buckets is not None) == (kind == "histogram")
        made[name] = FakeMirrorMetric(kind, name, labels, buckets)
        return made[name]

    from server.ingress.api import create_app

    monkeypatch.setenv("QWEN_SERVE_UNIT_KEYS", KEYS)
    config = parse_config({
        "pools": {"fast": {"model": "tiny-qwen3-dense"}, "thinking": {"model": "tiny-qwen3-moe"}},
        "security": {"api_keys_env": "QWEN_SERVE_UNIT_KEYS"},
    }, "unit")
    m = ServeMetrics(registry=CollectorRegistry(), pools=config.pools, mirror=factory)
    app = create_app(config, FakeBackend(), m)

    async def run():
        async with _client(app) as c:
            await c.post("/v1/chat/completions", json=_chat("qwen3-fast"))
            await c.post("/v1/chat/completions", json=_chat("qwen3-thinking", stream=True))
            await c.post("/v1/chat/completions", json=_chat("qwen3-fast", stream=True))
            await c.post("/v1/chat/completions", json={"model": "qwen3-fast"})  # 400
        async with _client(app, key="sk-wrong") as c:
            await c.post("/v1/chat/completions", json=_chat("qwen3-fast"))  # 401
        async with _client(app) as c:
            await c.get("/metrics")

    asyncio.run(run())
    prom = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert set(made) == set(prom)  # one mirror per metric, under the same name
    compared = 0
    for name, mirror in made.items():
        for s in prom[name].samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            got = mirror.values.get(key)
            if mirror.kind == "counter":
                assert (got or 0) == s.value, (s, got)
            elif mirror.kind == "gauge":
                assert got == s.value, (s, got)
            elif s.name.endswith("_count"):
                assert (got or (0, 0))[0] == s.value, (s, got)
            elif s.name.endswith("_sum"):
                assert (got or (0, 0.0))[1] == pytest.approx(s.value), (s, got)
            compared += 1
    assert made[f"{PREFIX}_inter_token_latency_seconds"].values  # the streamed gaps were mirrored
    assert made[f"{PREFIX}_rejections"].values[(("reason", "auth"),)] == 1
    assert compared > 50


def test_mirrored_gauges_are_recorded_again_so_ray_keeps_them():
    made: Dict[str, FakeMirrorMetric] = {}

    def factory(kind, name, documentation, labels, buckets):
        made[name] = FakeMirrorMetric(kind, name, labels, buckets)
        return made[name]

    m = ServeMetrics(registry=CollectorRegistry(), pools=["fast"], mirror=factory)
    m.set_pool_limits({"fast": type("L", (), {"slots": 4, "queue_limit": 2})()})  # once, at start-up
    limit = made[f"{PREFIX}_pool_queue_limit_requests"]
    assert limit.values == {(("pool", "fast"),): 2} and limit.sets == 1
    m.set_load("fast", 5)
    m.resend_gauges()
    m.resend_gauges()
    assert limit.sets == 3 and limit.values == {(("pool", "fast"),): 2}
    assert made[f"{PREFIX}_queued_requests"].values == {(("pool", "fast"),): 1}
    assert made[f"{PREFIX}_in_flight_requests"].sets == 4  # start-up 0, then 5 three times
    assert made[f"{PREFIX}_requests"].sets == 0  # counters are cumulative in Ray: never resent
    assert m.mirrored and not ServeMetrics(registry=CollectorRegistry()).mirrored

    async def refresh_for_a_while():
        task = asyncio.create_task(m.keep_gauges_fresh(interval_s=0.01))
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(refresh_for_a_while())
    assert limit.sets >= 5
