"""Fakes for the ingress unit tests (fixtures in conftest.py): a pool backend whose streams are scripted, and a config.

No Ray and no engine: `create_app(config, FakeBackend(...))` is the real FastAPI app over
fake pools, driven with Starlette's TestClient or by calling the Forwarder directly.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional

from server.config import parse_config

KEYS = {"main": "sk-unit-main-1", "limited": "sk-unit-limited-2", "tpm": "sk-unit-tpm-3", "conc": "sk-unit-conc-4"}
KEYS_ENV = "QWEN_SERVE_UNIT_KEYS"

HANG = object()  # a stream item: wait (until cancelled) instead of yielding


class ErrorResponse:
    """Shaped like vLLM's ErrorResponse (the forwarder matches it by class name)."""

    def __init__(self, code: int, message: str, param: Optional[str] = None) -> None:
        self.error = SimpleNamespace(code=code, message=message, param=param)


class FakeStream:
    """Yields scripted items: str / list (SSE frames), dict (a full response), an
    exception instance (raised), a float (sleep that many seconds first) or HANG."""

    def __init__(self, items: List[Any], assigned: bool = False) -> None:
        self.items = list(items)
        self.cancelled = False
        self.pulled = 0
        self.assigned = assigned  # a replica has taken it (else it waits in Serve's queue)

    def __aiter__(self) -> "FakeStream":
        return self

    async def __anext__(self) -> Any:
        while True:
            if self.cancelled:
                raise asyncio.CancelledError
            if not self.items:
                raise StopAsyncIteration
            item = self.items.pop(0)
            if item is HANG:
                await asyncio.sleep(60)
                continue
            if isinstance(item, float):
                await asyncio.sleep(item)
                continue
            if isinstance(item, BaseException):
                raise item
            self.pulled += 1
            return item

    def cancel(self) -> None:
        self.cancelled = True


class FakeBackend:
    """Each call pops the next script (a list of items) or builds one with `factory`."""

    def __init__(self, factory: Optional[Callable[[str, str, Any], List[Any]]] = None) -> None:
        self.factory = factory or (lambda kind, pool, request: sse(kind, ["hi", " there"]))
        self.calls: List[Dict[str, Any]] = []
        self.streams: List[FakeStream] = []
        self.healthy = True
        self.down: set = set()  # pools whose health check fails
        self.check_outcomes: Dict[str, List[bool]] = {}  # scripted per pool, then as `down` says
        self.checks = 0
        self.assign: Callable[[str], bool] = lambda pool: False  # whether a replica takes each call at once

    def call(self, kind: str, pool: str, request: Any) -> FakeStream:
        self.calls.append({"kind": kind, "pool": pool, "request": request})
        stream = FakeStream(self.factory(kind, pool, request), assigned=self.assign(pool))
        self.streams.append(stream)
        return stream

    async def check(self, pool: str, timeout_s: float) -> None:
        self.checks += 1
        scripted = self.check_outcomes.get(pool)
        if scripted:
            if not scripted.pop(0):
                raise RuntimeError("replica down")
            return
        if not self.healthy or pool in self.down:
            raise RuntimeError("replica down")

    def assigned(self, stream: FakeStream) -> bool:
        return stream.assigned


def sse(kind: str, tokens: List[str], usage: bool = True) -> List[Any]:
    """An engine's streamed answer: one SSE frame per token, a usage frame, [DONE]."""
    import orjson

    frames: List[Any] = []
    for tok in tokens:
        if kind == "chat":
            body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": tok}}]}
        else:
            body = {"object": "text_completion", "choices": [{"index": 0, "text": tok}]}
        frames.append("data: " + orjson.dumps(body).decode() + "\n\n")
    if usage:
        u = {"prompt_tokens": 5, "completion_tokens": len(tokens), "total_tokens": 5 + len(tokens)}
        frames.append("data: " + orjson.dumps({"choices": [], "usage": u}).decode() + "\n\n")
    frames.append("data: [DONE]\n\n")
    return frames


def full(kind: str = "chat", text: str = "hello") -> Dict[str, Any]:
    """A complete (non-streamed) response object."""
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    if kind == "chat":
        return {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}], "usage": usage}
    return {"object": "text_completion", "choices": [{"index": 0, "text": text}], "usage": usage}


def default_factory(kind: str, pool: str, request: Any) -> List[Any]:
    return sse(kind, ["a", "b"]) if getattr(request, "stream", False) else [full(kind)]


def make_config(**overrides: Any):
    doc: Dict[str, Any] = {
        "server": {"request_timeout_s": 5},
        "pools": {
            "fast": {"model": "tiny-qwen3-dense", "accelerator": "cpu", "max_ongoing_requests": 4, "max_queued_requests": 2},
            "thinking": {"model": "tiny-qwen3-moe", "accelerator": "cpu", "max_ongoing_requests": 2, "max_queued_requests": 1},
        },
        "router": {"modes": {"thinking": {"pool": "thinking"}, "fast": {"pool": "fast"}}},
        "security": {
            "api_keys_env": KEYS_ENV,
            "per_key_limits": {
                "limited": {"requests_per_minute": 3},
                "tpm": {"tokens_per_minute": 1000},
                "conc": {"max_concurrency": 1},
            },
        },
        "limits": {"max_body_bytes": 4096, "max_header_bytes": 2048},
    }
    for dotted, value in overrides.items():
        node = doc
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return parse_config(doc, "unit")


def bearer(name: str = "main") -> Dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


CHAT = {"model": "qwen3-fast", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
