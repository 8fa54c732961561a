"""`qwen-serve up` stops cleanly on SIGINT even when started as a shell's background job.

A shell starts a background job with SIGINT ignored, and Python then never raises
KeyboardInterrupt: `kill -INT` (or a supervisor's stop signal) did nothing. The launcher
handles SIGINT itself. Here it comes while the launcher is starting (Ray up, nothing
ready yet), the case that must not leave Ray behind or end in a traceback.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import yaml

from stackprobe import free_port

ROOT = Path(__file__).resolve().parents[2]



def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, int(port))) == 0


def test_sigint_while_starting_stops_cleanly_as_a_background_job(tmp_path):
    doc = {"server": {"host": "127.0.0.1", "port": free_port(), "ray_metrics_port": free_port()},
           "pools": {"thinking": {"model": "tiny-qwen3-moe", "accelerator": "cpu"},
                     "fast": {"model": "tiny-qwen3-dense", "accelerator": "cpu"}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    # `trap "" INT` then exec: SIGINT ignored, as a shell leaves it for `cmd &` in a script.
    command = f'trap "" INT; exec {shlex.quote(sys.executable)} -m server.cli up {shlex.quote(str(path))}'
    proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("Ray is up at" in line for line in lines):
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "Ray never came up:\n" + "".join(lines)[-3000:]
            time.sleep(0.2)
        address = next(line for line in lines if "Ray is up at" in line).split("Ray is up at ")[1].split()[0]
        assert _listening(address)
        proc.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        code = proc.wait(timeout=240)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's processes too: they share its group
            proc.wait()
    reader.join(timeout=10)
    out = "".join(lines)
    print(f"\n[signals] SIGINT while starting: exit {code} after {took:.1f}s")
    assert code == 0, out[-3000:]
    assert "qwen-serve: shutting down" in out and "qwen-serve: stopped" in out
    assert "Traceback" not in out and not any(line.startswith("error:") for line in lines), out[-3000:]
    assert "qwen-serve ready" not in out
    assert not _listening(address), "Ray's GCS still runs after the launcher exited"
