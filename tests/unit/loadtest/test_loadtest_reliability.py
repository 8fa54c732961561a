"""The reliability benchmark's pure parts: outcome accounting and the README table."""

from __future__ import annotations

from loadtest.reliability import server_matches_client, table
from loadtest.reliability_client import Outcome, Tally, count_delta


def test_tally_counts_outcomes_and_server_errors():
    t = Tally([Outcome("ok", 200), Outcome("error", 429, retry_after="2"), Outcome("cancelled", 200),
               Outcome("error", 503), Outcome("error", 200, 'data: {"error":{"type":"server_error"}}'),
               Outcome("lost", 0)])
    s = t.summary()
    assert (s["sent"], s["ok"], s["clean_errors"], s["cancelled"], s["lost"]) == (6, 1, 3, 1, 1)
    assert [o.status for o in t.server_errors()] == [503, 200]


def test_server_counts_match_client_counts():
    result = {"by_status": {"ok:200": 10, "cancelled:200": 3, "error:429": 2},
              "server_counts": {"200": 11, "499": 2, "429": 2}}
    assert server_matches_client(result)
    result["server_counts"]["429"] = 1
    assert not server_matches_client(result)
    result["server_counts"] = {"200": 12, "499": 2, "429": 2}  # one request more than the client sent
    assert not server_matches_client(result)


def test_count_delta_keeps_changes_only():
    assert count_delta({"200": 5.0, "429": 1.0}, {"200": 2.0, "429": 1.0}) == {"200": 3}


def test_table_has_a_row_per_figure():
    results = {
        "overload": {"sent": 50, "ok": 16, "refused_with_retry_after": 34, "refusal_max_s": 0.1, "lost": 0},
        "soak": {"wall_s": 180.0, "rate_rps": 3.5, "capacity_rps": 5.0, "load_pct": 70.0, "sent": 600, "ok": 540,
                 "cancelled": 60, "clean_errors": 0, "lost": 0, "server_errors": 0, "counts_match": True,
                 "rss_first_gb": 13.8, "rss_last_gb": 13.9, "rss_growth_pct": 0.7, "fds_first": 1240, "fds_last": 1241},
    }
    text = table(results)
    lines = text.splitlines()
    assert lines[0].startswith("| figure") and lines[1].startswith("|--")
    assert any("overload: lost" in line and "| 0 |" in line for line in lines)
    assert any("13.80 -> 13.90" in line for line in lines)
