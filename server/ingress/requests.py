"""Parse and validate OpenAI request bodies with vLLM's own protocol models, read the
router's signals from them, and apply a routing decision."""

from __future__ import annotations

from typing import Any, Dict, Tuple, Type

import orjson
from pydantic import ValidationError
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from server.ingress.errors import APIError, validation_error
from server.routing.decide import Decision, RequestSignals
from server.routing.scorer import message_text
from server.security_config import LimitsConfig

MODELS: Dict[str, Type[Any]] = {"chat": ChatCompletionRequest, "completions": CompletionRequest}


def parse_body(raw: bytes) -> Dict[str, Any]:
    if not raw:
        raise APIError(400, "Request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise APIError(400, f"Request body is not valid JSON: {err.msg} at position {err.pos}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "Request body must be a JSON object", code="invalid_json")
    return body


def check_limits(kind: str, body: Dict[str, Any], limits: LimitsConfig) -> None:
    """Input limits checked before the body reaches vLLM's models (cheap, clear 4xx)."""
    if kind == "chat":
        messages = body.get("messages")
        if messages is None:
            raise APIError(400, "'messages' is a required property", param="messages", code="missing_required_parameter")
        if not isinstance(messages, list):
            raise APIError(400, "'messages' must be an array of message objects", param="messages", code="invalid_type")
        if not messages:
            raise APIError(400, "'messages' must contain at least one message", param="messages", code="empty_array")
        if len(messages) > limits.max_messages:
            raise APIError(400, f"'messages' holds {len(messages)} messages; the limit is {limits.max_messages}", param="messages", code="too_many_messages")
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > limits.max_tokens:
            raise APIError(400, f"'{key}' is {value}; the limit is {limits.max_tokens}", param=key, code="max_tokens_too_large")
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > limits.max_n:
        raise APIError(400, f"'n' is {n}; the limit is {limits.max_n}", param="n", code="n_too_large")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if len(stops) > limits.max_stop_sequences:
        raise APIError(400, f"'stop' holds {len(stops)} sequences; the limit is {limits.max_stop_sequences}", param="stop", code="too_many_stop_sequences")
    if any(isinstance(s, str) and len(s) > limits.max_stop_sequence_chars for s in stops):
        raise APIError(400, f"a stop sequence is longer than {limits.max_stop_sequence_chars} characters", param="stop", code="stop_sequence_too_long")
    for key in ("top_logprobs", "logprobs"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > limits.max_logprobs:
            raise APIError(400, f"'{key}' is {value}; the limit is {limits.max_logprobs}", param=key, code="logprobs_too_large")


def validate(kind: str, body: Dict[str, Any]) -> Any:
    try:
        request = MODELS[kind].model_validate(body)
        if kind == "chat":
            # Lazy iterables validate their items only here: a bad item is a 400 too.
            _materialise_messages(request)
    except ValidationError as err:
        raise validation_error(err.errors()) from None
    except ValueError as err:  # vLLM's model validators raise plain ValueErrors
        raise APIError(400, str(err), code="invalid_value") from None
    except Exception as err:  # noqa: BLE001 - vLLM's validators also raise VLLMValidationError and TypeError (escaped as 500s)
        if any(c.__name__ == "VLLMClientError" for c in type(err).__mro__):
            # Its message without str()'s "value=..." suffix, which echoes the client's input.
            message = str(err.args[0]) if err.args else "invalid request"
            raise APIError(400, message, param=getattr(err, "parameter", None), code="invalid_value") from None
        # Only the body was validated: a validator that crashed on it was given a malformed body.
        raise APIError(400, f"Malformed request body ({type(err).__name__} in validation)", code="invalid_value") from None
    return request


def _materialise_messages(request: Any) -> None:
    """Turn pydantic's lazy iterables into lists so the request pickles across Ray."""
    for i, message in enumerate(request.messages):
        if not isinstance(message, dict):
            message = request.messages[i] = message.model_dump()
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            message["content"] = list(content)
        if message.get("tool_calls") is not None:
            message["tool_calls"] = list(message["tool_calls"])


def signals(kind: str, body: Dict[str, Any]) -> RequestSignals:
    """The router's view of a raw body: explicit switches and the text to score."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        # Checked before the router looks the name up (a list or dict there was a 500).
        raise APIError(400, "'model' must be a string", param="model", code="invalid_type")
    ctk = body.get("chat_template_kwargs") or {}
    enable = ctk.get("enable_thinking") if isinstance(ctk, dict) else None
    effort = body.get("reasoning_effort")
    budget = body.get("thinking_token_budget")
    if kind == "chat":
        messages = body.get("messages") or []
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last = message_text(users[-1].get("content")) if users else ""
        turns = len(users)
    else:
        prompt = body.get("prompt")
        last = prompt if isinstance(prompt, str) else ""
        turns = 1
    return RequestSignals(
        model=model,
        enable_thinking=enable if isinstance(enable, bool) else None,
        reasoning_effort=effort if isinstance(effort, str) else None,
        thinking_token_budget=budget if isinstance(budget, int) and not isinstance(budget, bool) else None,
        last_user_text=last,
        user_turns=turns,
        is_chat=kind == "chat",
    )


def apply_decision(kind: str, body: Dict[str, Any], decision: Decision, hybrid: bool) -> Tuple[Dict[str, Any], bool]:
    """Rewrite the body for the chosen pool and mode. Returns (body, strip_usage)."""
    body = dict(body)
    body["model"] = decision.pool
    # Fields of the wrong type are left alone here: validate() refuses them with a 400.
    if kind == "chat" and hybrid and isinstance(body.get("chat_template_kwargs") or {}, dict):
        ctk = dict(body.get("chat_template_kwargs") or {})
        ctk["enable_thinking"] = decision.mode == "thinking"
        body["chat_template_kwargs"] = ctk
    if decision.mode == "thinking" and decision.thinking_budget is not None:
        body["thinking_token_budget"] = decision.thinking_budget
    elif decision.mode == "fast":
        body.pop("thinking_token_budget", None)
    strip_usage = False
    if body.get("stream") and isinstance(body.get("stream_options") or {}, dict):
        opts = dict(body.get("stream_options") or {})
        if not opts.get("include_usage"):
            strip_usage = True
            opts["include_usage"] = True
        body["stream_options"] = opts
    return body, strip_usage
