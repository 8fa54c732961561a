"""Graceful shutdown: SIGTERM to `qwen-serve up` (what Kubernetes and Ctrl-C send) while
streams run on both pools. Every stream already accepted runs to its end with `[DONE]`;
a request sent during the shutdown is answered or cleanly refused, never a 500 or a hang;
the launcher exits 0.

This stops the shared stack, so it runs after every other test that uses it
(`ends_stack` marker, ordered last by conftest.py). The stack fixture's teardown then only
checks the exit.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any, Dict, List, Tuple

import httpx
import pytest

from stackprobe import metric_sum, router_metrics, wait_ready

pytestmark = [pytest.mark.stack, pytest.mark.ends_stack]

STREAMS = {"thinking": 2, "fast": 3}
# The signal comes once the router has accepted every stream and streams of both pools
# are still running there (read from the router's /metrics: the client's own view lags the
# server by seconds on 2 busy cores). After the signal the streams run on for 35-60 s
# here: longer than the 30 s that `serve.shutdown()` alone would have allowed, and inside
# the stack's graceful_shutdown_timeout_s (180 s: once, on a machine slowed down, they
# needed 93 s, and the 90 s the stack had then cut them).
MAX_TOKENS = 1000


def _router_view(url: str) -> Tuple[Dict[str, float], Dict[str, float]]:
    """(in flight, finished) requests per pool, from one scrape of the router's /metrics
    (cheap: /health?verbose=1 would run health checks, which take seconds under load)."""
    text = router_metrics(url)
    return ({p: metric_sum(text, "qwen_serve_in_flight_requests", pool=p) for p in STREAMS},
            {p: metric_sum(text, "qwen_serve_requests_total", pool=p) for p in STREAMS})


def _read_stream(url: str, headers: Dict[str, str], pool: str, out: Dict[str, Any], times: List[float]) -> None:
    body = {"model": f"qwen3-{pool}", "messages": [{"role": "user", "content": "Tell a story."}],
            "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    out.update(pool=pool, chunks=0, done=False, finish=None, usage=None, error=None, status=None)
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
            out["status"] = r.status_code
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    out["done"] = True
                elif line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if "error" in event:
                        out["error"] = event["error"]
                    for choice in event.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content"):  # thinking: reasoning first
                            out["chunks"] += 1
                            times.append(time.monotonic())
                        out["finish"] = choice.get("finish_reason") or out["finish"]
                    out["usage"] = event.get("usage") or out["usage"]
    except httpx.HTTPError as err:
        out["error"] = f"{type(err).__name__}: {err}"


def _probe_during_shutdown(url: str, headers: Dict[str, str], stop: threading.Event, seen: List[Any]) -> None:
    """New requests while the stack shuts down: each is answered (200) or refused cleanly."""
    body = {"model": "qwen3-fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    while not stop.is_set():
        try:
            r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
            shape_ok = r.status_code == 200 or set(r.json().get("error", {})) >= {"message", "type", "code"}
            seen.append((r.status_code, shape_ok))
        except httpx.ConnectError:
            seen.append(("refused", True))
            return  # the listener is gone: nothing more can be accepted
        except httpx.HTTPError as err:
            seen.append((type(err).__name__, False))
        time.sleep(0.3)


def _read_streams(url: str, headers: Dict[str, str], pools: List[str], out: Any, go: Any) -> None:
    """In a child process, so the test process stays responsive: once `go` is set, read one
    stream per pool entry on its own thread; send back (results, chunk times)."""
    out.put("started")
    go.wait(300)
    results: List[Dict[str, Any]] = [{} for _ in pools]
    times: List[List[float]] = [[] for _ in pools]
    readers = [threading.Thread(target=_read_stream, args=(url, headers, p, r, ts), daemon=True)
               for p, r, ts in zip(pools, results, times)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(timeout=360)
    out.put((results, times, [t.is_alive() for t in readers]))


def test_sigterm_lets_in_flight_streams_finish(stack):
    import multiprocessing

    wait_ready(stack.url, 300)
    pools = [p for p, n in STREAMS.items() for _ in range(n)]
    ctx = multiprocessing.get_context("spawn")
    queue, go = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_read_streams, args=(stack.url, stack.headers(), pools, queue, go), daemon=True)
    # Start the child (a fresh interpreter) before any stream: once, 46 s passed around
    # child.start() on a busy machine, and the streams ended before the gate below saw them.
    child.start()
    assert queue.get(timeout=120) == "started"
    _, finished_before = _router_view(stack.url)
    go.set()
    deadline = time.monotonic() + 180
    while True:
        in_flight, finished = _router_view(stack.url)
        done = {p: finished[p] - finished_before[p] for p in STREAMS}
        if all(in_flight[p] + done[p] == n and in_flight[p] >= 1 for p, n in STREAMS.items()):
            break  # every stream accepted; each pool still has one running
        assert time.monotonic() < deadline, f"streams never overlapped on the server: in flight {in_flight}, done {done}"
        time.sleep(0.2)

    signalled = time.monotonic()
    stack.proc.send_signal(signal.SIGTERM)
    stop, probes = threading.Event(), []
    prober = threading.Thread(target=_probe_during_shutdown, args=(stack.url, stack.headers(), stop, probes), daemon=True)
    prober.start()
    results, times, hung = queue.get(timeout=420)
    child.join(timeout=30)
    stop.set()
    prober.join(timeout=60)
    exit_code = stack.proc.wait(timeout=300)
    stopped = time.monotonic() - signalled

    after_signal = [sum(1 for t in ts if t > signalled) for ts in times]
    ended = [round(ts[-1] - signalled, 1) if ts else None for ts in times]
    print(f"\n[shutdown] SIGTERM with {in_flight} streams in flight at the router ({MAX_TOKENS} tokens each): "
          f"chunks the client read after the signal {after_signal}, the last at {ended} s; finish {[r['finish'] for r in results]}; "
          f"[DONE] {[r['done'] for r in results]}; requests during the shutdown {probes}; "
          f"launcher exited {exit_code} after {stopped:.1f}s")
    assert not any(hung), "a stream hung during the shutdown"
    for r in results:
        assert r["status"] == 200 and r["error"] is None, r
        assert r["done"] and r["finish"] == "length", f"{r['pool']}: stream cut by the shutdown: {r}"
        assert r["usage"] and r["usage"]["completion_tokens"] == MAX_TOKENS, r["usage"]
    assert all(ok for _, ok in probes), f"a request during the shutdown got no clean answer: {probes}"
    assert not any(code == 500 for code, _ in probes), probes
    assert exit_code == 0
    log = stack.log_text()
    assert "qwen-serve: shutting down" in log and "qwen-serve: stopped" in log
