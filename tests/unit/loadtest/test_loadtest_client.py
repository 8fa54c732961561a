"""SSE parsing: event splitting at any byte boundary, reasoning/answer split, usage, errors."""

import orjson
import pytest

from loadtest.client import Record, StreamParser, finalize_tokens
from loadtest.workload import load_tokenizer


def chat_chunk(reasoning=None, content=None, role=False, finish=None, key="reasoning"):
    delta = {}
    if role:
        delta = {"role": "assistant", "content": ""}
    if reasoning is not None:
        delta[key] = reasoning
    if content is not None:
        delta["content"] = content
    return {"id": "x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def sse(objs, sep=b"\n\n"):
    out = b""
    for o in objs:
        out += b"data: " + (o if isinstance(o, bytes) else orjson.dumps(o)) + sep
    return out


STREAM = [
    chat_chunk(role=True),
    chat_chunk(reasoning="Let me"),
    chat_chunk(reasoning=" think 你好"),
    chat_chunk(content="The answer"),
    chat_chunk(content=" is 4.", finish="stop"),
    {"id": "x", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9,
                                         "completion_tokens_details": {"reasoning_tokens": 5}}},
    b"[DONE]",
]


def parse(data: bytes, splits):
    rec = Record()
    p = StreamParser(rec)
    pos = 0
    for i, cut in enumerate(list(splits) + [len(data)]):
        p.feed(data[pos:cut], float(i))
        pos = cut
    return rec, p


def test_reasoning_then_answer():
    rec, p = parse(sse(STREAM), [])
    assert rec.reasoning_text == "Let me think 你好"
    assert rec.answer_text == "The answer is 4."
    assert len(rec.chunk_times) == 4  # the role chunk carries no text
    assert (rec.output_tokens, rec.prompt_tokens, rec.usage_reasoning) == (9, 12, 5)
    assert rec.finish_reason == "stop" and p.done and not rec.error_kind


def test_every_split_point_gives_the_same_result():
    data = sse(STREAM)
    whole, _ = parse(data, [])
    for cut in range(1, len(data)):
        rec, p = parse(data, [cut])
        assert (rec.reasoning_text, rec.answer_text, rec.output_tokens) == (
            whole.reasoning_text, whole.answer_text, whole.output_tokens), cut
        assert p.done


def test_ttft_vs_ttfa_timing():
    data = [sse([c]) for c in STREAM]
    rec = Record()
    p = StreamParser(rec)
    for t, piece in zip([0.05, 0.10, 0.20, 0.70, 0.80, 0.81, 0.82], data):
        p.feed(piece, t)
    assert rec.ttft == 0.10  # first reasoning text (not the role chunk)
    assert rec.ttfa == 0.70  # first answer text
    assert rec.chunk_times == [0.10, 0.20, 0.70, 0.80]
    assert p.last_choice == 0.80  # usage chunk has no choices


def test_reasoning_content_alias_crlf_comments_multiline():
    raw = (b": ping\r\n\r\n"
           + sse([chat_chunk(reasoning="a", key="reasoning_content")], b"\r\n\r\n")
           + b'event: message\ndata: {"choices":[{"delta":\ndata: {"content":"b"}}]}\n\n'
           + b"data: [DONE]\n\n")
    rec, p = parse(raw, [7, 30])
    assert rec.reasoning_text == "a" and rec.answer_text == "b" and p.done


def test_completions_text_and_stream_error():
    raw = sse([{"choices": [{"text": "hi", "index": 0}]},
               {"error": {"message": "engine died", "code": 500}}])
    rec, _ = parse(raw, [])
    assert rec.answer_text == "hi" and rec.ttfa is not None
    assert rec.error_kind == "stream_error" and "engine died" in rec.error and not rec.ok


def test_bad_json_is_an_error():
    rec, _ = parse(b"data: {not json\n\n", [])
    assert rec.error_kind == "bad_chunk"


def test_finalize_uses_usage_then_tokenizer_then_chunks():
    tok = load_tokenizer()
    with_usage, _ = parse(sse(STREAM), [])
    with_usage.status = 200
    no_usage, _ = parse(sse(STREAM[:-2] + [b"[DONE]"]), [])
    no_usage.status = 200
    fast = Record(status=200)
    fast.answer_parts, fast.chunk_times = ["Hello there"], [0.1]
    fast.output_tokens = 2
    finalize_tokens([with_usage, no_usage, fast], tok)
    assert (with_usage.reasoning_tokens, with_usage.answer_tokens) == (5, 4)
    assert with_usage.tokens_source == "usage" and with_usage.served_mode == "thinking"
    n_r = len(tok("Let me think 你好", add_special_tokens=False)["input_ids"])
    n_a = len(tok("The answer is 4.", add_special_tokens=False)["input_ids"])
    assert no_usage.tokens_source == "tokenizer"
    assert (no_usage.reasoning_tokens, no_usage.answer_tokens) == (n_r, n_a)
    assert (fast.reasoning_tokens, fast.answer_tokens, fast.served_mode) == (0, 2, "fast")
    bare = Record(status=200)
    bare.chunk_times = [0.1, 0.2, 0.3]
    finalize_tokens([bare], None)
    assert bare.output_tokens == 3 and bare.tokens_source == "chunks"
