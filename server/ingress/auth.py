"""API-key authentication as an ASGI middleware, so no route can escape it.

Keys come from an environment variable or a mounted file and are kept only as SHA-256
digests. A presented key is hashed and compared with every stored digest using
`hmac.compare_digest`, so timing does not reveal which key or how much of it matched.
Only `/health` and `/ready` (and `/metrics` when configured public) are open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from typing import Iterable, List, Optional, Tuple

from server.ingress.errors import APIError
from server.security_config import SecurityConfig

logger = logging.getLogger("qwen_serve.auth")

OPEN_PATHS = frozenset({"/health", "/ready"})


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


_NAMED = re.compile(r"^([A-Za-z0-9_.-]{1,64}):(\S+)$")


def parse_keys(text: str, start: int = 0) -> List[Tuple[str, str]]:
    """(name, key) pairs from `[name:]key` entries; unnamed keys are called key-N."""
    keys = []
    for line in text.replace(",", "\n").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        named = _NAMED.match(line)
        if named:
            keys.append((named.group(1), named.group(2)))
        else:
            keys.append((f"key-{start + len(keys) + 1}", line))
    return keys


class Authenticator:
    def __init__(self, keys: Iterable[Tuple[str, str]]) -> None:
        self._digests = [(name, _digest(k)) for name, k in keys]
        self.enabled = bool(self._digests)

    @classmethod
    def from_config(cls, security: SecurityConfig) -> "Authenticator":
        keys: List[Tuple[str, str]] = []
        if security.api_keys_env:
            value = os.environ.get(security.api_keys_env)
            if value is None:
                raise ValueError(f"security.api_keys_env names {security.api_keys_env}, which is not set")
            keys += parse_keys(value)
        if security.api_keys_file:
            try:
                with open(security.api_keys_file, encoding="utf-8") as fh:
                    keys += parse_keys(fh.read(), start=len(keys))
            except OSError as err:
                raise ValueError(f"security.api_keys_file {security.api_keys_file} cannot be read: {err.strerror}") from None
        if security.auth_configured and not keys:
            raise ValueError("API keys are configured but none were found")
        auth = cls(keys)
        if auth.enabled:
            logger.info("API key auth on: %d key(s) loaded", len(keys))
        return auth

    def key_id(self, presented: Optional[str]) -> Optional[str]:
        """The name of a valid key, or None. Compares against every key (constant time)."""
        if presented is None:
            return None
        candidate = _digest(presented)
        match = None
        for name, digest in self._digests:
            if hmac.compare_digest(candidate, digest):
                match = name
        return match

    def check(self, request) -> Optional[str]:
        return request.scope.get("qwen_key_id")

    def install(self, app, *, metrics_public: bool, rejections) -> None:
        if not self.enabled:
            return
        open_paths = set(OPEN_PATHS) | ({"/metrics"} if metrics_public else set())
        app.add_middleware(_AuthMiddleware, auth=self, open_paths=frozenset(open_paths), rejections=rejections)


def _bearer(headers: list) -> Optional[str]:
    for name, value in headers:
        if name == b"authorization":
            text = value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


class _AuthMiddleware:
    def __init__(self, app, auth: Authenticator, open_paths: frozenset, rejections) -> None:
        self.app = app
        self.auth = auth
        self.open_paths = open_paths
        self.rejections = rejections

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope.get("headers", []))
        key_id = self.auth.key_id(token) if token else None
        if key_id is None:
            self.rejections.labels("auth").inc()
            if token is None:
                err = APIError(401, "Missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key", reason="auth")
            else:
                err = APIError(401, "Incorrect API key provided", code="invalid_api_key", reason="auth")
            err.headers["WWW-Authenticate"] = "Bearer"
            await err.response()(scope, receive, send)
            return
        scope["qwen_key_id"] = key_id
        await self.app(scope, receive, send)
