"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}.

Every failure the ingress knows about is raised as `APIError`; the exception handlers
installed by `install_error_handlers` turn it, FastAPI's own errors and anything
unexpected into that shape. Messages never echo prompt text or keys.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

logger = logging.getLogger("qwen_serve.ingress")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    499: "client_closed_request",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: Optional[str] = None,
        param: Optional[str] = None,
        type: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        reason: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = dict(headers or {})
        # A bounded label for metrics (rate_limit, queue_full, bad_request, auth, ...).
        self.reason = reason or ("bad_request" if status < 500 else "server_error")

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, extra_headers: Optional[Mapping[str, str]] = None) -> Response:
        headers = {**self.headers, **(extra_headers or {})}
        return Response(orjson.dumps(self.body()), status_code=self.status, media_type="application/json", headers=headers)


# Exceptions that mean the client disconnected (Starlette's, and Ray Serve's request cancellation).
CLIENT_GONE = frozenset({"ClientDisconnect", "TaskCancelledError", "RequestCancelledError"})


def pool_unavailable(detail: str, retry_after_s: int, headers: Optional[Mapping[str, str]] = None) -> APIError:
    """503 `pool_unavailable` with Retry-After: the pool is down (refused up front, or found
    down while the request waited for its first token)."""
    return APIError(503, f"Service unavailable: {detail}; retry after {retry_after_s}s", code="pool_unavailable",
                    headers={**(headers or {}), "Retry-After": str(retry_after_s)}, reason="pool_unavailable")


def error_chunk(err: APIError) -> bytes:
    """The SSE frame that ends a stream which failed after its headers were sent."""
    return b"data: " + orjson.dumps(err.body()) + b"\n\ndata: [DONE]\n\n"


def from_engine_error(error: Any) -> APIError:
    """Map vLLM's ErrorResponse (code is the HTTP status) to an APIError."""
    info = getattr(error, "error", error)
    status = int(getattr(info, "code", 500) or 500)
    message = str(getattr(info, "message", "engine error"))
    param = getattr(info, "param", None)
    code = None
    lowered = message.lower()
    if "context length" in lowered or "maximum context" in lowered or "too long" in lowered:
        code = "context_length_exceeded"
    if status < 400 or status > 599:
        status = 500
    return APIError(status, message, code=code, param=param, reason="bad_request" if status < 500 else "engine_error")


def _loc_to_param(loc: Any) -> Optional[str]:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) if parts else None


def validation_error(errors: Any) -> APIError:
    """A pydantic/FastAPI validation error list as one 400 naming the first bad field."""
    first = errors[0] if errors else {}
    param = _loc_to_param(first.get("loc", ()))
    msg = first.get("msg", "invalid request")
    if first.get("type") == "missing":
        message = f"'{param}' is a required property"
    else:
        message = f"Invalid value for '{param}': {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error(s))"
    return APIError(400, message, param=param, code="invalid_value" if first.get("type") != "missing" else "missing_required_parameter")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        message = {404: "Not found: no such route", 405: "Method not allowed on this route"}.get(
            exc.status_code, str(exc.detail)
        )
        return APIError(exc.status_code, message, headers=getattr(exc, "headers", None) or {}).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        if type(exc).__name__ in CLIENT_GONE:
            # The client went away (Starlette, or Ray Serve cancelling the request): not a
            # server fault, so no ERROR traceback per disconnect; nobody reads the reply.
            logger.debug("client disconnected: %s", type(exc).__name__)
            return APIError(499, "Client closed the request", reason="client_closed").response()
        logger.exception("unhandled error in ingress: %s", type(exc).__name__)
        return APIError(500, "Internal server error", reason="server_error").response()
