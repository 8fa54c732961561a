"""qwen-loadtest against vLLM's own OpenAI server, side by side with vLLM's serving benchmark.

One vLLM server (tiny random-weight Qwen3, qwen3 reasoning parser) for the whole module.
Both tools run the same load: the same number of requests, prompt and output lengths
(exact, via ignore_eos) and concurrency. Each run is held against the server's own
Prometheus histograms over the same requests (no client sees a first token before the
server made it, nor more throughput than the server's latency allows), and the two tools
must agree on how far their TTFT, TPOT and throughput sit from the server's view, within
the tolerances below. Our client-side counts must equal the server's own counters.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import pytest

from loadtest import cpu_usage
from loadtest.bench_serving import Spec, session_pids, start
from loadtest.config import LoadConfig, MetricsConfig, RunConfig, WorkloadConfig
from loadtest.runner import run
from loadtest.scrape import parse_samples, server_view
from loadtest.workload import PromptMaker

pytestmark = [pytest.mark.engine, pytest.mark.timeout(420)]

N_PROMPTS, CONCURRENCY, INPUT_LEN, OUTPUT_LEN = 48, 8, 128, 48
REPS = 2
# Both tools run alternately, REPS times each; each run is measured against the server's
# own histograms over the same requests (see _relative), and the means are compared.
TOL_SLOTS = 0.10  # Little's-law fill of the CONCURRENCY slots, absolute
TOL_TPOT = 0.10  # client TPOT over the server's, absolute
TOL_TTFT_OVER_MS = 60.0  # client TTFT beyond the server's (vLLM's benchmark sat ~20 ms further out than ours here)
SERVER_NICENESS = 10  # the benchmark's default (loadtest.compare --server-niceness)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """Bare vLLM, started as the side-by-side benchmark starts it (loadtest.bench_serving):
    lowered priority, in a session (and scheduling group) of its own, so that the load
    generators on this same small machine are served first and both tools measure the
    server rather than their own starvation."""
    from server.models import ensure_tiny_model

    model_dir = ensure_tiny_model("tiny-qwen3-dense")
    spec = Spec(model="tiny-qwen3-dense", source=str(model_dir), startup_timeout_s=240, niceness=SERVER_NICENESS,
                engine_kwargs={"max_model_len": 2048, "enforce_eager": True})
    try:
        with start("vllm", spec, tmp_path_factory.mktemp("vllm")) as server:
            yield {"base": server.base_url.removesuffix("/v1"), "model": server.model, "model_dir": str(model_dir),
                   "pid": server.proc.pid}
    except RuntimeError as err:  # exited or not ready in time, with the end of its log
        pytest.fail(str(err))


def _ours(server, out_dir=None, **workload) -> RunConfig:
    return RunConfig(
        base_url=server["base"] + "/v1", model=server["model"], seed=1, progress=False,
        output_dir=out_dir,
        workload=WorkloadConfig(**workload),
        load=LoadConfig(concurrency=CONCURRENCY, num_requests=N_PROMPTS),
        # Polled often: on a fast machine a run of short requests is over in a second or two,
        # and a gauge polled twice a second can miss every moment the KV cache held one.
        metrics=MetricsConfig(url=server["base"] + "/metrics", poll_interval_s=0.1, settle_s=0.5),
    )


def _vllm_bench(server, tmp: Path) -> dict:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args([
        "--backend", "openai-chat", "--base-url", server["base"], "--endpoint", "/v1/chat/completions",
        "--model", server["model"], "--tokenizer", server["model_dir"], "--dataset-name", "random",
        "--random-input-len", str(INPUT_LEN), "--random-output-len", str(OUTPUT_LEN),
        "--num-prompts", str(N_PROMPTS), "--max-concurrency", str(CONCURRENCY),
        "--request-rate", "inf", "--ignore-eos", "--disable-tqdm", "--seed", "1",
        "--result-dir", str(tmp),
    ])
    return main(args)


def _scrape(server) -> dict:
    return parse_samples(httpx.get(server["base"] + "/metrics", timeout=10).text)


def _server_view(before: dict, after: dict) -> dict:
    """The server's own means over one run, as the load tester reports them."""
    view = server_view(MetricsConfig(), before, after, [])
    means = view["mean_ms"]
    return {"requests": view["requests"], "ttft_ms": means["ttft"], "tpot_ms": means["tpot"],
            "e2e_s": means["e2e"] / 1000.0}


def _relative(tool: dict, server: dict) -> dict:
    """One run's figures against the server's own view of the same requests.

    A shared 2-core machine runs the server at a different speed from one run to the next,
    so the two tools are compared through what each measured relative to the server:
    - ttft_over_ms: client TTFT beyond the server's (the HTTP path and the client itself);
    - tpot: client TPOT over the server's;
    - slots: output throughput over what Little's law allows with CONCURRENCY requests
      always in flight for the server's mean latency (1.0: the client never left a slot
      empty; less: time lost between requests and in the last requests' tail)."""
    return {"ttft_over_ms": tool["ttft_ms"] - server["ttft_ms"],
            "tpot": tool["tpot_ms"] / server["tpot_ms"],
            "slots": tool["output_throughput"] * server["e2e_s"] / (CONCURRENCY * OUTPUT_LEN)}


def test_agrees_with_vllm_bench(vllm_server, tmp_path):
    # vLLM's random dataset counts INPUT_LEN tokens of raw text; the server adds the chat
    # template. Ours counts the whole prompt, so ask for the template's tokens on top.
    probe = RunConfig(model=vllm_server["model"], load=LoadConfig(num_requests=1))
    overhead = PromptMaker(probe).overhead("auto", None)
    workload = dict(input_tokens=INPUT_LEN + overhead, output_tokens=OUTPUT_LEN)
    run(_ours(vllm_server, **workload).model_copy(update={"load": LoadConfig(concurrency=4, num_requests=8)}))
    runs = {"theirs": [], "ours": []}
    for rep in range(REPS):  # alternate who goes first (ABBA) against drift
        for tool in ("theirs", "ours") if rep % 2 == 0 else ("ours", "theirs"):
            before = _scrape(vllm_server)
            if tool == "theirs":
                t = _vllm_bench(vllm_server, tmp_path)
                counts = (t["completed"], t["total_output_tokens"], t["total_input_tokens"])
                figures = {"ttft_ms": t["mean_ttft_ms"], "tpot_ms": t["mean_tpot_ms"],
                           "output_throughput": t["output_throughput"], "errors": t.get("errors")}
            else:
                # no /metrics polling of its own: vLLM's benchmark does not poll either,
                # and rendering /metrics ten times a second slowed this server by up to ~20%
                cfg = _ours(vllm_server, **workload).model_copy(update={"metrics": MetricsConfig()})
                ov = run(cfg).summary["overall"]
                counts = (ov["completed"], ov["output_tokens"], ov["prompt_tokens"])
                figures = {"ttft_ms": ov["latency_ms"]["ttft"]["mean"], "tpot_ms": ov["latency_ms"]["tpot"]["mean"],
                           "output_throughput": ov["output_throughput"], "errors": ov["errors"]}
            server = _server_view(before, _scrape(vllm_server))
            # both read prompt_tokens from usage: the same prompt lengths reached the server
            assert counts == (N_PROMPTS, N_PROMPTS * OUTPUT_LEN, N_PROMPTS * (INPUT_LEN + overhead)), (tool, figures)
            assert server["requests"] == N_PROMPTS  # no request beyond the measured ones
            # a client sees the first token after the server made it, and no client can
            # finish requests faster than the server's own latency allows (Little's law)
            assert figures["ttft_ms"] >= server["ttft_ms"], (tool, figures, server)
            assert figures["output_throughput"] <= CONCURRENCY * OUTPUT_LEN / server["e2e_s"] * 1.01, (tool, figures, server)
            runs[tool].append({**_relative(figures, server), "raw": figures, "server": server})

    def mean(tool, key):
        return sum(r[key] for r in runs[tool]) / len(runs[tool])

    report = {k: {"vllm_bench": mean("theirs", k), "qwen_loadtest": mean("ours", k)}
              for k in ("ttft_over_ms", "tpot", "slots")}
    print(json.dumps({"relative": report, "runs": runs}, indent=1))
    (tmp_path / "agreement.json").write_text(json.dumps({"relative": report, "runs": runs}, indent=1))
    assert abs(report["slots"]["qwen_loadtest"] - report["slots"]["vllm_bench"]) <= TOL_SLOTS, report
    assert abs(report["tpot"]["qwen_loadtest"] - report["tpot"]["vllm_bench"]) <= TOL_TPOT, report
    assert abs(report["ttft_over_ms"]["qwen_loadtest"] - report["ttft_over_ms"]["vllm_bench"]) <= TOL_TTFT_OVER_MS, report


def test_counts_match_server_metrics_and_files(vllm_server, tmp_path):
    out = tmp_path / "run"
    cfg = _ours(vllm_server, str(out), input_tokens="48:96", output_tokens="16:32",
                mode_mix={"thinking": 1, "fast": 1, "auto": 1}, turns=2, prefix_tokens=32)
    cfg = cfg.model_copy(update={"slo_ms": {"ttft": 2000, "tpot": 500},
                                 "load": LoadConfig(concurrency=4, num_requests=24, warmup_requests=4)})
    result = run(cfg)
    s = result.summary
    assert s["phases"] == {"warmup": 4, "measure": 24, "cooldown": 0}
    assert s["overall"]["failed"] == 0
    # client counts (every phase) equal the server's own counters
    server = s["server"]
    assert server["names"]["requests"] == "vllm:request_success_total"
    assert server["requests"] == s["all_phases"]["completed"] == len(result.records)
    assert server["generation_tokens"] == s["all_phases"]["output_tokens"]
    assert server["prompt_tokens"] == s["all_phases"]["prompt_tokens"]
    assert server["kv_cache_usage_peak"] is not None and server["kv_cache_usage_peak"] > 0
    # the server's latency means over the same requests, beside the client's: no client
    # sees a first token, or a last one, before the server made it
    assert server["names"]["ttft"] == "vllm:time_to_first_token_seconds"
    assert all(server["mean_ms"][role] > 0 for role in ("ttft", "tpot", "e2e")), server["mean_ms"]
    for role in ("ttft", "e2e"):
        client_ms, server_ms = s["client_vs_server"][f"{role}_mean_ms"]
        assert client_ms >= server_ms, (role, client_ms, server_ms)
    # exact synthetic prompt lengths, as the server counted them (first turns)
    firsts = [r for r in result.records if r.turn == 0]
    assert firsts and all(r.prompt_tokens == r.expected_prompt_tokens for r in firsts)
    # exact output lengths, and the reasoning/answer split from usage details
    for r in result.records:
        assert r.output_tokens == r.max_tokens and r.tokens_source == "usage"
        assert r.reasoning_tokens + r.answer_tokens == r.output_tokens
        if r.mode == "fast":  # the template closes <think> at once: all answer
            assert r.reasoning_tokens == 0 and r.ttfa is not None
        else:  # a random model never closes <think>: (almost) all reasoning
            assert r.reasoning_tokens >= r.output_tokens - 2
    assert set(s["by_mode"]) == {"thinking", "fast", "auto"}
    # later turns carry the history and the shared prefix: longer prompts
    later = [r for r in result.records if r.turn == 1]
    assert later and min(r.prompt_tokens for r in later) > 32
    assert "by_turn" in s and "prefix_cache_hits_total" in " ".join(server["extra"])
    # files
    data = json.loads((out / "result.json").read_text())
    assert data["config"]["load"]["num_requests"] == 24 and "api_key" not in data["config"]
    with open(out / "requests.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result.records)
    assert sum(int(r["output_tokens"]) for r in rows) == server["generation_tokens"]
    for name in ("ttft_cdf.png", "itl_cdf.png", "tokens_by_mode.png", "ttft_by_turn.png"):
        assert (out / name).stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "![ttft_cdf](ttft_cdf.png)" in md and "TTFT" in md


def test_cpu_usage_finds_the_engine_and_the_api_server(vllm_server):
    """The side-by-side benchmark's CPU accounting on a real vLLM server: the engine's own
    processes are told from its API server by their titles, and both did work."""
    before = cpu_usage.take(session_pids(vllm_server["pid"]))
    result = run(_ours(vllm_server, input_tokens=f"{INPUT_LEN}:{INPUT_LEN}", output_tokens=f"{OUTPUT_LEN}:{OUTPUT_LEN}"))
    after = cpu_usage.take(session_pids(vllm_server["pid"]))
    tokens = sum(r.output_tokens or 0 for r in result.records)
    assert tokens >= N_PROMPTS * OUTPUT_LEN
    u = cpu_usage.usage(before, after, tokens)
    names = dict(u["top"])
    assert "VLLM::EngineCore" in names and "vllm.entrypoints.openai.api_server" in names, names
    assert u["engine_cores"] > 0.3 and u["tokens_per_engine_cpu_s"] > 0  # the engine computed tokens
    assert 0 < u["serving_cores"] < u["engine_cores"]  # the API server did less than the engine
    assert u["serving_ms_per_token"] > 0 and u["client_cores"] > 0
    assert 0.0 <= u["steal_pct"] <= 100.0 and u["other_cores"] >= 0.0
