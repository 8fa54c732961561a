"""Side-by-side serving benchmark: bare vLLM, Ray Serve LLM on its defaults, qwen-serve.

    python -m loadtest.compare [--concurrency 1,8,32] [--rounds 1] [--out DIR]
    python -m loadtest.compare --model Qwen/Qwen3-8B --accelerator gpu --max-model-len 8192

Starts each server in turn on this machine, with the same model and engine arguments,
runs the same closed-loop streaming chat load against each (random prompts of 64-512
tokens, 32-256 output tokens made exact with ignore_eos, explicit fast mode so every
server sees the same chat template), stops it, and prints each figure of the Ray-based
servers as a ratio to bare vLLM from the same run. `--rounds N` repeats the whole cycle
and reports the median of the rounds. The servers:

1. `vllm`: vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`);
2. `rayllm`: Ray Serve LLM's `build_openai_app` with an `LLMConfig` on its defaults;
3. `qwen-serve`: `qwen-serve up` of a one-pool config (a hybrid pool serving both modes)
   with the router, API-key auth and metrics on.

While it runs it holds the lock the integration-test stack takes, so the two never share
the machine. The servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest import bench_serving as servers
from loadtest import cpu_usage
from loadtest.config import LoadConfig, RunConfig, WorkloadConfig

LOCK_PATH = "/tmp/qwen-serve-test-stack.lock"
SERVERS = ("vllm", "rayllm", "qwen-serve")
BASELINE = "vllm"
# figure -> (path in the load tester's summary, unit, better)
FIGURES = {
    "req_s": (("request_throughput",), "req/s", "higher"),
    "tok_s": (("output_throughput",), "tok/s", "higher"),
    "ttft_p50": (("latency_ms", "ttft", "p50"), "ms", "lower"),
    "ttft_p99": (("latency_ms", "ttft", "p99"), "ms", "lower"),
    "tpot_p50": (("latency_ms", "tpot", "p50"), "ms", "lower"),
    "itl_p50": (("latency_ms", "itl", "p50"), "ms", "lower"),
    "itl_p99": (("latency_ms", "itl", "p99"), "ms", "lower"),
}
LOOP_LAG = "qwen_serve_event_loop_lag_seconds"
# The latency table's columns: figure, header, format.
LATENCY_COLUMNS = [("req_s", "req/s", "{:.2f}"), ("tok_s", "out tok/s", "{:.0f}"), ("ttft_p50", "TTFT p50", "{:.1f}"),
                   ("ttft_p99", "TTFT p99", "{:.1f}"), ("tpot_p50", "TPOT p50", "{:.2f}"),
                   ("itl_p50", "ITL p50", "{:.2f}"), ("tok_per_chunk", "tok/arrival", "{:.2f}")]
# Where the CPU went during each level (loadtest.cpu_usage), cores unless named otherwise.
CPU_COLUMNS = [("engine_cores", "engine", "{:.2f}"), ("serving_cores", "serving", "{:.3f}"),
               ("serving_ms_per_token", "serv ms/tok", "{:.3f}"), ("tokens_per_engine_cpu_s", "tok/eng CPU-s", "{:.0f}"),
               ("client_cores", "client", "{:.2f}"),
               ("other_cores", "other", "{:.2f}"), ("steal_pct", "steal %", "{:.1f}")]
CPU_FIGURES = tuple(k for k, _, _ in CPU_COLUMNS)


def default_requests(concurrency: int) -> int:
    """Measured requests per level: enough for stable medians, a few minutes in all on a CPU."""
    return max(60, min(20 * concurrency, 320))


def _dig(summary: Dict[str, Any], path) -> Optional[float]:
    cur: Any = summary
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return float(cur) if cur is not None else None


def figures(summary: Dict[str, Any], records: List[Any]) -> Dict[str, Optional[float]]:
    """The compared figures of one load level, plus tokens per arrival (output tokens per
    distinct moment text arrived at the client: 1.0 = every token on its own, more =
    tokens arriving in bursts, as with stream batching or a starved client)."""
    overall = summary["overall"]
    out = {name: _dig(overall, spec[0]) for name, spec in FIGURES.items()}
    ok = [r for r in records if r.phase == "measure" and r.ok]
    arrivals = sum(len(set(r.chunk_times)) for r in ok)
    out["tok_per_chunk"] = (sum(r.output_tokens or 0 for r in ok) / arrivals) if arrivals else None
    out["failed"] = float(overall["failed"])
    # The load generator's own event-loop lag (worst sample): a stall here delays every
    # response it reads, so a TTFT p99 no larger than this says more about the client's
    # machine than about the server.
    out["client_lag_max_ms"] = _dig(summary, ("client", "loop_lag_ms", "max"))
    return out


def load_config(args: argparse.Namespace, concurrency: int, measured: int, warmup: int) -> LoadConfig:
    return LoadConfig(concurrency=concurrency, num_requests=measured,
                      warmup_requests=warmup, cooldown_requests=concurrency if measured > 1 else 0,
                      request_timeout_s=args.request_timeout)


def run_level(server: servers.Running, args: argparse.Namespace, concurrency: int) -> Dict[str, Any]:
    """One load level; its figures include where the CPU went meanwhile (loadtest.cpu_usage)."""
    from loadtest.runner import run

    cfg = RunConfig(
        base_url=server.base_url, model=server.model, api_key=server.api_key, seed=args.seed + concurrency,
        workload=WorkloadConfig(input_tokens=args.input_tokens, output_tokens=args.output_tokens,
                                mode_mix={"fast": 1.0}, tokenizer=args.tokenizer),
        load=load_config(args, concurrency, args.requests or default_requests(concurrency), concurrency),
        plots=False, progress=not args.quiet,
    )
    before = cpu_usage.take(servers.session_pids(server.proc.pid))
    result = run(cfg)
    after = cpu_usage.take(servers.session_pids(server.proc.pid))
    cpu = cpu_usage.usage(before, after, sum(r.output_tokens or 0 for r in result.records))
    figs = figures(result.summary, result.records)
    figs.update({k: v for k, v in cpu.items() if k in CPU_FIGURES})
    return {"figures": figs, "cpu_top": cpu.get("top", []), "summary": result.summary}


def loop_lag_buckets(server: servers.Running) -> Optional[Dict[float, float]]:
    """qwen-serve's event-loop lag histogram (cumulative samples by bucket bound, seconds)
    from its /metrics; None for a server without one."""
    url = server.base_url.removesuffix("/v1") + "/metrics"
    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else None
    try:
        text = httpx.get(url, headers=headers, timeout=10).text
        families = list(text_string_to_metric_families(text))
    except (httpx.HTTPError, ValueError):
        return None
    out: Dict[float, float] = {}
    for family in families:
        for sample in family.samples:
            if sample.name == LOOP_LAG + "_bucket":
                le = float(sample.labels["le"])
                out[le] = out.get(le, 0.0) + sample.value
    return out or None


def loop_lag_figures(before: Optional[Dict[float, float]], after: Optional[Dict[float, float]]) -> Dict[str, Any]:
    """The replica's event-loop lag while a level ran: p99 and maximum as bucket upper bounds
    in ms (None past the last finite bound) and the number of samples."""
    if not after:
        return {}
    before = before or {}
    bounds = sorted(after)
    delta = {le: after[le] - before.get(le, 0.0) for le in bounds}
    total = delta[bounds[-1]]
    if total <= 0:
        return {}

    def bound(share: float) -> Optional[float]:
        le = next(le for le in bounds if delta[le] >= share * total)
        return None if le == float("inf") else le * 1000.0

    return {"loop_lag_p99_ms": bound(0.99), "loop_lag_max_ms": bound(1.0), "loop_lag_samples": total}


def _lag_text(lag: Dict[str, Any]) -> str:
    if not lag:
        return ""

    def show(bound_ms: Optional[float]) -> str:
        return f"<={bound_ms:g} ms" if bound_ms is not None else "past the last bucket"

    return f", loop lag p99 {show(lag['loop_lag_p99_ms'])}, max {show(lag['loop_lag_max_ms'])}"


def _client_lag_text(max_ms: Optional[float]) -> str:
    return f"; load generator's loop lag max {max_ms:.0f} ms" if max_ms is not None else ""


def warm_up(server: servers.Running, args: argparse.Namespace) -> None:
    """A few requests of another prompt stream so first-request costs stay out of the figures."""
    from loadtest.runner import run

    run(RunConfig(base_url=server.base_url, model=server.model, api_key=server.api_key, seed=args.seed + 99991,
                  workload=WorkloadConfig(input_tokens=args.input_tokens, output_tokens=args.output_tokens,
                                          mode_mix={"fast": 1.0}, tokenizer=args.tokenizer),
                  load=LoadConfig(concurrency=4, num_requests=8, request_timeout_s=args.request_timeout),
                  plots=False, progress=False))


def bench_server(name: str, args: argparse.Namespace, spec: servers.Spec, log_dir: Path) -> Dict[str, Any]:
    started = time.monotonic()
    entry: Dict[str, Any] = {"levels": {}}
    overrides = args.variants.get(name)
    if overrides is not None:
        entry["overrides"] = overrides
    with servers.start(name, spec, log_dir, overrides) as server:
        entry["ready_s"] = time.monotonic() - started
        _say(f"[{name}] ready in {entry['ready_s']:.0f}s at {server.base_url}")
        warm_up(server, args)
        time.sleep(args.settle)
        for c in args.concurrency:
            lag_before = loop_lag_buckets(server)
            entry["levels"][str(c)] = level = run_level(server, args, c)
            level["loadavg"] = os.getloadavg()
            level["loop_lag"] = loop_lag_figures(lag_before, loop_lag_buckets(server) if lag_before else None)
            f = level["figures"]
            _say(f"[{name}] c={c}: {f['tok_s']:.0f} tok/s, TTFT p50 {f['ttft_p50']:.1f} ms, "
                 f"ITL p50 {f['itl_p50']:.1f} ms, failed {f['failed']:.0f}{_lag_text(level['loop_lag'])}"
                 f"{_client_lag_text(f.get('client_lag_max_ms'))}{_cpu_text(f)}")
    return entry


def _cpu_text(f: Dict[str, Any]) -> str:
    if f.get("engine_cores") is None:
        return ""
    steal = f" (steal {f['steal_pct']:.1f}%)" if f.get("steal_pct") is not None else ""
    return (f"; CPU: engine {f['engine_cores']:.2f} cores, serving {f['serving_cores']:.3f}, "
            f"client {f['client_cores']:.2f}{steal}")


def median_rounds(rounds: List[Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, Optional[float]]]]:
    """server -> level -> figure: the median over the rounds that measured it."""
    out: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {}
    for rnd in rounds:
        for name, entry in rnd.items():
            for level, data in entry["levels"].items():
                for fig, value in data["figures"].items():
                    out.setdefault(name, {}).setdefault(level, {}).setdefault(fig, []).append(value)
    return {
        name: {lvl: {fig: (statistics.median([v for v in vals if v is not None])
                           if any(v is not None for v in vals) else None)
                     for fig, vals in figs.items()} for lvl, figs in levels.items()}
        for name, levels in out.items()
    }


def _rule(head: str) -> str:
    """The markdown rule under a table's header row, each cell as wide as the header's."""
    return "|" + "|".join("-" * len(part) for part in head[1:-1].split("|")) + "|"


def round_order(order: List[str], index: int) -> List[str]:
    """Servers in the order round `index` (0-based) runs them: reversed every other round."""
    return list(order) if index % 2 == 0 else list(reversed(order))


PAIRED_FIGURES = ("tok_s", "ttft_p50", "itl_p50")


def paired_ratios(rounds: List[Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, Dict[str, Any]]]]:
    """server -> level -> figure -> {"median", "min", "max", "rounds"}: each round's ratio of
    the server's figure to bare vLLM's from the same round, over the rounds that measured both."""
    per: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    for rnd in rounds:
        base = rnd.get(BASELINE, {}).get("levels", {})
        for name, entry in rnd.items():
            if name == BASELINE:
                continue
            for level, data in entry.get("levels", {}).items():
                ref = base.get(level, {}).get("figures", {})
                for fig in PAIRED_FIGURES:
                    value, b = data["figures"].get(fig), ref.get(fig)
                    if value is not None and b:
                        per.setdefault(name, {}).setdefault(level, {}).setdefault(fig, []).append(value / b)
    return {name: {level: {fig: {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                                 "rounds": vals}
                           for fig, vals in figs.items()}
                   for level, figs in levels.items()}
            for name, levels in per.items()}


def format_paired(paired, order: List[str], levels: List[str]) -> str:
    """Per-round ratios to bare vLLM: median (lowest-highest) over the rounds."""
    names = {"tok_s": "out tok/s", "ttft_p50": "TTFT p50", "itl_p50": "ITL p50"}
    head = f"| {'conc':>4} | {'server':<10} | {'rounds':>6} | " + " | ".join(f"{names[f]:>19}" for f in PAIRED_FIGURES) + " |"
    lines = [head, _rule(head)]
    for level in levels:
        for name in order:
            figs = paired.get(name, {}).get(level)
            if not figs:
                continue
            n = max(len(v["rounds"]) for v in figs.values())
            cells = [(f"{figs[f]['median']:.2f}x ({figs[f]['min']:.2f}-{figs[f]['max']:.2f})" if f in figs else "-")
                     for f in PAIRED_FIGURES]
            lines.append(f"| {level:>4} | {name:<10} | {n:>6} | " + " | ".join(f"{c:>19}" for c in cells) + " |")
    return "\n".join(lines)


def ratios(med: Dict[str, Dict[str, Dict[str, Optional[float]]]]) -> Dict[str, Dict[str, Dict[str, Optional[float]]]]:
    """Each figure of each other server as a ratio to the baseline (TTFT also as a difference, ms)."""
    base = med.get(BASELINE, {})
    out: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {}
    for name, levels in med.items():
        if name == BASELINE:
            continue
        for level, figs in levels.items():
            ref = base.get(level, {})
            row: Dict[str, Optional[float]] = {}
            for fig, value in figs.items():
                b = ref.get(fig)
                row[fig] = value / b if value is not None and b else None
            if figs.get("ttft_p50") is not None and ref.get("ttft_p50") is not None:
                row["ttft_p50_delta_ms"] = figs["ttft_p50"] - ref["ttft_p50"]
            out.setdefault(name, {})[level] = row
    return out


def format_table(med, rat, order: List[str], levels: List[str], cols=LATENCY_COLUMNS) -> str:
    """Medians per level and server, each followed by its ratios to bare vLLM."""
    widths = [max(10, len(c[1])) for c in cols]

    def row(first: str, second: str, cells: List[str]) -> str:
        return f"| {first:>4} | {second:<10} | " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    head = row("conc", "server", [c[1] for c in cols])
    lines = [head, _rule(head)]
    for level in levels:
        for name in order:
            figs = med.get(name, {}).get(level)
            if not figs:
                continue
            cells = [(fmt.format(figs[k]) if figs.get(k) is not None else "-") for k, _, fmt in cols]
            lines.append(row(level, name, cells))
            r = rat.get(name, {}).get(level)
            if r:
                cells = []
                for k, _, _ in cols:
                    if k == "ttft_p50" and r.get("ttft_p50_delta_ms") is not None:
                        cells.append(f"{r[k]:.2f}x {r['ttft_p50_delta_ms']:+.0f}ms")
                    else:
                        cells.append(f"{r[k]:.2f}x" if r.get(k) is not None else "-")
                lines.append(row("", "  vs vllm", cells))
    return "\n".join(lines)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.compare", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-qwen3-dense",
                   help="tiny-qwen3-dense (built locally), a checkpoint directory or a Hugging Face id")
    p.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for the CPU (skips torch.compile), off for GPUs")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=JSON",
                   help="another engine argument for all three servers, e.g. gpu_memory_utilization=0.9")
    p.add_argument("--server-niceness", type=int, default=10,
                   help="niceness of every server's processes, so the load generator on the same machine "
                        "is not starved by the engine (0: none)")
    p.add_argument("--kvcache-gib", type=int, default=1, help="CPU only: VLLM_CPU_KVCACHE_SPACE")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"in order: {', '.join(SERVERS)} and variant names (default: all three)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=JSON,...",
                   help="a qwen-serve run with config fields changed, e.g. "
                   "'sep:server.router_placement=separate,server.direct_ingress=false' "
                   "(dotted paths into the generated config; env.X=V sets an environment variable); "
                   "list NAME in --servers")
    p.add_argument("--concurrency", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--requests", type=int, help="measured requests per level (default: 20 x concurrency, at least 60, at most 320)")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds each server idles after its warm-up, before the first level: start-up "
                   "work in the background (Ray's agents, for one) stays out of the figures")
    p.add_argument("--input-tokens", default="64:512")
    p.add_argument("--output-tokens", default="32:256")
    p.add_argument("--tokenizer", help="tokenizer directory for prompt lengths (default: Qwen3's)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole cycle; figures are medians")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--out", default="results/compare", help="directory for result.json and server logs")
    p.add_argument("--no-lock", action="store_true", help="do not take the test-stack lock")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through each server's stop()


def main(argv: Optional[List[str]] = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    args.variants = dict(servers.parse_variant(v) for v in args.variant)
    order = [s for s in args.servers.split(",") if s]
    unknown = set(order) - set(SERVERS) - set(args.variants)
    if unknown:
        raise SystemExit(f"unknown server(s) {sorted(unknown)}; known: {', '.join(SERVERS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = servers.Spec.from_args(args)
    lock = open(LOCK_PATH, "w") if not args.no_lock else None
    if lock is not None:
        _say(f"waiting for {LOCK_PATH} (one server stack on this machine at a time)")
        fcntl.flock(lock, fcntl.LOCK_EX)
    rounds: List[Dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        for i in range(args.rounds):
            rnd: Dict[str, Any] = {}
            rounds.append(rnd)
            for name in round_order(order, i):
                try:
                    rnd[name] = bench_server(name, args, spec, out / f"round{i + 1}")
                except Exception as err:  # noqa: BLE001 - one server failing still reports the others
                    _say(f"[{name}] failed: {err}")
                    rnd[name] = {"levels": {}, "error": str(err)[-2000:]}
                write_results(out, args, argv, spec, order, rounds, load_before)
    finally:
        if lock is not None:
            lock.close()
    table, load_after = write_results(out, args, argv, spec, order, rounds, load_before)
    print(table)
    print(f"\nload average before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; results in {out / 'result.json'}")
    return 0


def write_results(out: Path, args: argparse.Namespace, argv: Optional[List[str]], spec: servers.Spec,
                  order: List[str], rounds: List[Dict[str, Any]], load_before) -> "tuple[str, tuple]":
    """(Re)write result.json with what has been measured so far; returns the table."""
    med = median_rounds(rounds)
    rat = ratios(med)
    levels = [str(c) for c in args.concurrency]
    table = format_table(med, rat, order, levels)
    table += ("\n\nWhere the CPU went (cores; serving = all but vLLM's engine processes, "
              "per output token in CPU ms; tok/eng CPU-s = output tokens per CPU-second of the engine; "
              "other = the rest of the machine; steal = the hypervisor's)\n"
              + format_table(med, rat, order, levels, CPU_COLUMNS))
    paired = paired_ratios(rounds)
    if len(rounds) > 1 and paired:
        table += ("\n\nEach round's ratio to bare vLLM from the same round: median (lowest-highest)\n"
                  + format_paired(paired, order, levels))
    load_after = os.getloadavg()
    doc = {
        "command": "python -m loadtest.compare " + " ".join(argv if argv is not None else sys.argv[1:]),
        "spec": spec.describe(),
        "workload": {"input_tokens": args.input_tokens, "output_tokens": args.output_tokens, "mode": "fast",
                     "stream": True, "exact_output": True, "concurrency": args.concurrency,
                     "requests": {str(c): args.requests or default_requests(c) for c in args.concurrency}},
        "environment": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
                        "loadavg_before": load_before, "loadavg_after": load_after, **servers.versions()},
        "variants": args.variants, "median": med, "ratio_to_vllm": rat, "ratio_per_round": paired,
        "rounds": rounds, "table": table,
    }
    (out / "result.json").write_text(json.dumps(doc, indent=2, default=str))
    return table, load_after


if __name__ == "__main__":
    sys.exit(main())
