"""Every metric the project defines, on an injectable prometheus_client registry.

Names carry the `qwen_serve_` prefix and a unit suffix; labels are few and bounded:
`pool` and `mode` (from the config), `status` (an HTTP status code), `reason` (a fixed
set of route and rejection reasons). Nothing per user or per prompt.

The router serves these at `/metrics` on the Serve HTTP port. vLLM's engine metrics are
not re-exported here: Ray Serve LLM records them through Ray's metrics agent, which
serves them (as `ray_vllm_*`, labelled `model_name=<pool>`) with Ray Serve's own
`ray_serve_*` metrics on Ray's metrics export port. deploy/METRICS.md lists both targets.

Inside Ray Serve each router replica also mirrors every update into Ray Serve's metrics
(`ray_metric`, `metrics.ray_export`): Ray's port serves them as `ray_qwen_serve_*`, one
series per replica, which is what stays exact when several router replicas run.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "qwen_serve"

# Seconds. End-to-end and time to first answer token span short fast-mode answers and
# long thinking-mode ones (minutes); TTFT has a boundary at the default 2 s SLO.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
# Event-loop lag: a token step is ~5-50 ms, so anything past 10 ms delays streams visibly.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DECISION_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)

MODES = ("thinking", "fast")
# Every `reason` label value the router can produce (server/routing/decide.py, server/ingress/*).
ROUTE_REASONS = ("enable_thinking", "reasoning_effort", "soft_switch", "alias", "pool", "auto", "default",
                 "downgrade_fast", "downgrade_budget")
DOWNGRADE_REASONS = ("downgrade_fast", "downgrade_budget")
REJECTION_REASONS = ("auth", "rate_limit", "queue_full", "pool_unavailable", "bad_request")
POOL_STATUSES = ("healthy", "degraded", "unhealthy")

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds between re-recordings of the mirrored gauges. Ray forgets a gauge series after two
# export intervals without a recording: 20 s on its defaults, 2 s at the shortest interval
# it allows (1 s). About 15 series at 3-4 us each: ~50 us of CPU a second.
MIRROR_GAUGE_REFRESH_S = 1.0


class _WithoutCreated:
    """A registry view without prometheus_client's `*_created` series (noise for dashboards)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class _Mirrored:
    """A prometheus_client metric, or one labelled series of it, whose every update is also
    made on a mirror metric: the same value, the label values as the mirror's tags."""

    __slots__ = ("_metric", "_mirror", "_keys", "_tags", "_children", "_last")

    def __init__(self, metric: Any, mirror: Any, keys: Tuple[str, ...] = (), tags: Optional[Dict[str, str]] = None) -> None:
        self._metric, self._mirror, self._keys = metric, mirror, keys
        self._tags = tags or {}
        self._children: Dict[Tuple[Any, ...], "_Mirrored"] = {}
        self._last: Optional[float] = None  # a gauge's last value, recorded again by resend()

    def labels(self, *values: Any) -> "_Mirrored":
        child = self._children.get(values)
        if child is None:  # label values are bounded (see the module docstring): so is this cache
            tags = {k: str(v) for k, v in zip(self._keys, values)}
            child = self._children[values] = _Mirrored(self._metric.labels(*values), self._mirror, tags=tags)
        return child

    def inc(self, amount: float = 1.0) -> None:
        self._metric.inc(amount)
        if amount > 0:  # Ray's counters refuse 0; a zero increment changes nothing anyway
            self._mirror.inc(amount, self._tags)

    def observe(self, value: float) -> None:
        self._metric.observe(value)
        self._mirror.observe(value, self._tags)

    def set(self, value: float) -> None:
        self._metric.set(value)
        self._mirror.set(value, self._tags)
        self._last = value

    def resend(self) -> None:
        """Record each gauge series' last value again. Ray drops a gauge series that was not
        recorded for two export intervals (~20 s): a limit set once at start-up would vanish."""
        if self._last is not None:
            self._mirror.set(self._last, self._tags)
        for child in self._children.values():
            child.resend()


def ray_metric(kind: str, name: str, documentation: str, labels: Tuple[str, ...],
               buckets: Optional[Tuple[float, ...]] = None) -> Any:
    """A Ray Serve metric (`ray.serve.metrics`) to mirror one of ours. Ray's metrics agent
    exports it on the node's metrics port as `ray_<name>` (counters with `_total`), with
    the replica's `deployment` and `replica` tags: one series per router replica, so sums
    over replicas are exact however many there are. Recording costs 3-4 us (prometheus_client: under 1 us)."""
    from ray.serve import metrics as serve_metrics

    if kind == "counter":
        return serve_metrics.Counter(name, description=documentation, tag_keys=labels)
    if kind == "gauge":
        return serve_metrics.Gauge(name, description=documentation, tag_keys=labels)
    return serve_metrics.Histogram(name, description=documentation, boundaries=list(buckets or ()), tag_keys=labels)


# (kind, name, documentation, label names, histogram buckets) -> a metric with inc/observe/set(value, tags)
MirrorFactory = Callable[[str, str, str, Tuple[str, ...], Optional[Tuple[float, ...]]], Any]


class ServeMetrics:
    """The router's metrics. One instance per ingress replica, handed in by the app's lifespan.

    `mirror`, when given (`ray_metric` inside Ray Serve), makes a second metric for each
    one, and every update is recorded on both (see `_Mirrored`)."""

    def __init__(self, registry: Optional[CollectorRegistry] = None, pools: Iterable[str] = (),
                 mirror: Optional[MirrorFactory] = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._slots: dict = {}
        self._mirror = mirror
        self._gauges: List[_Mirrored] = []
        p = PREFIX
        self.requests = self._new(Counter, f"{p}_requests", "Requests finished, by pool, mode and HTTP status (pool and mode are 'none' when refused before routing).", ["pool", "mode", "status"])
        self.route_decisions = self._new(Counter, f"{p}_route_decisions", "Mode decisions by mode and reason.", ["mode", "reason"])
        self.downgrades = self._new(Counter, f"{p}_downgrades", "Auto requests downgraded because the thinking pool was saturated or unhealthy, by that pool.", ["pool", "reason"])
        self.rejections = self._new(
            Counter,
            f"{p}_rejections", "Requests refused without an answer, by reason (auth, rate_limit, queue_full, pool_unavailable, bad_request, ...).",
            ["reason"],
        )
        self.e2e = self._new(Histogram, f"{p}_request_duration_seconds", "End-to-end request latency at the router.", ["pool", "mode"], buckets=LATENCY_BUCKETS)
        self.ttft = self._new(Histogram, f"{p}_time_to_first_token_seconds", "Time to the first generated token (reasoning or answer), streamed requests.", ["pool", "mode"], buckets=TTFT_BUCKETS)
        self.ttfat = self._new(
            Histogram,
            f"{p}_time_to_first_answer_token_seconds",
            "Time to the first answer token, after </think> in thinking mode: the latency a user feels (streamed requests).",
            ["pool", "mode"], buckets=LATENCY_BUCKETS,
        )
        self.itl = self._new(Histogram, f"{p}_inter_token_latency_seconds", "Gap between streamed token chunks of one request.", ["pool", "mode"], buckets=ITL_BUCKETS)
        self.prompt_tokens = self._new(Counter, f"{p}_prompt_tokens", "Prompt tokens of finished requests.", ["pool", "mode"])
        self.completion_tokens = self._new(Counter, f"{p}_completion_tokens", "Completion tokens (reasoning included) of finished requests.", ["pool", "mode"])
        self.reasoning_tokens = self._new(Counter, f"{p}_reasoning_tokens", "Reasoning (thinking) tokens of finished requests.", ["pool", "mode"])
        self.in_flight = self._new(Gauge, f"{p}_in_flight_requests", "Requests this router has sent to a pool and not finished.", ["pool"])
        self.queued = self._new(Gauge, f"{p}_queued_requests", "In-flight requests beyond the pool's engine slots: waiting in Serve's queue.", ["pool"])
        self.slots = self._new(Gauge, f"{p}_pool_slot_limit_requests", "Requests the pool's engines run at once (this router's share).", ["pool"])
        self.queue_limit = self._new(Gauge, f"{p}_pool_queue_limit_requests", "Requests allowed to wait beyond the slots (this router's share).", ["pool"])
        self.decision_latency = self._new(Histogram, f"{p}_route_decision_seconds", "Time the router takes to decide the mode.", buckets=DECISION_BUCKETS)
        self.loop_lag = self._new(
            Histogram,
            f"{p}_event_loop_lag_seconds",
            "How late a periodic timer fired on the router replica's event loop (which also streams the "
            "engine's tokens when the router runs in the pool): every stream on the replica waited that long.",
            buckets=LOOP_LAG_BUCKETS,
        )
        self.pool_healthy = self._new(Gauge, f"{p}_pool_healthy", "1 when a replica of the pool answers health checks, else 0 (refreshed by the router's background checks and at each scrape).", ["pool"])
        self.pool_status = self._new(
            Gauge,
            f"{p}_pool_status", "1 for the pool's current status (healthy, degraded or unhealthy), 0 for the others.",
            ["pool", "status"],
        )
        self._init_series(list(pools))

    def _new(self, cls: Any, name: str, documentation: str, labels: Iterable[str] = (),
             buckets: Optional[Tuple[float, ...]] = None) -> Any:
        """A prometheus_client metric on this registry (histograms take `buckets`), mirrored
        when this instance has a mirror factory."""
        labels = tuple(labels)
        extra = {"buckets": buckets} if cls is Histogram else {}
        metric = cls(name, documentation, list(labels), registry=self.registry, **extra)
        if self._mirror is None:
            return metric
        kind = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}[cls]
        mirrored = _Mirrored(metric, self._mirror(kind, name, documentation, labels, buckets), labels)
        if kind == "gauge":
            self._gauges.append(mirrored)
        return mirrored

    @property
    def mirrored(self) -> bool:
        return self._mirror is not None

    def resend_gauges(self) -> None:
        """Record every mirrored gauge's current value again (no-op without a mirror). The
        app's lifespan calls this every second (`keep_gauges_fresh`)."""
        for metric in self._gauges:
            metric.resend()

    async def keep_gauges_fresh(self, interval_s: float = MIRROR_GAUGE_REFRESH_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.resend_gauges()

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
