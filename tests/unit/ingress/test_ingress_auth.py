"""API-key auth: parsing, hashing, constant-time comparison, and the middleware on every route."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from starlette.routing import Route

from ingress_fakes import KEYS, bearer
from server.ingress import auth as auth_mod
from server.ingress.auth import OPEN_PATHS, Authenticator, parse_keys
from server.security_config import SecurityConfig


def test_parse_keys_named_unnamed_comments_and_commas():
    text = "# a comment\nmain:sk-1\n\nsk-2  # trailing comment\nops.team-1:sk-3,sk-4"
    assert parse_keys(text) == [("main", "sk-1"), ("key-2", "sk-2"), ("ops.team-1", "sk-3"), ("key-4", "sk-4")]


def test_only_digests_are_kept():
    auth = Authenticator([("main", "sk-secret-value")])
    state = repr(vars(auth))
    assert "sk-secret-value" not in state
    assert auth._digests == [("main", hashlib.sha256(b"sk-secret-value").digest())]


def test_key_id_compares_against_every_key_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_mod.hmac, "compare_digest", counting)
    auth = Authenticator([("a", "k1"), ("b", "k2"), ("c", "k3")])
    assert auth.key_id("k1") == "a"
    assert len(calls) == 3  # no early exit on the first match
    calls.clear()
    assert auth.key_id("nope") is None
    assert len(calls) == 3
    assert auth.key_id(None) is None


def test_keys_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("QS_KEYS", "env1:sk-e1")
    keyfile = tmp_path / "keys"
    keyfile.write_text("file1:sk-f1\nsk-f2\n")
    auth = Authenticator.from_config(SecurityConfig(api_keys_env="QS_KEYS", api_keys_file=str(keyfile)))
    assert [auth.key_id(k) for k in ("sk-e1", "sk-f1", "sk-f2", "sk-x")] == ["env1", "file1", "key-3", None]


def test_missing_env_or_file_or_no_keys_fail_at_start(tmp_path, monkeypatch):
    monkeypatch.delenv("QS_NOT_SET", raising=False)
    with pytest.raises(ValueError, match="QS_NOT_SET"):
        Authenticator.from_config(SecurityConfig(api_keys_env="QS_NOT_SET"))
    with pytest.raises(ValueError, match="cannot be read"):
        Authenticator.from_config(SecurityConfig(api_keys_file=str(tmp_path / "absent")))
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="none were found"):
        Authenticator.from_config(SecurityConfig(api_keys_file=str(empty)))


def test_no_keys_configured_means_auth_off():
    assert not Authenticator.from_config(SecurityConfig()).enabled


def _routes(app):
    """(path, method) for every route the app serves, with path parameters filled in."""
    out = []
    for route in app.routes:
        if not isinstance(route, Route):
            continue
        path = route.path.replace("{model:path}", "qwen3")
        for method in sorted(route.methods - {"HEAD"}):
            out.append((path, method))
    return out


def _error(resp, status, code):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    return body["error"]


@pytest.mark.parametrize("metrics_public", [True, False])
def test_every_route_needs_a_key_except_health_and_ready(make_app, metrics_public):
    client, backend, app = make_app(metrics__require_auth=not metrics_public)
    routes = _routes(app)
    assert ("/v1/chat/completions", "POST") in routes and ("/openapi.json", "GET") in routes
    open_paths = set(OPEN_PATHS) | ({"/metrics"} if metrics_public else set())
    for path, method in routes:
        missing = client.request(method, path)
        wrong = client.request(method, path, headers={"Authorization": "Bearer sk-wrong"})
        basic = client.request(method, path, headers={"Authorization": "Basic " + KEYS["main"]})
        if path in open_paths:
            assert missing.status_code < 400, (path, method, missing.status_code)
            continue
        err = _error(missing, 401, "missing_api_key")
        assert err["type"] == "authentication_error"
        assert missing.headers["www-authenticate"] == "Bearer"
        _error(wrong, 401, "invalid_api_key")
        _error(basic, 401, "invalid_api_key")
        assert "sk-wrong" not in wrong.text
        ok = client.request(method, path, headers=bearer())
        assert ok.status_code != 401, (path, method)
    assert backend.calls == []  # nothing reached a pool without a key


def test_unknown_routes_need_a_key_too(make_app):
    client, _, _ = make_app()
    _error(client.get("/v1/does-not-exist"), 401, "missing_api_key")
    _error(client.get("/health/../v1/models"), 401, "missing_api_key")
    assert client.get("/v1/does-not-exist", headers=bearer()).status_code == 404


def test_auth_rejections_are_counted(make_app):
    client, _, _ = make_app()
    client.get("/v1/models")
    client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert 'qwen_serve_rejections_total{reason="auth"} 2.0' in client.get("/metrics").text
