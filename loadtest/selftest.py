"""Self-test benchmark: how much load the tool itself sustains, and its timing overhead.

``python -m loadtest.selftest [--out DIR] [--quick]`` starts the stub server (answers at
once) in a subprocess pinned to one core and runs the load tester pinned to another, so
the client has one core of its own. It reports:

- requests/s: closed loop, short answers (4 tokens);
- chunks/s: closed loop, long answers (512 one-token chunks each), every chunk parsed and
  timed;
- open-loop fidelity: Poisson arrivals at 500/s, achieved rate and send lag (how late
  requests leave compared with their schedule);
- timing overhead: TTFT against an instant server at concurrency 1 (loopback + client
  floor), and the parser's CPU cost per chunk measured in-process.

Targets: >= 500 requests/s and >= 20,000 chunks/s on one core.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import orjson

from .client import Record, StreamParser
from .config import LoadConfig, MetricsConfig, RunConfig, WorkloadConfig
from .runner import run

TARGET_RPS = 500
TARGET_CHUNKS = 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pin(cpu: Optional[int]) -> Optional[List[int]]:
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(0, {cpus[cpu % len(cpus)]})
    return cpus


def start_stub(port: int, cpu: Optional[int]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "loadtest.stub", "--port", str(port)]
    pre = None
    if cpu is not None and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        target = sorted(os.sched_getaffinity(0))[cpu]

        def pre() -> None:  # runs in the child before exec
            os.sched_setaffinity(0, {target})

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=pre)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"stub exited: {proc.stdout.read().decode()}")
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("stub did not start in 30 s")


def parser_cost(n: int = 100_000) -> Dict[str, float]:
    """CPU microseconds to parse and time one chunk (vLLM-shaped), in-process, no network."""
    chunk = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
             b'"choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,'
             b'"finish_reason":null}]}\n\n')
    batch = chunk * 50
    rec = Record()
    p = StreamParser(rec)
    clock = time.perf_counter
    c0 = time.process_time()
    for _ in range(n // 50):
        p.feed(batch, clock())
    cpu = time.process_time() - c0
    t0 = clock()
    for _ in range(100_000):
        clock()
    clock_ns = (clock() - t0) * 1e4
    return {"parse_us_per_chunk": 1e6 * cpu / n, "clock_read_ns": clock_ns,
            "chunks_parsed": len(rec.chunk_times)}


def _cfg(base: str, **load) -> RunConfig:
    out = load.pop("output_tokens", 4)
    return RunConfig(base_url=base, model="stub", progress=False, plots=False,
                     workload=WorkloadConfig(input_tokens=24, output_tokens=out,
                                             mode_mix={"thinking": 1, "fast": 1}),
                     load=LoadConfig(**load), metrics=MetricsConfig(settle_s=0))


def run_selftest(quick: bool = False, pin: bool = True) -> Dict[str, object]:
    port = _free_port()
    has_aff = hasattr(os, "sched_getaffinity")
    before = os.sched_getaffinity(0) if has_aff else None
    res: Dict[str, object] = {"cpus_visible": len(before) if before else os.cpu_count()}
    stub = start_stub(port, 1 if pin else None)
    if pin:
        res["pinned"] = _pin(0) is not None
    base = f"http://127.0.0.1:{port}/v1"
    k = 4 if quick else 1
    try:
        run(_cfg(base, concurrency=8, num_requests=200))  # warm the tokenizer and connections
        r = run(_cfg(base, concurrency=32, num_requests=8000 // k, warmup_requests=200))
        o, c = r.summary["overall"], r.summary["client"]
        res["requests"] = {"req_per_s": o["request_throughput"], "completed": o["completed"],
                           "failed": o["failed"], "client_cpu_util": c["cpu_util"],
                           "cpu_us_per_request": c["cpu_us_per_request"]}
        r = run(_cfg(base, concurrency=16, num_requests=400 // k, warmup_requests=16, output_tokens=512))
        o, c = r.summary["overall"], r.summary["client"]
        chunks = sum(len(x.chunk_times) for x in r.records if x.phase == "measure")
        res["chunks"] = {"chunks_per_s": chunks / o["duration_s"], "chunks": chunks,
                         "failed": o["failed"], "client_cpu_util": c["cpu_util"],
                         "cpu_us_per_chunk": c["cpu_us_per_chunk"]}
        r = run(_cfg(base, shape="rate", rate=500, duration_s=4.0 / k, warmup_s=0.5))
        o, c = r.summary["overall"], r.summary["client"]
        res["open_loop"] = {"offered_rate": 500, "achieved_rate": o["request_throughput"],
                            "send_lag_ms": {x: c["send_lag_ms"].get(x) for x in ("p50", "p99", "max")},
                            "loop_lag_ms_p99": c["loop_lag_ms"].get("p99")}
        r = run(_cfg(base, concurrency=1, num_requests=1000 // k, warmup_requests=20))
        t = r.summary["overall"]["latency_ms"]["ttft"]
        res["overhead"] = {"ttft_floor_ms": {x: t.get(x) for x in ("p50", "p99")}, **parser_cost()}
    finally:
        if before:
            os.sched_setaffinity(0, before)
        stub.terminate()
        try:
            stub.wait(10)
        except subprocess.TimeoutExpired:
            stub.kill()
    res["pass"] = bool(res["requests"]["req_per_s"] >= TARGET_RPS
                       and res["chunks"]["chunks_per_s"] >= TARGET_CHUNKS)
    return res


def format_figures(res: Dict) -> str:
    rq, ch, ol, ov = res["requests"], res["chunks"], res["open_loop"], res["overhead"]
    return "\n".join([
        f"self-test (client pinned to one core; stub on another; {res['cpus_visible']} CPUs visible)",
        f"  requests/s    : {rq['req_per_s']:,.0f}  (target {TARGET_RPS}; client CPU {rq['client_cpu_util']:.0%}, "
        f"{rq['cpu_us_per_request']:.0f} us/request, {rq['failed']} failed)",
        f"  chunks/s      : {ch['chunks_per_s']:,.0f}  (target {TARGET_CHUNKS:,}; {ch['cpu_us_per_chunk']:.1f} us CPU/chunk "
        f"end to end, {ch['failed']} failed)",
        f"  open loop     : offered 500/s, achieved {ol['achieved_rate']:.1f}/s; send lag p50 "
        f"{ol['send_lag_ms']['p50']:.2f} ms, p99 {ol['send_lag_ms']['p99']:.2f} ms",
        f"  timing floor  : TTFT vs an instant server p50 {ov['ttft_floor_ms']['p50']:.3f} ms, "
        f"p99 {ov['ttft_floor_ms']['p99']:.3f} ms; parser {ov['parse_us_per_chunk']:.2f} us/chunk; "
        f"clock read {ov['clock_read_ns']:.0f} ns",
        f"  result        : {'PASS' if res['pass'] else 'FAIL'}",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write selftest.json here")
    ap.add_argument("--quick", action="store_true", help="a quarter of the requests")
    ap.add_argument("--no-pin", action="store_true", help="do not pin client and stub to cores")
    args = ap.parse_args(argv)
    res = run_selftest(args.quick, not args.no_pin)
    print(format_figures(res))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "selftest.json").write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
