"""Reliability on the real stack: backpressure, per-request timeouts, and client disconnects
that abort the engine request and free its KV cache (seen in vLLM's own metrics)."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest

from stackprobe import (
    ENGINE_KV_USAGE, ENGINE_RUNNING, delta, engine_value, ray_metrics, request_counts, samples, router_in_flight,
    wait_for,
)
from loadtest.reliability_client import Tally, send

pytestmark = pytest.mark.stack

GEN_TOKENS = "ray_vllm_generation_tokens_total"
FINISHED = "ray_vllm_request_success_total"  # requests that finished (by finished_reason); aborts are not counted
LONG = 1900  # max_tokens that would run for tens of seconds on the CPU engines


def _long_body(model, stream=True, max_tokens=LONG):
    return {"model": model, "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": max_tokens, "stream": stream, "ignore_eos": True}


def _settled(port, keys, timeout_s=60.0):
    """{(metric, pool): value} once two scrapes 4 s apart agree (Ray exports every few seconds)."""
    last = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found_samples = samples(ray_metrics(port), *{name for name, _ in keys})
        now = {}
        for name, pool in keys:
            found = [v for n, lab, v in found_samples if n == name and lab.get("model_name") == pool]
            now[(name, pool)] = sum(found)  # a counter never incremented is not exported yet: 0
        if now == last:
            return now
        last = now
        time.sleep(4)
    raise AssertionError(f"engine counters {keys} did not settle in {timeout_s:.0f}s")


def _engine_idle(stack, pool, timeout_s=60.0):
    """Wait until the engine reports no running request and (almost) no KV cache in use."""
    def idle():
        running = engine_value(stack.metrics_port, ENGINE_RUNNING, pool)
        kv = engine_value(stack.metrics_port, ENGINE_KV_USAGE, pool)
        return running == 0 and kv is not None and kv < 0.01
    return wait_for(idle, timeout_s, 2.0)


def test_fifty_concurrent_against_a_small_queue(stack):
    """The thinking pool holds 8 running + 8 queued. 50 at once: each is a 200 or an
    immediate 429/503 with Retry-After; every accepted request completes; none is lost."""
    before = request_counts(stack.url)
    body = {"model": "qwen3-thinking", "messages": [{"role": "user", "content": "Think about primes."}],
            "max_tokens": 32, "ignore_eos": True}

    async def run():
        async with httpx.AsyncClient(base_url=stack.url, timeout=180, limits=httpx.Limits(max_connections=64)) as c:
            return Tally(list(await asyncio.gather(*(send(c, body, stack.headers(), 180) for _ in range(50)))))

    t0 = time.monotonic()
    tally = asyncio.run(run())
    wall = time.monotonic() - t0
    ok = [o for o in tally.outcomes if o.kind == "ok"]
    refused = [o for o in tally.outcomes if o.kind == "error"]
    after = request_counts(stack.url)
    server = delta(after, before)
    print(f"\n[backpressure] 50 concurrent to an 8+8 pool in {wall:.1f}s: {tally.summary()}; "
          f"refusal latency max {max((o.seconds for o in refused), default=0):.2f}s, "
          f"accepted latency p50 {statistics.median(o.seconds for o in ok):.1f}s max {max(o.seconds for o in ok):.1f}s; "
          f"server counts {server}")
    assert tally.count("lost") == 0, [o.detail for o in tally.outcomes if o.kind == "lost"]
    assert len(ok) + len(refused) == 50
    assert len(ok) >= 16 and refused, "expected the pool to fill and refuse the rest"
    for o in refused:
        assert o.status in (429, 503) and o.retry_after and int(o.retry_after) >= 1, o
        assert o.seconds < 10, f"a refusal took {o.seconds:.1f}s: it waited in a queue"
    assert server.get("200", 0) == len(ok)
    assert server.get("429", 0) + server.get("503", 0) == len(refused)
    assert wait_for(lambda: router_in_flight(stack.url)["thinking"] == 0, 30)[0]


def test_request_timeout_is_clean_and_aborts_the_engine_request(stack):
    port = stack.metrics_port
    keys = [(GEN_TOKENS, "fast"), (FINISHED, "fast")]
    before = _settled(port, keys)
    headers = {**stack.headers(), "x-request-timeout": "2"}
    t0 = time.monotonic()
    r = httpx.post(f"{stack.api}/chat/completions", json=_long_body("qwen3-fast", stream=False), headers=headers, timeout=60)
    plain_s = time.monotonic() - t0
    assert r.status_code == 504, r.text[:300]
    err = r.json()["error"]
    assert err["type"] == "timeout_error" and err["code"] == "timeout"
    t0 = time.monotonic()
    with httpx.stream("POST", f"{stack.api}/chat/completions", json=_long_body("qwen3-fast"), headers=headers, timeout=60) as s:
        assert s.status_code == 200
        frames = [line for line in s.iter_lines() if line]
    stream_s = time.monotonic() - t0
    assert frames[-1] == "data: [DONE]" and '"code":"timeout"' in frames[-2], frames[-3:]
    idle, waited = _engine_idle(stack, "fast")
    after = _settled(port, keys)
    generated = after[keys[0]] - before[keys[0]]
    finished = after[keys[1]] - before[keys[1]]
    print(f"\n[timeout] x-request-timeout 2s: non-streamed 504 after {plain_s:.1f}s, streamed error frame after "
          f"{stream_s:.1f}s; engine idle {waited:.0f}s later; {generated:.0f} tokens generated of {2 * LONG} asked; {finished:.0f} ran to the end")
    assert plain_s < 10 and stream_s < 10
    assert idle, "the engine still runs the timed-out requests"
    assert finished == 0 and generated < LONG, "the engine kept generating after the deadline: not aborted"


def test_client_disconnect_aborts_and_frees_kv_cache(stack):
    """Streams on both pools; the clients hang up mid-stream; vLLM's running-requests gauge
    and KV-cache usage return to zero and generation stops (no tokens for nobody)."""
    port = stack.metrics_port
    pools = {"fast": 3, "thinking": 3}
    keys = [(m, p) for m in (GEN_TOKENS, FINISHED) for p in pools]
    before = _settled(port, keys)
    received = {p: 0 for p in pools}

    async def reader(c, pool, flowing, stop):
        async with c.stream("POST", "/v1/chat/completions", json=_long_body(f"qwen3-{pool}"), headers=stack.headers()) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    received[pool] += 1
                    break
            flowing.release()
            # Stop reading; hang up when told. The hang-up does not wait for this client to
            # read anything more: Ray Serve streams without backpressure, and on a busy
            # machine an engine runs far ahead of a reader that counts chunks.
            await stop.wait()
        # Leaving the block closed the connection mid-stream.

    async def run():
        stop = asyncio.Event()
        flowing = asyncio.Semaphore(0)
        n = sum(pools.values())
        try:
            async with httpx.AsyncClient(base_url=stack.url, timeout=120) as c:
                tasks = [asyncio.create_task(reader(c, p, flowing, stop)) for p, k in pools.items() for _ in range(k)]
                # Hang up once every stream has sent its first token, or a minute on.
                for _ in range(n):
                    await asyncio.wait_for(flowing.acquire(), 60)
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 60)
        finally:
            stop.set()

    asyncio.run(run())
    t0 = time.monotonic()
    results = {}
    for p in pools:
        idle, _ = _engine_idle(stack, p)
        results[p] = (idle, time.monotonic() - t0)
    in_flight_ok, _ = wait_for(lambda: all(v == 0 for v in router_in_flight(stack.url).values()), 30)
    after = _settled(port, keys)
    generated = {p: after[(GEN_TOKENS, p)] - before[(GEN_TOKENS, p)] for p in pools}
    finished = {p: after[(FINISHED, p)] - before[(FINISHED, p)] for p in pools}
    print(f"\n[disconnect] streams {pools}; chunks received {received}; "
          f"after hang-up: engine idle (running 0, KV < 1%) within {({p: f'{s:.0f}s' for p, (ok, s) in results.items()})}; "
          f"tokens generated {generated} of {({p: n * LONG for p, n in pools.items()})} asked; "
          f"requests the engine finished (not aborted) {finished}")
    for p, n in pools.items():
        assert results[p][0], f"{p}: the engine still runs requests nobody reads"
        # vLLM aborted them: none finished (finished_reason length/stop), and generation stopped.
        assert finished[p] == 0, f"{p}: {finished[p]} requests ran to the end after the clients left"
        # Most of each stream was never generated: the clients hung up at its first token.
        assert generated[p] < n * LONG / 2, f"{p}: generation went on after the clients left"
    assert in_flight_ok
