"""Event-loop lag: how late a timer fires on the serving process's event loop.

A replica streams every token through one asyncio loop; while something holds that loop
(a long callback, a garbage collection, the process waiting for a CPU) every stream on it
waits. A timer that should fire every `interval_s` measures exactly that wait.
"""

from __future__ import annotations

import asyncio
from typing import Callable


async def watch_loop_lag(interval_s: float, observe: Callable[[float], None]) -> None:
    """Record, every `interval_s`, how many seconds later than asked the loop woke up."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        observe(max(0.0, loop.time() - start - interval_s))
