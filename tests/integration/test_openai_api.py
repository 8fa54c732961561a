"""The OpenAI API on the real stack, through the official `openai` client."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.stack

USER = [{"role": "user", "content": "Hello! Please say something short."}]


def test_chat_non_streamed_with_usage(client):
    resp = client.chat.completions.create(model="qwen3-fast", messages=USER, max_tokens=8)
    assert resp.object == "chat.completion"
    assert resp.model == "fast"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("length", "stop")
    assert 1 <= resp.usage.completion_tokens <= 8
    assert resp.usage.prompt_tokens > 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_streamed_ends_with_done_and_usage(stack, client):
    stream = client.chat.completions.create(
        model="qwen3-fast", messages=USER, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage]
    assert text
    assert usage and 1 <= usage[-1].completion_tokens <= 12
    assert chunks[-1].choices == []  # the usage chunk comes last

    # On the wire: SSE frames ending in [DONE].
    with httpx.stream("POST", f"{stack.api}/chat/completions", headers=stack.headers(), timeout=60,
                      json={"model": "qwen3-fast", "messages": USER, "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        frames = [line for line in r.iter_lines() if line]
    assert frames[-1] == "data: [DONE]"
    assert all(f.startswith("data: ") for f in frames)
    # The client did not ask for usage, so no usage-only chunk is sent.
    assert not any('"choices":[]' in f for f in frames)


def test_completions_streamed_and_not(client):
    resp = client.completions.create(model="qwen3-fast", prompt="Once upon a time", max_tokens=6)
    assert resp.object == "text_completion"
    assert resp.choices[0].text
    assert resp.usage.completion_tokens <= 6
    parts = list(client.completions.create(model="fast", prompt="The sky is", max_tokens=5, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices)


def test_models_list(client):
    ids = {m.id for m in client.models.list().data}
    assert {"qwen3", "qwen3-thinking", "qwen3-fast", "fast", "thinking"} <= ids
    assert client.models.retrieve("qwen3-fast").id == "qwen3-fast"


def test_sixteen_concurrent_requests_all_answered(aclient):
    async def one(i):
        r = await aclient.chat.completions.create(
            model="qwen3-fast", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=16,
            extra_body={"ignore_eos": True},
        )
        return r.usage.completion_tokens

    async def main():
        return await asyncio.gather(*(one(i) for i in range(16)))

    tokens = asyncio.run(main())
    assert tokens == [16] * 16


def _post(stack, body, path="/v1/chat/completions", raw=None):
    return httpx.post(f"{stack.url}{path}", headers={**stack.headers(), "content-type": "application/json"},
                      content=raw if raw is not None else json.dumps(body), timeout=60)


def _error(resp, status):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


BAD = [
    ("malformed_json", None, b'{"model": "qwen3", "messages": [', 400, None),
    ("missing_messages", {"model": "qwen3"}, None, 400, "messages"),
    ("empty_messages", {"model": "qwen3", "messages": []}, None, 400, "messages"),
    ("messages_wrong_type", {"model": "qwen3", "messages": "hi"}, None, 400, "messages"),
    ("max_tokens_wrong_type", {"model": "qwen3-fast", "messages": USER, "max_tokens": "ten"}, None, 400, "max_tokens"),
    ("temperature_wrong_type", {"model": "qwen3-fast", "messages": USER, "temperature": "hot"}, None, 400, "temperature"),
    ("unknown_model", {"model": "gpt-17", "messages": USER}, None, 404, "model"),
    ("max_tokens_beyond_context", {"model": "qwen3-fast", "messages": USER, "max_tokens": 4000}, None, 400, "max_tokens"),
]


@pytest.mark.parametrize("name,body,raw,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors(stack, name, body, raw, status, param):
    err = _error(_post(stack, body, raw=raw), status)
    if param:
        assert err["param"] == param


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context(stack, stream):
    body = {"model": "qwen3-fast", "messages": [{"role": "user", "content": "hello " * 2100}], "max_tokens": 4, "stream": stream}
    err = _error(_post(stack, body), 400)
    assert "context length" in err["message"]
    assert err["code"] == "context_length_exceeded"
    # The message does not echo the prompt.
    assert "hello hello" not in err["message"]


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=USER)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="qwen3-fast", messages=[])


def test_health_and_ready(stack):
    assert httpx.get(f"{stack.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.url}/ready", timeout=30)
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert set(ready.json()["pools"]) == {"fast", "thinking"}
