"""Schema fuzzing of the real stack with schemathesis: no input may produce a 5xx.

The OpenAPI document (/openapi.json) carries vLLM's own request-body schemas. Every
operation gets a few dozen generated requests, valid (positive) and invalid (negative),
sent with the API key. Generation is bounded so the CPU engines are never asked for
more than a handful of tokens: each generated body has its token counts clamped, and
each request carries a short deadline.
"""

from __future__ import annotations

import collections
import time

import httpx
import pytest

pytestmark = pytest.mark.stack

schemathesis = pytest.importorskip("schemathesis", minversion="4.0")  # the v4 API
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402

EXAMPLES = {"POST": 14, "GET": 6}  # per operation and generation mode
CLAMP = {"max_tokens": 8, "max_completion_tokens": 8, "min_tokens": 2, "n": 2, "best_of": 2, "thinking_token_budget": 8}
DEADLINE_S = "60"  # a slow request is not a hang: some cases take 20 s on a loaded 2-core machine


def _bounded_schema(doc):
    """Cap the token-count fields in the schema itself, so positive cases stay cheap."""
    for schema in doc.get("components", {}).get("schemas", {}).values():
        props = schema.get("properties") or {}
        for name, cap in CLAMP.items():
            if name in props:
                props[name] = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": cap}, {"type": "null"}]}
    return doc


def _clamp_body(body):
    """Negative cases ignore the schema: clamp the body too, and always set max_tokens."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    for name, cap in CLAMP.items():
        value = body.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > cap:
            body[name] = cap
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = CLAMP["max_tokens"]
    body.pop("ignore_eos", None)
    return body


def test_openapi_fuzz_no_5xx(stack):
    doc = httpx.get(f"{stack.url}/openapi.json", headers=stack.headers(), timeout=30).json()
    schema = schemathesis.openapi.from_dict(_bounded_schema(doc))
    headers = {**stack.headers(), "x-request-timeout": DEADLINE_S}
    statuses = collections.Counter()
    failures = []
    slowest = []  # (seconds, method, path, status, body): the slowest cases are printed
    started = time.monotonic()
    operations = []
    for result in schema.get_all_operations():
        op = result.ok()
        operations.append(f"{op.method.upper()} {op.path}")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES.get(op.method.upper(), 6), deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                if case.body is not None and not isinstance(case.body, (str, bytes)):
                    case.body = _clamp_body(case.body)
                t0 = time.monotonic()
                resp = case.call(base_url=stack.url, headers=headers, timeout=120)
                slowest.append((time.monotonic() - t0, case.method, case.path, resp.status_code, str(case.body)[:300]))
                statuses[(f"{case.method} {case.path}", resp.status_code)] += 1
                if resp.status_code >= 500:
                    failures.append((case.method, case.path, resp.status_code, str(case.body)[:300], resp.text[:300]))

            try:
                run()
            except Unsatisfiable:
                pass  # no invalid input exists (e.g. a GET without parameters)
    elapsed = time.monotonic() - started
    by_status = collections.Counter()
    for (_, status), n in statuses.items():
        by_status[status] += n
    print(f"\n[fuzz] schemathesis {schemathesis.__version__}: {sum(statuses.values())} requests over "
          f"{len(operations)} operations in {elapsed:.0f}s; by status {dict(sorted(by_status.items()))}; 5xx: {len(failures)}")
    for f in failures[:10]:
        print("  5xx:", f)
    for seconds, *case in sorted(slowest, reverse=True)[:3]:
        print(f"  slowest: {seconds:.1f}s", *case)
    assert not failures
    assert sum(statuses.values()) >= 30
    # The stack is still healthy after the fuzz run.
    assert httpx.get(f"{stack.url}/ready", timeout=60).status_code == 200
