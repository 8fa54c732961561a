"""Schema fuzzing of the ingress over fake pools (fast, no stack): whatever the body, the
answer is never a 5xx. The real-stack version is tests/integration/test_fuzz.py."""

from __future__ import annotations

import collections

import pytest

from ingress_fakes import KEYS

schemathesis = pytest.importorskip("schemathesis", minversion="4.0")  # the v4 API
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402


def test_no_input_makes_the_ingress_answer_5xx(make_app):
    _, _, app = make_app()
    auth = {"Authorization": f"Bearer {KEYS['main']}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=auth)
    statuses = collections.Counter()
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=30, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                resp = case.call(headers=auth)
                statuses[resp.status_code] += 1
                assert resp.status_code < 500, (case.method, case.path, resp.text[:300])

            try:
                run()
            except Unsatisfiable:
                pass  # no invalid input exists (a GET without parameters)
    assert sum(statuses.values()) >= 100
    assert statuses[200] and statuses[400]
