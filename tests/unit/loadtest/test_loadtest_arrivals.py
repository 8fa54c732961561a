import itertools
import math

import pytest

from loadtest.arrivals import arrival_times, coefficient_of_variation, gamma_gaps, poisson_gaps

N = 40_000


def take(gen, n=N):
    return list(itertools.islice(gen, n))


def test_poisson_rate_and_dispersion():
    gaps = take(poisson_gaps(50.0, seed=3))
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(1 / 50.0, rel=0.03)
    assert coefficient_of_variation(gaps) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 2.0, 4.0])
def test_gamma_burstiness_sets_cv_keeps_rate(burstiness):
    gaps = take(gamma_gaps(20.0, burstiness, seed=7))
    assert sum(gaps) / len(gaps) == pytest.approx(0.05, rel=0.04)
    assert coefficient_of_variation(gaps) == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


def test_bursty_is_burstier_than_regular():
    bursty = coefficient_of_variation(take(gamma_gaps(10, 0.3, seed=1), 5000))
    regular = coefficient_of_variation(take(gamma_gaps(10, 3.0, seed=1), 5000))
    assert bursty > 1.5 > 1.0 > 0.7 > regular


def test_infinite_burstiness_is_constant_and_infinite_rate_is_zero():
    assert take(gamma_gaps(4.0, math.inf), 5) == [0.25] * 5
    assert take(gamma_gaps(math.inf), 3) == [0.0] * 3


def test_seed_repeats_and_differs():
    assert take(gamma_gaps(5, 0.5, seed=9), 100) == take(gamma_gaps(5, 0.5, seed=9), 100)
    assert take(gamma_gaps(5, 0.5, seed=9), 100) != take(gamma_gaps(5, 0.5, seed=10), 100)


def test_arrival_times_cumulative():
    ts = arrival_times(100.0, 2000, seed=2)
    assert all(b > a for a, b in zip(ts, ts[1:]))
    assert ts[-1] == pytest.approx(20.0, rel=0.08)


@pytest.mark.parametrize("rate,b", [(0, 1), (-1, 1), (1, 0), (1, -2), (math.nan, 1)])
def test_invalid_arguments(rate, b):
    with pytest.raises(ValueError):
        next(gamma_gaps(rate, b))
