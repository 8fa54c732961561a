"""Security on the real stack: API keys on every route, per-key limits, input limits and
privacy (no prompt, completion or key in logs, metrics or error bodies)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import uuid

import httpx
import pytest
from starlette.routing import Route

from stackprobe import grep_files, log_files_since, ray_metrics, router_metrics

pytestmark = pytest.mark.stack

USER = [{"role": "user", "content": "Say hi."}]
CHEAP = {"model": "qwen3-fast", "messages": USER, "max_tokens": 1}


def _shape(resp, status):
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


# --- auth -------------------------------------------------------------------------------

class _NoPools:
    """A backend for listing routes only: the app is built, never called."""

    def call(self, kind, pool, request):
        raise AssertionError("not called")

    async def check(self, pool, timeout_s):
        return None


def _app_routes(stack):
    """Every (path, method) of the FastAPI app built from the stack's own config."""
    from server.config import load_config
    from server.ingress.api import create_app

    config = load_config(stack.config_path)
    env_name = config.security.api_keys_env
    saved = os.environ.get(env_name)
    os.environ[env_name] = ",".join(f"{n}:{k}" for n, k in stack.keys.items())
    try:
        app = create_app(config, _NoPools())
    finally:
        if saved is None:
            os.environ.pop(env_name, None)
        else:
            os.environ[env_name] = saved
    routes = []
    for route in app.routes:
        if isinstance(route, Route):
            for method in sorted(route.methods - {"HEAD"}):
                routes.append((route.path, method))
    return config, routes


def _fill(path):
    return path.replace("{model:path}", "qwen3-fast")


def test_every_route_needs_a_key_except_health_and_ready(stack):
    config, routes = _app_routes(stack)
    public = {"/health", "/ready"} | ({"/metrics"} if not config.metrics.require_auth else set())
    assert ("/v1/chat/completions", "POST") in routes and ("/openapi.json", "GET") in routes
    # The real stack serves the same routes (so none can escape the enumeration).
    served = set(httpx.get(f"{stack.url}/openapi.json", headers=stack.headers(), timeout=30).json()["paths"])
    assert {re.sub(r"\{(\w+):\w+\}", r"{\1}", p) for p, _ in routes if p != "/openapi.json"} == served
    checked = []
    with httpx.Client(base_url=stack.url, timeout=60) as c:
        for path, method in routes:
            url = _fill(path)
            missing = c.request(method, url)
            wrong = c.request(method, url, headers={"Authorization": "Bearer sk-not-a-key"})
            if path in public:
                assert missing.status_code < 400, (path, missing.status_code)
                checked.append((method, path, missing.status_code, wrong.status_code))
                continue
            err = _shape(missing, 401)
            assert err["code"] == "missing_api_key" and err["type"] == "authentication_error"
            assert missing.headers.get("www-authenticate") == "Bearer"
            assert _shape(wrong, 401)["code"] == "invalid_api_key"
            assert "sk-not-a-key" not in wrong.text
            # With the key the route is there (4xx for an empty body is fine; never 401/404).
            ok = c.request(method, url, headers=stack.headers())
            assert ok.status_code not in (401, 404, 405), (path, ok.status_code, ok.text[:200])
            checked.append((method, path, missing.status_code, wrong.status_code))
    print(f"\n[auth] {len(checked)} routes: " + ", ".join(f"{m} {p} -> {a}/{b}" for m, p, a, b in checked))


@pytest.mark.parametrize("header", [
    None, "Bearer", "Bearer  x", "Basic c2stdGVzdA==", "Bearer sk-test-main-7f3a9", "Bearer sk-test-main-7f3a9c0",
    "Token sk-test-main-7f3a9c",
])
def test_bad_authorization_headers_are_401(stack, header):
    headers = {"Authorization": header} if header is not None else {}
    r = httpx.post(f"{stack.api}/chat/completions", json=CHEAP, headers=headers, timeout=30)
    err = _shape(r, 401)
    assert err["code"] in ("missing_api_key", "invalid_api_key")
    # A key in the query string does not count either.
    r = httpx.get(f"{stack.api}/models", params={"api_key": stack.keys["main"]}, timeout=30)
    _shape(r, 401)


def test_bearer_scheme_is_case_insensitive_and_unknown_paths_need_a_key(stack):
    r = httpx.get(f"{stack.api}/models", headers={"Authorization": f"bearer {stack.keys['main']}"}, timeout=30)
    assert r.status_code == 200
    _shape(httpx.get(f"{stack.url}/v1/nope", timeout=30), 401)
    _shape(httpx.get(f"{stack.url}/v1/nope", headers=stack.headers(), timeout=30), 404)


# --- per-key limits ------------------------------------------------------------------------

async def _burst(stack, key, bodies, stream=False):
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers(key), timeout=120) as c:
        async def one(body):
            if not stream:
                return await c.post("/v1/chat/completions", json=body)
            async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                await r.aread()
                return r
        return await asyncio.gather(*(one(b) for b in bodies))


async def _open_at_once(stack, key, bodies):
    """Open every stream at once; once all have a status, read the refusals and hang up
    on the rest (the streams are long, so none can end and free its slot meanwhile)."""
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers(key), timeout=120) as c:
        async with contextlib.AsyncExitStack() as streams:
            responses = await asyncio.gather(
                *(streams.enter_async_context(c.stream("POST", "/v1/chat/completions", json=b)) for b in bodies))
            for r in responses:
                if r.status_code != 200:
                    await r.aread()
            return responses


def _check_429(resp, code):
    err = _shape(resp, 429)
    assert err["type"] == "rate_limit_error" and err["code"] == code
    assert int(resp.headers["retry-after"]) >= 1
    return int(resp.headers["retry-after"])


def test_rpm_exactly_n_allowed_then_429(stack):
    """`limited`: 5 requests/minute. 8 at once: exactly 5 pass, 3 get 429 + Retry-After."""
    t0 = time.monotonic()
    responses = asyncio.run(_burst(stack, "limited", [CHEAP] * 8))
    statuses = sorted(r.status_code for r in responses)
    waits = [_check_429(r, "rate_limit_exceeded") for r in responses if r.status_code == 429]
    print(f"\n[limits] rpm=5, 8 sent in {time.monotonic() - t0:.1f}s: {statuses}; Retry-After {waits}")
    assert statuses == [200] * 5 + [429] * 3
    assert all(w <= 12 for w in waits)  # one request refills every 60/5 s


def test_tpm_charged_at_admission_exactly(stack):
    """`tpm`: 1000 tokens/minute, each request charged ceil(396/4) + max_tokens 1 = 100."""
    body = {"model": "qwen3-fast", "messages": [{"role": "user", "content": "a" * 396}], "max_tokens": 1}
    t0 = time.monotonic()
    responses = asyncio.run(_burst(stack, "tpm", [body] * 13))
    statuses = sorted(r.status_code for r in responses)
    waits = [_check_429(r, "rate_limit_exceeded") for r in responses if r.status_code == 429]
    print(f"\n[limits] tpm=1000 at 100/request, 13 sent in {time.monotonic() - t0:.1f}s: {statuses}; Retry-After {waits}")
    assert statuses == [200] * 10 + [429] * 3
    assert all("tokens per minute" in r.json()["error"]["message"] for r in responses if r.status_code == 429)
    # max_tokens x n counts too: n=2 x 600 = 1200 > 1000 can never fit -> Retry-After 60.
    big = {**body, "messages": USER, "max_tokens": 600, "n": 2}
    r = httpx.post(f"{stack.api}/chat/completions", json=big, headers=stack.headers("tpm"), timeout=60)
    assert _check_429(r, "rate_limit_exceeded") == 60


def test_concurrency_cap_exact_and_released(stack):
    """`conc`: 2 in flight. 6 long streams at once: exactly 2 run, 4 get 429 at once; the
    slots are freed when the clients hang up."""
    body = {"model": "qwen3-fast", "messages": USER, "max_tokens": 1500, "stream": True, "ignore_eos": True}
    t0 = time.monotonic()
    responses = asyncio.run(_open_at_once(stack, "conc", [body] * 6))
    statuses = sorted(r.status_code for r in responses)
    print(f"\n[limits] concurrency=2, 6 streams: {statuses} in {time.monotonic() - t0:.1f}s")
    assert statuses == [200] * 2 + [429] * 4
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "concurrency_limit_exceeded" and r.headers["retry-after"] == "1"
    # The slots are free again once the hung-up streams are released.
    deadline = time.monotonic() + 30
    while True:
        again = asyncio.run(_burst(stack, "conc", [CHEAP] * 2))
        if [r.status_code for r in again] == [200, 200] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [r.status_code for r in again] == [200, 200]


# --- input limits ------------------------------------------------------------------------

def _post(stack, body=None, raw=None, headers=None):
    h = {**stack.headers(), "content-type": "application/json", **(headers or {})}
    return httpx.post(f"{stack.api}/chat/completions", headers=h, content=raw if raw is not None else json.dumps(body), timeout=60)


LIMIT_CASES = [
    ("max_tokens", {"max_tokens": 40000}, 400, "max_tokens_too_large"),
    ("max_completion_tokens", {"max_completion_tokens": 40000}, 400, "max_tokens_too_large"),
    ("n", {"n": 5}, 400, "n_too_large"),
    ("stop_count", {"stop": [f"s{i}" for i in range(9)]}, 400, "too_many_stop_sequences"),
    ("stop_length", {"stop": ["x" * 300]}, 400, "stop_sequence_too_long"),
    ("top_logprobs", {"logprobs": True, "top_logprobs": 21}, 400, "logprobs_too_large"),
    ("messages", {"messages": USER * 513}, 400, "too_many_messages"),
]


@pytest.mark.parametrize("name,extra,status,code", LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_input_limits_are_clear_4xx(stack, name, extra, status, code):
    err = _shape(_post(stack, {**CHEAP, **extra}), status)
    assert err["code"] == code, err


def test_body_and_header_size_limits(stack):
    big = json.dumps({**CHEAP, "messages": [{"role": "user", "content": "a" * (4 * 1024 * 1024 + 10)}]}).encode()
    err = _shape(_post(stack, raw=big), 413)
    assert err["code"] == "body_too_large"
    err = _shape(_post(stack, CHEAP, headers={"x-padding": "a" * 17000}), 431)
    assert err["code"] == "headers_too_large"
    # The completions route too, and the request deadline header is validated.
    r = httpx.post(f"{stack.api}/completions", headers=stack.headers(), timeout=60,
                   json={"model": "qwen3-fast", "prompt": "hi", "max_tokens": 1, "n": 9})
    assert _shape(r, 400)["code"] == "n_too_large"
    for bad in ("0", "-1", "soon", "inf", "nan"):
        r = _post(stack, CHEAP, headers={"x-request-timeout": bad})
        assert _shape(r, 400)["param"] == "x-request-timeout"


def test_prompt_longer_than_context_is_400_for_both_routes(stack):
    long = "word " * 2100
    r = _post(stack, {**CHEAP, "messages": [{"role": "user", "content": long}]})
    assert _shape(r, 400)["code"] == "context_length_exceeded"
    r = httpx.post(f"{stack.api}/completions", headers=stack.headers(), timeout=60,
                   json={"model": "qwen3-fast", "prompt": long, "max_tokens": 1})
    assert _shape(r, 400)["code"] == "context_length_exceeded"


# --- privacy --------------------------------------------------------------------------------

def test_no_prompt_completion_or_key_in_logs_metrics_or_errors(stack):
    """Send canary prompts (ok, streamed, failing) and a canary key, then grep everything."""
    started = time.time() - max(stack.startup_s, 0) - 60
    canary = "CANARYPROMPT" + uuid.uuid4().hex[:12]
    canary_key = "sk-CANARYKEY" + uuid.uuid4().hex[:12]
    prompt = f"Please repeat this token exactly: {canary}"
    bodies_seen = []
    completions_text = []
    with httpx.Client(base_url=stack.url, headers=stack.headers(), timeout=120) as c:
        r = c.post("/v1/chat/completions", json={"model": "qwen3-fast", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8})
        assert r.status_code == 200
        completions_text.append(r.json()["choices"][0]["message"]["content"])
        r = c.post("/v1/chat/completions", json={"model": "qwen3-thinking", "messages": [{"role": "user", "content": prompt}],
                                                  "max_tokens": 8, "stream": True})
        assert r.status_code == 200
        r = c.post("/v1/completions", json={"model": "qwen3-fast", "prompt": prompt, "max_tokens": 8})
        assert r.status_code == 200
        completions_text.append(r.json()["choices"][0]["text"])
        # Bad requests that carry the canary prompt: their error bodies must not echo it.
        msgs = [{"role": "user", "content": prompt}]
        failing = [
            {"model": "qwen3-fast", "messages": [{"role": "user", "content": prompt * 300}], "max_tokens": 4},
            {"model": "qwen3-fast", "messages": msgs, "max_tokens": 4, "temperature": "hot"},
            {"model": "qwen3-fast", "messages": msgs, "max_tokens": 4, "stop": ["x"] * 9},
            {"model": "qwen3-fast", "messages": msgs, "max_tokens": 4, "n": 99},
            {"model": "qwen3-fast", "messages": msgs, "max_tokens": 4000},
            {"model": "qwen3-fast", "messages": msgs, "max_tokens": 4, "response_format": {"type": "nope"}},
            {"model": "qwen3-fast", "messages": msgs, "max_tokens": 4,
             "tools": [{"type": "function", "function": {"name": "get_weather"}}],
             "tool_choice": {"type": "function", "function": {"name": "other"}}},
        ]
        for body in failing:
            r = c.post("/v1/chat/completions", json=body)
            assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
            bodies_seen.append(r.text)
        r = c.post("/v1/chat/completions", json={"model": "qwen3-fast", "messages": [{"role": "user", "content": prompt}],
                                                  "max_tokens": 4}, headers={"Authorization": f"Bearer {canary_key}"})
        assert r.status_code == 401
        bodies_seen.append(r.text)
    time.sleep(3)  # let replicas flush their log files
    # Completion text too: long enough generated words that a match would mean it was logged.
    completion_needles = [t.strip() for t in completions_text if t and len(t.strip()) >= 20]
    needles = [canary, canary_key] + list(stack.keys.values()) + completion_needles
    files = [str(stack.log_path)] + list(log_files_since(started))
    hits = grep_files(files, needles)
    scrapes = router_metrics(stack.url) + ray_metrics(stack.metrics_port)
    leaks = {n: paths for n, paths in hits.items() if paths}
    print(f"\n[privacy] searched {len(files)} log files and {len(scrapes) // 1024} KiB of metrics for "
          f"{len(needles)} canaries (prompt, bad key, {len(stack.keys)} real keys, {len(completion_needles)} completions): "
          f"leaks={leaks}")
    assert not leaks
    for needle in needles:
        assert needle not in scrapes
        for body in bodies_seen:
            assert needle not in body, body[:300]
