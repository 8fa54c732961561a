"""Destructive faults, run last (file name): SIGKILL an engine replica, then only its
vLLM engine core, each while it serves load. Every request sent ends in a 200 or a clean
error (none lost); Serve replaces the replica; requests after the restart succeed; the
stack is ready again at the end.
"""

from __future__ import annotations

import pytest

from loadtest.reliability_client import wait_ready
from loadtest.reliability_faults import kill_replica_under_load

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.mark.parametrize("target", ["engine_core", "replica"])
def test_kill_under_load_loses_nothing_and_recovers(stack, target):
    assert wait_ready(stack.url, 300) is not None, "stack not ready before the fault"
    r = kill_replica_under_load(stack.url, stack.headers(), stack.proc.pid, concurrency=6, load_s=20,
                                kill_at_s=6, recover_s=300, target=target)
    print(f"\n[fault:{target}] SIGKILL pid {r['killed_pid']} under load: sent {r['sent']}, ok {r['ok']}, "
          f"clean errors {r['clean_errors']} (statuses {r['error_statuses']}), lost {r['lost']}; "
          f"/ready while down {r['ready_codes']}; probes while down {r['probes_while_down']['by_status']} "
          f"(slowest refusal {r['slowest_refusal_while_down_s']}s); "
          f"first success {r['recovered_s'] and round(r['recovered_s'])}s after the kill; "
          f"after restart {r['after_restart_ok']}/5 ok; ready at end {r['ready_after']}; engine-core processes "
          f"{r['engine_cores_before']} -> {r['engine_cores_after']}")
    assert r["lost"] == 0, r["by_status"]
    assert r["sent"] >= 6
    assert r["recovered_s"] is not None, "the pool never served again"
    assert r["after_restart_ok"] == 5
    assert r["ready_after"]
    assert r["engine_cores_after"] == r["engine_cores_before"], "an orphaned or missing engine core"
    # Clean errors only: 503 (engine gone), 504 (deadline while waiting for the new
    # replica), or 200 with an SSE error frame + [DONE] for a stream cut mid-way.
    assert set(r["error_statuses"]) <= {200, 502, 503, 504}, r["error_statuses"]
    # While the pool is down the router knows it from its background health checks: a new
    # request is refused at once (503 pool_unavailable), not parked until its deadline.
    down = r["probes_while_down"]["by_status"]
    assert down.get("error:503", 0) >= 1 and set(down) <= {"error:503", "ok:200"}, down
    assert r["slowest_refusal_while_down_s"] < 5, r["slowest_refusal_while_down_s"]
