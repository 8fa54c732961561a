"""The load tracker's bookkeeping."""

from server.routing.load import LoadTracker, PoolLimits


def test_in_flight_and_snapshot():
    t = LoadTracker({"a": PoolLimits(slots=2, queue_limit=1)}, ttft_window=3)
    t.start("a"); t.start("a")
    snap = t.snapshot()["a"]
    assert (snap.in_flight, snap.slots, snap.queue_limit) == (2, 2, 1)
    assert snap.saturated(0.9, 10) and not snap.full
    t.start("a")
    assert t.snapshot()["a"].full
    t.finish("a"); t.finish("a"); t.finish("a"); t.finish("a")
    assert t.in_flight("a") == 0  # never negative


def test_ttft_window_median():
    t = LoadTracker({"a": PoolLimits(1, 0)}, ttft_window=3)
    assert t.recent_ttft("a") is None
    for v in (0.1, 5.0, 0.2, 0.3):
        t.record_ttft("a", v)
    assert t.recent_ttft("a") == 0.3  # window is (5.0, 0.2, 0.3)
    assert t.snapshot()["a"].saturated(0.9, ttft_slo_s=0.25)
