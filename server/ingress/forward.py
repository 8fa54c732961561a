"""The one forwarding path from the router to a pool, streamed or not.

It peeks at the engine's first item (so engine-side validation errors become clean 4xx
responses), then either returns the JSON body or streams SSE frames, timing TTFT, time to
first answer token and inter-token gaps without decoding every frame. It always settles
the request: the tracker's in-flight count, the metrics and the engine request (cancelled
on client disconnect or timeout).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple

import orjson
from starlette.responses import Response, StreamingResponse

from server.ingress.backend import PoolBackend
from server.ingress.errors import APIError, error_chunk, from_engine_error, pool_unavailable
from server.metrics import ServeMetrics
from server.routing.load import LoadTracker

logger = logging.getLogger("qwen_serve.ingress")

_DONE = "data: [DONE]\n\n"


@dataclass
class CallInfo:
    kind: str  # "chat" | "completions"
    pool: str
    mode: str
    request_id: str
    headers: Dict[str, str]
    strip_usage: bool  # the client did not ask for the usage chunk; we asked for it
    timeout_s: Optional[float] = None  # this request's deadline (default: the server's)


def _is_error(item: Any) -> bool:
    return type(item).__name__ == "ErrorResponse"


def _flatten(item: Any) -> List[Any]:
    return item if isinstance(item, list) else [item]


def _has_token(frame: str, kind: str) -> Tuple[bool, bool]:
    """(any token, answer token) in one SSE frame, by substring search (no JSON decode)."""
    if kind == "completions":
        i = frame.find('"text":"')
        tok = i >= 0 and frame[i + 8 : i + 9] not in ('"', "")
        return tok, tok
    answer = False
    i = frame.find('"content":"')
    if i >= 0 and frame[i + 11 : i + 12] not in ('"', ""):
        answer = True
    reasoning = False
    j = frame.find('"reasoning":"')
    if j >= 0 and frame[j + 13 : j + 14] not in ('"', ""):
        reasoning = True
    if not answer and '"tool_calls":[' in frame:
        answer = True
    return answer or reasoning, answer


if sys.version_info >= (3, 11):

    async def _next_item(stream: Any, timeout_s: float) -> Any:
        """The stream's next item within `timeout_s`. One timer, no task per item: this runs
        once per streamed chunk, where `asyncio.wait_for` cost a task and two extra event-loop
        turns (about 10 us of CPU a chunk)."""
        async with asyncio.timeout(timeout_s):
            return await stream.__anext__()

else:  # pragma: no cover - Python 3.10

    async def _next_item(stream: Any, timeout_s: float) -> Any:
        return await asyncio.wait_for(stream.__anext__(), timeout_s)


def _usage_from_frame(frame: str) -> Optional[Dict[str, Any]]:
    if '"usage":{' not in frame or not frame.startswith("data: {"):
        return None
    try:
        body = orjson.loads(frame[6:])
    except orjson.JSONDecodeError:
        return None
    return body.get("usage")


def _is_vllm_client_error(exc: BaseException) -> bool:
    return any(c.__name__ == "VLLMClientError" for c in type(exc).__mro__)


def _request_fault(cause: BaseException) -> bool:
    """An exception raised by the engine replica because of the request's content."""
    return _is_vllm_client_error(cause) or isinstance(cause, (ValueError, TypeError, KeyError, IndexError, OverflowError))


class PoolDown(Exception):
    """The pool was found down while the request waited for its first item."""


class Forwarder:
    def __init__(
        self,
        backend: PoolBackend,
        tracker: LoadTracker,
        metrics: ServeMetrics,
        timeout_s: float,
        clock: Callable[[], float] = time.perf_counter,
        pool_down: Optional[Callable[[str], "asyncio.Future[None]"]] = None,
        retry_after_s: int = 2,
    ) -> None:
        self.backend = backend
        self.tracker = tracker
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.clock = clock
        self.pool_down = pool_down  # a pool's "found down" signal (the health checker's)
        self.retry_after_s = retry_after_s

    async def _first_item(self, stream: Any, pool: str, timeout_s: float) -> Any:
        """The engine's first item. A request still waiting for a replica when the pool is
        found down (its replicas died, or are shutting down) ends with 503 pool_unavailable
        rather than waiting for its deadline. One a replica has taken keeps waiting: a
        replica shutting down finishes what it took, and a dead one fails it at once."""
        if self.pool_down is None:
            return await _next_item(stream, timeout_s)
        down = self.pool_down(pool)
        first = asyncio.ensure_future(_next_item(stream, timeout_s))
        try:
            if not down.done():
                await asyncio.wait((first, down), return_when=asyncio.FIRST_COMPLETED)
            if not first.done() and not self.backend.assigned(stream):
                raise PoolDown(pool)
            return await first
        finally:
            if not first.done():
                first.cancel()

    def _count_usage(self, info: CallInfo, usage: Optional[Dict[str, Any]]) -> None:
        if not usage:
            return
        m = self.metrics
        m.prompt_tokens.labels(info.pool, info.mode).inc(usage.get("prompt_tokens") or 0)
        m.completion_tokens.labels(info.pool, info.mode).inc(usage.get("completion_tokens") or 0)
        details = usage.get("completion_tokens_details") or {}
        m.reasoning_tokens.labels(info.pool, info.mode).inc(details.get("reasoning_tokens") or 0)

    def _count_rejection(self, err: APIError) -> None:
        # Refused by Serve's full queue or by the engine's own validation: a rejection too.
        if err.reason in ("queue_full", "pool_unavailable", "bad_request"):
            self.metrics.rejections.labels(err.reason).inc()

    def _settle(self, info: CallInfo, status: int, started: float) -> None:
        self.tracker.finish(info.pool)
        m = self.metrics
        m.set_load(info.pool, self.tracker.in_flight(info.pool))
        m.requests.labels(info.pool, info.mode, str(status)).inc()
        m.e2e.labels(info.pool, info.mode).observe(self.clock() - started)

    async def forward(self, info: CallInfo, request: Any) -> Response:
        started = self.clock()
        timeout_s = info.timeout_s or self.timeout_s
        deadline = started + timeout_s
        self.tracker.start(info.pool)
        self.metrics.set_load(info.pool, self.tracker.in_flight(info.pool))
        stream = None
        try:
            stream = self.backend.call(info.kind, info.pool, request)
            first = await self._first_item(stream, info.pool, timeout_s)
        except BaseException as exc:  # noqa: BLE001 - every failure must settle the request
            if stream is not None:
                stream.cancel()
            err = self._map_exception(exc, timeout_s)
            self._count_rejection(err)
            self._settle(info, err.status, started)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise err from None

        items = _flatten(first)
        head = items[0] if items else None
        if _is_error(head):
            stream.cancel()
            err = from_engine_error(head)
            self._count_rejection(err)
            self._settle(info, err.status, started)
            raise err
        if head is not None and not isinstance(head, str):
            # A complete (non-streamed) response object.
            body = head.model_dump(mode="json") if hasattr(head, "model_dump") else head
            # Not streamed: the client's first token is the whole answer, so this request
            # counts in the end-to-end latency only, not in TTFT, answer-token or ITL.
            self._count_usage(info, body.get("usage"))
            self._settle(info, 200, started)
            return Response(orjson.dumps(body), media_type="application/json", headers=info.headers)
        return StreamingResponse(
            self._stream(info, stream, items, started, deadline, timeout_s),
            media_type="text/event-stream",
            headers={**info.headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    def _map_exception(self, exc: BaseException, timeout_s: float) -> APIError:
        name = type(exc).__name__
        if isinstance(exc, asyncio.TimeoutError):
            return APIError(504, f"Request timed out after {timeout_s:g}s", code="timeout", reason="timeout")
        if isinstance(exc, asyncio.CancelledError):
            return APIError(499, "Client closed the request", reason="client_closed")
        if name == "BackPressureError":
            return APIError(503, "Pool queue is full; retry later", code="queue_full", headers={"Retry-After": "1"}, reason="queue_full")
        if isinstance(exc, PoolDown):
            return pool_unavailable(
                f"pool {exc.args[0]} stopped answering health checks while this request waited for a replica",
                self.retry_after_s)
        if isinstance(exc, StopAsyncIteration):
            return APIError(502, "Engine closed the stream without a response", reason="engine_error")
        cause = getattr(exc, "cause", None) if name.startswith("RayTaskError") else None
        if cause is not None and _request_fault(cause):
            # The replica is alive; the engine refused this request's content (a sampling
            # value out of range, a malformed message...). Retrying cannot help: 400, not 503.
            detail = str(cause.args[0]) if _is_vllm_client_error(cause) and cause.args else type(cause).__name__
            return APIError(400, f"The engine rejected the request: {detail}", code="invalid_value", reason="bad_request")
        logger.warning("engine call failed: %s", name)
        return APIError(503, f"Engine unavailable ({name}); retry later", code="engine_unavailable", headers={"Retry-After": "1"}, reason="engine_error")

    async def _stream(
        self, info: CallInfo, stream: Any, pending: List[Any], started: float, deadline: float, timeout_s: float
    ) -> AsyncIterator[bytes]:
        m = self.metrics
        itl = m.itl.labels(info.pool, info.mode)  # looked up once, observed per chunk
        ttft_seen = answer_seen = False
        last_token_at: Optional[float] = None
        usage: Optional[Dict[str, Any]] = None
        status = 200
        done_sent = False
        exhausted = False
        try:
            while True:
                out: List[str] = []
                for item in pending:
                    if _is_error(item):
                        err = from_engine_error(item)
                        status = err.status
                        out.append(error_chunk(err).decode())
                        done_sent = True
                        break
                    frame = item if isinstance(item, str) else str(item)
                    if frame.startswith("data: [DONE]"):
                        done_sent = True
                        out.append(frame)
                        continue
                    tok, ans = _has_token(frame, info.kind)
                    if tok:
                        now = self.clock()
                        if not ttft_seen:
                            ttft_seen = True
                            m.ttft.labels(info.pool, info.mode).observe(now - started)
                            self.tracker.record_ttft(info.pool, now - started)
                        elif last_token_at is not None:
                            itl.observe(now - last_token_at)
                        last_token_at = now
                        if ans and not answer_seen:
                            answer_seen = True
                            m.ttfat.labels(info.pool, info.mode).observe(now - started)
                    elif '"usage":{' in frame:
                        found = _usage_from_frame(frame)
                        if found is not None:
                            usage = found
                            if info.strip_usage and '"choices":[]' in frame:
                                continue
                    out.append(frame)
                if out:
                    yield "".join(out).encode()
                if done_sent:
                    break
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise asyncio.TimeoutError
                try:
                    nxt = await _next_item(stream, remaining)
                except StopAsyncIteration:
                    exhausted = True
                    break
                pending = _flatten(nxt)
            if not done_sent:
                yield _DONE.encode()
        except asyncio.TimeoutError:
            status = 504
            yield error_chunk(APIError(504, f"Request timed out after {timeout_s:g}s", code="timeout"))
        except (asyncio.CancelledError, GeneratorExit):
            status = 499
            raise
        except Exception as exc:  # noqa: BLE001 - an engine failure mid-stream ends it cleanly
            err = self._map_exception(exc, timeout_s)
            status = err.status
            yield error_chunk(err)
        finally:
            if not exhausted:
                stream.cancel()
            self._count_usage(info, usage)
            self._settle(info, status, started)
