"""The router app samples its event loop's lag while it runs (metrics.loop_lag_interval_s),
into qwen_serve_event_loop_lag_seconds; 0 turns the sampler off."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from ingress_fakes import FakeBackend, default_factory, make_config
from server.ingress.api import create_app
from server.metrics import ServeMetrics


def _lag_count(metrics: ServeMetrics) -> float:
    return metrics.registry.get_sample_value("qwen_serve_event_loop_lag_seconds_count") or 0.0


def test_the_router_app_samples_its_loop_while_it_runs(keys_env):
    metrics = ServeMetrics(registry=CollectorRegistry())
    app = create_app(make_config(metrics__loop_lag_interval_s=0.02), FakeBackend(default_factory), metrics)
    with TestClient(app) as client:  # runs the lifespan
        deadline = time.monotonic() + 5
        while _lag_count(metrics) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _lag_count(metrics) >= 3
        assert "qwen_serve_event_loop_lag_seconds_bucket" in client.get("/metrics").text
    stopped = _lag_count(metrics)
    time.sleep(0.1)
    assert _lag_count(metrics) == stopped  # the sampler ends with the app


def test_interval_zero_turns_the_sampler_off(keys_env):
    metrics = ServeMetrics(registry=CollectorRegistry())
    app = create_app(make_config(metrics__loop_lag_interval_s=0), FakeBackend(default_factory), metrics)
    with TestClient(app):
        time.sleep(0.1)
    assert _lag_count(metrics) == 0
