"""Reliability benchmark: overload, deadlines, cancellation, soak (and optionally a replica
kill) against a running qwen-serve, printing a table for the README.

    python -m loadtest.reliability --url http://127.0.0.1:8000 --api-key KEY \
        [--metrics-port 8080] [--pid PID] [--soak-s 300] [--kill-replica] [--json FILE]

Every request is counted and ends in exactly one outcome: `ok` (a 200 with a complete
answer), `error` (a clean error: an OpenAI-shaped HTTP error, or an SSE error frame
followed by [DONE]), `cancelled` (the client hung up on purpose) or `lost` (no answer in
time, or the connection dropped without an error). Lost must be zero.

`--metrics-port` (Ray's metrics port) adds the engine's view (generation stops after a
deadline or a hang-up); `--pid` (the `qwen-serve up` process) adds the resident memory
and open file descriptors of its process tree during the soak. `--kill-replica` SIGKILLs
the fast pool's engine replica in the middle of a load phase (local stacks only).
The soak and fault phases are also used by tests/integration (test_soak, test_zz_faults).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import random
import statistics
import time
from typing import Any, Callable, Dict, List, Optional

import httpx

from loadtest.reliability_client import (
    Tally, chat, count_delta, router_counts, send, settled_engine_counter, tree_resources, wait_idle, wait_ready,
)
from loadtest.reliability_faults import kill_replica_under_load

LONG_TOKENS = 1900


# --- phases ------------------------------------------------------------------------------

async def overload(url: str, headers: Dict[str, str], model: str = "qwen3-thinking", n: int = 50,
                   max_tokens: int = 32) -> Dict[str, Any]:
    """n requests at once at one pool: each is a 200 or an immediate 429/503 + Retry-After."""
    body = chat(model, "Think about primes.", max_tokens, ignore_eos=True)
    before = router_counts(url, headers)
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=180, limits=httpx.Limits(max_connections=n + 8)) as c:
        outs = await asyncio.gather(*(send(c, body, headers, 180) for _ in range(n)))
    tally = Tally(list(outs))
    wait_idle(url, 30)
    refused = [o for o in outs if o.kind == "error"]
    ok = [o for o in outs if o.kind == "ok"]
    return {
        **tally.summary(), "wall_s": time.monotonic() - t0,
        "refused_with_retry_after": sum(1 for o in refused if o.status in (429, 503) and o.retry_after),
        "refusal_max_s": max((o.seconds for o in refused), default=0.0),
        "accepted_p50_s": statistics.median(o.seconds for o in ok) if ok else None,
        "server_counts": count_delta(router_counts(url, headers), before),
    }


def deadline(url: str, headers: Dict[str, str], metrics_port: Optional[int], seconds: float = 2.0) -> Dict[str, Any]:
    """x-request-timeout on long requests: a clean 504 / error frame, and the engine stops."""
    gen0 = settled_engine_counter(metrics_port, "ray_vllm_generation_tokens_total", "fast") if metrics_port else None
    h = {**headers, "x-request-timeout": f"{seconds:g}"}
    t0 = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", json=chat("qwen3-fast", "Write a long story.", LONG_TOKENS, ignore_eos=True),
                   headers=h, timeout=60)
    plain = time.monotonic() - t0
    t0 = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/chat/completions", headers=h, timeout=60,
                      json=chat("qwen3-fast", "Write a long story.", LONG_TOKENS, stream=True, ignore_eos=True)) as s:
        frames = [line for line in s.iter_lines() if line]
    streamed = time.monotonic() - t0
    out: Dict[str, Any] = {
        "non_streamed_status": r.status_code, "non_streamed_s": plain,
        "streamed_error_frame": len(frames) >= 2 and '"code":"timeout"' in frames[-2] and frames[-1] == "data: [DONE]",
        "streamed_s": streamed,
    }
    if metrics_port:
        gen1 = settled_engine_counter(metrics_port, "ray_vllm_generation_tokens_total", "fast")
        if gen0 is not None and gen1 is not None:
            out["engine_tokens_generated"] = gen1 - gen0
            out["engine_tokens_asked"] = 2 * LONG_TOKENS
    return out


async def hangups(url: str, headers: Dict[str, str], metrics_port: Optional[int], n: int = 6, after: int = 10) -> Dict[str, Any]:
    """n long streams; each client hangs up after `after` events; the engine must stop."""
    gen0 = settled_engine_counter(metrics_port, "ray_vllm_generation_tokens_total", "fast") if metrics_port else None
    body = chat("qwen3-fast", "Write a long story.", LONG_TOKENS, stream=True, ignore_eos=True)
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        outs = await asyncio.gather(*(send(c, body, headers, 120, cancel_after_chunks=after) for _ in range(n)))
    t0 = time.monotonic()
    idle = wait_idle(url, 60)
    out: Dict[str, Any] = {**Tally(list(outs)).summary(), "router_idle_s": time.monotonic() - t0 if idle else None}
    if metrics_port:
        gen1 = settled_engine_counter(metrics_port, "ray_vllm_generation_tokens_total", "fast")
        if gen0 is not None and gen1 is not None:
            out["engine_tokens_generated"] = gen1 - gen0
            out["engine_tokens_asked"] = n * LONG_TOKENS
    return out


MIX = [  # (model, max_tokens): fast, thinking and auto traffic
    ("qwen3-fast", 32), ("qwen3-fast", 16), ("qwen3-thinking", 24), ("qwen3", 16),
]
PROMPTS = ["Say hello briefly.", "Prove that 17 is prime, step by step.", "List three colours.",
           "What is 12 times 13? Show your work."]


async def load_phase(url: str, headers: Dict[str, str], duration_s: float, concurrency: int,
                     cancel_ratio: float = 0.1, seed: int = 7, on_tick: Optional[Callable[[float], None]] = None,
                     timeout_s: float = 120, rate: Optional[float] = None) -> Tally:
    """The request mix for `duration_s`; a share `cancel_ratio` of all requests are streams
    whose client hangs up after two events. Closed loop with `concurrency` workers, or, with
    `rate` (requests/s), open loop: Poisson arrivals, at most `concurrency` x 4 in flight.
    `on_tick(elapsed)` runs about every 5 s."""
    rng = random.Random(seed)
    tally = Tally()
    stop_at = time.monotonic() + duration_s
    started = time.monotonic()

    def pick() -> tuple:
        model, max_tokens = MIX[rng.randrange(len(MIX))]
        cancel = rng.random() < cancel_ratio
        stream = cancel or rng.random() < 0.5
        return chat(model, PROMPTS[rng.randrange(len(PROMPTS))], max_tokens, stream=stream), (2 if cancel else None)

    async def ticker() -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(min(5, max(0.0, stop_at - time.monotonic())))
            if on_tick:
                await asyncio.to_thread(on_tick, time.monotonic() - started)

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s,
                                 limits=httpx.Limits(max_connections=concurrency * 4 + 8)) as c:
        async def one() -> None:
            body, cancel = pick()
            tally.outcomes.append(await send(c, body, headers, timeout_s, cancel_after_chunks=cancel))

        async def worker() -> None:
            while time.monotonic() < stop_at:
                await one()

        async def arrivals() -> None:
            pending = set()
            next_at = time.monotonic()
            while True:
                # Absolute arrival times: a late wake-up does not lower the offered rate.
                next_at += rng.expovariate(rate)
                if next_at >= stop_at:
                    break
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                if len(pending) < concurrency * 4:
                    task = asyncio.create_task(one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)

        if rate:
            await asyncio.gather(ticker(), arrivals())
        else:
            await asyncio.gather(ticker(), *(worker() for _ in range(concurrency)))
    return tally


async def capacity(url: str, headers: Dict[str, str], duration_s: float = 20, concurrency: int = 16) -> float:
    """Completed requests per second of the mix at a high concurrency (no cancellations)."""
    t0 = time.monotonic()
    tally = await load_phase(url, headers, duration_s, concurrency, cancel_ratio=0.0)
    return tally.count("ok") / max(time.monotonic() - t0, 1e-9)


def soak(url: str, headers: Dict[str, str], duration_s: float, concurrency: int, pid: Optional[int] = None,
         cancel_ratio: float = 0.1, rate: Optional[float] = None) -> Dict[str, Any]:
    """The mix at a fixed concurrency with cancellations; memory and fds sampled every 5 s;
    the router's request counters compared with the client's outcomes."""
    wait_idle(url, 60)
    before = router_counts(url, headers)
    samples: List[Dict[str, float]] = []

    def tick(elapsed: float) -> None:
        if pid:
            samples.append({"t": elapsed, **tree_resources(pid)})

    tick(0.0)
    t0 = time.monotonic()
    tally = asyncio.run(load_phase(url, headers, duration_s, concurrency, cancel_ratio, on_tick=tick, rate=rate))
    wall = time.monotonic() - t0
    idle = wait_idle(url, 60)
    tick(wall)
    server = count_delta(router_counts(url, headers), before)
    out: Dict[str, Any] = {**tally.summary(), "wall_s": wall, "concurrency": concurrency, "rate_rps": rate,
                           "throughput_rps": tally.count("ok") / wall, "offered_rps": tally.sent / wall,
                           "router_idle_after": idle,
                           "server_counts": server, "server_errors": len(tally.server_errors())}
    if samples:
        third = max(1, len(samples) // 3)
        first = [s["rss"] for s in samples[1:1 + third]] or [samples[0]["rss"]]
        last = [s["rss"] for s in samples[-third:]]
        out["rss_first_gb"] = statistics.median(first) / 1e9
        out["rss_last_gb"] = statistics.median(last) / 1e9
        out["rss_growth_pct"] = 100 * (out["rss_last_gb"] - out["rss_first_gb"]) / out["rss_first_gb"]
        out["fds_first"] = samples[1]["fds"] if len(samples) > 1 else samples[0]["fds"]
        out["fds_last"] = samples[-1]["fds"]
        out["samples"] = len(samples)
    return out


def server_matches_client(result: Dict[str, Any]) -> bool:
    """Router counts equal client outcomes: every answered request is counted once.

    A hung-up stream is counted 499 by the server, or 200 when it had already ended."""
    server = result["server_counts"]
    by = collections.Counter()
    for key, n in result["by_status"].items():
        kind, status = key.split(":")
        by["answered" if kind in ("ok", "cancelled") and status == "200" else status] += n
    answered = server.get("200", 0) + server.get("499", 0)
    others = {k: v for k, v in server.items() if k not in ("200", "499")}
    client_others = {k: v for k, v in by.items() if k != "answered"}
    return answered == by["answered"] and others == client_others


# --- report ----------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if not math.isnan(v) else "-"
    return "-" if v is None else str(v)


def table(results: Dict[str, Dict[str, Any]]) -> str:
    rows = [("figure", "measured")]
    o = results.get("overload")
    if o:
        rows += [
            ("overload: requests sent at once", o["sent"]),
            ("overload: accepted and completed (200)", o["ok"]),
            ("overload: refused at once with 429/503 + Retry-After", o["refused_with_retry_after"]),
            ("overload: slowest refusal (s)", o["refusal_max_s"]),
            ("overload: lost (hang or drop)", o["lost"]),
        ]
    d = results.get("deadline")
    if d:
        rows += [("deadline 2 s: non-streamed status / seconds", f"{d['non_streamed_status']} / {d['non_streamed_s']:.1f}"),
                 ("deadline 2 s: streamed error frame / seconds", f"{d['streamed_error_frame']} / {d['streamed_s']:.1f}")]
        if "engine_tokens_generated" in d:
            rows.append(("deadline: engine tokens generated / asked", f"{d['engine_tokens_generated']:.0f} / {d['engine_tokens_asked']}"))
    h = results.get("hangups")
    if h:
        rows += [("hang-ups: streams cancelled by the client", h["cancelled"]),
                 ("hang-ups: router idle again after (s)", h["router_idle_s"])]
        if "engine_tokens_generated" in h:
            rows.append(("hang-ups: engine tokens generated / asked", f"{h['engine_tokens_generated']:.0f} / {h['engine_tokens_asked']}"))
    s = results.get("soak")
    if s:
        rows += [
            ("soak: duration (s) / arrival rate (req/s)", f"{s['wall_s']:.0f} / {_fmt(s.get('rate_rps'))}"),
            ("soak: capacity (req/s) / offered load (% of capacity)", f"{s.get('capacity_rps', float('nan')):.2f} / {s.get('load_pct', float('nan')):.0f}"),
            ("soak: requests / ok / cancelled / clean errors / lost", f"{s['sent']} / {s['ok']} / {s['cancelled']} / {s['clean_errors']} / {s['lost']}"),
            ("soak: 5xx", s["server_errors"]),
            ("soak: server counts equal client counts", s.get("counts_match")),
        ]
        if "rss_growth_pct" in s:
            rows += [("soak: RSS of the stack first -> last third (GB)", f"{s['rss_first_gb']:.2f} -> {s['rss_last_gb']:.2f} ({s['rss_growth_pct']:+.1f}%)"),
                     ("soak: open fds first -> last", f"{s['fds_first']:.0f} -> {s['fds_last']:.0f}")]
    k = results.get("kill")
    if k:
        rows += [("replica kill: requests during the kill window", k["sent"]),
                 ("replica kill: ok / clean errors / lost", f"{k['ok']} / {k['clean_errors']} / {k['lost']}"),
                 ("replica kill: error statuses", k["error_statuses"]),
                 ("replica kill: first success after the kill (s)", k["recovered_s"]),
                 ("replica kill: requests ok after restart", f"{k['after_restart_ok']} / 5")]
    width = max(len(str(r[0])) for r in rows)
    lines = [f"| {rows[0][0]:<{width}} | {rows[0][1]} |", f"|{'-' * (width + 2)}|---|"]
    lines += [f"| {str(a):<{width}} | {_fmt(b)} |" for a, b in rows[1:]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.reliability", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (loopback)")
    ap.add_argument("--api-key", default=None, help="API key (Authorization: Bearer)")
    ap.add_argument("--metrics-port", type=int, default=None, help="Ray's metrics port, for the engine's view")
    ap.add_argument("--pid", type=int, default=None, help="pid of `qwen-serve up`, for memory/fd figures and --kill-replica")
    ap.add_argument("--soak-s", type=float, default=300, help="soak duration in seconds")
    ap.add_argument("--capacity-s", type=float, default=20, help="capacity probe duration in seconds")
    ap.add_argument("--load", type=float, default=0.7, help="soak load as a share of the probed capacity")
    ap.add_argument("--overload-n", type=int, default=50, help="requests sent at once in the overload phase")
    ap.add_argument("--kill-replica", action="store_true", help="SIGKILL the fast pool's replica under load (needs --pid)")
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: overload,deadline,hangups,soak")
    ap.add_argument("--json", default=None, help="write all figures to this file")
    args = ap.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    skip = set(filter(None, args.skip.split(",")))
    results: Dict[str, Dict[str, Any]] = {}
    if wait_ready(args.url, 60) is None:
        print(f"error: {args.url}/ready is not 200", flush=True)
        return 2
    if "overload" not in skip:
        print("phase: overload", flush=True)
        results["overload"] = asyncio.run(overload(args.url, headers, n=args.overload_n))
    if "deadline" not in skip:
        print("phase: deadline", flush=True)
        results["deadline"] = deadline(args.url, headers, args.metrics_port)
    if "hangups" not in skip:
        print("phase: hang-ups", flush=True)
        results["hangups"] = asyncio.run(hangups(args.url, headers, args.metrics_port))
    if "soak" not in skip:
        print(f"phase: capacity probe ({args.capacity_s:.0f}s)", flush=True)
        probe_conc = 16
        cap = asyncio.run(capacity(args.url, headers, args.capacity_s, probe_conc))
        rate = args.load * cap
        print(f"phase: soak ({args.soak_s:.0f}s at {rate:.2f} req/s = {100 * args.load:.0f}% of {cap:.2f} req/s)", flush=True)
        s = soak(args.url, headers, args.soak_s, probe_conc, args.pid, rate=rate)
        s["capacity_rps"] = cap
        s["load_pct"] = 100 * s["offered_rps"] / cap if cap else float("nan")  # offered load
        s["counts_match"] = server_matches_client(s)
        results["soak"] = s
    if args.kill_replica:
        if not args.pid:
            ap.error("--kill-replica needs --pid")
        print("phase: replica kill", flush=True)
        results["kill"] = kill_replica_under_load(args.url, headers, args.pid)
    print(table(results), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
    lost = sum(r.get("lost", 0) for r in results.values())
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
