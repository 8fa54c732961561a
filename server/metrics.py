"""Every metric the project defines, on an injectable prometheus_client registry.

Names carry the `qwen_serve_` prefix and a unit suffix; labels are few and bounded:
`pool` and `mode` (from the config), `status` (an HTTP status code), `reason` (a fixed
set of route and rejection reasons). Nothing per user or per prompt.

The router serves these at `/metrics` on the Serve HTTP port. vLLM's engine metrics are
not re-exported here: Ray Serve LLM records them through Ray's metrics agent, which
serves them (as `ray_vllm_*`, labelled `model_name=<pool>`) with Ray Serve's own
`ray_serve_*` metrics on Ray's metrics export port. deploy/METRICS.md lists both targets.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "qwen_serve"

# Seconds. End-to-end and time to first answer token span short fast-mode answers and
# long thinking-mode ones (minutes); TTFT has a boundary at the default 2 s SLO.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
DECISION_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)

MODES = ("thinking", "fast")
# Every `reason` label value the router can produce (server/routing/decide.py, server/ingress/*).
ROUTE_REASONS = ("enable_thinking", "reasoning_effort", "soft_switch", "alias", "pool", "auto", "default",
                 "downgrade_fast", "downgrade_budget")
DOWNGRADE_REASONS = ("downgrade_fast", "downgrade_budget")
REJECTION_REASONS = ("auth", "rate_limit", "queue_full", "pool_unavailable", "bad_request")
POOL_STATUSES = ("healthy", "degraded", "unhealthy")

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _WithoutCreated:
    """A registry view without prometheus_client's `*_created` series (noise for dashboards)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class ServeMetrics:
    """The router's metrics. One instance per ingress replica, handed in by the app's lifespan."""

    def __init__(self, registry: Optional[CollectorRegistry] = None, pools: Iterable[str] = ()) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._slots: dict = {}
        r = self.registry
        p = PREFIX
        self.requests = Counter(f"{p}_requests", "Requests finished, by pool, mode and HTTP status (pool and mode are 'none' when refused before routing).", ["pool", "mode", "status"], registry=r)
        self.route_decisions = Counter(f"{p}_route_decisions", "Mode decisions by mode and reason.", ["mode", "reason"], registry=r)
        self.downgrades = Counter(f"{p}_downgrades", "Auto requests downgraded because the thinking pool was saturated or unhealthy, by that pool.", ["pool", "reason"], registry=r)
        self.rejections = Counter(
            f"{p}_rejections", "Requests refused without an answer, by reason (auth, rate_limit, queue_full, pool_unavailable, bad_request, ...).",
            ["reason"], registry=r,
        )
        self.e2e = Histogram(f"{p}_request_duration_seconds", "End-to-end request latency at the router.", ["pool", "mode"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(f"{p}_time_to_first_token_seconds", "Time to the first generated token (reasoning or answer), streamed requests.", ["pool", "mode"], buckets=TTFT_BUCKETS, registry=r)
        self.ttfat = Histogram(
            f"{p}_time_to_first_answer_token_seconds",
            "Time to the first answer token, after </think> in thinking mode: the latency a user feels (streamed requests).",
            ["pool", "mode"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.itl = Histogram(f"{p}_inter_token_latency_seconds", "Gap between streamed token chunks of one request.", ["pool", "mode"], buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter(f"{p}_prompt_tokens", "Prompt tokens of finished requests.", ["pool", "mode"], registry=r)
        self.completion_tokens = Counter(f"{p}_completion_tokens", "Completion tokens (reasoning included) of finished requests.", ["pool", "mode"], registry=r)
        self.reasoning_tokens = Counter(f"{p}_reasoning_tokens", "Reasoning (thinking) tokens of finished requests.", ["pool", "mode"], registry=r)
        self.in_flight = Gauge(f"{p}_in_flight_requests", "Requests this router has sent to a pool and not finished.", ["pool"], registry=r)
        self.queued = Gauge(f"{p}_queued_requests", "In-flight requests beyond the pool's engine slots: waiting in Serve's queue.", ["pool"], registry=r)
        self.slots = Gauge(f"{p}_pool_slot_limit_requests", "Requests the pool's engines run at once (this router's share).", ["pool"], registry=r)
        self.queue_limit = Gauge(f"{p}_pool_queue_limit_requests", "Requests allowed to wait beyond the slots (this router's share).", ["pool"], registry=r)
        self.decision_latency = Histogram(f"{p}_route_decision_seconds", "Time the router takes to decide the mode.", buckets=DECISION_BUCKETS, registry=r)
        self.pool_healthy = Gauge(f"{p}_pool_healthy", "1 when a replica of the pool answers health checks, else 0 (refreshed by the router's background checks and at each scrape).", ["pool"], registry=r)
        self.pool_status = Gauge(
            f"{p}_pool_status", "1 for the pool's current status (healthy, degraded or unhealthy), 0 for the others.",
            ["pool", "status"], registry=r,
        )
        self._init_series(list(pools))

    def _init_series(self, pools: list) -> None:
        """Create the bounded label sets up front, so the first event is a visible increase."""
        for mode in MODES:
            for reason in ROUTE_REASONS:
                self.route_decisions.labels(mode, reason)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for pool in pools:
            self.in_flight.labels(pool).set(0)
            self.queued.labels(pool).set(0)
            for reason in DOWNGRADE_REASONS:
                self.downgrades.labels(pool, reason)

    def set_pool_limits(self, limits: Mapping[str, Any]) -> None:
        """Each pool's slots and queue limit as this router sees them (objects with `.slots`, `.queue_limit`)."""
        for pool, lim in limits.items():
            self._slots[pool] = lim.slots
            self.slots.labels(pool).set(lim.slots)
            self.queue_limit.labels(pool).set(lim.queue_limit)

    def set_load(self, pool: str, in_flight: int) -> None:
        """In-flight requests of a pool; the share beyond its engine slots is the queue."""
        self.in_flight.labels(pool).set(in_flight)
        slots = self._slots.get(pool)
        if slots is not None:
            self.queued.labels(pool).set(max(0, in_flight - slots))

    def set_pool_status(self, pool: str, status: str) -> None:
        self.pool_healthy.labels(pool).set(0 if status == "unhealthy" else 1)
        for name in POOL_STATUSES:
            self.pool_status.labels(pool, name).set(1 if name == status else 0)

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))
