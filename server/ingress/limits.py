"""Per-key limits (requests/min, tokens/min, concurrency) and the header-size limit.

Tokens per minute are charged at admission, as hosted OpenAI-style APIs do: the
estimated prompt tokens plus `max_tokens` (or UNSET_MAX_TOKENS_CHARGE when unset). A
request over any limit gets 429 at once with Retry-After; nothing waits in a queue.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

from server.ingress.errors import APIError
from server.ratelimit import KeyBuckets, estimate_prompt_tokens, retry_after_seconds
from server.security_config import KeyLimits

UNSET_MAX_TOKENS_CHARGE = 256
ANONYMOUS = "anonymous"


def _prompt_chars(request: Any) -> int:
    messages = getattr(request, "messages", None)
    if messages is not None:
        total = 0
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                total += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
        return total
    prompt = getattr(request, "prompt", "")
    return len(prompt) if isinstance(prompt, str) else sum(len(str(p)) for p in prompt or [])


def token_charge(request: Any) -> int:
    max_tokens = getattr(request, "max_completion_tokens", None) or getattr(request, "max_tokens", None)
    n = getattr(request, "n", 1) or 1
    return estimate_prompt_tokens(_prompt_chars(request)) + (max_tokens or UNSET_MAX_TOKENS_CHARGE) * n


class KeyLimiter:
    def __init__(self, limits: KeyLimits, per_key: Optional[Dict[str, KeyLimits]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.default = limits
        self.per_key = dict(per_key or {})
        self.buckets = {name: KeyBuckets(lim.requests_per_minute, lim.tokens_per_minute) for name, lim in self.per_key.items()}
        self.default_buckets = KeyBuckets(limits.requests_per_minute, limits.tokens_per_minute)
        self.in_flight: Dict[str, int] = {}

    @staticmethod
    def _active(lim: KeyLimits) -> bool:
        return bool(lim.requests_per_minute or lim.tokens_per_minute or lim.max_concurrency)

    async def acquire(self, key_id: Optional[str], request: Any, headers: Dict[str, str]) -> Callable[[], None]:
        key = key_id or ANONYMOUS
        limits = self.per_key.get(key, self.default)
        if not self._active(limits):
            return _noop
        buckets = self.buckets.get(key, self.default_buckets)
        cap = limits.max_concurrency
        if cap is not None and self.in_flight.get(key, 0) >= cap:
            raise APIError(
                429, f"Too many concurrent requests for this key (limit {cap})", code="concurrency_limit_exceeded",
                headers={**headers, "Retry-After": "1"}, reason="rate_limit",
            )
        allowed, which, wait = buckets.try_take(key, token_charge(request), self.clock())
        if not allowed:
            after = retry_after_seconds(wait)
            raise APIError(
                429, f"Rate limit reached for {which.replace('_', ' ')}; retry after {after}s",
                code="rate_limit_exceeded", headers={**headers, "Retry-After": str(after)}, reason="rate_limit",
            )
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight[key] -= 1

        return release


def _noop() -> None:
    return None


class _HeaderLimitMiddleware:
    def __init__(self, app, limit: int, rejections) -> None:
        self.app = app
        self.limit = limit
        self.rejections = rejections

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
            if size > self.limit:
                self.rejections.labels("bad_request").inc()
                err = APIError(431, f"Request headers are {size} bytes; the limit is {self.limit}", code="headers_too_large")
                await err.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_header_limit(app, limit: int, rejections) -> None:
    app.add_middleware(_HeaderLimitMiddleware, limit=limit, rejections=rejections)
