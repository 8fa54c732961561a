"""The thinking/fast mode router on the real stack, through the official `openai` client."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from stackprobe import metric_sum

pytestmark = pytest.mark.stack

MATH = "Prove that the square root of 2 is irrational, step by step."
CHAT = "hi there, how are you?"


def _ask(client, model="qwen3", text=CHAT, max_tokens=6, **extra):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens, extra_body=extra or None,
    )
    return raw.headers, raw.parse()


WAYS = [
    # (case, model, text, extra body, mode, reason)
    ("enable_thinking true", "qwen3", CHAT, {"chat_template_kwargs": {"enable_thinking": True}}, "thinking", "enable_thinking"),
    ("enable_thinking false", "qwen3", MATH, {"chat_template_kwargs": {"enable_thinking": False}}, "fast", "enable_thinking"),
    ("reasoning_effort none", "qwen3", MATH, {"reasoning_effort": "none"}, "fast", "reasoning_effort"),
    ("reasoning_effort high", "qwen3", CHAT, {"reasoning_effort": "high"}, "thinking", "reasoning_effort"),
    ("soft switch /no_think", "qwen3", MATH + " /no_think", {}, "fast", "soft_switch"),
    ("soft switch /think", "qwen3", "/think " + CHAT, {}, "thinking", "soft_switch"),
    ("alias thinking", "qwen3-thinking", CHAT, {}, "thinking", "alias"),
    ("alias fast", "qwen3-fast", MATH, {}, "fast", "alias"),
    ("auto maths", "qwen3", MATH, {}, "thinking", "auto"),
    ("auto chit-chat", "qwen3", CHAT, {}, "fast", "auto"),
    ("auto Chinese maths", "qwen3", "证明：任意两个奇数之和是偶数。", {}, "thinking", "auto"),
    ("auto Chinese translation", "qwen3", "把这句话翻译成英文：我喜欢喝茶。", {}, "fast", "auto"),
]


@pytest.mark.parametrize("case,model,text,extra,mode,reason", WAYS, ids=[w[0] for w in WAYS])
def test_each_way_of_choosing_a_mode(client, case, model, text, extra, mode, reason):
    headers, resp = _ask(client, model, text, **extra)
    assert headers["x-route-mode"] == mode
    assert headers["x-route-reason"] == reason
    assert headers["x-route-pool"] == mode  # the test stack maps each mode to the pool of that name
    assert resp.model == mode
    message = resp.choices[0].message
    details = resp.usage.completion_tokens_details
    if mode == "thinking":
        # Qwen3's reasoning parser puts the thinking text in `reasoning` (vLLM's field name).
        assert getattr(message, "reasoning", None)
        assert details.reasoning_tokens == resp.usage.completion_tokens
    else:
        # enable_thinking=false: Qwen3's template closes an empty <think> block; all answer.
        assert message.content
        assert getattr(message, "reasoning", None) is None
        assert not details or not details.reasoning_tokens


def test_route_explain_runs_no_model(stack, http):
    before = http.get("/metrics").text.count("\n")
    r = http.post("/v1/route/explain", json={"model": "qwen3", "messages": [{"role": "user", "content": MATH}]})
    assert r.status_code == 200
    body = r.json()
    assert body["mode"] == "thinking" and body["pool"] == "thinking" and body["reason"] == "auto"
    assert "proof" in body["signals"] and body["score"] >= body["threshold"]
    assert "auto score=" in body["explanation"]
    r = http.post("/v1/route/explain", json={"model": "qwen3", "reasoning_effort": "low", "messages": [{"role": "user", "content": CHAT}]})
    assert r.json()["thinking_token_budget"] == 256
    r = http.post("/v1/route/explain", json={"model": "nope", "messages": []})
    assert r.status_code == 404
    assert before > 0


def _budget_request(budget):
    return {
        "model": "qwen3-thinking",
        "messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "<think>\n"}],
        "continue_final_message": True,
        "add_generation_prompt": False,
        "thinking_token_budget": budget,
        "max_tokens": 24,
    }


def test_thinking_budget_closes_think_then_answers(client):
    """vLLM enforces the budget: after it, </think> is emitted and the answer follows.

    The partial assistant turn opens <think> as a real Qwen3 model does itself (a random
    tiny model never opens it on its own)."""
    budget = 8
    body = _budget_request(budget)
    raw = client.chat.completions.with_raw_response.create(
        model=body.pop("model"), messages=body.pop("messages"), max_tokens=body.pop("max_tokens"), extra_body=body)
    resp = raw.parse()
    assert raw.headers["x-route-thinking-budget"] == str(budget)
    msg = resp.choices[0].message
    assert msg.reasoning and msg.content
    # The budget counts the closing </think>: budget - 1 reasoning tokens, then the answer.
    assert resp.usage.completion_tokens_details.reasoning_tokens == budget - 1
    assert resp.usage.completion_tokens == 24


def test_streamed_reasoning_then_answer(client):
    body = _budget_request(6)
    stream = client.chat.completions.create(
        model=body.pop("model"), messages=body.pop("messages"), max_tokens=body.pop("max_tokens"), stream=True,
        stream_options={"include_usage": True}, extra_body=body)
    kinds = []
    usage = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if getattr(delta, "reasoning", None):
                kinds.append("r")
            if delta.content:
                kinds.append("a")
    assert "r" in kinds and "a" in kinds
    first_answer = kinds.index("a")
    assert "r" not in kinds[first_answer:], "reasoning must end before the answer starts"
    # 5 reasoning tokens (the budget of 6 counts </think>) in at most 5 chunks: a CI run
    # once saw 4. vLLM's detokenizer can send two tokens in one chunk (it holds back a
    # token that ends inside a UTF-8 character). Unbudgeted, reasoning runs to max_tokens.
    assert 1 <= kinds.count("r") <= 5
    # vLLM's streaming parser counts reasoning tokens from the text it lexes, not per token
    # id, and once counted 4 of these 5 random reasoning tokens (the non-streaming count
    # above is exact). The count is vLLM's: this pins that it is reported and within budget.
    assert 1 <= usage.completion_tokens_details.reasoning_tokens <= 5


def test_budget_from_reasoning_effort_is_enforced(client):
    headers, resp = _ask(client, "qwen3", CHAT, max_tokens=4, reasoning_effort="low")
    assert headers["x-route-thinking-budget"] == "256"
    assert headers["x-route-mode"] == "thinking"


async def _slow_thinking(url, headers, started, stop):
    """A long stream, issued again whenever one ends, so the pool stays full however fast
    the engine runs (a slow machine takes long to fill the pool, and the first streams
    could otherwise end just as the test sends its requests)."""
    body = {"model": "qwen3-thinking", "messages": [{"role": "user", "content": "write a long essay"}],
            "max_tokens": 1800, "stream": True, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=300) as c:
        while not stop.is_set():
            try:
                async with c.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
                    started.append(r.status_code)
                    async for _ in r.aiter_bytes():
                        if stop.is_set():
                            return
                    ok = r.status_code == 200
            except httpx.HTTPError:  # a stream cut at the server's request deadline: issue another
                ok = False
            if not ok:
                await asyncio.sleep(0.2)


def _pool_state(stack, pool):
    return httpx.get(f"{stack.url}/health?verbose=1", timeout=30).json()["pools"][pool]


def test_saturated_thinking_pool_downgrades_auto_and_429s_explicit(stack):
    """Fill the thinking pool (8 slots + 8 queue in the test stack) with slow requests."""
    state = _pool_state(stack, "thinking")
    capacity = state["slots"] + state["queue_limit"]

    async def scenario():
        stop = asyncio.Event()
        started = []
        tasks = [asyncio.create_task(_slow_thinking(stack.url, stack.headers(), started, stop)) for _ in range(capacity)]
        try:
            async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers(), timeout=120) as c:
                for _attempt in range(3):  # a slow stream may end between the check and the request
                    deadline = time.monotonic() + 120
                    # The router's own in-flight gauge, read without blocking this loop, which
                    # also runs the slow streams (a blocking poll here held them up).
                    while metric_sum((await c.get("/metrics")).text, "qwen_serve_in_flight_requests",
                                     pool="thinking") < capacity:
                        assert time.monotonic() < deadline, "slow requests never filled the pool"
                        await asyncio.sleep(0.2)
                    auto = await c.post("/v1/chat/completions", json={
                        "model": "qwen3", "messages": [{"role": "user", "content": MATH}], "max_tokens": 4})
                    explicit = await c.post("/v1/chat/completions", json={
                        "model": "qwen3-thinking", "messages": [{"role": "user", "content": CHAT}], "max_tokens": 4})
                    if explicit.status_code == 429:
                        break
                metrics = (await c.get("/metrics")).text
            return auto, explicit, metrics
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    auto, explicit, metrics = asyncio.run(scenario())
    print(f"\n[router] thinking pool capacity {capacity}: auto -> {auto.status_code} "
          f"{auto.headers.get('x-route-reason')}, explicit -> {explicit.status_code}")
    # The auto request was downgraded to fast, and says so.
    assert auto.status_code == 200
    assert auto.headers["x-route-mode"] == "fast"
    assert auto.headers["x-route-pool"] == "fast"
    assert auto.headers["x-route-reason"] == "downgrade_fast"
    assert 'qwen_serve_downgrades_total{pool="thinking",reason="downgrade_fast"}' in metrics
    # The explicit request is never downgraded: 429 with Retry-After and an OpenAI error.
    assert explicit.status_code == 429
    assert int(explicit.headers["retry-after"]) >= 1
    assert explicit.headers["x-route-mode"] == "thinking"
    err = explicit.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "pool_at_capacity"
    # Disconnected streams are aborted: the pool drains and serves again.
    deadline = time.monotonic() + 60
    while _pool_state(stack, "thinking")["in_flight"] > 0:
        assert time.monotonic() < deadline, "pool did not drain after clients disconnected"
        time.sleep(0.5)
    r = httpx.post(f"{stack.api}/chat/completions", headers=stack.headers(), timeout=60,
                   json={"model": "qwen3-thinking", "messages": [{"role": "user", "content": CHAT}], "max_tokens": 4})
    assert r.status_code == 200
