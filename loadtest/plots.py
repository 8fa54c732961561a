"""PNG plots with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from . import stats


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax, values: List[float], label: str, **kw) -> None:
    xs = sorted(values)
    if not xs:
        return
    n = len(xs)
    ax.step(xs, [(i + 1) / n for i in range(n)], where="post", label=f"{label} (n={n})", **kw)


def write_plots(result, out: Path) -> Dict[str, str]:
    """Write the plots that the data supports; returns name -> path."""
    plt = _plt()
    files: Dict[str, str] = {}
    last = result.stages[-1]
    measured = [r for r in last.records if r.phase == "measure" and r.ok]
    by_mode = stats.group_by(measured, "mode")

    if len(result.stages) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [s.summary["overall"]["output_throughput"] for s in result.stages]
        for key, style in (("p50", "o-"), ("p99", "s--")):
            ys = [s.summary["overall"]["latency_ms"]["ttft"].get(key) for s in result.stages]
            ax.plot(xs, ys, style, label=f"TTFT {key}")
        ax2 = ax.twinx()
        ys = [s.summary["overall"]["latency_ms"]["tpot"].get("p50") for s in result.stages]
        ax2.plot(xs, ys, "^:", color="tab:green", label="TPOT p50")
        ax2.set_ylabel("TPOT (ms)")
        for s, x, y in zip(result.stages, xs, [s.summary["overall"]["latency_ms"]["ttft"].get("p50") for s in result.stages]):
            if y is not None:
                ax.annotate(f"{s.shape[0]}={s.value:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("output throughput (tokens/s)")
        ax.set_ylabel("TTFT (ms)")
        ax.set_title("Latency vs throughput (sweep)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper left")
        files["latency_throughput"] = _save(fig, plt, out / "latency_throughput.png")

    if measured:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for mode, recs in by_mode.items():
            _cdf(ax, [r.ttft * 1000 for r in recs if r.ttft is not None], f"{mode} TTFT")
            if mode != "fast":
                _cdf(ax, [r.ttfa * 1000 for r in recs if r.ttfa is not None], f"{mode} TTFA", linestyle="--")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.set_title("Time to first token / first answer token, by mode")
        ax.legend()
        files["ttft_cdf"] = _save(fig, plt, out / "ttft_cdf.png")

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for mode, recs in by_mode.items():
            gaps = [g * 1000 for r in recs for g in stats.itls(r.chunk_times)]
            _cdf(ax, gaps, f"{mode} ITL")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of chunks")
        ax.set_title("Inter-token (chunk) latency, by mode")
        ax.legend()
        files["itl_cdf"] = _save(fig, plt, out / "itl_cdf.png")

        fig, ax = plt.subplots(figsize=(7, 4.5))
        names = list(by_mode)
        reas = [sum(r.reasoning_tokens or 0 for r in by_mode[m]) / len(by_mode[m]) for m in names]
        ans = [sum(r.answer_tokens or 0 for r in by_mode[m]) / len(by_mode[m]) for m in names]
        ax.bar(names, reas, label="reasoning")
        ax.bar(names, ans, bottom=reas, label="answer")
        ax.set_ylabel("mean tokens per request")
        ax.set_title("Reasoning vs answer tokens, by requested mode")
        ax.legend()
        files["tokens_by_mode"] = _save(fig, plt, out / "tokens_by_mode.png")

        turns = stats.group_by(measured, "turn")
        if len(turns) > 1:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for turn, recs in sorted(turns.items()):
                _cdf(ax, [r.ttft * 1000 for r in recs if r.ttft is not None], f"turn {turn + 1}")
            ax.set_xlabel("TTFT (ms)")
            ax.set_ylabel("fraction of requests")
            ax.set_title("TTFT by conversation turn (prefix caching)")
            ax.legend()
            files["ttft_by_turn"] = _save(fig, plt, out / "ttft_by_turn.png")
    return files


def _save(fig, plt, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
