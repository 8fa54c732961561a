"""The router inside the only pool's replicas, on a real `qwen-serve up`.

With one pool, `server.router_placement: auto` runs the router's HTTP app in the pool's
own replica (direct ingress, the engine stream in-process): what a single hybrid pool
gets by default, and the layout the performance figures are measured on. The shared test
stack has two pools and a separate router, so this module starts its own: one tiny dense
pool serving both modes. It checks that both modes reach that pool, that auth and the
router's metrics work there, and that SIGINT after ready lets a running stream finish
before the launcher exits 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import httpx
import openai
import pytest
import yaml

from stackprobe import find_processes, free_port, grep_files, log_files_since, metric_sum, router_metrics, wait_for

ROOT = Path(__file__).resolve().parents[2]
KEYS_ENV = "QWEN_SERVE_IN_POOL_TEST_KEYS"
KEY = "sk-in-pool-test-1"
STREAM_TOKENS = 300

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def in_pool_stack(tmp_path_factory):
    port = free_port()
    doc = {
        "server": {"host": "127.0.0.1", "port": port, "ray_metrics_port": free_port(),
                   "graceful_shutdown_timeout_s": 120, "request_timeout_s": 120},
        "pools": {"hybrid": {"model": "tiny-qwen3-dense", "accelerator": "cpu",
                             "engine_kwargs": {"max_model_len": 2048, "enforce_eager": True, "max_num_seqs": 8}}},
        "router": {"modes": {"thinking": {"pool": "hybrid"}, "fast": {"pool": "hybrid"}}},
        "security": {"api_keys_env": KEYS_ENV},
    }
    path = tmp_path_factory.mktemp("in_pool") / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = dict(os.environ, **{KEYS_ENV: f"tests:{KEY}"})
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "up", str(path)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not any("qwen-serve ready" in line for line in lines):
            assert proc.poll() is None, "launcher exited:\n" + "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "not ready after 600 s:\n" + "".join(lines)[-3000:]
            time.sleep(0.5)
        yield {"proc": proc, "lines": lines, "url": f"http://127.0.0.1:{port}", "started": started}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # Ray's processes too: they share its group
                proc.wait()
        reader.join(timeout=10)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_no_router_deployment_and_both_modes_reach_the_one_pool(in_pool_stack):
    out = "".join(in_pool_stack["lines"])
    assert "pool-hybrid: healthy" in out
    assert "] router:" not in out, "a separate router deployment was started:\n" + out[-3000:]
    assert "direct ingress: the router answers on" in out

    client = _client(in_pool_stack["url"])
    for model, mode in (("qwen3-thinking", "thinking"), ("qwen3-fast", "fast")):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
        assert raw.headers["x-route-mode"] == mode
        assert raw.headers["x-route-pool"] == "hybrid"
        reply = raw.parse()
        assert reply.usage.completion_tokens == 8 or reply.choices[0].finish_reason == "stop"

    text = router_metrics(in_pool_stack["url"])
    for mode in ("thinking", "fast"):
        assert metric_sum(text, "qwen_serve_requests_total", pool="hybrid", mode=mode, status="200") >= 1, mode


def test_auth_is_enforced_by_the_in_pool_router(in_pool_stack):
    body = {"model": "qwen3-fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = httpx.post(f"{in_pool_stack['url']}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    bad = httpx.post(f"{in_pool_stack['url']}/v1/chat/completions", json={**body, "messages": []},
                     headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages", bad.text


def test_ray_keeps_no_idle_workers(in_pool_stack):
    """`qwen-serve up` trims Ray's background work: a worker left idle after its task (each
    wakes ~100 times a second beside the engine) is stopped, not kept for later tasks."""
    ok, _ = wait_for(lambda: not find_processes(in_pool_stack["proc"].pid, "ray::IDLE"), 30, 1.0)
    assert ok, [p.pid for p in find_processes(in_pool_stack["proc"].pid, "ray::IDLE")]


def test_replica_froze_its_start_up_heap(in_pool_stack):
    """The replica freezes what it holds once ready (engine, router app), as vLLM's own
    server does, so a full garbage collection mid-stream does not stall every stream."""
    needle = "pool hybrid router: froze"
    hits = grep_files(log_files_since(in_pool_stack["started"]), [needle])[needle]
    assert hits, "no replica log says it froze its start-up heap"


def test_replica_reports_its_event_loop_lag(in_pool_stack):
    """The replica that streams the engine's tokens samples how late its event loop runs
    (every 0.5 s by default): the figure that shows a stalled loop holding every stream."""
    url = in_pool_stack["url"]
    ok, _ = wait_for(lambda: metric_sum(router_metrics(url), "qwen_serve_event_loop_lag_seconds_count") >= 2, 10, 0.5)
    text = router_metrics(url)
    count = metric_sum(text, "qwen_serve_event_loop_lag_seconds_count")
    assert ok and count >= 2, text[-2000:]
    assert metric_sum(text, "qwen_serve_event_loop_lag_seconds_bucket", le="+Inf") == count
    mean = metric_sum(text, "qwen_serve_event_loop_lag_seconds_sum") / count
    assert 0 <= mean < 0.5, mean  # a loop that keeps up: late by a fraction of its interval


def test_sigint_after_ready_lets_a_running_stream_finish(in_pool_stack):
    """Last in this module: it stops the stack."""
    proc, lines = in_pool_stack["proc"], in_pool_stack["lines"]
    client = _client(in_pool_stack["url"])
    stream = client.chat.completions.create(
        model="qwen3-fast", messages=[{"role": "user", "content": "Count to a thousand."}],
        max_tokens=STREAM_TOKENS, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    chunks = 0
    usage = None
    finish = None
    signalled_at_chunk = None
    for chunk in stream:
        if chunk.choices:
            chunks += 1
            finish = chunk.choices[0].finish_reason or finish
            if signalled_at_chunk is None:
                proc.send_signal(signal.SIGINT)
                signalled_at_chunk = chunks
        if chunk.usage is not None:
            usage = chunk.usage
    code = proc.wait(timeout=180)
    out = "".join(lines)
    print(f"\n[in-pool] SIGINT at chunk {signalled_at_chunk}; {chunks} chunks, exit {code}")
    assert usage is not None and usage.completion_tokens == STREAM_TOKENS, (usage, out[-3000:])
    assert finish == "length"
    assert code == 0, out[-3000:]
    assert "qwen-serve: shutting down" in out and "qwen-serve: stopped" in out
    assert "Traceback" not in out, out[-3000:]
