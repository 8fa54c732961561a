"""Synthetic prompts have exact token lengths (real Qwen3 tokenizer); bodies carry the modes."""

import itertools
import json

import orjson
import pytest

from loadtest.config import LengthDist, RunConfig, WorkloadConfig, parse_mix
from loadtest.suite import CATEGORIES, SUITE
from loadtest.workload import PromptMaker, build_body, conversations, load_tokenizer


def cfg(**wl):
    top = {k: wl.pop(k) for k in ("endpoint", "seed", "vllm_extensions") if k in wl}
    return RunConfig(model="m", workload=WorkloadConfig(**wl), **top)


def chat_len(maker, conv):
    msgs = ([{"role": "system", "content": conv.system}] if conv.system else []) + [
        {"role": "user", "content": conv.turns[0]}]
    return maker.count_chat(msgs, conv.mode)


@pytest.mark.parametrize("prefix", [0, 40])
def test_exact_chat_lengths_all_modes(prefix):
    c = cfg(input_tokens="60:400", prefix_tokens=prefix,
            mode_mix={"thinking": 1, "fast": 1, "auto": 1})
    maker = PromptMaker(c)
    convs = list(itertools.islice(conversations(c, maker), 60))
    assert {x.mode for x in convs} == {"thinking", "fast", "auto"}
    for conv in convs:
        assert 60 <= conv.expected_prompt_tokens <= 400
        assert chat_len(maker, conv) == conv.expected_prompt_tokens
    if prefix:
        assert len({x.system for x in convs}) == 1
        assert maker.count(convs[0].system) == prefix


def test_exact_completion_lengths():
    c = cfg(endpoint="completions", input_tokens=257)
    maker = PromptMaker(c)
    tok = load_tokenizer()
    for conv in itertools.islice(conversations(c, maker), 20):
        body = orjson.loads(build_body(c, conv, 0, []))
        assert len(tok(body["prompt"], add_special_tokens=False)["input_ids"]) == 257


def test_output_lengths_and_distribution():
    c = cfg(output_tokens="10:20")
    outs = [x.max_tokens[0] for x in itertools.islice(conversations(c), 300)]
    assert min(outs) == 10 and max(outs) == 20 and len(set(outs)) == 11


def test_too_short_input_is_refused():
    with pytest.raises(ValueError, match="too short"):
        next(conversations(cfg(input_tokens=5, prefix_tokens=10)))


def test_mode_and_effort_shares_and_seed():
    c = cfg(mode_mix=parse_mix("thinking=0.3,fast=0.5,auto=0.2"),
            effort_mix={"none": 1, "high": 1})
    convs = list(itertools.islice(conversations(c), 2000))
    share = {m: sum(x.mode == m for x in convs) / 2000 for m in ("thinking", "fast", "auto")}
    assert share["thinking"] == pytest.approx(0.3, abs=0.04)
    assert share["fast"] == pytest.approx(0.5, abs=0.04)
    assert sum(x.effort == "high" for x in convs) / 2000 == pytest.approx(0.5, abs=0.04)
    again = list(itertools.islice(conversations(c), 50))
    assert [(x.turns, x.mode) for x in again] == [(x.turns, x.mode) for x in convs[:50]]
    other = list(itertools.islice(conversations(c, stream=1), 50))
    assert [x.turns for x in other] != [x.turns for x in again]


def test_body_fields_per_mode():
    c = cfg(mode_mix={"thinking": 1, "fast": 1, "auto": 1}, effort_mix={"low": 1})
    seen = {}
    for conv in itertools.islice(conversations(c), 30):
        seen[conv.mode] = json.loads(build_body(c, conv, 0, []))
    assert seen["thinking"]["chat_template_kwargs"] == {"enable_thinking": True}
    assert seen["fast"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in seen["auto"]
    for body in seen.values():
        assert body["reasoning_effort"] == "low" and body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["min_tokens"] == body["max_tokens"] and body["ignore_eos"] is True
    no_ext = cfg(vllm_extensions=False)
    body = json.loads(build_body(no_ext, next(conversations(no_ext)), 0, []))
    assert "min_tokens" not in body and "ignore_eos" not in body


def test_alias_mode():
    c = cfg(mode_mix={"thinking": 1, "fast": 1}, thinking_via="alias",
            thinking_model="q-think", fast_model="q-fast")
    for conv in itertools.islice(conversations(c), 10):
        body = json.loads(build_body(c, conv, 0, []))
        assert body["model"] == ("q-think" if conv.mode == "thinking" else "q-fast")
        assert "chat_template_kwargs" not in body


def test_multi_turn_history_and_prefix():
    c = cfg(turns=3, prefix_tokens=16, input_tokens=64)
    conv = next(conversations(c))
    hist = [{"role": "user", "content": conv.turns[0]}, {"role": "assistant", "content": "ok"}]
    body = json.loads(build_body(c, conv, 1, hist))
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == conv.system and len(conv.turns) == 3


def test_suite_and_jsonl(tmp_path):
    assert {"chat", "maths", "code", "multilingual"} <= set(CATEGORIES)
    assert any("长城" in t for e in SUITE for t in e["turns"])
    c = cfg(kind="suite", mode_mix={"fast": 1})
    convs = list(itertools.islice(conversations(c), len(SUITE)))
    assert {x.category for x in convs} == set(CATEGORIES)
    assert c.workload.force_exact_output is False
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi", "max_tokens": 7, "mode": "thinking"}\n'
                 '{"messages": [{"role": "user", "content": "yo"}]}\n', encoding="utf-8")
    c = cfg(kind="jsonl", jsonl_path=str(f), output_tokens=5)
    convs = list(itertools.islice(conversations(c), 4))
    by_text = {x.turns[0]: x for x in convs}
    assert by_text["hi"].max_tokens == [7] and by_text["hi"].mode == "thinking"
    msgs = [x for x in convs if x.raw_messages][0]
    assert json.loads(build_body(c, msgs, 0, []))["messages"] == [{"role": "user", "content": "yo"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nothing": 1}\n')
    with pytest.raises(ValueError):
        next(conversations(cfg(kind="jsonl", jsonl_path=str(bad))))


def test_length_dist_parse():
    assert LengthDist.parse("128") == LengthDist(min=128, max=128)
    assert LengthDist.parse("64:256") == LengthDist(min=64, max=256)
    with pytest.raises(ValueError):
        LengthDist.parse("9:3")
    with pytest.raises(ValueError):
        WorkloadConfig(mode_mix={"slow": 1})
