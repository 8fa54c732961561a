"""loadtest.cpu_usage: where a level's CPU went (pure arithmetic, and one real busy process)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from loadtest import cpu_usage
from loadtest.cpu_usage import Snapshot

PROC_STAT = """cpu  1000 50 300 8000 20 0 10 120 0 0
cpu0 500 25 150 4000 10 0 5 60 0 0
intr 12345
"""


def test_parse_proc_stat_reads_the_aggregate_line():
    stat = cpu_usage.parse_proc_stat(PROC_STAT)
    assert stat == {"user": 1000, "nice": 50, "system": 300, "idle": 8000, "iowait": 20, "irq": 0,
                    "softirq": 10, "steal": 120}
    assert cpu_usage.parse_proc_stat("cpu 1 2 3 4\n")["steal"] == 0  # old kernels: fewer fields
    assert cpu_usage.parse_proc_stat("intr 1\n") is None


@pytest.mark.parametrize("cmdline, name, role", [
    (["VLLM::EngineCore"], "VLLM::EngineCore", "engine"),
    (["VLLM::Worker"], "VLLM::Worker", "engine"),
    (["ray::RayWorkerWrapper.execute_method"], "ray::RayWorkerWrapper.execute_method", "engine"),
    (["ray::ServeReplica:qwen-serve:LLMServer:hybrid"], "ray::ServeReplica:qwen-serve:LLMServer:hybrid", "serving"),
    (["/venv/bin/python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"],
     "vllm.entrypoints.openai.api_server", "serving"),
    (["/venv/bin/python", "-u", "/venv/lib/ray/dashboard/agent.py", "--node-ip-address=1"], "agent.py", "serving"),
    (["/venv/lib/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=x"], "raylet", "serving"),
    (["/venv/bin/qwen-serve", "up"], "qwen-serve", "serving"),
    ([], "?", "serving"),
])
def test_process_names_and_roles(cmdline, name, role):
    assert cpu_usage.process_name(cmdline) == name
    assert cpu_usage.process_role(name) == role


def snap(wall, machine, processes, client):
    return Snapshot(wall_s=wall, machine=machine, ticks_per_s=100, processes=processes, client_s=client)


def test_usage_splits_engine_serving_client_other_and_steal():
    m0 = cpu_usage.parse_proc_stat(PROC_STAT)
    # 10 s on 2 cores = 2000 ticks: 1600 busy, 300 idle, 100 stolen.
    m1 = dict(m0, user=m0["user"] + 1500, system=m0["system"] + 100, idle=m0["idle"] + 300, steal=m0["steal"] + 100)
    before = snap(0.0, m0, {1: ("VLLM::EngineCore", 5.0, 1.0), 2: ("VLLM::Worker", 7.0, 1.0), 3: ("raylet", 1.0, 0.5),
                            5: ("ray::ServeController", 3.0, 2.0)}, 2.0)
    after = snap(10.0, m1, {1: ("VLLM::EngineCore", 13.0, 1.0), 2: ("VLLM::Worker", 11.0, 1.0), 3: ("raylet", 1.5, 0.5),
                            4: ("ray::ServeReplica:x", 0.5, 9.0),  # started during the window
                            5: ("ray::ServeController.listen_for_change", 3.1, 2.0)}, 3.0)  # retitled by Ray
    u = cpu_usage.usage(before, after, output_tokens=2000)
    assert u["engine_cores"] == pytest.approx(1.2)
    assert u["serving_cores"] == pytest.approx(0.11)  # not the retitled controller's whole lifetime
    assert u["serving_ms_per_token"] == pytest.approx(0.55)  # 1.1 s of serving CPU over 2000 tokens
    assert u["tokens_per_engine_cpu_s"] == pytest.approx(2000 / 12.0)
    assert u["client_cores"] == pytest.approx(0.1)
    assert u["steal_pct"] == pytest.approx(5.0)
    assert u["other_cores"] == pytest.approx((16.0 - 12.0 - 1.1 - 1.0) / 10)
    assert [name for name, _ in u["top"]] == ["VLLM::EngineCore", "VLLM::Worker", "raylet", "ray::ServeReplica:x",
                                              "ray::ServeController.listen_for_change"]


def test_usage_without_proc_stat_or_tokens_or_time():
    before = snap(0.0, None, {1: ("VLLM::EngineCore", 1.0, 5.0)}, 0.0)
    after = snap(2.0, None, {1: ("VLLM::EngineCore", 2.0, 5.0), 9: ("raylet", 0.2, 6.0)}, 0.0)
    u = cpu_usage.usage(before, after, output_tokens=0)
    assert u["engine_cores"] == 0.5 and u["serving_cores"] == pytest.approx(0.1)
    assert u["steal_pct"] is None and u["other_cores"] is None and u["serving_ms_per_token"] is None
    assert u["tokens_per_engine_cpu_s"] == 0.0
    assert cpu_usage.usage(after, after, 10) == {}
    assert cpu_usage.usage(before, snap(2.0, None, {}, 0.0), 10) == {}  # no process seen: no zeros
    # A pid reused by another program counts from zero, not as a negative delta.
    reused = snap(4.0, None, {1: ("raylet", 0.3, 7.0)}, 0.0)
    assert cpu_usage.usage(after, reused, 10)["serving_cores"] == pytest.approx(0.15)


def test_take_measures_a_real_busy_process():
    # spins from its first line until killed, so a slow start on a loaded machine cannot
    # end the spinning before the window does
    busy = subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout.readline().strip() == "spinning"
        before = cpu_usage.take([busy.pid])
        time.sleep(1.0)
        after = cpu_usage.take([busy.pid])
    finally:
        busy.kill()
        busy.wait(timeout=30)
    assert before.processes[busy.pid][0] == "python -c"
    u = cpu_usage.usage(before, after, output_tokens=100)
    assert u["serving_cores"] > 0.2  # it spun (a core at most, less on a loaded machine)
    assert u["engine_cores"] == 0.0 and u["tokens_per_engine_cpu_s"] is None
    if before.machine is not None:  # Linux
        assert 0.0 <= u["steal_pct"] <= 100.0
