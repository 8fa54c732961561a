"""``qwen-loadtest``: command line for the load tester.

Every option maps onto one field of :class:`loadtest.config.RunConfig`; ``--config FILE``
loads a saved config (or a result.json, whose ``config`` is used) and options given on
the command line override it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import orjson

from .config import HISTOGRAM_ROLES, METRIC_ROLES, RunConfig, parse_mix

S = argparse.SUPPRESS

# option dest -> (section or None, field)
FIELDS = {
    "base_url": (None, "base_url"), "api_key": (None, "api_key"), "model": (None, "model"),
    "endpoint": (None, "endpoint"), "stream": (None, "stream"), "seed": (None, "seed"),
    "temperature": (None, "temperature"), "vllm_extensions": (None, "vllm_extensions"),
    "out": (None, "output_dir"), "plots": (None, "plots"), "progress": (None, "progress"),
    "workload": ("workload", "kind"), "input_tokens": ("workload", "input_tokens"),
    "output_tokens": ("workload", "output_tokens"), "exact_output": ("workload", "exact_output"),
    "prompts": ("workload", "jsonl_path"), "prefix_tokens": ("workload", "prefix_tokens"),
    "turns": ("workload", "turns"), "thinking_via": ("workload", "thinking_via"),
    "thinking_model": ("workload", "thinking_model"), "fast_model": ("workload", "fast_model"),
    "tokenizer": ("workload", "tokenizer"),
    "burstiness": ("load", "burstiness"), "max_concurrency": ("load", "max_concurrency"),
    "num_requests": ("load", "num_requests"), "duration": ("load", "duration_s"),
    "warmup": ("load", "warmup_s"), "cooldown": ("load", "cooldown_s"),
    "warmup_requests": ("load", "warmup_requests"), "cooldown_requests": ("load", "cooldown_requests"),
    "request_timeout": ("load", "request_timeout_s"), "drain_timeout": ("load", "drain_timeout_s"),
    "sat_min_gain": ("load", "saturation_min_gain"),
    "sat_latency_factor": ("load", "saturation_latency_factor"),
    "sat_max_error_rate": ("load", "saturation_max_error_rate"),
    "metrics_url": ("metrics", "url"), "metrics_poll": ("metrics", "poll_interval_s"),
}


def _csv(text: str) -> List[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwen-loadtest",
        description="Load tester for OpenAI-compatible servers, aware of thinking and fast modes.",
    )
    a = p.add_argument
    g = p.add_argument_group("target")
    g.add_argument("--base-url", default=S, help="OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--api-key", default=S, help="bearer token (default: env QWEN_LOADTEST_API_KEY / OPENAI_API_KEY)")
    g.add_argument("--model", default=S, help="model name sent in requests")
    g.add_argument("--endpoint", choices=["chat", "completions"], default=S)
    g.add_argument("--no-stream", dest="stream", action="store_false", default=S,
                   help="non-streaming requests (no TTFT/ITL; TTFT = E2E)")
    g.add_argument("--header", action="append", default=S, metavar="NAME:VALUE", help="extra header (repeat)")
    g.add_argument("--no-vllm-extensions", dest="vllm_extensions", action="store_false", default=S,
                   help="never send min_tokens / ignore_eos")
    g.add_argument("--temperature", type=float, default=S)
    w = p.add_argument_group("workload")
    w.add_argument("--workload", choices=["synthetic", "jsonl", "suite"], default=S)
    w.add_argument("--input-tokens", default=S, help="exact (128) or uniform range (64:256)")
    w.add_argument("--output-tokens", default=S, help="exact (128) or uniform range (64:256)")
    w.add_argument("--exact-output", dest="exact_output", action="store_true", default=S)
    w.add_argument("--no-exact-output", dest="exact_output", action="store_false", default=S)
    w.add_argument("--prompts", default=S, help="JSONL prompt file (implies --workload jsonl)")
    w.add_argument("--prefix-tokens", type=int, default=S, help="shared system-prompt tokens")
    w.add_argument("--turns", type=int, default=S, help="turns per conversation")
    w.add_argument("--mode-mix", default=S, help="e.g. thinking=0.3,fast=0.5,auto=0.2")
    w.add_argument("--effort-mix", default=S, help="e.g. none=0.5,low=0.25,high=0.25")
    w.add_argument("--thinking-via", choices=["kwargs", "alias"], default=S)
    w.add_argument("--thinking-model", default=S)
    w.add_argument("--fast-model", default=S)
    w.add_argument("--tokenizer", default=S, help="tokenizer directory (default: Qwen3's)")
    ld = p.add_argument_group("load")
    ld.add_argument("--concurrency", type=int, default=S, help="closed loop with N in flight")
    ld.add_argument("--rate", type=float, default=S, help="open loop, requests/s")
    ld.add_argument("--burstiness", type=float, default=S, help="1 = Poisson; <1 burstier")
    ld.add_argument("--max-concurrency", type=int, default=S, help="open-loop in-flight cap")
    ld.add_argument("--num-requests", "-n", type=int, default=S)
    ld.add_argument("--duration", type=float, default=S, help="measured seconds")
    ld.add_argument("--warmup", type=float, default=S, help="warm-up seconds (not measured)")
    ld.add_argument("--cooldown", type=float, default=S, help="cool-down seconds (not measured)")
    ld.add_argument("--warmup-requests", type=int, default=S)
    ld.add_argument("--cooldown-requests", type=int, default=S)
    ld.add_argument("--sweep-concurrency", default=S, help="e.g. 1,2,4,8,16 (stops at saturation)")
    ld.add_argument("--sweep-rate", default=S, help="e.g. 1,2,4,8 (stops at saturation)")
    ld.add_argument("--request-timeout", type=float, default=S)
    ld.add_argument("--drain-timeout", type=float, default=S)
    ld.add_argument("--sat-min-gain", type=float, default=S)
    ld.add_argument("--sat-latency-factor", type=float, default=S)
    ld.add_argument("--sat-max-error-rate", type=float, default=S)
    a("--slo", action="append", default=S, metavar="METRIC:MS",
      help="SLO for goodput, e.g. ttft:500 tpot:50 (ttft, ttfa, tpot, itl, e2el)")
    a("--seed", type=int, default=S)
    m = p.add_argument_group("server metrics")
    m.add_argument("--metrics-url", default=S, help="Prometheus /metrics URL to scrape")
    for role in METRIC_ROLES:
        m.add_argument(f"--metric-{role.replace('_', '-')}", default=S, help="candidate metric names, comma-separated"
                       + (" (histograms, without _sum/_count)" if role in HISTOGRAM_ROLES else ""))
    m.add_argument("--metrics-label", action="append", default=S, metavar="NAME=VALUE")
    m.add_argument("--metrics-poll", type=float, default=S, help="gauge polling seconds")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=S, help="directory for result.json, requests.csv, plots, report.md")
    o.add_argument("--no-plots", dest="plots", action="store_false", default=S)
    o.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    o.add_argument("--config", default=S, help="JSON config (or result.json) to start from")
    o.add_argument("--print-config", action="store_true", default=S, help="print the config and exit")
    o.add_argument("--json", action="store_true", default=S, help="print the summary JSON on stdout")
    return p


def config_from_args(ns: argparse.Namespace) -> RunConfig:
    args = vars(ns)
    data: Dict = {}
    if "config" in args:
        loaded = orjson.loads(Path(args["config"]).read_bytes())
        data = loaded.get("config", loaded)
    for sec in ("workload", "load", "metrics"):
        data.setdefault(sec, {})
    for dest, (sec, fld) in FIELDS.items():
        if dest in args:
            (data[sec] if sec else data)[fld] = args[dest]
    if "prompts" in args:
        data["workload"]["kind"] = "jsonl"
    if "mode_mix" in args:
        data["workload"]["mode_mix"] = parse_mix(args["mode_mix"])
    if "effort_mix" in args:
        data["workload"]["effort_mix"] = parse_mix(args["effort_mix"])
    load = data["load"]
    if "concurrency" in args and "rate" in args:
        raise SystemExit("give --concurrency or --rate, not both")
    if "concurrency" in args:
        load.update(shape="concurrency", concurrency=args["concurrency"])
    if "rate" in args:
        load.update(shape="rate", rate=args["rate"])
    if "sweep_concurrency" in args:
        load.update(shape="concurrency", sweep=[float(x) for x in _csv(args["sweep_concurrency"])])
    if "sweep_rate" in args:
        load.update(shape="rate", sweep=[float(x) for x in _csv(args["sweep_rate"])])
    if load.get("num_requests") is None and load.get("duration_s") is None:
        load["num_requests"] = 100
    if "header" in args:
        data.setdefault("headers", {}).update(
            {k.strip(): v.strip() for k, _, v in (h.partition(":") for h in args["header"])})
    if "slo" in args:
        slo = {}
        for item in args["slo"]:
            k, _, v = item.partition(":")
            slo[k.strip()] = float(v)
        data["slo_ms"] = slo
    met = data["metrics"]
    for role in METRIC_ROLES:
        if f"metric_{role}" in args:
            met[role] = _csv(args[f"metric_{role}"])
    if "metrics_label" in args:
        met["labels"] = {k: v for k, _, v in (x.partition("=") for x in args["metrics_label"])}
    return RunConfig.model_validate(data)


def main(argv: Optional[List[str]] = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(ns)
    except (ValueError, OSError) as exc:
        print(f"qwen-loadtest: bad configuration: {exc}", file=sys.stderr)
        return 2
    if getattr(ns, "print_config", False):
        print(orjson.dumps(cfg.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        return 0
    from .report import format_table
    from .runner import run

    t = time.perf_counter()
    result = run(cfg)
    print(format_table(result), file=sys.stderr if getattr(ns, "json", False) else sys.stdout)
    if getattr(ns, "json", False):
        print(orjson.dumps([s.summary for s in result.stages], option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
    if result.files:
        print(f"wrote {', '.join(sorted(result.files.values()))} ({time.perf_counter() - t:.1f} s)",
              file=sys.stderr)
    return 0 if any(r.ok for r in result.records) else 1
