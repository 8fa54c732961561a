"""A soak of the real stack at about 70% of its capacity with 10% cancellations:
no 5xx, nothing lost, flat memory and file descriptors, and the router's request
counters equal to what the client saw. Uses the benchmark's phases (loadtest/reliability.py).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from loadtest.reliability import capacity, server_matches_client, soak

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SOAK_S = float(os.environ.get("QWEN_SERVE_SOAK_S", "120"))
PROBE_S = 15
PROBE_CONCURRENCY = 12


def test_soak_at_seventy_percent_with_cancellations(stack):
    headers = stack.headers()
    cap = asyncio.run(capacity(stack.url, headers, PROBE_S, PROBE_CONCURRENCY))
    assert cap > 0, "the capacity probe completed nothing"
    rate = 0.7 * cap
    result = soak(stack.url, headers, SOAK_S, PROBE_CONCURRENCY, pid=stack.proc.pid, cancel_ratio=0.1, rate=rate)
    match = server_matches_client(result)
    print(f"\n[soak] capacity {cap:.2f} req/s (closed loop, {PROBE_CONCURRENCY} workers, {PROBE_S}s); soak "
          f"{result['wall_s']:.0f}s at {rate:.2f} req/s: sent {result['sent']}, ok {result['ok']}, "
          f"cancelled {result['cancelled']}, clean errors {result['clean_errors']}, lost {result['lost']}, 5xx "
          f"{result['server_errors']}; offered {result['offered_rps']:.2f} req/s ({100 * result['offered_rps'] / cap:.0f}% "
          f"of capacity), completed {result['throughput_rps']:.2f} req/s; client {result['by_status']} vs server "
          f"{result['server_counts']} (match {match}); RSS {result['rss_first_gb']:.2f} -> {result['rss_last_gb']:.2f} GB "
          f"({result['rss_growth_pct']:+.1f}%), fds {result['fds_first']:.0f} -> {result['fds_last']:.0f} "
          f"over {result['samples']} samples")
    assert result["lost"] == 0
    assert result["server_errors"] == 0
    assert result["cancelled"] >= 1 and result["ok"] >= 10
    assert result["router_idle_after"], "requests still in flight at the router after the soak"
    assert match, "router counters differ from the client's outcomes"
    assert result["rss_growth_pct"] < 10 and result["rss_last_gb"] - result["rss_first_gb"] < 1.0
    assert result["fds_last"] <= result["fds_first"] * 1.1 + 50
