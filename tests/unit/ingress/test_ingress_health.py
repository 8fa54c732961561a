"""The router's background health checks: a pool that does not answer takes no new
requests (auto thinking requests go to the fast pool, the rest get 503 at once) until it
answers again. Real FastAPI app and lifespan over the fake backend."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from ingress_fakes import FakeBackend, bearer, default_factory, make_config
from server.ingress.api import create_app

MATH = "Prove that the square root of 2 is irrational, step by step."


def _chat(model: str, text: str = "hi") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4}


def _poll(check, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _pool_status(client: TestClient, pool: str) -> str:
    return client.get("/health", params={"verbose": 1}).json()["pools"][pool]["status"]


def test_unhealthy_pool_takes_no_requests_until_it_answers(keys_env):
    backend = FakeBackend(default_factory)
    backend.down = {"thinking"}
    app = create_app(make_config(router__load__health_check_interval_s=0.1), backend)
    with TestClient(app, raise_server_exceptions=False) as client:  # runs the lifespan: the checker starts
        assert _poll(lambda: backend.checks >= 2), "the background checker never ran"
        assert _pool_status(client, "thinking") == "unhealthy"

        refused = client.post("/v1/chat/completions", json=_chat("qwen3-thinking"), headers=bearer())
        assert refused.status_code == 503
        err = refused.json()["error"]
        assert err["code"] == "pool_unavailable" and set(err) == {"message", "type", "param", "code"}
        assert "thinking is unhealthy" in err["message"]
        assert refused.headers["Retry-After"] == "2" and refused.headers["x-route-pool"] == "thinking"

        rerouted = client.post("/v1/chat/completions", json=_chat("qwen3", MATH), headers=bearer())
        assert rerouted.status_code == 200
        assert (rerouted.headers["x-route-pool"], rerouted.headers["x-route-reason"]) == ("fast", "downgrade_fast")
        assert client.post("/v1/chat/completions", json=_chat("qwen3-fast"), headers=bearer()).status_code == 200
        assert all(c["pool"] == "fast" for c in backend.calls), "a request reached the unhealthy pool"

        explained = client.post("/v1/route/explain", json=_chat("qwen3-thinking"), headers=bearer()).json()
        assert explained["rejected_status"] == 503 and "unhealthy" in explained["rejected"]

        metrics = client.get("/metrics", headers=bearer()).text
        assert 'qwen_serve_rejections_total{reason="pool_unavailable"} 1.0' in metrics

        backend.down = set()  # the replica is back: the next check lets requests through again
        assert _poll(lambda: client.post("/v1/chat/completions", json=_chat("qwen3-thinking"),
                                         headers=bearer()).status_code == 200)
        assert backend.calls[-1]["pool"] == "thinking"


def test_interval_zero_checks_only_on_demand(keys_env):
    backend = FakeBackend(default_factory)
    backend.down = {"thinking"}
    app = create_app(make_config(router__load__health_check_interval_s=0), backend)
    with TestClient(app, raise_server_exceptions=False) as client:
        time.sleep(0.3)
        assert backend.checks == 0
        # Nobody asked yet, so the pool still counts as healthy and gets the request.
        assert client.post("/v1/chat/completions", json=_chat("qwen3-thinking"), headers=bearer()).status_code == 200
        assert _pool_status(client, "thinking") == "unhealthy"  # a /health call checks...
        refused = client.post("/v1/chat/completions", json=_chat("qwen3-thinking"), headers=bearer())
        assert refused.status_code == 503  # ...and the router acts on what it found


def test_a_down_pool_is_rechecked_every_second(keys_env):
    backend = FakeBackend(default_factory)
    backend.down = {"fast"}
    app = create_app(make_config(router__load__health_check_interval_s=60), backend)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert _poll(lambda: backend.checks >= 2)
        refused = client.post("/v1/chat/completions", json=_chat("qwen3-fast"), headers=bearer())
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
        backend.down = set()
        # Not after the 60 s interval: a pool that is down is checked again every second.
        assert _poll(lambda: client.post("/v1/chat/completions", json=_chat("qwen3-fast"),
                                         headers=bearer()).status_code == 200, timeout_s=5)


def test_one_broken_replica_of_several_does_not_take_the_pool_out(keys_env):
    """Each check goes to a replica Serve picks; a pool of 2 gets 3 checks per round, and
    one answer is enough. A pool of 1 gets one check: its failure means the pool is down."""
    backend = FakeBackend(default_factory)
    backend.check_outcomes = {"fast": [False, True, False], "thinking": [False]}
    app = create_app(make_config(router__load__health_check_interval_s=0, pools__fast__replicas=2), backend)
    with TestClient(app, raise_server_exceptions=False) as client:
        report = client.get("/health", params={"verbose": 1}).json()["pools"]
    assert report["fast"]["status"] == "healthy"
    assert report["thinking"]["status"] == "unhealthy"
    assert backend.checks == 4


def test_a_request_waiting_on_a_pool_that_goes_down_gets_503(keys_env):
    """Accepted while the pool looked fine, then the pool stops answering (its replica died
    or it is shutting down) before the first token: 503 at the next check, not a wait until
    the request's deadline."""
    import threading

    from ingress_fakes import HANG

    backend = FakeBackend(lambda kind, pool, request: [HANG] if pool == "thinking" else default_factory(kind, pool, request))
    app = create_app(make_config(router__load__health_check_interval_s=0.1, server__request_timeout_s=30), backend)
    with TestClient(app, raise_server_exceptions=False) as client:
        threading.Timer(0.5, lambda: backend.down.add("thinking")).start()
        started = time.monotonic()
        r = client.post("/v1/chat/completions", json=_chat("qwen3-thinking"), headers=bearer())
        waited = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "pool_unavailable" and r.headers["Retry-After"] == "2"
        assert waited < 5, f"waited {waited:.1f}s"
        assert backend.streams[-1].cancelled  # the engine request is abandoned, not left queued
        fast = client.post("/v1/chat/completions", json=_chat("qwen3-fast"), headers=bearer())
        assert fast.status_code == 200


def test_a_request_a_replica_took_finishes_although_the_pool_goes_down(keys_env):
    """Graceful shutdown: Serve stops routing to the draining replicas, so the pool's health
    check fails, but a replica that took a request finishes it. That request (still waiting
    for its slow first token when the pool is found down) gets its answer, not a 503."""
    import threading

    backend = FakeBackend(lambda kind, pool, request: [1.5] + default_factory(kind, pool, request))
    backend.assign = lambda pool: True
    app = create_app(make_config(router__load__health_check_interval_s=0.1, server__request_timeout_s=30), backend)
    with TestClient(app, raise_server_exceptions=False) as client:
        threading.Timer(0.5, lambda: backend.down.add("thinking")).start()
        r = client.post("/v1/chat/completions", json=_chat("qwen3-thinking"), headers=bearer())
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        assert not backend.streams[-1].cancelled
        assert client.get("/health", params={"verbose": 1}).json()["pools"]["thinking"]["status"] == "unhealthy"


def test_logs_tell_a_starting_pool_from_one_that_went_down(keys_env, caplog):
    """A pool that never answered is starting (INFO); one that answered and then stops is
    down (WARNING), and its return is a WARNING too."""
    import logging

    caplog.set_level(logging.INFO, logger="qwen_serve.health")
    backend = FakeBackend(default_factory)
    backend.down = {"thinking"}
    app = create_app(make_config(router__load__health_check_interval_s=0.1), backend)

    def said(text: str, level: int) -> bool:
        return any(text in r.getMessage() and r.levelno == level for r in caplog.records)

    with TestClient(app, raise_server_exceptions=False):
        assert _poll(lambda: said("pool thinking does not answer yet (starting)", logging.INFO))
        assert _poll(lambda: said("pool fast answers; it takes requests", logging.INFO))
        backend.down = set()
        assert _poll(lambda: said("pool thinking answers; it takes requests", logging.INFO))
        backend.down = {"thinking"}
        assert _poll(lambda: said("pool thinking is unhealthy", logging.WARNING))
        backend.down = set()
        assert _poll(lambda: said("pool thinking answers again", logging.WARNING))
    assert not any(r.levelno >= logging.WARNING and "fast" in r.getMessage() for r in caplog.records)
