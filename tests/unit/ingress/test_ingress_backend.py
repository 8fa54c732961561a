"""RayPoolBackend.assigned over Ray Serve's own response generator (no cluster needed): it
reads a private attribute of Serve's, so a Ray upgrade that renames it fails here."""

from __future__ import annotations

import concurrent.futures

import pytest
from ray.serve._private.common import RequestMetadata
from ray.serve.handle import DeploymentResponseGenerator

from server.ingress.backend import RayPoolBackend


def _response(future: concurrent.futures.Future) -> DeploymentResponseGenerator:
    return DeploymentResponseGenerator(future, RequestMetadata(request_id="r1", internal_request_id="i1"))


@pytest.mark.parametrize("settle, assigned", [
    (lambda f: None, False),  # still in Serve's queue: no replica yet
    (lambda f: f.set_result(object()), True),  # a replica took it
    (lambda f: f.cancel(), False),
    (lambda f: f.set_exception(RuntimeError("no replica")), False),
])
def test_assigned_follows_serves_replica_assignment(settle, assigned):
    future: concurrent.futures.Future = concurrent.futures.Future()
    settle(future)
    assert RayPoolBackend({}).assigned(_response(future)) is assigned


def test_a_stream_without_serves_future_counts_as_waiting():
    assert RayPoolBackend({}).assigned(object()) is False
