import random

import numpy as np
import pytest

from loadtest import stats
from loadtest.client import Record
from loadtest.config import LoadConfig


def rec(ttft=0.1, e2e=1.0, out=10, chunks=None, ok=True, start=0.0, ttfa=None, **kw):
    r = Record(0, ttft=ttft, e2e=e2e, output_tokens=out, start=start, end=start + (e2e or 0),
               status=200 if ok else 500, ttfa=ttfa, **kw)
    r.chunk_times = chunks if chunks is not None else [ttft, e2e]
    if not ok:
        r.fail("http_500", "boom")
    return r


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentiles_match_numpy(n):
    rng = random.Random(n)
    xs = [rng.lognormvariate(0, 1) for _ in range(n)]
    for p in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
        assert stats.percentile(xs, p) == pytest.approx(float(np.percentile(xs, p)), rel=1e-12)


def test_describe_matches_numpy():
    rng = random.Random(1)
    xs = [rng.random() for _ in range(500)]
    d = stats.describe(xs, 1000.0)
    arr = np.array(xs) * 1000
    assert d["n"] == 500
    assert d["mean"] == pytest.approx(arr.mean())
    assert d["std"] == pytest.approx(arr.std())
    assert d["p99"] == pytest.approx(np.percentile(arr, 99))
    assert (d["min"], d["max"]) == (pytest.approx(arr.min()), pytest.approx(arr.max()))
    assert stats.describe([]) == {"n": 0}
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_tpot_excludes_first_token():
    # 11 tokens: the first at 100 ms, the last at 1100 ms -> 10 gaps of 100 ms
    assert stats.tpot(1.1, 0.1, 11) == pytest.approx(0.1)
    assert stats.tpot(1.0, 0.1, 1) is None
    assert stats.tpot(None, 0.1, 5) is None


def test_itl_is_gaps_between_chunks():
    assert stats.itls([0.1, 0.15, 0.3, 0.31]) == pytest.approx([0.05, 0.15, 0.01])
    assert stats.itls([0.2]) == []


def test_slo_and_goodput_arithmetic():
    good = rec(ttft=0.2, e2e=1.2, out=11)  # tpot 100 ms
    slow_first = rec(ttft=0.9, e2e=1.9, out=11)
    slow_decode = rec(ttft=0.2, e2e=3.2, out=11)  # tpot 300 ms
    one_token = rec(ttft=0.2, e2e=0.2, out=1, chunks=[0.2])  # no TPOT: counts as met
    failed = rec(ok=False)
    slo = {"ttft": 500, "tpot": 150}
    assert stats.meets_slos(good, slo) and stats.meets_slos(one_token, slo)
    assert not stats.meets_slos(slow_first, slo)
    assert not stats.meets_slos(slow_decode, slo)
    assert not stats.meets_slos(failed, slo)
    recs = [good, slow_first, slow_decode, one_token, failed]
    s = stats.summarize(recs, slo, duration=2.0)
    assert s["good_requests"] == 2 and s["goodput"] == pytest.approx(1.0)
    assert s["completed"] == 4 and s["failed"] == 1 and s["errors"] == {"http_500": 1}
    assert s["request_throughput"] == pytest.approx(2.0)
    assert s["output_throughput"] == pytest.approx((11 * 3 + 1) / 2.0)
    # TPOT distribution only over requests with >1 token
    assert s["latency_ms"]["tpot"]["n"] == 3
    assert s["latency_ms"]["tpot"]["p50"] == pytest.approx(100.0)


def test_ttfa_slo_and_missing_ttfa():
    thinking = rec(ttft=0.1, ttfa=0.8, e2e=1.0)
    assert stats.meets_slos(thinking, {"ttft": 200})
    assert not stats.meets_slos(thinking, {"ttfa": 500})
    never_answered = rec(ttft=0.1, ttfa=None)
    assert not stats.meets_slos(never_answered, {"ttfa": 5000})


def test_window_is_first_start_to_last_end():
    recs = [rec(start=1.0, e2e=2.0), rec(start=2.0, e2e=4.0)]
    assert stats.window(recs) == pytest.approx(5.0)
    assert stats.summarize(recs)["request_throughput"] == pytest.approx(2 / 5.0)


def _stage(tput, ttft_p50, failed=0, n=100, offered=None, rps=None):
    return {"offered_rate": offered, "overall": {
        "requests": n, "failed": failed, "output_throughput": tput,
        "request_throughput": rps if rps is not None else tput / 10,
        "latency_ms": {"ttft": {"p50": ttft_p50}}}}


def test_saturation_rules():
    ld = LoadConfig(num_requests=1)
    assert stats.saturation([_stage(100, 50)], ld) is None
    assert stats.saturation([_stage(100, 50), _stage(190, 60)], ld) is None
    assert "grew less" in stats.saturation([_stage(100, 50), _stage(103, 60)], ld)
    assert "TTFT" in stats.saturation([_stage(100, 50), _stage(300, 400)], ld)
    # sub-floor latency growth is not saturation
    assert stats.saturation([_stage(100, 0.2), _stage(300, 1.5)], ld) is None
    assert "error rate" in stats.saturation([_stage(100, 50, failed=10)], ld)
    assert "offered" in stats.saturation([_stage(100, 50, offered=20.0, rps=10.0)], ld)


def test_group_by_keeps_zero():
    a, b = rec(), rec()
    a.turn, b.turn = 0, 1
    assert list(stats.group_by([a, b], "turn")) == [0, 1]


def test_achieved_rate_counts_completions_while_sending():
    from loadtest.runner import achieved_rate

    recs = []
    for i in range(11):  # measured sends every 0.1 s from 1.0 to 2.0; each takes 0.25 s
        r = rec(start=1.0 + i / 10, e2e=0.25, phase="measure")
        recs.append(r)
    warm = [rec(start=0.8 + i / 10, e2e=0.25, phase="warmup") for i in range(2)]
    # completions inside [1.0, 2.0]: warm-ups ending 1.05, 1.15 and measured ending <= 2.0
    assert achieved_rate(recs + warm) == pytest.approx((2 + 8) / 1.0)
    assert "offered" in stats.saturation(
        [{**_stage(100, 50, offered=20.0, rps=19.0), "achieved_rate": 10.0}], LoadConfig(num_requests=1))
    assert stats.saturation(
        [{**_stage(100, 50, offered=20.0, rps=15.0), "achieved_rate": 19.5}], LoadConfig(num_requests=1)) is None
