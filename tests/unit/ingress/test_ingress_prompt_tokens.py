"""limits.max_prompt_tokens: prompt tokens counted with the pool's tokenizer (the bundled
Qwen3 tokenizer for the tiny test models), over the limit -> 400 prompt_too_long."""

from __future__ import annotations

import asyncio

import pytest

from ingress_fakes import CHAT, bearer, make_config
from server.ingress.errors import APIError
from server.ingress.prompt_tokens import PromptCounter, tokenizer_source


@pytest.fixture(scope="module")
def counter():
    return PromptCounter(make_config().pools)


def test_tiny_pools_use_the_bundled_qwen3_tokenizer():
    pools = make_config().pools
    assert tokenizer_source(pools["fast"]).endswith("tokenizer_files")


def test_chat_count_includes_the_template_and_matches_the_tokenizer(counter):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_source(make_config().pools["fast"]))
    body = {"messages": [{"role": "user", "content": "Hello there, how are you?"}]}
    n = counter.count("chat", "fast", body)
    expected = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
    assert n == len(tok.encode(expected, add_special_tokens=False))
    assert n > len(tok.encode("Hello there, how are you?"))  # the template's tokens count too
    # enable_thinking=False adds the empty <think></think> block Qwen3's template writes.
    off = counter.count("chat", "fast", {**body, "chat_template_kwargs": {"enable_thinking": False}})
    assert off > n


def test_completion_prompts_text_and_token_ids(counter):
    assert counter.count("completions", "fast", {"prompt": "hello world"}) == 2
    assert counter.count("completions", "fast", {"prompt": [1, 2, 3, 4]}) == 4
    assert counter.count("completions", "fast", {"prompt": ["hello world", "hello"]}) == 3


def test_check_raises_over_the_limit_only(counter):
    body = {"messages": [{"role": "user", "content": "word " * 50}]}
    asyncio.run(counter.check("chat", "fast", body, None))
    asyncio.run(counter.check("chat", "fast", body, 500))
    with pytest.raises(APIError) as err:
        asyncio.run(counter.check("chat", "fast", body, 20))
    assert err.value.status == 400 and err.value.code == "prompt_too_long" and err.value.param == "messages"
    assert "word word" not in err.value.message


def test_app_enforces_max_prompt_tokens_before_the_engine(make_app):
    client, backend, _ = make_app(limits__max_prompt_tokens=30)
    ok = client.post("/v1/chat/completions", json=CHAT, headers=bearer())
    assert ok.status_code == 200
    long = {**CHAT, "messages": [{"role": "user", "content": "word " * 100}]}
    r = client.post("/v1/chat/completions", json=long, headers=bearer())
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
    r = client.post("/v1/completions", json={"model": "qwen3-fast", "prompt": "word " * 100, "max_tokens": 1}, headers=bearer())
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert len(backend.calls) == 1
