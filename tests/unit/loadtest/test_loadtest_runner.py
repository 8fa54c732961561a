"""The runner against the stub server (stops, phases, seeds, modes, errors, metrics, sweeps), and
its connection reuse against a real uvicorn."""

import asyncio
import contextlib
import threading
import time

import aiohttp
import pytest

from loadtest.bench_serving import free_port
from loadtest.config import LoadConfig, RunConfig, WorkloadConfig
from loadtest.runner import KEEPALIVE_S, Phaser, connector, run
from loadtest.stub import StubOptions, running_stub


def stub_with(**opts):
    return running_stub(StubOptions(**opts))


def cfg_for(stub, output_tokens, **load):
    return RunConfig(base_url=f"http://127.0.0.1:{stub.port}/v1", progress=False,
                     workload=WorkloadConfig(input_tokens=24, output_tokens=output_tokens),
                     load=LoadConfig(**load))


def test_phaser_count_and_time_rules():
    ph = Phaser(LoadConfig(num_requests=3, warmup_requests=2, cooldown_requests=1))
    assert [ph.next(0.0) for _ in range(7)] == [
        "warmup", "warmup", "measure", "measure", "measure", "cooldown", None]
    ph = Phaser(LoadConfig(duration_s=1.0, warmup_s=0.5, cooldown_s=0.5))
    seq = [ph.next(t) for t in (0.0, 0.4, 0.6, 1.4, 1.6, 2.0, 2.2)]
    assert seq == ["warmup", "warmup", "measure", "measure", "cooldown", "cooldown", None]
    ph = Phaser(LoadConfig(num_requests=100, duration_s=1.0))  # whichever first
    assert ph.next(0.0) == "measure" and ph.next(1.5) is None


def test_closed_loop_request_count(make_cfg, stub):
    before = stub.requests
    r = run(make_cfg(load={"concurrency": 5, "num_requests": 37}))
    assert len(r.records) == 37 and stub.requests - before == 37
    s = r.summary
    assert s["overall"]["completed"] == 37 and s["overall"]["failed"] == 0
    assert s["overall"]["output_tokens"] == 37 * 8
    assert all(rec.ttft is not None and rec.e2e >= rec.ttft for rec in r.records)
    # the stub's own counters agree with ours
    assert s["server"]["requests"] == 37 and s["server"]["generation_tokens"] == 37 * 8
    assert s["client_vs_server"]["requests"] == (37, 37.0)


def test_closed_loop_concurrency_is_respected():
    with stub_with(token_delay_s=0.002) as st:
        r = run(cfg_for(st, 10, concurrency=3, num_requests=30))
    events = sorted([(x.start, 1) for x in r.records] + [(x.end, -1) for x in r.records])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 3


def test_duration_stop_and_warmup_exclusion():
    with stub_with(token_delay_s=0.005) as st:
        cfg = cfg_for(st, 4, concurrency=2, duration_s=0.6, warmup_s=0.3, cooldown_s=0.2)
        t = time.perf_counter()
        r = run(cfg)
        wall = time.perf_counter() - t
    s = r.summary
    assert s["phases"]["warmup"] > 0 and s["phases"]["cooldown"] > 0 and s["phases"]["measure"] > 0
    measured = [x for x in r.records if x.phase == "measure"]
    assert s["overall"]["requests"] == len(measured)
    assert all(0.3 - 0.05 <= x.start <= 0.9 + 0.05 for x in measured)
    assert all(x.start < 0.3 + 0.01 for x in r.records if x.phase == "warmup")
    assert max(x.start for x in r.records) <= 1.1 + 0.1
    assert wall < 8.0
    # throughput counts only the measured window
    assert s["overall"]["duration_s"] == pytest.approx(
        max(x.end for x in measured) - min(x.start for x in measured))


def test_seed_repeats_the_run(make_cfg):
    wl = {"input_tokens": "30:60", "output_tokens": "2:9",
          "mode_mix": {"thinking": 1, "fast": 1, "auto": 1}, "effort_mix": {"none": 1, "high": 1}}
    load = {"concurrency": 1, "num_requests": 25}
    a = run(make_cfg(load=load, workload=wl, seed=5))
    b = run(make_cfg(load=load, workload=wl, seed=5))
    c = run(make_cfg(load=load, workload=wl, seed=6))

    def key(res):
        return [(x.mode, x.effort, x.max_tokens, x.expected_prompt_tokens, x.output_tokens)
                for x in res.records]

    assert key(a) == key(b) and key(a) != key(c)


def test_modes_routes_and_reasoning_split(make_cfg):
    r = run(make_cfg(load={"concurrency": 4, "num_requests": 60},
                     workload={"output_tokens": 10, "mode_mix": {"thinking": 1, "fast": 1, "auto": 1}}))
    s = r.summary
    assert set(s["by_mode"]) == {"thinking", "fast", "auto"}
    th = s["by_mode"]["thinking"]
    assert th["reasoning_tokens"] == 5 * th["completed"] and th["answer_tokens"] == 5 * th["completed"]
    assert s["by_mode"]["fast"]["reasoning_tokens"] == 0
    for x in r.records:
        assert x.route_mode == ("thinking" if x.mode == "thinking" else "fast")
        assert x.route_pool == "pool-" + x.route_mode
        assert x.route_reason == ("explicit" if x.mode != "auto" else "auto")
        if x.mode == "thinking":
            assert x.ttfa > x.ttft or x.ttfa == x.ttft  # answer after reasoning
            assert len(x.reasoning_parts) == 5
    assert s["routes"]["thinking->thinking/pool-thinking"] == th["completed"]


def test_errors_counted_by_status():
    with stub_with(fail_every=4, fail_status=429) as st:
        r = run(cfg_for(st, 3, concurrency=1, num_requests=20))
    o = r.summary["overall"]
    assert o["failed"] == 5 and o["errors"] == {"http_429": 5} and o["completed"] == 15
    assert all("injected" in x.error for x in r.records if not x.ok)


def test_connection_refused_is_an_error(make_cfg):
    cfg = make_cfg(metrics=False, load={"concurrency": 2, "num_requests": 4})
    cfg = cfg.model_copy(update={"base_url": "http://127.0.0.1:9/v1"})
    r = run(cfg)
    assert r.summary["overall"]["errors"] == {"connection": 4}


def test_open_loop_rate_and_lag(make_cfg):
    r = run(make_cfg(load={"shape": "rate", "rate": 200.0, "num_requests": 300, "burstiness": 1.0}))
    s = r.summary
    starts = sorted(x.start for x in r.records)
    assert len(r.records) == 300
    assert 300 / (starts[-1] - starts[0]) == pytest.approx(200, rel=0.2)
    assert s["client"]["send_lag_ms"]["p50"] < 5.0
    assert all(x.scheduled is not None for x in r.records)


def test_non_streaming_and_completions(make_cfg):
    r = run(make_cfg(stream=False, workload={"mode_mix": {"thinking": 1}}))
    assert all(x.ok and x.ttft == x.e2e and x.reasoning_tokens == 4 for x in r.records)
    r = run(make_cfg(endpoint="completions"))
    assert all(x.ok and x.answer_text.startswith(" tok0") for x in r.records)


def _conversations(records):
    by_conv = {}
    for x in records:
        by_conv.setdefault(x.conv_id, []).append(x)
    return [sorted(recs, key=lambda x: x.turn) for recs in by_conv.values()]


def test_multi_turn_sends_history(make_cfg):
    # One at a time, 12 requests are exactly four 3-turn conversations.
    r = run(make_cfg(load={"concurrency": 1, "num_requests": 12}, workload={"turns": 3}))
    convs = _conversations(r.records)
    assert all(x.ok for x in r.records)
    assert [[x.turn for x in c] for c in convs] == [[0, 1, 2]] * 4
    for c in convs:  # each later turn's prompt carries the earlier ones
        toks = [x.prompt_tokens for x in c]
        assert toks == sorted(toks) and toks[0] < toks[-1]
    assert "by_turn" in r.summary


def test_multi_turn_conversations_interleave_without_mixing(make_cfg):
    # Two at a time, conversations interleave; which of them the 12-request limit cuts short
    # depends on timing, but at most one per worker is, and histories never mix.
    r = run(make_cfg(load={"concurrency": 2, "num_requests": 12}, workload={"turns": 3}))
    convs = _conversations(r.records)
    assert len(r.records) == 12 and all(x.ok for x in r.records)
    assert all([x.turn for x in c] == list(range(len(c))) for c in convs)
    assert sum(len(c) < 3 for c in convs) <= 2
    for c in convs:
        toks = [x.prompt_tokens for x in c]
        assert toks == sorted(toks) and (len(c) == 1 or toks[0] < toks[-1])


def test_sweep_stops_at_saturation(make_cfg):
    r = run(make_cfg(load={"concurrency": 1, "num_requests": 30, "sweep": [1, 2, 4, 8, 16, 32],
                           "saturation_min_gain": 10.0}))
    # a 10x gain is never reached: the second stage already counts as saturated
    assert len(r.stages) == 2 and r.saturation["value"] == 2
    assert "grew less" in r.saturation["reason"]
    assert [s.value for s in r.stages] == [1, 2]
    # each stage uses its own prompts (no prefix-cache replay across stages)
    assert r.stages[0].records[0].expected_prompt_tokens == 24


@contextlib.contextmanager
def _uvicorn(keep_alive_s: int):
    """A real uvicorn (vLLM's HTTP server) answering every POST, on its own thread."""
    import uvicorn

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, timeout_keep_alive=keep_alive_s,
                                           log_level="warning", lifespan="off"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        server.should_exit = True
        th.join(10)


async def _post_after_a_stall(url: str, make_connector, stall_s: float) -> int:
    async with aiohttp.ClientSession(connector=make_connector()) as session:
        async with session.post(url, json={}) as r:
            await r.read()
        time.sleep(stall_s)  # the event loop held up: the server's close of the idle connection goes unread
        async with session.post(url, json={}) as r:
            await r.read()
            return r.status


def test_a_stalled_load_generator_does_not_reuse_a_connection_the_server_closed():
    """A load generator held up past the server's keep-alive must not send its next request
    on the connection the server closed meanwhile (it would fail as "server disconnected")."""
    assert KEEPALIVE_S < 5  # uvicorn's default keep-alive, which vLLM's server keeps
    with _uvicorn(keep_alive_s=1) as url:
        # the pool's rule, scaled to this server's 1 s keep-alive: a fresh connection
        assert asyncio.run(_post_after_a_stall(url, lambda: connector(keepalive_s=0.5), stall_s=2.5)) == 200
        # aiohttp's default (15 s) reuses the dead connection: the failure the rule prevents
        with pytest.raises(aiohttp.ServerDisconnectedError):
            asyncio.run(_post_after_a_stall(url, aiohttp.TCPConnector, stall_s=2.5))
