"""Token-bucket arithmetic (pure)."""

import math

import pytest

from server.ratelimit import Bucket, KeyBuckets, estimate_prompt_tokens, retry_after_seconds


def test_rpm_allows_exactly_n_then_refuses_with_wait():
    kb = KeyBuckets(rpm=5, tpm=None)
    results = [kb.try_take("k", 0, now=100.0) for _ in range(7)]
    assert [r[0] for r in results] == [True] * 5 + [False] * 2
    assert results[5][1] == "requests_per_minute"
    assert results[5][2] == pytest.approx(12.0)  # one request refills every 60/5 s


def test_refill_over_time_and_keys_are_independent():
    kb = KeyBuckets(rpm=2, tpm=None)
    assert kb.try_take("a", 0, 0.0)[0] and kb.try_take("a", 0, 0.0)[0]
    assert not kb.try_take("a", 0, 0.0)[0]
    assert kb.try_take("b", 0, 0.0)[0]
    assert kb.try_take("a", 0, 30.0)[0]  # 30 s refills one of 2/min


def test_tpm_all_or_nothing():
    kb = KeyBuckets(rpm=10, tpm=100)
    assert kb.try_take("k", 60, 0.0)[0]
    allowed, which, wait = kb.try_take("k", 60, 0.0)
    assert (allowed, which) == (False, "tokens_per_minute")
    assert wait == pytest.approx(20 / (100 / 60))
    # The refused request consumed nothing: 40 tokens still fit.
    assert kb.try_take("k", 40, 0.0)[0]


def test_request_bigger_than_capacity_never_fits():
    b = Bucket.full(100, 0.0)
    assert math.isinf(b.wait_for(101))
    assert retry_after_seconds(math.inf) == 60


@pytest.mark.parametrize("wait,header", [(0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2), (11.5, 12)])
def test_retry_after_rounds_up(wait, header):
    assert retry_after_seconds(wait) == header


def test_prompt_estimate():
    assert estimate_prompt_tokens(0) == 1
    assert estimate_prompt_tokens(400) == 100
    assert estimate_prompt_tokens(401) == 101
