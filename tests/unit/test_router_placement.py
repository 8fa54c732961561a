"""Where the router runs (its own deployment, or inside the only pool's replicas), the
in-process engine stream it then uses, and the local Ray Serve settings for direct
ingress. No Ray cluster: the pool server is a fake with LLMServer's method shapes."""

from __future__ import annotations

import asyncio
from typing import Any, List

import pytest

from server.app import LocalPoolBackend, _LocalStream, llm_config_for_pool, router_deployment_name
from server.config import ConfigError, parse_config
from server.ingress.api import pool_limits
from server.launcher import LEAN_RAY_ENV, apply_local_env, local_serve_env, pick_proxy_port, router_port_count


def config(pools=("hybrid",), **server):
    doc = {
        "server": server,
        "pools": {name: {"model": "tiny-qwen3-dense", "accelerator": "cpu", "max_ongoing_requests": 64,
                         "max_queued_requests": 32} for name in pools},
        "router": {"modes": {"thinking": {"pool": pools[0]}, "fast": {"pool": pools[-1]}}},
    }
    return parse_config(doc)


def test_auto_places_the_router_in_the_only_pool():
    one = config()
    assert one.router_pool == "hybrid" and router_deployment_name(one) == "pool-hybrid"
    two = config(pools=("thinking", "fast"))
    assert two.router_pool is None and router_deployment_name(two) == "router"
    assert config(router_placement="separate").router_pool is None


def test_pool_placement_needs_exactly_one_pool():
    with pytest.raises(ConfigError, match="router_placement 'pool' needs exactly one pool"):
        config(pools=("thinking", "fast"), router_placement="pool")


def test_host_pool_admits_slots_plus_queue_and_limits_are_per_replica():
    cfg = config()
    lc = llm_config_for_pool("hybrid", cfg.pools["hybrid"], cfg)
    assert lc.deployment_config["max_ongoing_requests"] == 64 + 32
    limits = pool_limits(cfg)["hybrid"]
    assert (limits.slots, limits.queue_limit) == (64, 32)
    separate = config(router_placement="separate")
    lc = llm_config_for_pool("hybrid", separate.pools["hybrid"], separate)
    assert lc.deployment_config["max_ongoing_requests"] == 64


def test_router_replicas_follow_the_host_pool():
    cfg = parse_config({"pools": {"hybrid": {"model": "tiny-qwen3-dense", "accelerator": "cpu", "replicas": 3}},
                        "router": {"modes": {"thinking": {"pool": "hybrid"}, "fast": {"pool": "hybrid"}}},
                        "server": {"ingress_replicas": 2}})
    assert cfg.router_replicas == 3 and router_port_count(cfg) == 3
    assert config(pools=("thinking", "fast"), ingress_replicas=2).router_replicas == 2


def test_direct_ingress_env_and_proxy_port():
    cfg = config(port=18123)
    env = local_serve_env(cfg)
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("18123", "18124")
    proxy = pick_proxy_port(cfg)
    assert proxy != 18123
    assert pick_proxy_port(config(port=18123, proxy_port=18999)) == 18999
    off = config(port=18123, direct_ingress=False)
    assert local_serve_env(off) == {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"} and pick_proxy_port(off) == 18123


@pytest.mark.parametrize("port, routers, ephemeral, taken, expected", [
    (8000, 1, (32768, 60999), set(), 8001),            # the port after the router's
    (8000, 3, (32768, 60999), set(), 8003),            # after all three router ports
    (8000, 1, (32768, 60999), {8001, 8002}, 8003),     # the next free one
    (40000, 1, (32768, 60999), set(), 61000),          # never one bind(0) may hand out
    (32000, 1, (32001, 65535), set(), 1024),           # past the top: from 1024 up
])
def test_free_proxy_port_is_outside_the_ephemeral_range(port, routers, ephemeral, taken, expected):
    cfg = config(port=port, ingress_replicas=routers, pools=("thinking", "fast"))
    assert router_port_count(cfg) == routers
    assert pick_proxy_port(cfg, ephemeral=ephemeral, binds=lambda p: p not in taken) == expected


def test_free_proxy_port_really_binds():
    import socket

    with socket.socket() as sock:  # the port after the router's is taken: the next one
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        cfg = config(port=busy - 1)
        proxy = pick_proxy_port(cfg, ephemeral=(0, 0))
        assert proxy > busy


class FakeServer:
    """LLMServer's shapes: `chat` is a coroutine returning an async generator of lists."""

    def __init__(self, items: List[Any], hang: bool = False, first_delay_s: float = 0.0) -> None:
        self.items, self.hang, self.first_delay_s = items, hang, first_delay_s
        self.events: List[str] = []
        self.healthy = True

    async def chat(self, request: Any):
        self.events.append("started")

        async def gen():
            try:
                await asyncio.sleep(self.first_delay_s)
                for item in self.items:
                    yield [item]
                if self.hang:
                    await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.events.append("cancelled")  # vLLM aborts the engine request here
                raise
            finally:
                self.events.append("closed")

        return gen()

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine dead")


def test_local_stream_yields_the_engine_items_in_process():
    server = FakeServer(["data: a\n\n", "data: [DONE]\n\n"])

    async def run():
        stream = LocalPoolBackend("hybrid", server, {}).call("chat", "hybrid", object())
        return [item async for item in stream]

    assert asyncio.run(run()) == [["data: a\n\n"], ["data: [DONE]\n\n"]]
    assert server.events == ["started", "closed"]


def test_local_stream_cancel_before_start_never_starts_the_engine():
    server = FakeServer(["data: a\n\n"])

    async def run():
        stream = _LocalStream(server.chat(object()))
        stream.cancel()
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()

    asyncio.run(run())
    assert server.events == []


def test_local_stream_cancel_mid_stream_closes_the_engine_generator():
    server = FakeServer(["data: a\n\n", "data: b\n\n"])

    async def run():
        stream = _LocalStream(server.chat(object()))
        assert await stream.__anext__() == ["data: a\n\n"]
        stream.cancel()
        await asyncio.sleep(0.01)

    asyncio.run(run())
    assert server.events == ["started", "closed"]


def test_timeout_cancels_the_engine_request_through_the_generator():
    server = FakeServer(["data: a\n\n"], hang=True)

    async def run():
        stream = _LocalStream(server.chat(object()))
        await stream.__anext__()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await stream.__anext__()
        stream.cancel()

    asyncio.run(run())
    assert server.events == ["started", "cancelled", "closed"]


def test_local_health_check():
    server = FakeServer([])
    backend = LocalPoolBackend("hybrid", server, {})
    asyncio.run(backend.check("hybrid", 1.0))
    server.healthy = False
    with pytest.raises(RuntimeError):
        asyncio.run(backend.check("hybrid", 1.0))


def test_in_pool_router_answers_what_its_engine_took_while_the_pool_check_fails():
    """A pool replica that hosts the router, shutting down: its pool stops answering the
    router's health checks, but the request its own engine already runs is finished and
    answered (200), not ended with 503 while it waits for a slow first token."""
    import threading

    from fastapi.testclient import TestClient

    from server.ingress.api import create_app
    from server.metrics import ServeMetrics

    frames = [f'data: {{"choices":[{{"index":0,"delta":{{"content":"{t}"}}}}]}}\n\n' for t in "ab"]
    server = FakeServer(frames + ["data: [DONE]\n\n"], first_delay_s=1.5)
    doc = {
        "server": {"request_timeout_s": 30},
        "pools": {"hybrid": {"model": "tiny-qwen3-dense", "accelerator": "cpu"}},
        "router": {"modes": {"thinking": {"pool": "hybrid"}, "fast": {"pool": "hybrid"}},
                   "load": {"health_check_interval_s": 0.1}},
    }
    app = create_app(parse_config(doc), LocalPoolBackend("hybrid", server, {}), ServeMetrics())
    body = {"model": "qwen3-fast", "stream": True, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}

    def go_down() -> None:
        server.healthy = False

    with TestClient(app, raise_server_exceptions=False) as client:
        threading.Timer(0.5, go_down).start()
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert '"content":"a"' in r.text and r.text.rstrip().endswith("data: [DONE]")
        assert client.get("/health", params={"verbose": 1}).json()["pools"]["hybrid"]["status"] == "unhealthy"
    assert "cancelled" not in server.events


def test_every_pool_backend_implements_the_whole_interface():
    from server.ingress.backend import PoolBackend, RayPoolBackend

    methods = {name for name in vars(PoolBackend) if not name.startswith("_")}
    assert methods >= {"call", "check", "assigned"}
    for cls in (RayPoolBackend, LocalPoolBackend):
        missing = sorted(m for m in methods if not callable(getattr(cls, m, None)))
        assert not missing, f"{cls.__name__} lacks {missing}"


def test_local_backend_knows_its_own_streams_are_taken():
    backend = LocalPoolBackend("hybrid", FakeServer([]), {})
    stream = backend.call("chat", "hybrid", object())
    assert backend.assigned(stream) is True
    stream.cancel()
    assert backend.assigned(object()) is False  # another pool's stream: Serve's assignment decides


def test_local_env_trims_ray_but_the_callers_environment_wins():
    environ = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1"}
    apply_local_env(config(port=18123), environ)
    assert environ["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.1"
    assert environ["RAY_SERVE_LOG_TO_STDERR"] == LEAN_RAY_ENV["RAY_SERVE_LOG_TO_STDERR"]
    assert environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
