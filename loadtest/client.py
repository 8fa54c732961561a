"""HTTP + SSE client: sends one request, times its stream, fills a ``Record``.

The hot path is kept small: one clock read per network read (every event in one read
arrived at the same moment), ``bytes.find`` to split SSE events, orjson to decode them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Dict, List, Optional

import aiohttp

try:  # orjson is several times faster than json on small chunks
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency
    from json import loads as _loads

ROUTE_HEADERS = ("x-route-mode", "x-route-pool", "x-route-reason")


class Record:
    """One request: what was asked, what came back and when (seconds, one clock)."""

    __slots__ = (
        "idx", "conv_id", "turn", "phase", "stage", "mode", "effort", "model",
        "expected_prompt_tokens", "max_tokens", "scheduled", "start", "end",
        "status", "error", "error_kind", "ttft", "ttfa", "e2e", "chunk_times",
        "n_chunks", "prompt_tokens", "output_tokens", "reasoning_tokens", "answer_tokens",
        "tokens_source", "reasoning_parts", "answer_parts", "finish_reason",
        "route_mode", "route_pool", "route_reason", "served_mode", "usage_reasoning",
    )

    def __init__(self, idx: int = 0, **kw) -> None:
        self.idx = idx
        self.conv_id = 0
        self.turn = 0
        self.phase = "measure"
        self.stage = 0
        self.mode = "auto"
        self.effort = "none"
        self.model = ""
        self.expected_prompt_tokens: Optional[int] = None
        self.max_tokens: Optional[int] = None
        self.scheduled: Optional[float] = None  # open loop: planned send time
        self.start = 0.0
        self.end: Optional[float] = None
        self.status = 0
        self.error = ""
        self.error_kind = ""
        self.ttft: Optional[float] = None
        self.ttfa: Optional[float] = None
        self.e2e: Optional[float] = None
        self.chunk_times: List[float] = []  # since start, of chunks carrying text
        self.n_chunks = 0
        self.prompt_tokens: Optional[int] = None
        self.output_tokens: Optional[int] = None
        self.reasoning_tokens: Optional[int] = None
        self.answer_tokens: Optional[int] = None
        self.usage_reasoning: Optional[int] = None
        self.tokens_source = ""
        self.reasoning_parts: List[str] = []
        self.answer_parts: List[str] = []
        self.finish_reason: Optional[str] = None
        self.route_mode: Optional[str] = None
        self.route_pool: Optional[str] = None
        self.route_reason: Optional[str] = None
        self.served_mode: Optional[str] = None
        for k, v in kw.items():
            setattr(self, k, v)

    @property
    def ok(self) -> bool:
        return not self.error_kind and self.status == 200

    @property
    def send_lag(self) -> Optional[float]:
        return None if self.scheduled is None else self.start - self.scheduled

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning_parts)

    @property
    def answer_text(self) -> str:
        return "".join(self.answer_parts)

    def fail(self, kind: str, message: str) -> None:
        if not self.error_kind:
            self.error_kind = kind
            self.error = message[:500]


class StreamParser:
    """Incremental SSE parser for OpenAI chat/completions streams.

    ``feed(data, now)`` takes raw bytes as they arrive and the clock reading for them
    (seconds since the request was sent), and updates the record.
    """

    __slots__ = ("rec", "buf", "done", "last_choice")

    def __init__(self, rec: Record) -> None:
        self.rec = rec
        self.buf = b""
        self.done = False
        self.last_choice: Optional[float] = None

    def feed(self, data: bytes, now: float) -> None:
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self.buf + data if self.buf else data
        pos = 0
        while True:
            end = buf.find(b"\n\n", pos)
            if end < 0:
                break
            event = buf[pos:end]
            pos = end + 2
            if event.startswith(b"data: ") and b"\n" not in event:
                self._payload(event[6:], now)
            elif event:
                self._event(event, now)
        self.buf = buf[pos:] if pos < len(buf) else b""

    def _event(self, event: bytes, now: float) -> None:
        data = [
            line[5:].removeprefix(b" ")
            for line in event.split(b"\n")
            if line.startswith(b"data:")
        ]  # comments (":"), event:, id:, retry: lines are ignored
        if data:
            self._payload(b"\n".join(data), now)

    def _payload(self, payload: bytes, now: float) -> None:
        rec = self.rec
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            obj = _loads(payload)
        except ValueError:
            rec.fail("bad_chunk", payload[:200].decode("utf-8", "replace"))
            return
        choices = obj.get("choices")
        if choices:
            self.last_choice = now
            c0 = choices[0]
            delta = c0.get("delta")
            if delta is not None:
                content = delta.get("content")
                reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            else:  # completions endpoint
                content = c0.get("text")
                reasoning = None
            if content or reasoning:
                rec.chunk_times.append(now)
                if rec.ttft is None:
                    rec.ttft = now
                if reasoning:
                    rec.reasoning_parts.append(reasoning)
                if content:
                    rec.answer_parts.append(content)
                    if rec.ttfa is None:
                        rec.ttfa = now
            fr = c0.get("finish_reason")
            if fr:
                rec.finish_reason = fr
        usage = obj.get("usage")
        if usage:
            _apply_usage(rec, usage)
        err = obj.get("error")
        if err:
            msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            rec.fail("stream_error", msg)


def _apply_usage(rec: Record, usage: dict) -> None:
    if usage.get("completion_tokens") is not None:
        rec.output_tokens = usage["completion_tokens"]
        rec.tokens_source = "usage"
    if usage.get("prompt_tokens") is not None:
        rec.prompt_tokens = usage["prompt_tokens"]
    details = usage.get("completion_tokens_details") or {}
    if details.get("reasoning_tokens") is not None:
        rec.usage_reasoning = details["reasoning_tokens"]


def _headers(rec: Record, headers) -> None:
    rec.route_mode = headers.get("x-route-mode")
    rec.route_pool = headers.get("x-route-pool")
    rec.route_reason = headers.get("x-route-reason")


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    rec: Record,
    t0: float,
    stream: bool = True,
    headers: Optional[Dict[str, str]] = None,
    timeout: Optional[aiohttp.ClientTimeout] = None,
) -> Record:
    """POST ``body`` to ``url``; fill ``rec`` (times relative to ``t0``, the run's start)."""
    clock = time.perf_counter
    start = clock()
    rec.start = start - t0
    try:
        async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
            rec.status = resp.status
            _headers(rec, resp.headers)
            if resp.status != 200:
                text = (await resp.content.read(2048)).decode("utf-8", "replace")
                rec.fail(f"http_{resp.status}", text)
            elif stream:
                parser = StreamParser(rec)
                feed = parser.feed
                async for data in resp.content.iter_any():
                    feed(data, clock() - start)
                if parser.buf.strip():  # a final event without its blank line
                    parser.feed(b"\n\n", clock() - start)
                rec.n_chunks = len(rec.chunk_times)
                if parser.last_choice is not None:
                    rec.e2e = parser.last_choice
                if rec.ttft is None and not rec.error_kind:
                    rec.fail("no_tokens", "stream ended without a text chunk")
            else:
                raw = await resp.read()
                now = clock() - start
                _parse_full(rec, raw, now)
    except asyncio.TimeoutError:
        rec.fail("timeout", "request timed out")
    except aiohttp.ClientResponseError as exc:  # pragma: no cover - rare
        rec.fail(f"http_{exc.status}", str(exc))
    except (aiohttp.ClientError, OSError) as exc:
        rec.fail("connection", f"{type(exc).__name__}: {exc}")
    end = clock()
    rec.end = end - t0
    if rec.e2e is None and rec.ok:
        rec.e2e = end - start
    return rec


def _parse_full(rec: Record, raw: bytes, now: float) -> None:
    """A non-streaming response: TTFT = TTFA = E2E (nothing earlier is observable)."""
    try:
        obj = _loads(raw)
    except ValueError:
        rec.fail("bad_body", raw[:200].decode("utf-8", "replace"))
        return
    choices = obj.get("choices") or []
    if choices:
        c0 = choices[0]
        msg = c0.get("message")
        if msg is not None:
            content = msg.get("content")
            reasoning = msg.get("reasoning") or msg.get("reasoning_content")
        else:
            content, reasoning = c0.get("text"), None
        if reasoning:
            rec.reasoning_parts.append(reasoning)
        if content:
            rec.answer_parts.append(content)
        rec.finish_reason = c0.get("finish_reason")
    if obj.get("usage"):
        _apply_usage(rec, obj["usage"])
    if obj.get("error"):
        rec.fail("body_error", str(obj["error"]))
    rec.ttft = rec.e2e = now
    if rec.answer_parts:
        rec.ttfa = now
    rec.chunk_times = [now]
    rec.n_chunks = 1


def finalize_tokens(records: List[Record], tokenizer=None) -> None:
    """Fill output/reasoning/answer token counts and the served mode, after the run.

    Output tokens: ``usage.completion_tokens`` when the server sent it, else the tokenizer's
    count of the text, else the number of text chunks. Reasoning tokens:
    ``usage.completion_tokens_details.reasoning_tokens`` when present, else the tokenizer's
    count of the reasoning text (so the split is approximate by the think markers).
    """
    need = [r for r in records if r.ok and (r.output_tokens is None or (r.usage_reasoning is None and r.reasoning_parts))]
    counts: Dict[int, tuple] = {}
    if need and tokenizer is not None:
        texts_r = [r.reasoning_text for r in need]
        texts_a = [r.answer_text for r in need]
        enc_r = tokenizer(texts_r, add_special_tokens=False)["input_ids"]
        enc_a = tokenizer(texts_a, add_special_tokens=False)["input_ids"]
        for r, a, b in zip(need, enc_r, enc_a):
            counts[id(r)] = (len(a), len(b))
    for r in records:
        if not r.ok:
            continue
        tok = counts.get(id(r))
        if r.output_tokens is None:
            if tok is not None:
                r.output_tokens = tok[0] + tok[1]
                r.tokens_source = "tokenizer"
            else:
                r.output_tokens = len(r.chunk_times)
                r.tokens_source = "chunks"
        if r.usage_reasoning is not None:
            r.reasoning_tokens = r.usage_reasoning
        elif not r.reasoning_parts:
            r.reasoning_tokens = 0
        elif tok is not None:
            r.reasoning_tokens = min(tok[0], r.output_tokens)
        else:
            r.reasoning_tokens = min(
                sum(1 for _ in r.reasoning_parts), r.output_tokens
            )
        r.answer_tokens = max(r.output_tokens - r.reasoning_tokens, 0)
        if r.route_mode:
            r.served_mode = r.route_mode
        else:
            r.served_mode = "thinking" if r.reasoning_tokens else "fast"
