"""Per-pool load tracker: in-flight requests and a window of recent TTFTs.

One tracker lives in each ingress replica and sees that replica's share of the traffic;
limits given to it are per ingress replica (the app builder divides the pool's limits by
the number of ingress replicas). No I/O, no framework imports.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, Mapping, Optional

from server.routing.decide import PoolLoad


@dataclass
class PoolLimits:
    slots: int
    queue_limit: int


class LoadTracker:
    def __init__(self, limits: Mapping[str, PoolLimits], ttft_window: int = 32) -> None:
        self._limits = dict(limits)
        self._in_flight: Dict[str, int] = {name: 0 for name in limits}
        self._ttfts: Dict[str, Deque[float]] = {name: deque(maxlen=ttft_window) for name in limits}
        self._healthy: Dict[str, bool] = {name: True for name in limits}

    def start(self, pool: str) -> None:
        self._in_flight[pool] += 1

    def finish(self, pool: str) -> None:
        self._in_flight[pool] = max(0, self._in_flight[pool] - 1)

    def record_ttft(self, pool: str, seconds: float) -> None:
        self._ttfts[pool].append(seconds)

    def set_healthy(self, pool: str, healthy: bool) -> None:
        self._healthy[pool] = healthy

    def in_flight(self, pool: str) -> int:
        return self._in_flight[pool]

    def recent_ttft(self, pool: str) -> Optional[float]:
        """Median of the recent window (robust to one slow outlier)."""
        window = self._ttfts[pool]
        if not window:
            return None
        ordered = sorted(window)
        return ordered[len(ordered) // 2]

    def snapshot(self) -> Dict[str, PoolLoad]:
        return {
            name: PoolLoad(
                in_flight=self._in_flight[name],
                slots=lim.slots,
                queue_limit=lim.queue_limit,
                recent_ttft_s=self.recent_ttft(name),
                healthy=self._healthy[name],
            )
            for name, lim in self._limits.items()
        }
