"""`qwen-serve up` fails fast with a clear message, never a hang, on start-up problems."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stackprobe import free_port

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "server": {"host": "127.0.0.1", "port": 0},
    "pools": {"thinking": {"model": "tiny-qwen3-moe", "accelerator": "cpu"},
              "fast": {"model": "tiny-qwen3-dense", "accelerator": "cpu"}},
}



def _up(tmp_path, doc, timeout=120):
    path = tmp_path / "config.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "server.cli", "up", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def _doc(**pool_changes):
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    doc["server"]["port"] = free_port()
    for key, value in pool_changes.items():
        doc["pools"]["fast"][key] = value
    return doc


def test_invalid_config(tmp_path):
    proc, took = _up(tmp_path, _doc(replica=2))
    assert proc.returncode == 2
    assert "pools.fast.replica: unknown field" in proc.stderr
    assert took < 60


def test_model_path_that_does_not_exist(tmp_path):
    proc, took = _up(tmp_path, _doc(model=str(tmp_path / "no-such-model")))
    assert proc.returncode == 2
    assert "pool fast: model path" in proc.stderr and "does not exist" in proc.stderr
    assert "starting a local Ray" not in proc.stdout  # failed before Ray started
    assert took < 60


def test_port_already_taken(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        doc = _doc()
        doc["server"]["port"] = busy.getsockname()[1]
        proc, took = _up(tmp_path, doc)
    assert proc.returncode == 2
    assert f"port {doc['server']['port']} on 127.0.0.1 is already in use" in proc.stderr
    assert took < 60


def test_too_little_memory_for_kv_cache(tmp_path):
    proc, took = _up(tmp_path, _doc(cpu={"kvcache_space_gib": 4096}))
    assert proc.returncode == 2
    assert "pool fast: cpu.kvcache_space_gib=4096 GiB of KV cache asked for" in proc.stderr
    assert "GiB of memory is available" in proc.stderr
    assert took < 60


def test_planner_refusal(tmp_path):
    proc, took = _up(tmp_path, _doc(model="Qwen/Qwen3-235B-A22B", accelerator="gpu", plan={"gpu": "h100", "gpus": 4}))
    assert proc.returncode == 2
    assert "plan for Qwen/Qwen3-235B-A22B" in proc.stderr and "GiB" in proc.stderr


@pytest.mark.parametrize("text,message", [
    ("pools: [unclosed", "is not valid YAML"),
    ("- just\n- a list\n", "expected a mapping at the top level"),
])
def test_unreadable_config(tmp_path, text, message):
    proc, _ = _up(tmp_path, text)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_gpu_pool_on_a_machine_without_gpus(tmp_path):
    # This machine (and CI's) has no GPU: a GPU pool must fail fast, not wait for Ray resources.
    proc, took = _up(tmp_path, _doc(model="Qwen/Qwen3-0.6B", accelerator="gpu"))
    assert proc.returncode == 2
    assert "pool fast runs on GPUs (accelerator: gpu) but this machine has no GPU" in proc.stderr
    assert "starting a local Ray" not in proc.stdout
    assert took < 60


def test_check_here_runs_the_preflight(tmp_path):
    doc = _doc(model="Qwen/Qwen3-0.6B", accelerator="gpu")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    bad = subprocess.run([sys.executable, "-m", "server.cli", "check", "--here", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "this machine has no GPU" in bad.stderr
    assert "is valid" in bad.stdout  # the document itself is fine
    path.write_text(yaml.safe_dump(_doc()))  # the CPU pools of the test configs, on a free port
    good = subprocess.run([sys.executable, "-m", "server.cli", "check", "--here", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr
    assert "ok: this machine can run it (checked: port, memory, models)" in good.stdout
