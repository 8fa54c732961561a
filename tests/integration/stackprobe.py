"""Helpers for the reliability and security tests: metric scrapes, outcome accounting,
process-tree resources and Ray's session logs of the shared stack. No pytest fixtures here.

Every loop is bounded in count and time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The names vLLM's engine metrics get on Ray's metrics port (Ray Serve LLM records them
# through Ray's metrics agent: `vllm:num_requests_running` becomes this).
ENGINE_RUNNING = "ray_vllm_num_requests_running"
ENGINE_WAITING = "ray_vllm_num_requests_waiting"
ENGINE_KV_USAGE = "ray_vllm_kv_cache_usage_perc"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_probe(script: Any, *args: str, env: Optional[Dict[str, str]] = None, timeout: float = 300) -> Dict[str, Any]:
    """Run a probe script in its own Python process; return the JSON it printed on its last
    ``PROBE_JSON=`` line (fails the test with the probe's stderr if there is none)."""
    proc = subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE_JSON=")]
    assert proc.returncode == 0 and lines, f"probe failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("PROBE_JSON="):])


# One client for every probe: a fresh `httpx.get` builds an SSL context each call (10-40 ms
# of this process's CPU), which on 2 busy cores slows the tests' own stream readers.
_http = httpx.Client(timeout=30)


def get(url: str, timeout: float = 30) -> httpx.Response:
    return _http.get(url, timeout=timeout)


def samples(text: str, *names: str) -> List[Tuple[str, Dict[str, str], float]]:
    """(name, labels, value) of each sample; only the named metrics when names are given.
    Ray's /metrics runs to hundreds of kilobytes, and the pure-Python parser is slow:
    lines of other metrics are dropped before it runs."""
    if names:
        wanted = set(names)
        text = "\n".join(line for line in text.splitlines() if line.startswith(names) and _name_of(line) in wanted)
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), s.value))
    return out


def _name_of(line: str) -> str:
    return line.split("{", 1)[0].split(" ", 1)[0]


def metric_sum(text: str, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples(text, name) if n == name and all(lab.get(k) == w for k, w in labels.items()))


def router_metrics(url: str) -> str:
    return get(f"{url}/metrics").text


def ray_metrics(port: int) -> str:
    return get(f"http://127.0.0.1:{port}/metrics").text


def request_counts(url: str) -> Dict[str, float]:
    """qwen_serve_requests_total by status, summed over pools and modes."""
    counts: Dict[str, float] = collections.Counter()
    for n, lab, v in samples(router_metrics(url), "qwen_serve_requests_total"):
        if n == "qwen_serve_requests_total":
            counts[lab["status"]] += v
    return dict(counts)


def delta(after: Dict[str, float], before: Dict[str, float]) -> Dict[str, int]:
    keys = set(after) | set(before)
    return {k: int(round(after.get(k, 0) - before.get(k, 0))) for k in sorted(keys) if after.get(k, 0) != before.get(k, 0)}


def engine_value(port: int, name: str, pool: Optional[str] = None) -> Optional[float]:
    """A vLLM engine metric summed over replicas, or None when this scrape lacks it
    (Ray's exporter leaves gauges out of some scrapes between reports)."""
    found = [v for n, lab, v in samples(ray_metrics(port), name)
             if n == name and (pool is None or lab.get("model_name") == pool)]
    return sum(found) if found else None


def wait_for(check: Callable[[], bool], timeout_s: float, interval_s: float = 1.0) -> Tuple[bool, float]:
    """Poll `check` until true or the deadline; returns (ok, seconds waited)."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return True, time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout_s:
            return False, time.monotonic() - started
        time.sleep(interval_s)


def wait_ready(url: str, timeout_s: float = 300) -> float:
    ok, waited = wait_for(lambda: get(f"{url}/ready", timeout=20).status_code == 200, timeout_s, 2.0)
    assert ok, f"stack not ready after {timeout_s:.0f}s"
    return waited


def router_in_flight(url: str) -> Dict[str, float]:
    report = get(f"{url}/health?verbose=1").json()
    return {name: p["in_flight"] for name, p in report["pools"].items()}


# --- process tree -------------------------------------------------------------------

def tree(pid: int) -> List[Any]:
    import psutil

    root = psutil.Process(pid)
    return [root] + root.children(recursive=True)


def tree_resources(pid: int) -> Dict[str, float]:
    """RSS (bytes), open file descriptors and process count of the stack's process tree."""
    import psutil

    rss = fds = n = 0
    for p in tree(pid):
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
            n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {"rss": float(rss), "fds": float(fds), "procs": float(n)}


def find_processes(pid: int, needle: str) -> List[Any]:
    import psutil

    found = []
    for p in tree(pid):
        try:
            title = " ".join(p.cmdline()) or p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if needle in title:
            found.append(p)
    return found


# --- Ray session logs -----------------------------------------------------------------

def ray_session_dirs() -> List[str]:
    roots = {os.environ.get("RAY_TMPDIR") or "/tmp", "/tmp"}
    dirs = []
    for root in roots:
        dirs += glob.glob(os.path.join(root, "ray", "session_*", "logs"))
    return sorted(set(d for d in dirs if not os.path.islink(os.path.dirname(d))))


def log_files_since(since: float, max_files: int = 2000) -> Iterable[str]:
    n = 0
    for d in ray_session_dirs():
        for dirpath, _, files in os.walk(d):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    if os.path.getmtime(path) >= since:
                        n += 1
                        if n > max_files:
                            return
                        yield path
                except OSError:
                    continue


def grep_files(paths: Iterable[str], needles: List[str], max_bytes: int = 200 * 1024 * 1024) -> Dict[str, List[str]]:
    """{needle: [paths containing it]}, reading at most `max_bytes` in all."""
    hits: Dict[str, List[str]] = {n: [] for n in needles}
    budget = max_bytes
    encoded = [(n, n.encode()) for n in needles]
    for path in paths:
        try:
            with open(path, "rb") as fh:
                data = fh.read(max(0, budget))
        except OSError:
            continue
        budget -= len(data)
        for n, b in encoded:
            if b in data:
                hits[n].append(path)
        if budget <= 0:
            break
    return hits
