"""Every metric the project defines, on an injectable prometheus_client registry.

Names carry the `qwen_serve_` prefix and a unit suffix; labels are few and bounded:
`pool` and `mode` (from the config), `status` (an HTTP status code), `reason` (a fixed
set of route and rejection reasons). Nothing per user or per prompt. vLLM's own engine
metrics (`vllm:*`) are exported separately, through Ray's metrics port.
"""

from __future__ import annotations

from typing import Iterable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "qwen_serve"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
DECISION_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """The router's metrics. One instance per ingress replica, handed in by the app's lifespan."""

    def __init__(self, registry: Optional[CollectorRegistry] = None, pools: Iterable[str] = ()) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        p = PREFIX
        self.requests = Counter(f"{p}_requests", "Requests finished, by pool, mode and HTTP status.", ["pool", "mode", "status"], registry=r)
        self.route_decisions = Counter(f"{p}_route_decisions", "Mode decisions by mode and reason.", ["mode", "reason"], registry=r)
        self.downgrades = Counter(f"{p}_downgrades", "Auto requests downgraded because the thinking pool was saturated.", ["pool", "reason"], registry=r)
        self.rejections = Counter(
            f"{p}_rejections", "Requests refused before reaching an engine, by reason (rate_limit, queue_full, bad_request, auth, ...).",
            ["reason"], registry=r,
        )
        self.e2e = Histogram(f"{p}_request_duration_seconds", "End-to-end request latency at the router.", ["pool", "mode"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(f"{p}_time_to_first_token_seconds", "Time to the first generated token (reasoning or answer).", ["pool", "mode"], buckets=TTFT_BUCKETS, registry=r)
        self.ttfat = Histogram(
            f"{p}_time_to_first_answer_token_seconds",
            "Time to the first answer token, after </think> in thinking mode: the latency a user feels.",
            ["pool", "mode"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.itl = Histogram(f"{p}_inter_token_latency_seconds", "Gap between streamed chunks of one request.", ["pool", "mode"], buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter(f"{p}_prompt_tokens", "Prompt tokens of finished requests.", ["pool", "mode"], registry=r)
        self.completion_tokens = Counter(f"{p}_completion_tokens", "Completion tokens (reasoning included) of finished requests.", ["pool", "mode"], registry=r)
        self.reasoning_tokens = Counter(f"{p}_reasoning_tokens", "Reasoning (thinking) tokens of finished requests.", ["pool", "mode"], registry=r)
        self.in_flight = Gauge(f"{p}_in_flight_requests", "Requests this router has sent to a pool and not finished.", ["pool"], registry=r)
        self.queued = Gauge(f"{p}_queued_requests", "Requests beyond the pool's engine slots, waiting in Serve's queue.", ["pool"], registry=r)
        self.decision_latency = Histogram(f"{p}_route_decision_seconds", "Time the router takes to decide the mode.", buckets=DECISION_BUCKETS, registry=r)
        self.pool_healthy = Gauge(f"{p}_pool_healthy", "1 when the pool's engines answer health checks, else 0.", ["pool"], registry=r)
        for pool in pools:
            self.in_flight.labels(pool).set(0)
            self.queued.labels(pool).set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
