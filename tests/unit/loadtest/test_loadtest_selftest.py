"""The self-test benchmark: the tool sustains its targets on one core against an instant stub."""

import os

from loadtest.selftest import TARGET_CHUNKS, TARGET_RPS, format_figures, parser_cost, run_selftest


def test_parser_cost_is_small():
    cost = parser_cost(20_000)
    assert cost["chunks_parsed"] == 20_000
    assert cost["parse_us_per_chunk"] < 1e6 / TARGET_CHUNKS / 2  # half the per-chunk budget


def test_selftest_meets_targets():
    before = os.sched_getaffinity(0)
    res = run_selftest(quick=True)
    assert os.sched_getaffinity(0) == before  # pinning undone
    print(format_figures(res))
    assert res["requests"]["failed"] == 0 and res["chunks"]["failed"] == 0
    assert res["requests"]["req_per_s"] >= TARGET_RPS
    assert res["chunks"]["chunks_per_s"] >= TARGET_CHUNKS
    assert res["open_loop"]["achieved_rate"] > 0.8 * 500
    assert res["pass"]
