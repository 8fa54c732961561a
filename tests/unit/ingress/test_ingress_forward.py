"""The forwarding path with fake pools: timeouts, cancellation, engine errors and that every
request is settled (tracker, metrics and engine stream) however it ends."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ingress_fakes import HANG, ErrorResponse, FakeBackend, full, sse
from server.ingress.errors import APIError
from server.ingress.forward import CallInfo, Forwarder
from server.metrics import ServeMetrics
from server.routing.load import LoadTracker, PoolLimits


class BackPressureError(Exception):
    """Named like Ray Serve's: the pool's queue is full."""


def _setup(items, timeout_s=1.0):
    backend = FakeBackend(lambda kind, pool, request: list(items))
    tracker = LoadTracker({"fast": PoolLimits(slots=2, queue_limit=2)})
    metrics = ServeMetrics(pools=["fast"])
    return Forwarder(backend, tracker, metrics, timeout_s), backend, tracker, metrics


def _info(timeout_s=None):
    return CallInfo("chat", "fast", "fast", "req-1", {"x-route-mode": "fast"}, strip_usage=False, timeout_s=timeout_s)


def _count(metrics, status):
    return metrics.requests.labels("fast", "fast", str(status))._value.get()


async def _drain(response):
    return b"".join([c async for c in response.body_iterator]).decode()


def test_full_response_is_json_and_settled():
    fwd, backend, tracker, metrics = _setup([full()])
    resp = asyncio.run(fwd.forward(_info(), object()))
    assert resp.status_code == 200 and orjson.loads(resp.body)["object"] == "chat.completion"
    assert resp.headers["x-route-mode"] == "fast"
    assert tracker.in_flight("fast") == 0 and _count(metrics, 200) == 1
    assert metrics.prompt_tokens.labels("fast", "fast")._value.get() == 5


def test_stream_passes_frames_and_ends_with_done():
    fwd, backend, tracker, metrics = _setup(sse("chat", ["a", "b", "c"]))

    async def run():
        resp = await fwd.forward(_info(), object())
        assert tracker.in_flight("fast") == 1  # held while streaming
        return await _drain(resp)

    text = asyncio.run(run())
    assert text.count("data: ") == 5 and text.endswith("data: [DONE]\n\n")
    assert tracker.in_flight("fast") == 0 and _count(metrics, 200) == 1


def test_timeout_before_first_token_is_504_and_aborts_the_engine_request():
    fwd, backend, tracker, metrics = _setup([HANG])
    with pytest.raises(APIError) as err:
        asyncio.run(fwd.forward(_info(timeout_s=0.2), object()))
    assert err.value.status == 504 and err.value.code == "timeout"
    assert backend.streams[0].cancelled
    assert tracker.in_flight("fast") == 0 and _count(metrics, 504) == 1


def test_timeout_mid_stream_ends_with_error_frame_and_aborts():
    fwd, backend, tracker, metrics = _setup(sse("chat", ["a"], usage=False)[:1] + [HANG])

    async def run():
        return await _drain(await fwd.forward(_info(timeout_s=0.3), object()))

    text = asyncio.run(run())
    frames = [f for f in text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]" and orjson.loads(frames[-2][6:])["error"]["code"] == "timeout"
    assert backend.streams[0].cancelled and tracker.in_flight("fast") == 0 and _count(metrics, 504) == 1


def test_the_server_deadline_applies_without_a_per_request_one():
    fwd, backend, _, _ = _setup([HANG], timeout_s=0.2)
    with pytest.raises(APIError) as err:
        asyncio.run(fwd.forward(_info(), object()))
    assert err.value.status == 504 and "0.2s" in err.value.message


def test_client_disconnect_mid_stream_cancels_the_engine_request():
    fwd, backend, tracker, metrics = _setup(sse("chat", ["a", "b"], usage=False)[:1] + [0.05] * 100 + ["data: x\n\n"])

    async def run():
        resp = await fwd.forward(_info(), object())
        it = resp.body_iterator
        first = await it.__anext__()
        assert tracker.in_flight("fast") == 1
        await it.aclose()  # what the server does when the client goes away
        return first

    assert asyncio.run(run())
    assert backend.streams[0].cancelled
    assert tracker.in_flight("fast") == 0 and _count(metrics, 499) == 1


def test_caller_cancelled_while_waiting_for_first_token():
    fwd, backend, tracker, metrics = _setup([HANG])

    async def run():
        task = asyncio.create_task(fwd.forward(_info(), object()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert backend.streams[0].cancelled and tracker.in_flight("fast") == 0 and _count(metrics, 499) == 1


@pytest.mark.parametrize("exc,status,retry", [
    (BackPressureError(), 503, "1"),
    (RuntimeError("replica died"), 503, "1"),
    (StopAsyncIteration(), 502, None),
])
def test_engine_failures_before_first_token_are_clean_errors(exc, status, retry):
    fwd, backend, tracker, metrics = _setup([exc])
    with pytest.raises(APIError) as err:
        asyncio.run(fwd.forward(_info(), object()))
    assert err.value.status == status and err.value.headers.get("Retry-After") == retry
    assert "replica died" not in err.value.message  # exception text stays in the server
    assert tracker.in_flight("fast") == 0 and _count(metrics, status) == 1


def test_engine_failure_mid_stream_is_an_error_frame():
    fwd, backend, tracker, metrics = _setup(sse("chat", ["a"], usage=False)[:1] + [RuntimeError("actor died")])
    async def run():
        return await _drain(await fwd.forward(_info(), object()))

    text = asyncio.run(run())
    frames = [f for f in text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    assert orjson.loads(frames[-2][6:])["error"]["code"] == "engine_unavailable"
    assert tracker.in_flight("fast") == 0 and _count(metrics, 503) == 1


def test_engine_validation_error_is_4xx_and_counted_as_bad_request():
    fwd, backend, tracker, metrics = _setup([ErrorResponse(400, "maximum context length is 2048 tokens")])
    with pytest.raises(APIError) as err:
        asyncio.run(fwd.forward(_info(), object()))
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    assert backend.streams[0].cancelled and tracker.in_flight("fast") == 0
    assert metrics.rejections.labels("bad_request")._value.get() == 1


def test_usage_chunk_is_stripped_when_the_client_did_not_ask():
    fwd, _, _, metrics = _setup(sse("chat", ["a"]))
    info = _info()
    info.strip_usage = True

    async def run():
        return await _drain(await fwd.forward(info, object()))

    text = asyncio.run(run())
    assert '"usage"' not in text and text.endswith("data: [DONE]\n\n")
    assert metrics.completion_tokens.labels("fast", "fast")._value.get() == 1  # still counted


def _ray_task_error(cause):
    """Shaped like Ray's RayTaskError(<cause>): the replica raised `cause` for this request."""
    err = type(f"RayTaskError({type(cause).__name__})", (Exception,), {})("replica raised")
    err.cause = cause
    return err


class VLLMClientError(Exception):
    pass


class VLLMValidationError(VLLMClientError):
    pass


@pytest.mark.parametrize("cause,status,fragment", [
    (KeyError("content"), 400, "KeyError"),
    (ValueError("secret prompt text"), 400, "ValueError"),
    (VLLMValidationError("min_p must be in [0, 1]"), 400, "min_p must be in [0, 1]"),
    (RuntimeError("engine dead"), 503, "Engine unavailable"),
])
def test_engine_replica_exceptions_caused_by_the_request_are_400(cause, status, fragment):
    fwd, backend, tracker, metrics = _setup([_ray_task_error(cause)])
    with pytest.raises(APIError) as err:
        asyncio.run(fwd.forward(_info(), object()))
    assert err.value.status == status and fragment in err.value.message
    assert "secret prompt text" not in err.value.message
    assert tracker.in_flight("fast") == 0 and _count(metrics, status) == 1
