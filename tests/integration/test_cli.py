"""`qwen-serve status` and the TP=2 sharding of the MoE pool, on the real stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.stack


def test_status_shows_pools_replicas_and_health(stack):
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "status", "--address", stack.ray_address, "--url", stack.url],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for deployment in ("pool-fast", "pool-thinking", "router"):
        assert deployment in out
    assert "running=1" in out
    assert "health: healthy" in out or "health: degraded" in out
    assert "fast" in out and "thinking" in out


def _engine_processes(stack):
    root = psutil.Process(stack.proc.pid)
    names = []
    for p in root.children(recursive=True):
        try:
            names.append(" ".join(p.cmdline()) or p.name())
        except psutil.Error:
            continue
    return names


def test_ray_monitors_are_stopped_and_ray_still_schedules(stack):
    """server.ray_monitors is false by default: the launcher stops Ray's autoscaler and log
    monitors once Ray is up, and the stack works without them (`qwen-serve status` above and
    every request of this suite go through it)."""
    monitors = [n for n in _engine_processes(stack) if "log_monitor.py" in n or "autoscaler" in n]
    assert monitors == [], monitors
    assert "stopped Ray's autoscaler monitor and log monitor" in stack.log_text()


def test_moe_pool_is_sharded_with_tensor_parallel_2(stack, client):
    """The thinking pool (tiny Qwen3-MoE) runs two vLLM worker ranks, and still answers."""
    workers = [n for n in _engine_processes(stack) if n.startswith("VLLM::Worker")]
    ranks = sorted(n for n in workers if "_TP" in n)
    print(f"\n[tp] vLLM worker processes: {workers}")
    assert any("TP0" in n for n in ranks) and any("TP1" in n for n in ranks), workers
    resp = client.chat.completions.create(model="thinking", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert resp.usage.completion_tokens == 8 or resp.choices[0].finish_reason == "stop"
