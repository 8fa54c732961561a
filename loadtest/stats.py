"""Metric definitions and arithmetic (pure: works on records, no I/O).

Definitions follow vLLM's serving benchmark:

- TTFT: request sent -> first chunk carrying generated text (reasoning or answer).
- TTFA (ours): request sent -> first chunk carrying *answer* text (``delta.content``),
  i.e. after the reasoning. Equal to TTFT for requests that do not reason.
- E2E latency: request sent -> last chunk carrying a choice.
- TPOT: ``(e2e - ttft) / (output_tokens - 1)``, only for requests with > 1 output token;
  the first token is excluded.
- ITL: the gaps between consecutive text-carrying chunks (a chunk may hold several
  tokens; the gaps are per chunk, as vLLM measures them).
- Throughput: over the measured window, from the first measured request's start to the
  last measured request's end.
- Goodput: measured successful requests meeting every SLO, per second of that window.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolation percentile (numpy's default method). ``p`` in [0, 100]."""
    if not values:
        return math.nan
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside [0, 100]")
    xs = sorted(values)
    pos = (len(xs) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def describe(values: Sequence[float], scale: float = 1.0) -> Dict[str, float]:
    """n, mean, std (population), min, p50/p90/p95/p99, max; values multiplied by ``scale``."""
    xs = sorted(v * scale for v in values if v is not None and not math.isnan(v))
    n = len(xs)
    if n == 0:
        return {"n": 0}
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / n)
    out = {"n": n, "mean": mean, "std": std, "min": xs[0]}
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(xs, p)
    out["max"] = xs[-1]
    return out


def tpot(e2e: Optional[float], ttft: Optional[float], output_tokens: Optional[int]) -> Optional[float]:
    """Time per output token after the first; None when undefined (< 2 tokens, no timing)."""
    if e2e is None or ttft is None or not output_tokens or output_tokens < 2:
        return None
    return (e2e - ttft) / (output_tokens - 1)


def itls(chunk_times: Sequence[float]) -> List[float]:
    """Gaps between consecutive text-carrying chunks (times from one clock)."""
    return [b - a for a, b in zip(chunk_times, chunk_times[1:])]


def record_metric(rec, name: str) -> Optional[float]:
    """One per-request metric in seconds: ttft, ttfa, tpot, itl (the request's worst gap), e2el."""
    if name == "ttft":
        return rec.ttft
    if name == "ttfa":
        return rec.ttfa
    if name == "e2el":
        return rec.e2e
    if name == "tpot":
        return tpot(rec.e2e, rec.ttft, rec.output_tokens)
    if name == "itl":
        gaps = itls(rec.chunk_times)
        return max(gaps) if gaps else 0.0
    raise KeyError(name)


def meets_slos(rec, slo_ms: Dict[str, float]) -> bool:
    """True when a successful request is within every SLO (ms). Undefined TPOT/ITL count as
    met (a one-token answer has no decode phase), an undefined TTFT/TTFA/E2E as missed."""
    if not rec.ok:
        return False
    for name, limit in slo_ms.items():
        value = record_metric(rec, name)
        if value is None:
            if name in ("tpot", "itl"):
                continue
            return False
        if value * 1000.0 > limit:
            return False
    return True


def window(records: Iterable) -> float:
    """Seconds from the first record's start to the last record's end."""
    recs = [r for r in records if r.end is not None]
    if not recs:
        return 0.0
    return max(r.end for r in recs) - min(r.start for r in recs)


def summarize(records: Sequence, slo_ms: Optional[Dict[str, float]] = None,
              duration: Optional[float] = None) -> Dict[str, object]:
    """Counts, throughput, latency distributions (ms), tokens, goodput, errors of ``records``.

    ``duration`` overrides the measured window (seconds) used for rates.
    """
    slo_ms = slo_ms or {}
    ok = [r for r in records if r.ok]
    dur = window(records) if duration is None else duration
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    in_tokens = sum(r.prompt_tokens or 0 for r in ok)
    reasoning = sum(r.reasoning_tokens or 0 for r in ok)
    answer = sum(r.answer_tokens or 0 for r in ok)
    all_itls: List[float] = []
    for r in ok:
        all_itls.extend(itls(r.chunk_times))
    errors = Counter(r.error_kind for r in records if not r.ok)
    good = sum(1 for r in ok if meets_slos(r, slo_ms)) if slo_ms else len(ok)

    def rate(x: float) -> float:
        return x / dur if dur > 0 else 0.0

    lat = {
        "ttft": describe([r.ttft for r in ok if r.ttft is not None], 1000.0),
        "ttfa": describe([r.ttfa for r in ok if r.ttfa is not None], 1000.0),
        "tpot": describe([v for v in (record_metric(r, "tpot") for r in ok) if v is not None], 1000.0),
        "e2el": describe([r.e2e for r in ok if r.e2e is not None], 1000.0),
    }
    lat["itl"] = describe(all_itls, 1000.0)
    return {
        "requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": dict(sorted(errors.items())),
        "duration_s": dur,
        "request_throughput": rate(len(ok)),
        "output_throughput": rate(out_tokens),
        "total_token_throughput": rate(out_tokens + in_tokens),
        "goodput": rate(good),
        "good_requests": good,
        "slo_ms": dict(slo_ms),
        "prompt_tokens": in_tokens,
        "output_tokens": out_tokens,
        "reasoning_tokens": reasoning,
        "answer_tokens": answer,
        "latency_ms": lat,
        "output_tokens_per_request": describe([r.output_tokens or 0 for r in ok]),
        "reasoning_tokens_per_request": describe([r.reasoning_tokens or 0 for r in ok]),
        "answer_tokens_per_request": describe([r.answer_tokens or 0 for r in ok]),
    }


def group_by(records: Iterable, key: str) -> Dict[str, List]:
    """Records grouped by an attribute (None values grouped as 'unknown')."""
    groups: Dict[object, List] = {}
    for r in records:
        v = getattr(r, key)
        groups.setdefault("unknown" if v is None or v == "" else v, []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def saturation(stages: Sequence[Dict[str, object]], load) -> Optional[str]:
    """Why the last stage of a sweep counts as saturated, or None.

    A stage is saturated when (1) more than ``saturation_max_error_rate`` of its measured
    requests failed, (2) its output-token throughput is less than ``1 +
    saturation_min_gain`` times the best earlier stage's, (3) its median TTFT is more than
    ``saturation_latency_factor`` times the first stage's, or (4) for rate sweeps its
    achieved request rate is below ``saturation_min_rate_ratio`` of the offered rate.
    """
    cur = stages[-1]["overall"]
    n = cur["requests"] or 1
    if cur["failed"] / n > load.saturation_max_error_rate:
        return f"error rate {cur['failed'] / n:.1%} > {load.saturation_max_error_rate:.1%}"
    if len(stages) > 1:
        best = max(s["overall"]["output_throughput"] for s in stages[:-1])
        if best > 0 and cur["output_throughput"] < best * (1 + load.saturation_min_gain):
            return (f"output throughput {cur['output_throughput']:.1f} tok/s grew less than "
                    f"{load.saturation_min_gain:.0%} over the best earlier stage ({best:.1f})")
        first = stages[0]["overall"]["latency_ms"]["ttft"].get("p50")
        now = cur["latency_ms"]["ttft"].get("p50")
        floor = getattr(load, "saturation_latency_floor_ms", 0.0)
        if first and now and now > first * load.saturation_latency_factor and now - first > floor:
            return (f"median TTFT {now:.1f} ms > {load.saturation_latency_factor:g}x the first "
                    f"stage's ({first:.1f} ms)")
    offered = stages[-1].get("offered_rate")
    if offered:
        achieved = stages[-1].get("achieved_rate")
        if achieved is None:
            achieved = cur["request_throughput"]
        if achieved < offered * load.saturation_min_rate_ratio:
            return (f"achieved {achieved:.2f} req/s < {load.saturation_min_rate_ratio:.0%} of "
                    f"the offered {offered:.2f} req/s")
    return None
