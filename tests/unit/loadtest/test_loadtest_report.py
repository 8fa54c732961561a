"""Outputs: table, JSON (with config for reproduction), CSV, plots, Markdown; the CLI."""

import csv
import json

import pytest

from loadtest import cli
from loadtest.report import CSV_FIELDS, format_table
from loadtest.runner import run
from loadtest.scrape import parse_samples, pick, server_view
from loadtest.config import MetricsConfig


@pytest.fixture(scope="module")
def sweep_result(stub, tmp_path_factory):
    from loadtest.config import LoadConfig, RunConfig, WorkloadConfig

    out = tmp_path_factory.mktemp("report")
    base = f"http://127.0.0.1:{stub.port}"
    cfg = RunConfig(
        base_url=base + "/v1", model="stub", progress=False, output_dir=str(out),
        api_key="sk-secret-123", slo_ms={"ttft": 1000, "tpot": 100},
        workload=WorkloadConfig(input_tokens=32, output_tokens="4:12", turns=2,
                                mode_mix={"thinking": 1, "fast": 1}),
        load=LoadConfig(concurrency=1, num_requests=40, sweep=[1, 2], warmup_requests=2,
                        saturation_min_gain=0.0, saturation_latency_factor=1000),
        metrics=MetricsConfig(url=base + "/metrics", settle_s=0))
    return run(cfg), out


def test_files_written_and_consistent(sweep_result):
    result, out = sweep_result
    assert len(result.stages) == 2
    data = json.loads((out / "result.json").read_text())
    assert data["config"]["load"]["sweep"] == [1, 2]
    assert "api_key" not in data["config"] and "sk-secret" not in (out / "result.json").read_text()
    assert [s["value"] for s in data["stages"]] == [1, 2]
    for st_json, st in zip(data["stages"], result.stages):
        assert st_json["overall"]["completed"] == st.summary["overall"]["completed"]
        assert st_json["overall"]["request_throughput"] == pytest.approx(
            st.summary["overall"]["request_throughput"])
    with open(out / "requests.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_FIELDS and len(rows) == len(result.records) == 2 * 42
    measured = [r for r in rows if r["phase"] == "measure" and r["stage"] == "1"]
    assert sum(int(r["output_tokens"]) for r in measured) == result.stages[1].summary["overall"]["output_tokens"]
    assert {r["route_mode"] for r in rows} == {"thinking", "fast"}
    for r in rows:
        if r["mode"] == "thinking":
            assert int(r["reasoning_tokens"]) + int(r["answer_tokens"]) == int(r["output_tokens"])
            assert float(r["ttfa_ms"]) >= float(r["ttft_ms"])
    for name in ("latency_throughput", "ttft_cdf", "itl_cdf", "tokens_by_mode", "ttft_by_turn"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"![{name}]({name}.png)" in (out / "report.md").read_text()


def test_table_content(sweep_result):
    result, _ = sweep_result
    table = format_table(result)
    for text in ("TTFT", "TTFA", "TPOT", "ITL", "E2E", "thinking", "fast", "goodput",
                 "== sweep", "reasoning/req", "server /metrics", "routes"):
        assert text in table, text


def test_scrape_parsing():
    text = ('# TYPE vllm:request_success counter\n'
            'vllm:request_success_total{finished_reason="stop",model_name="a"} 3\n'
            'vllm:request_success_total{finished_reason="length",model_name="a"} 4\n'
            'vllm:request_success_total{finished_reason="length",model_name="b"} 100\n'
            'vllm:request_success_created{model_name="a"} 1.7e9\n'
            '# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name="a"} 0.25\n')
    allm = parse_samples(text)
    assert allm["vllm:request_success_total"] == 107
    only_a = parse_samples(text, {"model_name": "a"})
    assert only_a["vllm:request_success_total"] == 7
    assert pick(only_a, ["qwen_serve_requests_total", "vllm:request_success_total"]) == (
        "vllm:request_success_total", 7)
    cfg = MetricsConfig(url="x")
    view = server_view(cfg, {"vllm:request_success_total": 2}, only_a, [(0.1, 0.6)])
    assert view["requests"] == 5 and view["kv_cache_usage_peak"] == 0.6
    assert view["generation_tokens"] is None
    cfg = MetricsConfig(url="x", requests=["qwen_serve_requests_total"])
    assert server_view(cfg, {}, only_a, [])["requests"] is None


def test_server_view_latency_means_from_histogram_deltas():
    def hist(name, total, count):
        return (f'# TYPE {name} histogram\n{name}_bucket{{le="+Inf"}} {count}\n'
                f'{name}_sum {total}\n{name}_count {count}\n')

    before = parse_samples(hist("vllm:time_to_first_token_seconds", 1.0, 10)
                           + hist("qwen_serve_request_duration_seconds", 4.0, 2))
    after = parse_samples(hist("vllm:time_to_first_token_seconds", 1.6, 14)
                          + hist("qwen_serve_request_duration_seconds", 10.0, 5))
    view = server_view(MetricsConfig(url="x"), before, after, [])
    assert view["mean_ms"]["ttft"] == pytest.approx(150.0)  # 0.6 s over 4 requests, not 1.6 / 14
    assert view["names"]["ttft"] == "vllm:time_to_first_token_seconds"
    assert view["mean_ms"]["e2e"] == pytest.approx(2000.0)  # the second candidate name
    assert view["names"]["e2e"] == "qwen_serve_request_duration_seconds"
    assert view["mean_ms"]["tpot"] is None and view["names"]["tpot"] is None  # not exported
    assert server_view(MetricsConfig(url="x"), after, after, [])["mean_ms"]["ttft"] is None  # no new requests


def test_cli_end_to_end_and_config_roundtrip(stub, tmp_path, capsys):
    out = tmp_path / "o"
    base = f"http://127.0.0.1:{stub.port}"
    rc = cli.main(["--base-url", base + "/v1", "--model", "stub", "--rate", "100", "-n", "30",
                   "--burstiness", "0.5", "--input-tokens", "20:40", "--output-tokens", "6",
                   "--mode-mix", "thinking=1,fast=2", "--effort-mix", "none=1,high=1",
                   "--slo", "ttft:500", "--slo", "tpot:50", "--metrics-url", base + "/metrics",
                   "--seed", "4", "--no-progress", "--no-plots", "--out", str(out)])
    assert rc == 0
    shown = capsys.readouterr().out
    assert "rate=100" in shown and "goodput" in shown
    data = json.loads((out / "result.json").read_text())
    cfg = data["config"]
    assert cfg["load"]["shape"] == "rate" and cfg["load"]["burstiness"] == 0.5
    assert cfg["slo_ms"] == {"ttft": 500.0, "tpot": 50.0}
    assert cfg["workload"]["mode_mix"] == pytest.approx({"thinking": 1 / 3, "fast": 2 / 3})
    # the saved config repeats the run: same requests, modes and lengths
    out2 = tmp_path / "o2"
    assert cli.main(["--config", str(out / "result.json"), "--out", str(out2), "--no-progress"]) == 0
    cols = ("mode", "effort", "max_tokens", "expected_prompt_tokens")

    def rows(d):
        with open(d / "requests.csv", newline="") as fh:
            return [tuple(r[c] for c in cols) for r in csv.DictReader(fh)]

    assert rows(out) == rows(out2)


def test_cli_rejects_bad_options(capsys):
    assert cli.main(["--slo", "latency:5", "-n", "1"]) == 2
    assert cli.main(["--mode-mix", "slow=1", "-n", "1"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["--concurrency", "2", "--rate", "3"])
    assert cli.main(["--print-config", "--concurrency", "3", "--duration", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["load"]["concurrency"] == 3 and printed["load"]["duration_s"] == 5


def test_api_key_from_option_and_env(stub, make_cfg, monkeypatch):
    run(make_cfg(api_key="sk-opt", metrics=False, load={"concurrency": 1, "num_requests": 1}))
    monkeypatch.setenv("QWEN_LOADTEST_API_KEY", "sk-env")
    run(make_cfg(metrics=False, load={"concurrency": 1, "num_requests": 1}))
    assert {"Bearer sk-opt", "Bearer sk-env"} <= stub.auth_seen


def test_progress_plain_lines_when_not_a_tty(make_cfg):
    import asyncio
    import io

    from loadtest.progress import Progress
    from loadtest.runner import _StageRun

    buf = io.StringIO()
    prog = Progress(stream=buf, interval_s=0.05)
    assert not prog.tty

    async def go():
        sr = _StageRun(make_cfg(load={"concurrency": 1, "num_requests": 5}), 0, 1, iter(()), None, prog)
        prog.start_stage(0, "concurrency", 1, sr)
        from loadtest.client import Record
        for i in range(5):
            r = Record(i, status=200 if i else 500)
            r.chunk_times = [0.1, 0.2]
            if not i:
                r.fail("http_500", "x")
            prog.done(r)
        await asyncio.sleep(0.12)
        prog.end_stage()

    asyncio.run(go())
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 2 and "\r" not in buf.getvalue()
    assert "[####################] 5/5" in lines[-1] and "errors 1" in lines[-1]
