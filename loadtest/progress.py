"""Live progress on stderr: a one-line bar on a TTY, plain lines every few seconds otherwise."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Optional, TextIO


class Progress:
    def __init__(self, enabled: bool = True, stream: Optional[TextIO] = None,
                 interval_s: Optional[float] = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval_s or (0.5 if self.tty else 5.0)
        self.task: Optional[asyncio.Task] = None
        self.run = None
        self.label = ""
        self.total: Optional[int] = None
        self.n = self.errors = self.tokens = 0
        self.t0 = 0.0
        self._prev = None

    def start_stage(self, index: int, shape: str, value: float, run) -> None:
        self.run, self.n, self.errors, self.tokens = run, 0, 0, 0
        ld = run.cfg.load
        self.total = (ld.num_requests + ld.warmup_requests + ld.cooldown_requests
                      if ld.num_requests and not ld.duration_s else None)
        self.label = f"stage {index} {shape}={value:g}"
        self.t0 = time.perf_counter()
        self._prev = None
        if self.enabled:
            self.task = asyncio.get_running_loop().create_task(self._loop())

    def done(self, rec) -> None:
        self.n += 1
        self.tokens += len(rec.chunk_times)
        if not rec.ok:
            self.errors += 1

    def end_stage(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.enabled:
            self._print(final=True)

    def line(self, final: bool = False) -> str:
        """Counts so far, and the request and chunk rates since the previous line (the
        whole stage's averages on the final line)."""
        now = time.perf_counter()
        el = now - self.t0
        t_prev, n_prev, c_prev = (self._prev if self._prev and not final else (self.t0, 0, 0))
        dt = now - t_prev
        rate = (self.n - n_prev) / dt if dt > 0 else 0.0
        chunks = (self.tokens - c_prev) / dt if dt > 0 else 0.0
        self._prev = (now, self.n, self.tokens)
        inflight = getattr(self.run, "in_flight", 0)
        if self.total:
            frac = min(self.n / self.total, 1.0)
            bar = "#" * int(frac * 20)
            head = f"[{bar:<20}] {self.n}/{self.total}"
        else:
            head = f"{self.n} done"
        return (f"{self.label} {head} {el:6.1f}s {rate:7.1f} req/s {chunks:8.0f} chunks/s "
                f"in-flight {inflight} errors {self.errors}")

    def _print(self, final: bool = False) -> None:
        text = self.line(final)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._print()
