"""The OpenAI-compatible HTTP API: thin routes over the router and one forwarding path.

`create_app(config, backend)` builds the FastAPI app; everything it needs (backend,
metrics, tracker, auth) comes in through arguments and lives on `app.state`, so tests
build it with a fake backend and the Ray ingress builds it with real pool handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any, AsyncIterator, Dict, Optional

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from server.config import AppConfig
from server.ingress import requests as req
from server.ingress.auth import Authenticator
from server.ingress.backend import PoolBackend
from server.ingress.errors import APIError, install_error_handlers, pool_unavailable
from server.ingress.forward import CallInfo, Forwarder
from server.ingress.health import HealthChecker
from server.ingress.limits import KeyLimiter
from server.ingress.openapi import install_openapi
from server.ingress.prompt_tokens import PromptCounter
from server.loop_lag import watch_loop_lag
from server.metrics import CONTENT_TYPE, ServeMetrics
from server.routing.decide import Decision, UnknownModel, decide
from server.routing.load import LoadTracker, PoolLimits


TIMEOUT_HEADER = "x-request-timeout"


def _json(body: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def pool_limits(config: AppConfig) -> Dict[str, PoolLimits]:
    """Each ingress replica's share of every pool's slots and queue."""
    share = config.router_replicas
    return {
        name: PoolLimits(
            slots=max(1, pool.served_replicas * pool.max_ongoing_requests // share),
            queue_limit=pool.max_queued_requests // share,
        )
        for name, pool in config.pools.items()
    }


def _rejection(decision: Decision, headers: Dict[str, str]) -> APIError:
    if decision.reject_status == 503:
        return pool_unavailable(decision.reject, decision.retry_after_s, headers)
    retry = {**headers, "Retry-After": str(decision.retry_after_s)}
    return APIError(429, f"Too many requests: {decision.reject}; retry after {decision.retry_after_s}s",
                    code="pool_at_capacity", headers=retry, reason="queue_full")


class Ingress:
    """Request handling shared by the routes; holds no global state."""

    def __init__(self, config: AppConfig, backend: PoolBackend, metrics: ServeMetrics, tracker: LoadTracker) -> None:
        self.config = config
        self.metrics = metrics
        self.tracker = tracker
        self.health = HealthChecker(config, backend, tracker, metrics)
        self.forwarder = Forwarder(backend, tracker, metrics, config.server.request_timeout_s,
                                   pool_down=self.health.down_signal, retry_after_s=config.router.load.retry_after_s)
        self.auth = Authenticator.from_config(config.security)
        self.limiter = KeyLimiter(config.security.key_limits, config.security.per_key_limits)
        self.prompt_counter = PromptCounter(config.pools) if config.limits.max_prompt_tokens else None
        self.hybrid = {name: p.supports_thinking for name, p in config.pools.items()}

    def route(self, kind: str, body: Dict[str, Any]) -> Decision:
        t0 = time.perf_counter()
        try:
            decision = decide(
                req.signals(kind, body), self.config.router, self.config.pools, self.tracker.snapshot(),
                supports_thinking=self.hybrid,
            )
        except UnknownModel as err:
            known = sorted(set(self.config.router.aliases) | set(self.config.pools))
            raise APIError(
                404, f"The model '{err.args[0]}' does not exist; available: {', '.join(known)}",
                param="model", code="model_not_found", reason="bad_request",
            ) from None
        self.metrics.decision_latency.observe(time.perf_counter() - t0)
        return decision

    async def handle(self, kind: str, request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        decision: Optional[Decision] = None
        try:
            key_id = self.auth.check(request)
            timeout_s = self._timeout(request)
            raw = await request.body()
            if len(raw) > self.config.limits.max_body_bytes:
                raise APIError(413, f"Request body is {len(raw)} bytes; the limit is {self.config.limits.max_body_bytes}", code="body_too_large")
            body = req.parse_body(raw)
            req.check_limits(kind, body, self.config.limits)
            decision = self.route(kind, body)
            self.metrics.route_decisions.labels(decision.mode, decision.reason).inc()
            if decision.downgraded:
                self.metrics.downgrades.labels(self.config.router.modes["thinking"].pool, decision.reason).inc()
            headers = {
                "x-route-mode": decision.mode,
                "x-route-pool": decision.pool,
                "x-route-reason": decision.reason,
            }
            if decision.thinking_budget is not None:
                headers["x-route-thinking-budget"] = str(decision.thinking_budget)
            if decision.reject:
                raise _rejection(decision, headers)
            rewritten, strip_usage = req.apply_decision(kind, body, decision, self.hybrid.get(decision.pool, False))
            engine_request = req.validate(kind, rewritten)
            if self.prompt_counter is not None:
                await self.prompt_counter.check(kind, decision.pool, rewritten, self.config.limits.max_prompt_tokens)
            engine_request.request_id = request_id
            release = await self.limiter.acquire(key_id, engine_request, headers)
        except APIError as err:
            self.metrics.rejections.labels(err.reason).inc()
            pool, mode = (decision.pool, decision.mode) if decision else ("none", "none")
            self.metrics.requests.labels(pool, mode, str(err.status)).inc()
            if decision is not None:
                err.headers.setdefault("x-route-mode", decision.mode)
                err.headers.setdefault("x-route-pool", decision.pool)
                err.headers.setdefault("x-route-reason", decision.reason)
            raise
        try:
            info = CallInfo(kind, decision.pool, decision.mode, request_id, headers, strip_usage, timeout_s=timeout_s)
            response = await self.forwarder.forward(info, engine_request)
        except BaseException:
            release()
            raise
        if isinstance(response, StreamingResponse):
            inner = response.body_iterator

            async def _released():
                try:
                    async for chunk in inner:
                        yield chunk
                finally:
                    release()

            response.body_iterator = _released()
        else:
            release()
        return response

    def _timeout(self, request: Request) -> Optional[float]:
        """A client may shorten (never extend) its deadline with `x-request-timeout` seconds."""
        value = request.headers.get(TIMEOUT_HEADER)
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds < float("inf"):
            raise APIError(400, f"'{TIMEOUT_HEADER}' must be a positive number of seconds", param=TIMEOUT_HEADER, code="invalid_value")
        return min(seconds, self.config.server.request_timeout_s)

    def explain(self, body: Dict[str, Any]) -> Dict[str, Any]:
        kind = "chat" if "messages" in body else "completions"
        decision = self.route(kind, body)
        return {
            "mode": decision.mode,
            "pool": decision.pool,
            "reason": decision.reason,
            "explanation": decision.detail,
            "explicit": decision.explicit,
            "downgraded": decision.downgraded,
            "score": decision.score,
            "threshold": self.config.router.scorer.threshold,
            "signals": list(decision.signals),
            "thinking_token_budget": decision.thinking_budget,
            "rejected": decision.reject,
            "rejected_status": decision.reject_status if decision.reject else None,
        }

    def models(self) -> Dict[str, Any]:
        created = 0
        data = []
        for alias, mode in self.config.router.aliases.items():
            pool = self.config.router.modes[mode].pool if mode != "auto" else None
            data.append({"id": alias, "object": "model", "created": created, "owned_by": "qwen-serve",
                         "metadata": {"mode": mode, "pool": pool}})
        for name, pool in self.config.pools.items():
            data.append({"id": name, "object": "model", "created": created, "owned_by": "qwen-serve",
                         "metadata": {"mode": "pool", "pool": name, "source": pool.model,
                                      "max_model_len": pool.engine_kwargs.get("max_model_len")}})
        return {"object": "list", "data": data}


def create_app(config: AppConfig, backend: PoolBackend, metrics: Optional[ServeMetrics] = None) -> FastAPI:
    metrics = metrics or ServeMetrics(pools=config.pools)
    limits = pool_limits(config)
    tracker = LoadTracker(limits, ttft_window=config.router.load.ttft_window)
    metrics.set_pool_limits(limits)
    ingress = Ingress(config, backend, metrics, tracker)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        interval = config.router.load.health_check_interval_s
        checker = asyncio.create_task(ingress.health.run(interval)) if interval > 0 else None
        gauges = asyncio.create_task(metrics.keep_gauges_fresh()) if metrics.mirrored else None
        lag_every = config.metrics.loop_lag_interval_s
        lag = asyncio.create_task(watch_loop_lag(lag_every, metrics.loop_lag.observe)) if lag_every > 0 else None
        try:
            yield
        finally:
            for task in (checker, gauges, lag):
                if task is not None:
                    task.cancel()

    app = FastAPI(title="qwen-serve", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.ingress = ingress
    install_error_handlers(app)
    ingress.auth.install(app, metrics_public=not config.metrics.require_auth, rejections=metrics.rejections)
    from server.ingress.limits import install_header_limit

    install_header_limit(app, config.limits.max_header_bytes, metrics.rejections)

    @app.post("/v1/chat/completions", summary="Create a chat completion (routed to thinking or fast mode)")
    async def chat(request: Request) -> Response:
        return await ingress.handle("chat", request)

    @app.post("/v1/completions", summary="Create a text completion")
    async def completions(request: Request) -> Response:
        return await ingress.handle("completions", request)

    @app.post("/v1/route/explain", summary="Explain the routing decision for a request without running it")
    async def explain(request: Request) -> Response:
        body = req.parse_body(await request.body())
        return _json(ingress.explain(body))

    @app.get("/v1/models", summary="List the model names this server accepts")
    async def models() -> Response:
        return _json(ingress.models())

    @app.get("/v1/models/{model:path}", summary="Describe one model name")
    async def model(model: str) -> Response:
        for card in ingress.models()["data"]:
            if card["id"] == model:
                return _json(card)
        raise APIError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")

    @app.get("/health", summary="Liveness; ?verbose=1 reports each pool as healthy, degraded or unhealthy")
    async def health(verbose: int = 0) -> Response:
        if not verbose:
            return _json({"status": "ok"})
        report = await ingress.health.report()
        return _json(report, status=200 if report["status"] != "unhealthy" else 503)

    @app.get("/ready", summary="Readiness: every pool's engine answers")
    async def ready() -> Response:
        report = await ingress.health.report()
        ok = all(p["status"] != "unhealthy" for p in report["pools"].values())
        return _json({"ready": ok, "pools": {k: v["status"] for k, v in report["pools"].items()}}, status=200 if ok else 503)

    if config.metrics.enabled:
        @app.get("/metrics", summary="Prometheus metrics of the router")
        async def prometheus() -> Response:
            await ingress.health.refresh(wait_s=0.5)  # pool health gauges, without stalling the scrape
            return Response(metrics.render(), media_type=CONTENT_TYPE)

    install_openapi(app)
    return app
