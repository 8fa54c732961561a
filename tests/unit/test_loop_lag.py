"""The event-loop lag sampler: a loop held by a blocking callback shows as lag, a free
loop as (almost) none."""

from __future__ import annotations

import asyncio
import time

from server.loop_lag import watch_loop_lag


def _sample(interval_s: float, block_s: float, samples: int) -> list:
    seen: list = []

    async def main() -> None:
        watcher = asyncio.create_task(watch_loop_lag(interval_s, seen.append))
        await asyncio.sleep(interval_s / 2)
        if block_s:
            time.sleep(block_s)  # holds the loop, as a long callback would
        while len(seen) < samples:
            await asyncio.sleep(interval_s / 4)
        watcher.cancel()

    asyncio.run(main())
    return seen


def test_a_held_loop_shows_as_lag():
    seen = _sample(0.05, 0.3, 3)
    assert 0.2 <= seen[0] <= 1.0, seen  # the first timer fired ~0.25 s late
    assert all(lag >= 0 for lag in seen)


def test_a_free_loop_shows_little_lag():
    seen = _sample(0.02, 0.0, 5)
    assert len(seen) >= 5 and all(lag >= 0 for lag in seen)
    assert min(seen) < 0.02, seen  # a shared machine may delay some wake-ups, not all
