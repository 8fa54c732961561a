"""Result outputs: terminal table, JSON (with the full config), per-request CSV, Markdown."""

from __future__ import annotations

import csv
import datetime
import platform
import sys
from pathlib import Path
from typing import Dict, List

import orjson

from . import __version__, stats

LAT_ROWS = (("ttft", "TTFT"), ("ttfa", "TTFA"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E"))
COLS = ("mean", "p50", "p90", "p95", "p99")
CSV_FIELDS = (
    "stage", "idx", "phase", "conv_id", "turn", "mode", "effort", "served_mode", "route_mode",
    "route_pool", "route_reason", "status", "error_kind", "scheduled_s", "start_s", "end_s",
    "send_lag_ms", "ttft_ms", "ttfa_ms", "tpot_ms", "e2e_ms", "itl_mean_ms", "itl_max_ms",
    "n_chunks", "expected_prompt_tokens", "prompt_tokens", "max_tokens", "output_tokens",
    "reasoning_tokens", "answer_tokens", "tokens_source", "finish_reason", "error",
)


def _f(x, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def _lat_lines(name: str, summ: Dict) -> List[str]:
    out = []
    for key, label in LAT_ROWS:
        d = summ["latency_ms"][key]
        if d.get("n"):
            out.append(f"{name:<12} {label:<5} {d['n']:>7} " + " ".join(f"{_f(d[c], 2):>10}" for c in COLS))
    return out


def format_table(result) -> str:
    """The end-of-run summary for the terminal."""
    lines: List[str] = []
    for st in result.stages:
        s = st.summary
        o = s["overall"]
        lines.append(
            f"== stage {s['stage']} {s['shape']}={s['value']:g}: {o['completed']} ok, {o['failed']} failed "
            f"in {o['duration_s']:.2f} s (phases {s['phases']})")
        lines.append(
            f"   {o['request_throughput']:.2f} req/s | {o['output_throughput']:,.1f} output tok/s | "
            f"{o['total_token_throughput']:,.1f} total tok/s | goodput {o['goodput']:.2f} req/s"
            + (f" (SLO {o['slo_ms']})" if o["slo_ms"] else ""))
        if s.get("offered_rate"):
            lines.append(f"   offered {s['offered_rate']:g} req/s, server kept up with "
                         f"{_f(s.get('achieved_rate'), 2)} req/s while sending")
        if o["errors"]:
            lines.append("   errors: " + ", ".join(f"{k}={v}" for k, v in o["errors"].items()))
        lines.append(f"{'group':<12} {'metric':<5} {'n':>7} " + " ".join(f"{c + ' ms':>10}" for c in COLS))
        lines += _lat_lines("overall", o)
        for mode, ms in s.get("by_mode", {}).items():
            if len(s["by_mode"]) > 1:
                lines += _lat_lines(mode, ms)
        lines.append(f"{'tokens':<12} {'n':>7} {'prompt/req':>11} {'output/req':>11} {'reasoning/req':>14} {'answer/req':>11}")
        for name, ms in [("overall", o)] + list(s.get("by_mode", {}).items()):
            n = ms["completed"] or 1
            lines.append(f"{name:<12} {ms['completed']:>7} {ms['prompt_tokens'] / n:>11.1f} "
                         f"{ms['output_tokens'] / n:>11.1f} {ms['reasoning_tokens'] / n:>14.1f} "
                         f"{ms['answer_tokens'] / n:>11.1f}")
        if s.get("routes"):
            lines.append("   routes (requested->served/pool): " + ", ".join(f"{k}={v}" for k, v in s["routes"].items()))
        if s.get("by_turn"):
            lines.append("   TTFT p50 by turn: " + ", ".join(
                f"{t}: {_f(v['latency_ms']['ttft'].get('p50'), 2)} ms" for t, v in s["by_turn"].items()))
        c = s["client"]
        lines.append(f"   client: cpu {c['cpu_util']:.0%}, {_f(c['cpu_us_per_request'])} us/request, "
                     f"send lag p99 {_f(c['send_lag_ms'].get('p99'), 2)} ms, "
                     f"loop lag p99 {_f(c['loop_lag_ms'].get('p99'), 2)} ms"
                     + (f"  WARNING: {c['warning']}" if c.get("warning") else ""))
        if "server" in s:
            sv = s["server"]
            cmp_ = s["client_vs_server"]
            lines.append("   server /metrics delta vs client (all phases): " + ", ".join(
                f"{k.removesuffix('_mean_ms').upper()} mean {_f(v[1])} vs {_f(v[0])} ms" if k.endswith("_mean_ms")
                else f"{k} {_f(v[1], 0)} vs {v[0]}" for k, v in cmp_.items())
                + f", KV-cache peak {_f(None if sv['kv_cache_usage_peak'] is None else 100 * sv['kv_cache_usage_peak'])}%")
    if result.config.load.sweep:
        lines.append("== sweep")
        lines.append(f"{'value':>8} {'req/s':>9} {'out tok/s':>11} {'TTFT p50':>9} {'TTFT p99':>9} "
                     f"{'TPOT p50':>9} {'TPOT p99':>9} {'failed':>7}")
        for st in result.stages:
            o = st.summary["overall"]
            t, p = o["latency_ms"]["ttft"], o["latency_ms"]["tpot"]
            lines.append(f"{st.value:>8g} {o['request_throughput']:>9.2f} {o['output_throughput']:>11.1f} "
                         f"{_f(t.get('p50'), 1):>9} {_f(t.get('p99'), 1):>9} {_f(p.get('p50'), 2):>9} "
                         f"{_f(p.get('p99'), 2):>9} {o['failed']:>7}")
        if result.saturation:
            sat = result.saturation
            lines.append(f"   saturated at {sat['value']:g}: {sat['reason']}")
        else:
            lines.append("   no saturation within the sweep")
    return "\n".join(lines)


def result_json(result) -> Dict:
    return {
        "tool": "qwen-loadtest",
        "version": __version__,
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "config": result.config.model_dump(mode="json"),
        "environment": {"python": sys.version.split()[0], "platform": platform.platform()},
        "saturation": result.saturation,
        "stages": [st.summary for st in result.stages],
    }


def record_row(r) -> Dict[str, object]:
    gaps = stats.itls(r.chunk_times)
    tp = stats.tpot(r.e2e, r.ttft, r.output_tokens)

    def ms(x):
        return None if x is None else round(x * 1000.0, 4)

    return {
        "stage": r.stage, "idx": r.idx, "phase": r.phase, "conv_id": r.conv_id, "turn": r.turn,
        "mode": r.mode, "effort": r.effort, "served_mode": r.served_mode,
        "route_mode": r.route_mode, "route_pool": r.route_pool, "route_reason": r.route_reason,
        "status": r.status, "error_kind": r.error_kind,
        "scheduled_s": r.scheduled, "start_s": round(r.start, 6),
        "end_s": None if r.end is None else round(r.end, 6), "send_lag_ms": ms(r.send_lag),
        "ttft_ms": ms(r.ttft), "ttfa_ms": ms(r.ttfa), "tpot_ms": ms(tp), "e2e_ms": ms(r.e2e),
        "itl_mean_ms": ms(sum(gaps) / len(gaps)) if gaps else None,
        "itl_max_ms": ms(max(gaps)) if gaps else None, "n_chunks": len(r.chunk_times),
        "expected_prompt_tokens": r.expected_prompt_tokens, "prompt_tokens": r.prompt_tokens,
        "max_tokens": r.max_tokens, "output_tokens": r.output_tokens,
        "reasoning_tokens": r.reasoning_tokens, "answer_tokens": r.answer_tokens,
        "tokens_source": r.tokens_source, "finish_reason": r.finish_reason, "error": r.error,
    }


def write_csv(result, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in result.records:
            w.writerow(record_row(r))


def markdown(result, table: str, plots: Dict[str, str]) -> str:
    cfg = result.config
    ld, wl = cfg.load, cfg.workload
    shape = (f"closed loop, concurrency {ld.sweep or ld.concurrency}" if ld.shape == "concurrency"
             else f"open loop, rate {ld.sweep or ld.rate}/s, burstiness {ld.burstiness:g}")
    lines = [
        "# Load test report", "",
        f"- target: `{cfg.url}` model `{cfg.model}` ({'streaming' if cfg.stream else 'non-streaming'})",
        f"- load: {shape}; requests {ld.num_requests}, duration {ld.duration_s} s, "
        f"warm-up {ld.warmup_requests} req / {ld.warmup_s:g} s, cool-down {ld.cooldown_requests} req / {ld.cooldown_s:g} s",
        f"- workload: {wl.kind}, input {wl.input_tokens} tokens, output {wl.output_tokens} tokens, "
        f"modes {wl.mode_mix}, efforts {wl.effort_mix}, turns {wl.turns}, shared prefix {wl.prefix_tokens}",
        f"- seed {cfg.seed}; SLOs {cfg.slo_ms or 'none'}", "",
        "## Summary", "", "```", table, "```", "",
        "Metric definitions: see the loadtest README (vLLM's: TPOT excludes the first token; "
        "ITL is per chunk; TTFA = first answer token after the reasoning).", "",
    ]
    if plots:
        lines += ["## Plots", ""]
        for name, path in plots.items():
            lines += [f"### {name.replace('_', ' ')}", "", f"![{name}]({Path(path).name})", ""]
    if result.saturation:
        lines += ["## Saturation", "", f"Saturated at {result.saturation['value']:g}: {result.saturation['reason']}", ""]
    return "\n".join(lines)


def write_all(result, out_dir: str) -> Dict[str, str]:
    """Write result.json, requests.csv, plots and report.md into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "result.json"), "csv": str(out / "requests.csv"),
             "report": str(out / "report.md")}
    Path(files["json"]).write_bytes(orjson.dumps(
        result_json(result), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    write_csv(result, Path(files["csv"]))
    plots: Dict[str, str] = {}
    if result.config.plots:
        from .plots import write_plots

        plots = write_plots(result, out)
    files.update({f"plot_{k}": v for k, v in plots.items()})
    table = format_table(result)
    Path(files["report"]).write_text(markdown(result, table, plots), encoding="utf-8")
    return files
