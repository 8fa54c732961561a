"""Load shapes (closed-loop concurrency, open-loop rate), phases, sweeps.

Python API::

    from loadtest.config import RunConfig, LoadConfig
    from loadtest.runner import run
    result = run(RunConfig(base_url=url, model="m", load=LoadConfig(concurrency=4, num_requests=50)))
    result.summary["overall"]["request_throughput"], result.records
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import aiohttp

from . import stats
from .arrivals import gamma_gaps
from .client import Record, finalize_tokens, send
from .config import RunConfig
from .progress import Progress
from .scrape import Scraper
from .workload import Conversation, PromptMaker, build_body, conversations, load_tokenizer


class Phaser:
    """Tags each dispatch warmup / measure / cooldown and says when to stop (pure).

    Warm-up lasts until both ``warmup_requests`` were sent and ``warmup_s`` passed; then
    the measured phase until ``num_requests`` were sent or ``duration_s`` passed
    (whichever first); then cool-down until both ``cooldown_requests`` and ``cooldown_s``.
    """

    def __init__(self, load) -> None:
        self.load = load
        self.phase = "warmup"
        self.counts = {"warmup": 0, "measure": 0, "cooldown": 0}
        self.since = 0.0  # when the current phase began

    def next(self, t: float) -> Optional[str]:
        ld = self.load
        if self.phase == "warmup":
            if self.counts["warmup"] >= ld.warmup_requests and t >= ld.warmup_s:
                self.phase, self.since = "measure", t
        if self.phase == "measure":
            full = ld.num_requests is not None and self.counts["measure"] >= ld.num_requests
            late = ld.duration_s is not None and t - self.since >= ld.duration_s
            if full or late:
                self.phase, self.since = "cooldown", t
        if self.phase == "cooldown":
            if self.counts["cooldown"] >= ld.cooldown_requests and t - self.since >= ld.cooldown_s:
                self.phase = "done"
        if self.phase == "done":
            return None
        self.counts[self.phase] += 1
        return self.phase


@dataclass
class Stage:
    index: int
    shape: str
    value: float
    records: List[Record] = field(default_factory=list)
    summary: Dict[str, object] = field(default_factory=dict)


@dataclass
class Result:
    config: RunConfig
    stages: List[Stage]
    saturation: Optional[Dict[str, object]] = None
    files: Dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> Dict[str, object]:
        """The (last) stage's summary: overall, by_mode, server, client..."""
        return self.stages[-1].summary

    @property
    def records(self) -> List[Record]:
        return [r for s in self.stages for r in s.records]


class _StageRun:
    def __init__(self, cfg: RunConfig, index: int, value: float, convs: Iterator[Conversation],
                 session: aiohttp.ClientSession, progress: Optional[Progress]) -> None:
        self.cfg, self.index, self.value = cfg, index, value
        self.convs, self.session, self.progress = convs, session, progress
        self.phaser = Phaser(cfg.load)
        self.records: List[Record] = []
        self.url = cfg.url
        self.headers = {"Content-Type": "application/json", **cfg.headers}
        key = cfg.resolved_api_key()
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.timeout = aiohttp.ClientTimeout(total=cfg.load.request_timeout_s)
        self.t0 = 0.0
        self.in_flight = 0
        self.stopped = asyncio.Event()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _next_phase(self) -> Optional[str]:
        phase = self.phaser.next(self.now())
        if phase is None:
            self.stopped.set()
        return phase

    async def conversation(self, conv: Conversation, scheduled: Optional[float] = None,
                           first_phase: Optional[str] = None) -> bool:
        """Send the turns of one conversation; False when the run should stop."""
        history: List[dict] = []
        for turn in range(len(conv.turns)):
            phase = first_phase if turn == 0 and first_phase else self._next_phase()
            if phase is None:
                return False
            rec = Record(len(self.records), conv_id=conv.conv_id, turn=turn, phase=phase,
                         stage=self.index, mode=conv.mode, effort=conv.effort,
                         max_tokens=conv.max_tokens[turn],
                         scheduled=scheduled if turn == 0 else None,
                         expected_prompt_tokens=conv.expected_prompt_tokens if turn == 0 else None)
            rec.model = self.cfg.model
            self.records.append(rec)
            body = build_body(self.cfg, conv, turn, history)
            self.in_flight += 1
            try:
                await send(self.session, self.url, body, rec, self.t0, self.cfg.stream,
                           self.headers, self.timeout)
            except asyncio.CancelledError:
                rec.fail("cancelled", "still running when the drain timeout ended")
                rec.end = self.now()
                raise
            finally:
                self.in_flight -= 1
            if self.progress:
                self.progress.done(rec)
            if not rec.ok:
                return True
            history += [{"role": "user", "content": conv.turns[turn]},
                        {"role": "assistant", "content": rec.answer_text}]
        return True

    async def closed_loop(self, concurrency: int) -> None:
        async def worker() -> None:
            while await self.conversation(next(self.convs)):
                pass

        workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        stop = asyncio.ensure_future(self.stopped.wait())
        pending = set(workers) | {stop}
        while not self.stopped.is_set() and not all(w.done() for w in workers):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t is not stop and not t.cancelled() and t.exception() for t in done):
                break
        stop.cancel()
        await self._drain(workers)

    async def open_loop(self, rate: float) -> None:
        ld = self.cfg.load
        gaps = gamma_gaps(rate, ld.burstiness, seed=(self.cfg.seed * 1000003 + self.index) & 0xFFFFFFFF)
        sem = asyncio.Semaphore(ld.max_concurrency) if ld.max_concurrency else None
        tasks: set = set()

        async def one(conv: Conversation, at: float, phase: str) -> None:
            try:
                await self.conversation(conv, at, phase)
            finally:
                if sem:
                    sem.release()

        at = 0.0
        while not self.stopped.is_set():
            at += next(gaps)
            for _ in range(100):  # timers may fire up to a clock tick early
                delay = at - self.now()
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
            if sem:
                await sem.acquire()
            phase = self._next_phase()
            if phase is None:
                if sem:
                    sem.release()
                break
            task = asyncio.ensure_future(one(next(self.convs), at, phase))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await self._drain(list(tasks))

    async def _drain(self, tasks: list) -> None:
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=self.cfg.load.drain_timeout_s)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()


async def _stage(cfg: RunConfig, index: int, value: float, session, maker, progress) -> Stage:
    ld = cfg.load
    convs = conversations(cfg, maker, stream=index)
    sr = _StageRun(cfg, index, value, convs, session, progress)
    stage = Stage(index, ld.shape, value)
    scraper = None
    if cfg.metrics.url:
        scraper = Scraper(cfg.metrics, {k: v for k, v in sr.headers.items() if k == "Authorization"})
        await scraper.__aenter__()
        await scraper.snapshot_before()
        scraper.start_polling()
    lag = _LoopLag()
    lag.start()
    cpu0 = time.process_time()
    if progress:
        progress.start_stage(index, ld.shape, value, sr)
    sr.t0 = time.perf_counter()
    try:
        if ld.shape == "concurrency":
            await sr.closed_loop(int(value))
        else:
            await sr.open_loop(float(value))
    finally:
        wall = time.perf_counter() - sr.t0
        cpu = time.process_time() - cpu0
        await lag.stop()
        if progress:
            progress.end_stage()
        server = None
        if scraper is not None:
            await scraper.stop_polling()
            await asyncio.sleep(cfg.metrics.settle_s)
            await scraper.snapshot_after()
            server = scraper.report()
            await scraper.__aexit__(None, None, None)
    stage.records = sr.records
    tokenizer = None
    if any(r.ok and (r.output_tokens is None or (r.usage_reasoning is None and r.reasoning_parts))
           for r in sr.records):
        tokenizer = maker.tok if maker else load_tokenizer(cfg.workload.tokenizer)
    finalize_tokens(sr.records, tokenizer)
    stage.summary = summarize_stage(cfg, stage, server, wall, cpu, lag.samples)
    return stage


def summarize_stage(cfg: RunConfig, stage: Stage, server, wall: float, cpu: float,
                    loop_lags: List[float]) -> Dict[str, object]:
    recs = stage.records
    measured = [r for r in recs if r.phase == "measure"]
    slo = cfg.slo_ms
    out: Dict[str, object] = {
        "stage": stage.index, "shape": stage.shape, "value": stage.value,
        "offered_rate": stage.value if stage.shape == "rate" else None,
        "phases": {p: sum(1 for r in recs if r.phase == p) for p in ("warmup", "measure", "cooldown")},
        "overall": stats.summarize(measured, slo),
    }
    for key, attr in (("by_mode", "mode"), ("by_served_mode", "served_mode"),
                      ("by_effort", "effort"), ("by_turn", "turn")):
        groups = stats.group_by(measured, attr) if attr != "turn" else _by_turn(measured)
        if key in ("by_mode", "by_served_mode") or len(groups) > 1:
            out[key] = {str(k): stats.summarize(v, slo) for k, v in groups.items()}
    ok_all = [r for r in recs if r.ok]
    if stage.shape == "rate":
        out["achieved_rate"] = achieved_rate(recs)
    routes = {}
    for r in recs:
        if r.route_mode or r.route_pool:
            k = f"{r.mode}->{r.route_mode}/{r.route_pool}"
            routes[k] = routes.get(k, 0) + 1
    out["routes"] = routes
    out["all_phases"] = {
        "requests": len(recs), "completed": len(ok_all),
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok_all),
        "output_tokens": sum(r.output_tokens or 0 for r in ok_all),
        "token_sources": _count(r.tokens_source for r in ok_all),
    }
    chunks = sum(len(r.chunk_times) for r in recs)
    lags = [r.send_lag for r in recs if r.send_lag is not None]
    out["client"] = {
        "wall_s": wall, "cpu_s": cpu, "cpu_util": cpu / wall if wall > 0 else 0.0,
        "chunks": chunks,
        "cpu_us_per_request": 1e6 * cpu / len(recs) if recs else None,
        "cpu_us_per_chunk": 1e6 * cpu / chunks if chunks else None,
        "send_lag_ms": stats.describe(lags, 1000.0),
        "loop_lag_ms": stats.describe(loop_lags, 1000.0),
    }
    if out["client"]["cpu_util"] > 0.8:
        out["client"]["warning"] = "client CPU above 80%: the load tester may limit the load"
    if server is not None:
        out["server"] = server
        out["client_vs_server"] = {
            "requests": (len(ok_all), server.get("requests")),
            "prompt_tokens": (out["all_phases"]["prompt_tokens"], server.get("prompt_tokens")),
            "generation_tokens": (out["all_phases"]["output_tokens"], server.get("generation_tokens")),
        }
        # Latency means over the same requests (all phases, as the server saw them): the
        # client's TTFT beyond the server's is the HTTP path's and the client's own share.
        means = server.get("mean_ms") or {}
        for role, metric in (("ttft", "ttft"), ("tpot", "tpot"), ("e2e", "e2el")):
            if means.get(role) is not None:
                mine = stats.describe([stats.record_metric(r, metric) for r in ok_all], 1000.0).get("mean")
                out["client_vs_server"][f"{role}_mean_ms"] = (mine, means[role])
    return out


def achieved_rate(records) -> Optional[float]:
    """Completions per second (any phase) while measured requests were being sent.

    In an open loop this is the rate the server kept up with in steady state; unlike the
    measured-window throughput it is not diluted by the drain after sending stops
    (given a warm-up and cool-down of a few request latencies).
    """
    starts = [r.start for r in records if r.phase == "measure"]
    if len(starts) < 2:
        return None
    lo, hi = min(starts), max(starts)
    done = sum(1 for r in records if r.ok and r.end is not None and lo <= r.end <= hi)
    return done / (hi - lo) if hi > lo else None


def _by_turn(records) -> Dict[int, list]:
    groups: Dict[int, list] = {}
    for r in records:
        groups.setdefault(r.turn + 1, []).append(r)
    return dict(sorted(groups.items()))


def _count(items) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for i in items:
        out[i or "none"] = out.get(i or "none", 0) + 1
    return out


class _LoopLag:
    """Measures event-loop oversleep: how late a 10 ms timer fires (client overload shows)."""

    def __init__(self, period: float = 0.01) -> None:
        self.period, self.samples, self.task = period, [], None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        clock = time.perf_counter
        while len(self.samples) < 1_000_000:
            t = clock()
            await asyncio.sleep(self.period)
            self.samples.append(max(clock() - t - self.period, 0.0))

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


# Seconds an idle pooled connection may be reused. Below the 5 s keep-alive of uvicorn
# (vLLM's API server; Ray Serve's HTTP servers keep 90 s), so a connection the server has
# already closed is never picked again: aiohttp checks the idle time when it takes a
# connection, while the server's close is seen only once the event loop reads it. With
# aiohttp's default of 15 s, a load generator held up past the server's keep-alive (a
# long GC pause, a descheduled process) sends its next POST on a dead connection, and
# the request fails as "server disconnected" (POST is not retried).
KEEPALIVE_S = 4.0


def connector(keepalive_s: float = KEEPALIVE_S) -> aiohttp.TCPConnector:
    """The load generator's connection pool: no connection limit (the load shape is the
    limit), connections reused for at most `keepalive_s` idle seconds."""
    return aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=keepalive_s)


async def arun(cfg: RunConfig) -> Result:
    """Run every stage (one, or the sweep until saturation); write files if asked."""
    ld = cfg.load
    values = ld.sweep or [ld.concurrency if ld.shape == "concurrency" else ld.rate]
    maker = PromptMaker(cfg) if cfg.workload.kind == "synthetic" or cfg.workload.prefix_tokens else None
    progress = Progress(enabled=cfg.progress) if cfg.progress else None
    conn = connector()
    stages: List[Stage] = []
    saturation = None
    gc.collect()
    gc.freeze()  # as vLLM's benchmark: keep set-up objects out of GC passes during the run
    async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as session:
        for i, value in enumerate(values):
            stages.append(await _stage(cfg, i, value, session, maker, progress))
            if ld.sweep:
                reason = stats.saturation([s.summary for s in stages], ld)
                if reason:
                    saturation = {"stage": i, "value": value, "reason": reason}
                    break
    gc.unfreeze()
    result = Result(cfg, stages, saturation)
    if cfg.output_dir:
        from .report import write_all

        result.files = write_all(result, cfg.output_dir)
    return result


def run(cfg: RunConfig) -> Result:
    """Blocking wrapper of :func:`arun` (uses uvloop when installed)."""
    try:
        import uvloop  # type: ignore

        return uvloop.run(arun(cfg))
    except ImportError:  # pragma: no cover
        return asyncio.run(arun(cfg))
