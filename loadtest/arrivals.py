"""Inter-arrival gap generators for open-loop load (pure; no I/O, no clock).

As in vLLM's serving benchmark, gaps follow a gamma distribution with shape
``burstiness`` and mean ``1 / rate``: burstiness 1 is a Poisson process (exponential
gaps, coefficient of variation 1); below 1 arrivals come in bursts (CV > 1); above 1
they are more regular (CV = 1/sqrt(burstiness)); infinity gives constant gaps.
"""

from __future__ import annotations

import math
import random
from typing import Iterator, List


def gamma_gaps(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Endless gaps in seconds with mean ``1/rate`` and CV ``1/sqrt(burstiness)``."""
    if rate <= 0 or math.isnan(rate):
        raise ValueError(f"rate must be > 0, got {rate}")
    if burstiness <= 0 or math.isnan(burstiness):
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if math.isinf(rate):
        while True:
            yield 0.0
    if math.isinf(burstiness):
        while True:
            yield 1.0 / rate
    rng = random.Random(seed)
    shape, scale = burstiness, 1.0 / (rate * burstiness)
    if burstiness == 1.0:
        lam = rate
        while True:
            yield rng.expovariate(lam)
    while True:
        yield rng.gammavariate(shape, scale)


def poisson_gaps(rate: float, seed: int = 0) -> Iterator[float]:
    """Exponential gaps: a Poisson arrival process of ``rate`` per second."""
    return gamma_gaps(rate, 1.0, seed)


def arrival_times(rate: float, n: int, burstiness: float = 1.0, seed: int = 0) -> List[float]:
    """The first ``n`` arrival offsets (seconds from the start; the first is its own gap)."""
    out: List[float] = []
    t = 0.0
    gaps = gamma_gaps(rate, burstiness, seed)
    for _ in range(n):
        t += next(gaps)
        out.append(t)
    return out


def coefficient_of_variation(gaps: List[float]) -> float:
    """Standard deviation over mean (population), the dispersion measure of a gap sample."""
    n = len(gaps)
    if n < 2:
        raise ValueError("need at least two gaps")
    mean = sum(gaps) / n
    var = sum((g - mean) ** 2 for g in gaps) / n
    return math.sqrt(var) / mean
