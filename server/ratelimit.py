"""Rate-limit arithmetic: token buckets per key. Pure: time is passed in, nothing is awaited."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass
class Bucket:
    """A bucket of `capacity` units refilled evenly over 60 s (so `capacity` per minute)."""

    capacity: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, per_minute: float, now: float) -> "Bucket":
        return cls(capacity=per_minute, tokens=per_minute, updated=now)

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, cost: float) -> float:
        """Seconds until `cost` units are available (inf when cost exceeds capacity)."""
        if cost > self.capacity:
            return math.inf
        missing = cost - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate


class KeyBuckets:
    """Requests-per-minute and tokens-per-minute buckets for each key."""

    def __init__(self, rpm: Optional[int], tpm: Optional[int]) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._buckets: Dict[str, Tuple[Optional[Bucket], Optional[Bucket]]] = {}

    def _get(self, key: str, now: float) -> Tuple[Optional[Bucket], Optional[Bucket]]:
        if key not in self._buckets:
            self._buckets[key] = (
                Bucket.full(self.rpm, now) if self.rpm else None,
                Bucket.full(self.tpm, now) if self.tpm else None,
            )
        return self._buckets[key]

    def try_take(self, key: str, tokens: int, now: float) -> Tuple[bool, str, float]:
        """Take one request and `tokens` tokens, all or nothing.

        Returns (allowed, limit that refused or "", seconds to wait before a retry can pass).
        """
        req_b, tok_b = self._get(key, now)
        for b in (req_b, tok_b):
            if b is not None:
                b.refill(now)
        if req_b is not None:
            wait = req_b.wait_for(1)
            if wait > 0:
                return False, "requests_per_minute", wait
        if tok_b is not None:
            wait = tok_b.wait_for(tokens)
            if wait > 0:
                return False, "tokens_per_minute", wait
        if req_b is not None:
            req_b.tokens -= 1
        if tok_b is not None:
            tok_b.tokens -= tokens
        return True, "", 0.0


def retry_after_seconds(wait: float) -> int:
    """Whole seconds for a Retry-After header (at least 1; 60 for a request that can never fit)."""
    if math.isinf(wait):
        return 60
    return max(1, math.ceil(wait))


def estimate_prompt_tokens(chars: int) -> int:
    """Admission-time prompt estimate (about 4 characters a token), as hosted APIs charge TPM."""
    return max(1, math.ceil(chars / 4))
