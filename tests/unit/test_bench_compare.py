"""Pure parts of the side-by-side benchmark (loadtest.compare, loadtest.bench_serving) and
the router micro-benchmark's helpers: no server is started."""

from __future__ import annotations

import argparse

import pytest

from loadtest import bench_router, bench_serving, compare
from loadtest.client import Record
from server.config import parse_config


def rec(tokens: int, chunks: int, ok: bool = True) -> Record:
    r = Record(0, phase="measure", status=200 if ok else 500, output_tokens=tokens)
    r.chunk_times = [0.01 * i for i in range(chunks)]
    return r


def summary(tok_s: float, ttft: float) -> dict:
    return {"overall": {"request_throughput": tok_s / 100, "output_throughput": tok_s, "failed": 0,
                        "latency_ms": {"ttft": {"p50": ttft, "p99": 2 * ttft}, "tpot": {"p50": 5.0},
                                       "itl": {"p50": 4.0, "p99": 9.0}}}}


def test_figures_and_tokens_per_chunk():
    burst = rec(100, 20)
    burst.chunk_times = [0.05 * (i // 4) for i in range(20)]  # 4 events per read: 5 arrivals
    f = compare.figures(summary(1000, 20), [rec(100, 100), burst, rec(50, 5, ok=False)])
    assert f["tok_s"] == 1000 and f["ttft_p50"] == 20 and f["ttft_p99"] == 40 and f["itl_p50"] == 4.0
    assert f["tok_per_chunk"] == 200 / 105  # failed requests left out
    assert f["client_lag_max_ms"] is None  # a summary without the client's loop lag
    stalled = {**summary(1000, 20), "client": {"loop_lag_ms": {"max": 2423.3}}}
    assert compare.figures(stalled, [rec(100, 100)])["client_lag_max_ms"] == 2423.3
    assert "2423 ms" in compare._client_lag_text(2423.3) and compare._client_lag_text(None) == ""


def test_medians_and_ratios_to_bare_vllm():
    def entry(tok_s, ttft):
        return {"levels": {"8": {"figures": compare.figures(summary(tok_s, ttft), [rec(10, 10)])}}}

    rounds = [{"vllm": entry(1000, 20), "qwen-serve": entry(960, 25)},
              {"vllm": entry(1100, 22), "qwen-serve": entry(1000, 24)},
              {"vllm": entry(900, 18), "qwen-serve": entry(990, 30)}]
    med = compare.median_rounds(rounds)
    assert med["vllm"]["8"]["tok_s"] == 1000 and med["qwen-serve"]["8"]["tok_s"] == 990
    rat = compare.ratios(med)
    assert "vllm" not in rat
    assert abs(rat["qwen-serve"]["8"]["tok_s"] - 0.99) < 1e-9
    assert rat["qwen-serve"]["8"]["ttft_p50_delta_ms"] == 25 - 20
    table = compare.format_table(med, rat, ["vllm", "qwen-serve"], ["8"])
    assert "0.99x" in table and "+5ms" in table and table.count("\n") == 4


def test_rounds_alternate_order_and_pair_ratios_within_a_round():
    assert compare.round_order(["vllm", "rayllm", "qwen-serve"], 0) == ["vllm", "rayllm", "qwen-serve"]
    assert compare.round_order(["vllm", "rayllm", "qwen-serve"], 1) == ["qwen-serve", "rayllm", "vllm"]
    assert compare.round_order(["vllm", "qwen-serve"], 2) == ["vllm", "qwen-serve"]

    def entry(tok_s, ttft):
        return {"levels": {"8": {"figures": compare.figures(summary(tok_s, ttft), [rec(10, 10)])}}}

    # The machine slowed down in round 2: both servers dropped, the pair's ratio did not.
    rounds = [{"vllm": entry(1000, 20), "qwen-serve": entry(960, 25)},
              {"vllm": entry(500, 40), "qwen-serve": entry(490, 42)},
              {"vllm": entry(1000, 20), "qwen-serve": entry(900, 30)},
              {"vllm": {"levels": {}, "error": "failed"}, "qwen-serve": entry(2000, 10)}]
    paired = compare.paired_ratios(rounds)
    tok = paired["qwen-serve"]["8"]["tok_s"]
    assert tok["rounds"] == [0.96, 0.98, 0.9]  # the round without a baseline is left out
    assert tok["median"] == 0.96 and tok["min"] == 0.9 and tok["max"] == 0.98
    assert paired["qwen-serve"]["8"]["ttft_p50"]["median"] == 1.25
    assert "vllm" not in paired
    table = compare.format_paired(paired, ["vllm", "qwen-serve"], ["8"])
    assert "0.96x (0.90-0.98)" in table and "|      3 |" in table and table.count("\n") == 2


def test_vllm_cli_args():
    args = bench_serving.vllm_cli_args({"max_model_len": 2048, "enforce_eager": True, "enable_prefix_caching": False,
                                        "override_generation_config": {"a": 1}})
    assert args == ["--max-model-len", "2048", "--enforce-eager", "--no-enable-prefix-caching",
                    "--override-generation-config", '{"a": 1}']


def test_generated_qwen_serve_config_is_valid_and_one_hybrid_pool():
    spec = bench_serving.Spec(model="tiny-qwen3-dense", source="/models/tiny", engine_kwargs={"max_num_seqs": 64})
    doc = bench_serving.qwen_serve_config(spec, 18000, 18080)
    cfg = parse_config(doc)
    assert list(cfg.pools) == ["hybrid"] and cfg.router.mode_pools() == {"thinking": "hybrid", "fast": "hybrid"}
    assert cfg.security.auth_configured and cfg.metrics.enabled
    assert cfg.pools["hybrid"].max_ongoing_requests == 64


def test_spec_from_args_parses_engine_args():
    ns = argparse.Namespace(model="tiny-qwen3-dense", accelerator="gpu", tensor_parallel_size=2, max_model_len=4096,
                            max_num_seqs=32, enforce_eager=None, engine_arg=["gpu_memory_utilization=0.8", "kv_cache_dtype=fp8"],
                            kvcache_gib=1, startup_timeout=60, server_niceness=7)
    spec = bench_serving.Spec.from_args(ns)
    assert spec.niceness == 7 and spec.describe()["server_niceness"] == 7
    assert spec.engine_kwargs["enforce_eager"] is False  # GPUs compile by default
    assert spec.engine_kwargs["gpu_memory_utilization"] == 0.8 and spec.engine_kwargs["kv_cache_dtype"] == "fp8"
    assert "VLLM_CPU_KVCACHE_SPACE" not in spec.engine_env()


def test_servers_start_at_lowered_priority():
    # A real child process started as the benchmark starts servers: its niceness is ours + N.
    import os
    import subprocess
    import sys

    assert bench_serving.lower_priority(0) is None
    group = bench_serving.read_autogroup()
    out = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], capture_output=True, text=True,
                         preexec_fn=bench_serving.lower_priority(5), check=True).stdout
    assert int(out) == min(19, os.nice(0) + 5)
    # a child left in our session shares our scheduling group: that group keeps its niceness
    assert bench_serving.read_autogroup() == group
    assert compare.parse_args([]).server_niceness == 10


def test_autogroup_nice_is_written_where_the_kernel_takes_it(tmp_path):
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 0\n")
    assert bench_serving.set_autogroup_nice(5, str(group)) is True
    assert group.read_text() == "5"
    assert bench_serving.set_autogroup_nice(5, str(tmp_path / "missing" / "autogroup")) is False
    assert bench_serving.read_autogroup(str(group)) is None  # "5" is not the kernel's format
    group.write_text("/autogroup-64 nice 10\n")
    assert bench_serving.read_autogroup(str(group)) == ("/autogroup-64", 10)
    group.write_text("")  # a process in a cpu cgroup: the kernel prints nothing
    assert bench_serving.read_autogroup(str(group)) is None


def test_servers_session_group_gets_the_niceness():
    # The server runs in a new session; with autogroup scheduling the session's group, not
    # each process's niceness, is what weighs against the load generator's group.
    import ast
    import subprocess
    import sys

    mine = bench_serving.read_autogroup()
    if mine is None:  # no autogroups, or this process sits in a cpu cgroup (containers)
        pytest.skip("this process is not scheduled by autogroup")
    code = "from loadtest import bench_serving; print(bench_serving.read_autogroup())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         start_new_session=True, preexec_fn=bench_serving.lower_priority(5),
                         check=True).stdout.strip()
    group, nice = ast.literal_eval(out)  # the child's (name, niceness)
    assert group != mine[0]  # a group of its own
    assert nice == 5


def test_router_bench_helpers():
    assert len(bench_router.long_prompt(8192)) > 8192 * 4
    frames = bench_router.sse_frames(3)
    assert frames[0].startswith("data: {") and frames[-1] == "data: [DONE]\n\n" and len(frames) == 6
    p = bench_router._percentiles([1000, 2000, 3000])
    assert p["p50_us"] == 2.0 and p["n"] == 3


def test_variants_set_config_paths_and_env():
    name, overrides = bench_serving.parse_variant("sep:server.router_placement=separate,server.direct_ingress=false,env.X=1")
    assert name == "sep" and overrides == {"server.router_placement": "separate", "server.direct_ingress": False, "env.X": 1}
    spec = bench_serving.Spec(model="tiny-qwen3-dense", source="/models/tiny")
    doc = bench_serving.qwen_serve_config(spec, 18000, 18080)
    env = bench_serving.apply_overrides(doc, overrides)
    assert env == {"X": "1"} and doc["server"]["router_placement"] == "separate"
    assert parse_config(doc).router_pool is None


def test_loop_lag_figures_from_histogram_deltas():
    inf = float("inf")
    before = {0.001: 10, 0.01: 10, 0.1: 10, 5.0: 10, inf: 10}
    # 100 samples during the level: 97 under 1 ms, 2 under 10 ms, 1 under 100 ms
    after = {0.001: 107, 0.01: 109, 0.1: 110, 5.0: 110, inf: 110}
    lag = compare.loop_lag_figures(before, after)
    assert lag == {"loop_lag_p99_ms": 10.0, "loop_lag_max_ms": 100.0, "loop_lag_samples": 100}
    # a stall past the last finite bound has no bound to show
    stalled = compare.loop_lag_figures(after, {**after, inf: 111})
    assert stalled["loop_lag_max_ms"] is None and stalled["loop_lag_samples"] == 1
    assert "past the last bucket" in compare._lag_text(stalled)
    assert compare.loop_lag_figures(after, after) == {}  # no samples: nothing to report
    assert compare.loop_lag_figures(None, None) == {}


def test_cpu_table_shows_serving_cost_against_bare_vllm():
    def entry(serving_ms):
        figs = {"engine_cores": 1.8, "serving_cores": 0.1, "serving_ms_per_token": serving_ms,
                "tokens_per_engine_cpu_s": 100.0, "client_cores": 0.3, "other_cores": 0.02, "steal_pct": 4.0}
        return {"levels": {"8": {"figures": figs}}}

    med = compare.median_rounds([{"vllm": entry(0.4), "qwen-serve": entry(1.0)}])
    table = compare.format_table(med, compare.ratios(med), ["vllm", "qwen-serve"], ["8"], compare.CPU_COLUMNS)
    assert "serv ms/tok" in table and "steal %" in table
    assert "2.50x" in table  # qwen-serve's serving CPU per token against vLLM's API server's
    assert set(compare.CPU_FIGURES) <= set(med["qwen-serve"]["8"])
