"""Per-key limits (RPM, TPM charged at admission, concurrency) and the header-size limit."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest

from ingress_fakes import CHAT, HANG, FakeBackend, bearer, sse
from server.ingress.errors import APIError
from server.ingress.limits import UNSET_MAX_TOKENS_CHARGE, KeyLimiter, token_charge
from server.security_config import KeyLimits


def _chat(texts, max_tokens=None, n=1, max_completion_tokens=None):
    return SimpleNamespace(messages=[{"role": "user", "content": t} for t in texts], max_tokens=max_tokens,
                           max_completion_tokens=max_completion_tokens, n=n)


@pytest.mark.parametrize("texts,max_tokens,n,expected", [
    (["a" * 400], 100, 1, 100 + 100),
    (["a" * 401], 100, 1, 101 + 100),
    (["abc", "de"], 10, 3, 2 + 30),  # ceil(5/4) + 10 x 3
    ([""], 7, 1, 1 + 7),  # an empty prompt still costs one token
    (["a" * 8], None, 1, 2 + UNSET_MAX_TOKENS_CHARGE),
])
def test_token_charge_is_prompt_estimate_plus_max_tokens_times_n(texts, max_tokens, n, expected):
    assert token_charge(_chat(texts, max_tokens, n)) == expected


def test_token_charge_parts_completion_prompt_and_max_completion_tokens():
    parts = [{"type": "text", "text": "a" * 12}, {"type": "image_url", "image_url": {"url": "x"}}]
    req = SimpleNamespace(messages=[{"role": "user", "content": parts}], max_tokens=None, max_completion_tokens=5, n=1)
    assert token_charge(req) == 3 + 5
    completion = SimpleNamespace(prompt="a" * 40, max_tokens=2, n=2)
    assert token_charge(completion) == math.ceil(40 / 4) + 4


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _acquire(limiter, key, req):
    return asyncio.run(limiter.acquire(key, req, {}))


def test_rpm_exactly_n_then_429_with_retry_after():
    clock = Clock()
    limiter = KeyLimiter(KeyLimits(), {"k": KeyLimits(requests_per_minute=5)}, clock=clock)
    req = _chat(["hi"], 1)
    for _ in range(5):
        _acquire(limiter, "k", req)()
    with pytest.raises(APIError) as err:
        _acquire(limiter, "k", req)
    assert err.value.status == 429 and err.value.code == "rate_limit_exceeded"
    assert err.value.headers["Retry-After"] == "12"  # one request refills every 60/5 s
    clock.now += 12
    _acquire(limiter, "k", req)()


def test_tpm_charged_at_admission_and_refused_all_or_nothing():
    clock = Clock()
    limiter = KeyLimiter(KeyLimits(), {"k": KeyLimits(tokens_per_minute=1000)}, clock=clock)
    req = _chat(["a" * 396], 1)  # 99 + 1 = 100 tokens
    for _ in range(10):
        _acquire(limiter, "k", req)()
    with pytest.raises(APIError) as err:
        _acquire(limiter, "k", req)
    assert "tokens per minute" in err.value.message
    assert err.value.headers["Retry-After"] == "6"  # 100 tokens at 1000/60 per second
    # A request larger than the whole budget can never pass: Retry-After 60.
    with pytest.raises(APIError) as err:
        _acquire(limiter, "k", _chat(["a"], 2000))
    assert err.value.headers["Retry-After"] == "60"


def test_concurrency_cap_and_release_is_idempotent():
    limiter = KeyLimiter(KeyLimits(), {"k": KeyLimits(max_concurrency=2)})
    req = _chat(["hi"], 1)
    r1, r2 = _acquire(limiter, "k", req), _acquire(limiter, "k", req)
    with pytest.raises(APIError) as err:
        _acquire(limiter, "k", req)
    assert err.value.code == "concurrency_limit_exceeded" and err.value.headers["Retry-After"] == "1"
    r1()
    r1()  # a second release does not free a slot it does not hold
    r3 = _acquire(limiter, "k", req)
    with pytest.raises(APIError):
        _acquire(limiter, "k", req)
    r2()
    r3()
    assert limiter.in_flight["k"] == 0


def test_per_key_limits_replace_defaults_and_keys_are_independent():
    limiter = KeyLimiter(KeyLimits(requests_per_minute=1), {"vip": KeyLimits()})
    req = _chat(["hi"], 1)
    for _ in range(5):
        _acquire(limiter, "vip", req)()
    _acquire(limiter, "a", req)()
    _acquire(limiter, "b", req)()
    with pytest.raises(APIError):
        _acquire(limiter, "a", req)
    # Requests without a key (auth off) share the "anonymous" bucket.
    _acquire(limiter, None, req)()
    with pytest.raises(APIError):
        _acquire(limiter, None, req)


def test_rpm_on_the_app_429_has_openai_shape_and_route_headers(make_app):
    client, backend, _ = make_app()
    statuses = [client.post("/v1/chat/completions", json=CHAT, headers=bearer("limited")).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    r = client.post("/v1/chat/completions", json=CHAT, headers=bearer("limited"))
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert int(r.headers["retry-after"]) >= 1 and r.headers["x-route-pool"] == "fast"
    assert len(backend.calls) == 3
    # Other keys are not affected.
    assert client.post("/v1/chat/completions", json=CHAT, headers=bearer("main")).status_code == 200


def test_concurrency_slot_is_held_for_the_whole_stream_and_released_after(make_app):
    client, backend, _ = make_app()
    body = {**CHAT, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=bearer("conc")) as r:
        assert r.status_code == 200
        second = client.post("/v1/chat/completions", json=CHAT, headers=bearer("conc"))
        assert second.status_code == 429 and second.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert "".join(r.iter_text()).endswith("data: [DONE]\n\n")
    assert client.post("/v1/chat/completions", json=CHAT, headers=bearer("conc")).status_code == 200


def test_engine_failure_releases_the_concurrency_slot(make_app):
    backend = FakeBackend(lambda kind, pool, req: [RuntimeError("boom")])
    client, _, _ = make_app(backend)
    for _ in range(3):
        r = client.post("/v1/chat/completions", json=CHAT, headers=bearer("conc"))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_header_size_limit_431(make_app):
    client, backend, _ = make_app()
    r = client.post("/v1/chat/completions", json=CHAT, headers={**bearer(), "x-big": "a" * 3000})
    assert r.status_code == 431
    assert r.json()["error"]["code"] == "headers_too_large"
    # Checked before auth: even /health refuses oversized headers.
    assert client.get("/health", headers={"x-big": "a" * 3000}).status_code == 431
    assert backend.calls == []


def test_timed_out_stream_releases_the_concurrency_slot(make_app):
    """A stream that times out releases its key's concurrency slot."""
    backend = FakeBackend(lambda kind, pool, req: sse(kind, ["a"], usage=False)[:1] + [HANG])
    client, _, _ = make_app(backend, server__request_timeout_s=0.3)
    body = {**CHAT, "stream": True}
    for _ in range(2):
        with client.stream("POST", "/v1/chat/completions", json=body, headers=bearer("conc")) as r:
            text = "".join(r.iter_text())
        assert '"code":"timeout"' in text and text.endswith("data: [DONE]\n\n")
    assert backend.streams[0].cancelled

