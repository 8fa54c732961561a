"""The real stack, started once per test session and shared.

`qwen-serve up tests/integration/stack.yaml` runs as a subprocess (Ray, Serve, both vLLM
CPU engines), exactly as a user starts it; tests talk to it over loopback HTTP with the
official `openai` client. It starts lazily: only tests that use `stack` pay for it.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

import httpx
import pytest
import yaml

from stackprobe import free_port

ROOT = Path(__file__).resolve().parents[2]
STACK_YAML = Path(__file__).with_name("stack.yaml")
READY_LINE = "qwen-serve ready: OpenAI API at"
KEYS = {
    "main": "sk-test-main-7f3a9c",
    "limited": "sk-test-limited-19be",
    "tpm": "sk-test-tpm-c0ffee",
    "conc": "sk-test-conc-4411",
}
LOCK_PATH = "/tmp/qwen-serve-test-stack.lock"
STARTUP_TIMEOUT_S = float(os.environ.get("QWEN_SERVE_TEST_STARTUP_S", "900"))


@dataclass
class Stack:
    url: str
    proc: subprocess.Popen
    log_path: Path
    keys: Dict[str, str] = field(default_factory=lambda: dict(KEYS))
    startup_s: float = 0.0
    metrics_port: int = 18080
    config_path: Path = STACK_YAML

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    def headers(self, key: str = "main") -> Dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def ray_address(self) -> str:
        match = re.search(r"Ray is up at (\S+)", self.log_text())
        assert match, "the launcher did not print Ray's address"
        return match.group(1)


def pytest_collection_modifyitems(items):
    """Tests that stop the shared stack run after every other test (stable order otherwise)."""
    items.sort(key=lambda item: item.get_closest_marker("ends_stack") is not None)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # what systemd and docker stop send; handled like Ctrl-C
    try:
        proc.wait(timeout=240)  # the launcher drains for up to graceful_shutdown_timeout_s (180 s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)



@pytest.fixture(scope="session")
def stack_lock():
    """One real stack (about 13 GB) at a time on this machine, across pytest processes."""
    with open(LOCK_PATH, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def stack_config(tmp_dir: Path, server_port: int, metrics_port: int) -> Path:
    doc = yaml.safe_load(STACK_YAML.read_text())
    doc["server"]["port"] = server_port
    doc["server"]["ray_metrics_port"] = metrics_port
    path = tmp_dir / "stack.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="session")
def stack(tmp_path_factory, stack_lock) -> Stack:
    tmp_dir = tmp_path_factory.mktemp("stack")
    log_path = tmp_dir / "stack.log"
    metrics_port = free_port()
    config_path = stack_config(tmp_dir, free_port(), metrics_port)
    env = dict(os.environ)
    env["QWEN_SERVE_TEST_KEYS"] = ",".join(f"{name}:{key}" for name, key in KEYS.items())
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "up", str(config_path)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = None
    try:
        while time.monotonic() - started < STARTUP_TIMEOUT_S:
            text = log_path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith(READY_LINE):
                    url = line[len(READY_LINE):].split()[0].removesuffix("/v1")
            if url:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"qwen-serve up exited with {proc.returncode}:\n{text[-4000:]}")
            time.sleep(1)
        if not url:
            raise RuntimeError(f"stack not ready after {STARTUP_TIMEOUT_S:.0f}s:\n{log_path.read_text()[-4000:]}")
        startup = time.monotonic() - started
        print(f"\n[stack] ready at {url} in {startup:.0f}s", flush=True)
        yield Stack(url=url, proc=proc, log_path=log_path, startup_s=startup, metrics_port=metrics_port, config_path=config_path)
    finally:
        _stop(proc)
    # SIGTERM (as Ctrl-C) shut everything down cleanly.
    assert proc.returncode == 0, f"qwen-serve up exited with {proc.returncode} after Ctrl-C"
    assert "qwen-serve: stopped" in log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def client(stack):
    from openai import OpenAI

    return OpenAI(base_url=stack.api, api_key=stack.keys["main"], max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def aclient(stack):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=stack.api, api_key=stack.keys["main"], max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(stack):
    with httpx.Client(base_url=stack.url, headers=stack.headers(), timeout=120) as c:
        yield c
