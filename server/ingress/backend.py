"""The small interface between the HTTP layer and the engine pools.

`PoolBackend` is all the ingress knows about pools. `RayPoolBackend` implements it over
Ray Serve deployment handles to Ray Serve LLM's `LLMServer` (built in server/app.py);
unit tests pass a fake.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Mapping, Protocol


class PoolStream(Protocol):
    """An engine response stream: items are SSE strings (or lists of them when Ray Serve LLM
    batches), a full response object, or vLLM's ErrorResponse."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    async def __anext__(self) -> Any: ...

    def cancel(self) -> None: ...


class PoolBackend(Protocol):
    def call(self, kind: str, pool: str, request: Any) -> PoolStream:
        """Start `kind` ("chat" or "completions") on `pool`."""

    async def check(self, pool: str, timeout_s: float) -> None:
        """Raise if no replica of `pool` answers a health check in time."""

    def assigned(self, stream: PoolStream) -> bool:
        """Whether a replica has taken the request (False while it waits for one)."""


class EngineUnavailable(Exception):
    """No replica could take the request (all dead, or Serve's queue is full)."""


class RayPoolBackend:
    def __init__(self, handles: Mapping[str, Any]) -> None:
        self._plain = dict(handles)
        self._streaming = {name: h.options(stream=True) for name, h in handles.items()}

    def call(self, kind: str, pool: str, request: Any) -> PoolStream:
        handle = self._streaming[pool]
        method = getattr(handle, kind)
        return method.remote(request)

    async def check(self, pool: str, timeout_s: float) -> None:
        await asyncio.wait_for(self._plain[pool].check_health.remote(), timeout_s)

    def assigned(self, stream: PoolStream) -> bool:
        # Serve resolves this future when its router hands the request to a replica. It is
        # not public API: without it every request counts as waiting, the safe side for
        # a dead pool (its waiting requests get 503 rather than wait for their deadline).
        future = getattr(stream, "_replica_result_future", None)
        if future is None or not future.done() or future.cancelled():
            return False
        return future.exception() is None
