"""Body parsing, input limits and the OpenAI error shape (vLLM's protocol models, no engine)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ingress_fakes import CHAT, ErrorResponse, bearer
from server.ingress import requests as req
from server.ingress.errors import APIError, error_chunk, from_engine_error, validation_error
from server.security_config import LimitsConfig

USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("raw,fragment", [
    (b"", "empty"), (b"{", "not valid JSON"), (b"[1]", "JSON object"), (b'"x"', "JSON object"),
])
def test_parse_body_errors(raw, fragment):
    with pytest.raises(APIError) as err:
        req.parse_body(raw)
    assert err.value.status == 400 and fragment in err.value.message and err.value.code == "invalid_json"


LIMITS = LimitsConfig(max_tokens=100, max_n=2, max_stop_sequences=2, max_stop_sequence_chars=5, max_logprobs=3, max_messages=3)

CASES = [
    ("chat", {"model": "m"}, "missing_required_parameter", "messages"),
    ("chat", {"messages": "hi"}, "invalid_type", "messages"),
    ("chat", {"messages": []}, "empty_array", "messages"),
    ("chat", {"messages": USER * 4}, "too_many_messages", "messages"),
    ("chat", {"messages": USER, "max_tokens": 101}, "max_tokens_too_large", "max_tokens"),
    ("chat", {"messages": USER, "max_completion_tokens": 101}, "max_tokens_too_large", "max_completion_tokens"),
    ("chat", {"messages": USER, "n": 3}, "n_too_large", "n"),
    ("chat", {"messages": USER, "stop": ["a", "b", "c"]}, "too_many_stop_sequences", "stop"),
    ("chat", {"messages": USER, "stop": "toolong"}, "stop_sequence_too_long", "stop"),
    ("chat", {"messages": USER, "top_logprobs": 4}, "logprobs_too_large", "top_logprobs"),
    ("completions", {"prompt": "x", "logprobs": 4}, "logprobs_too_large", "logprobs"),
    ("completions", {"prompt": "x", "n": 3}, "n_too_large", "n"),
]


@pytest.mark.parametrize("kind,body,code,param", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_input_limits(kind, body, code, param):
    with pytest.raises(APIError) as err:
        req.check_limits(kind, body, LIMITS)
    assert err.value.status == 400 and err.value.code == code and err.value.param == param


def test_within_limits_passes_and_bools_are_not_numbers():
    req.check_limits("chat", {"messages": USER * 3, "max_tokens": 100, "n": 2, "stop": ["abcde", "b"], "top_logprobs": 3}, LIMITS)
    req.check_limits("chat", {"messages": USER, "logprobs": True}, LIMITS)


def test_validate_uses_vllms_models_and_names_the_field():
    with pytest.raises(APIError) as err:
        req.validate("chat", {"model": "m", "messages": USER, "temperature": "hot"})
    assert err.value.status == 400 and err.value.param == "temperature"
    request = req.validate("chat", {"model": "m", "messages": USER, "max_tokens": 3})
    assert request.max_tokens == 3 and isinstance(request.messages[0], dict)


def test_vllm_validation_errors_are_400_not_500_and_do_not_echo_values():
    """vLLM raises VLLMValidationError (not a ValueError) from its own validators."""
    body = {
        "model": "m", "messages": USER,
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
        "tool_choice": {"type": "function", "function": {"name": "SECRET-NAME"}},
    }
    with pytest.raises(APIError) as err:
        req.validate("chat", body)
    assert err.value.status == 400 and err.value.param == "tool_choice"
    assert "SECRET-NAME" not in err.value.message


def test_error_shape_and_types():
    err = APIError(429, "slow down", code="rate_limit_exceeded", headers={"Retry-After": "3"})
    assert err.body() == {"error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}}
    resp = err.response()
    assert resp.status_code == 429 and resp.headers["retry-after"] == "3"
    assert APIError(401, "x").type == "authentication_error"
    assert APIError(503, "x").type == "service_unavailable"
    assert APIError(418, "x").type == "invalid_request_error" and APIError(507, "x").type == "server_error"
    chunk = error_chunk(APIError(504, "late", code="timeout"))
    assert chunk.endswith(b"data: [DONE]\n\n")
    assert json.loads(chunk.split(b"\n\n")[0][6:])["error"]["code"] == "timeout"


@pytest.mark.parametrize("code,message,status,ecode", [
    (400, "This model's maximum context length is 2048 tokens", 400, "context_length_exceeded"),
    (400, "bad stop", 400, None),
    (500, "engine died", 500, None),
    (200, "weird", 500, None),
    (None, "no code", 500, None),
])
def test_engine_errors_map_to_statuses(code, message, status, ecode):
    err = from_engine_error(ErrorResponse(code, message))
    assert (err.status, err.code) == (status, ecode)
    assert err.reason == ("bad_request" if status < 500 else "engine_error")


def test_validation_error_names_first_field_and_counts_the_rest():
    err = validation_error([{"loc": ("body", "messages", 0, "role"), "msg": "bad", "type": "value_error"},
                            {"loc": ("body", "n"), "msg": "bad", "type": "value_error"}])
    assert err.param == "messages.0.role" and "(and 1 more error(s))" in err.message
    missing = validation_error([{"loc": ("body", "model"), "msg": "Field required", "type": "missing"}])
    assert missing.code == "missing_required_parameter" and missing.message == "'model' is a required property"


def test_app_body_limit_413_and_errors_in_openai_shape(make_app):
    client, backend, _ = make_app()
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "a" * 5000}]})
    r = client.post("/v1/chat/completions", content=big, headers={**bearer(), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = client.post("/v1/chat/completions", content=b"{oops", headers=bearer())
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-17"}, headers=bearer())
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.get("/v1/chat/completions", headers=bearer())
    assert r.status_code == 405 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    for bad in ("0", "-3", "abc", "inf", "nan"):
        r = client.post("/v1/chat/completions", json=CHAT, headers={**bearer(), "x-request-timeout": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "x-request-timeout"
    assert backend.calls == []


def test_client_disconnect_exceptions_are_499_without_an_error_log(make_app, caplog):
    client, _, app = make_app()

    class ClientDisconnect(Exception):
        pass

    class Boom(Exception):
        pass

    @app.get("/v1/_raise/{which}")
    async def _raise(which: str):
        raise ClientDisconnect() if which == "gone" else Boom()

    with caplog.at_level("DEBUG", logger="qwen_serve.ingress"):
        gone = client.get("/v1/_raise/gone", headers=bearer())
        boom = client.get("/v1/_raise/boom", headers=bearer())
    assert gone.status_code == 499 and boom.status_code == 500
    assert boom.json()["error"] == {"message": "Internal server error", "type": "server_error", "param": None, "code": None}
    errors = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "qwen_serve.ingress"]
    assert [r.getMessage() for r in errors] == ["unhandled error in ingress: Boom"]


def test_signals_ignore_wrong_types():
    s = req.signals("chat", {"model": "qwen3", "messages": USER, "chat_template_kwargs": "x", "reasoning_effort": 3,
                             "thinking_token_budget": True})
    assert s.enable_thinking is None and s.reasoning_effort is None and s.thinking_token_budget is None
    assert SimpleNamespace(**vars(s)).last_user_text == "hi"


@pytest.mark.parametrize("extra", [
    {"messages": [{"role": "assistant", "tool_calls": 1.5}]},  # vLLM's validator raises TypeError
    {"chat_template_kwargs": 2.5},
    {"chat_template_kwargs": ["x"], "model": "qwen3"},
    {"stream": True, "stream_options": 7},
    {"stream": True, "stream_options": "yes"},
])
def test_malformed_bodies_found_by_fuzzing_are_400_not_500(make_app, extra):
    client, backend, _ = make_app()
    r = client.post("/v1/chat/completions", json={**CHAT, **extra}, headers=bearer())
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert backend.calls == []


def test_bad_items_in_lazily_validated_content_are_400():
    """Message content parts are validated lazily (when listed): still a 400, never a 500."""
    with pytest.raises(APIError) as err:
        req.validate("chat", {"model": "m", "messages": [{"role": "user", "content": [[]]}]})
    assert err.value.status == 400


@pytest.mark.parametrize("model", [[], {}, ["qwen3"], {"a": 1}])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/route/explain"])
def test_a_model_that_is_not_a_string_is_400(make_app, model, path):
    """Found by the schema fuzz on the real stack: an unhashable model name was a 500."""
    client, backend, _ = make_app()
    body = {"model": model, "messages": USER, "prompt": "hi", "max_tokens": 1}
    r = client.post(path, json=body, headers=bearer())
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert backend.calls == []
