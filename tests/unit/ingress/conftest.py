"""Fixtures for the ingress unit tests; the fakes live in ingress_fakes.py."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from ingress_fakes import KEYS, KEYS_ENV, FakeBackend, default_factory, make_config


@pytest.fixture
def keys_env(monkeypatch):
    monkeypatch.setenv(KEYS_ENV, ",".join(f"{n}:{k}" for n, k in KEYS.items()))
    return KEYS


@pytest.fixture
def make_app(keys_env):
    """make_app(backend=None, **config_overrides) -> (TestClient, backend, app)."""
    from fastapi.testclient import TestClient

    from server.ingress.api import create_app

    clients = []

    def build(backend: Optional[FakeBackend] = None, **overrides: Any):
        backend = backend or FakeBackend(default_factory)
        app = create_app(make_config(**overrides), backend)
        client = TestClient(app, raise_server_exceptions=False)
        clients.append(client)
        return client, backend, app

    yield build
    for c in clients:
        c.close()


