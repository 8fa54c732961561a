"""A real Prometheus server for tests: a subprocess on a free port, a generated config, a
temp storage directory, stopped afterwards. Never the distribution's system service.

    with run_prometheus({"router": "127.0.0.1:8000", "ray": "127.0.0.1:8080"}, tmp_dir) as prom:
        prom.wait_up(["router", "ray"])
        t = time.time(); ...; prom.wait_fresh_scrape(["router"], after=t)
        prom.value('sum(qwen_serve_requests_total)')
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import httpx
import yaml

from stackprobe import free_port

Labels = Tuple[Tuple[str, str], ...]


class PrometheusError(RuntimeError):
    pass


def binary(name: str = "prometheus") -> str:
    path = shutil.which(name)
    if path is None:
        raise PrometheusError(f"'{name}' is not installed: `bash deploy/install.sh --test` installs Debian's 'prometheus' package")
    return path



def scrape_config(targets: Mapping[str, str], interval: str = "1s", rule_files: Sequence[str] = ()) -> Dict:
    """A Prometheus config: one job per target ("host:port", or "host:port/path")."""
    jobs = []
    for job, target in targets.items():
        address, _, path = target.partition("/")
        jobs.append({
            "job_name": job,
            "metrics_path": "/" + path if path else "/metrics",
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "static_configs": [{"targets": [address]}],
        })
    doc = {"global": {"scrape_interval": interval, "evaluation_interval": interval}, "scrape_configs": jobs}
    if rule_files:
        doc["rule_files"] = list(rule_files)
    return doc


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen, log_path: Path) -> None:
        self.url = url
        self.proc = proc
        self.log_path = log_path
        self._http = httpx.Client(base_url=url, timeout=30)

    # --- HTTP API -------------------------------------------------------------------
    def api(self, path: str, **params) -> Dict:
        resp = self._http.get(f"/api/v1/{path}", params=params)
        body = resp.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: Optional[float] = None) -> List[Dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def vector(self, expr: str, at: Optional[float] = None) -> Dict[Labels, float]:
        """{sorted label pairs: value} of an instant query."""
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in self.query(expr, at)}

    def value(self, expr: str, at: Optional[float] = None, default: float = 0.0) -> float:
        """One number: the sum of an instant vector (`default` when it is empty)."""
        rows = self.query(expr, at)
        return sum(float(r["value"][1]) for r in rows) if rows else default

    def metric_names(self) -> List[str]:
        return self.api("label/__name__/values")

    def targets(self) -> List[Dict]:
        return self.api("targets", state="active")["activeTargets"]

    # --- waiting --------------------------------------------------------------------
    def wait_up(self, jobs: Sequence[str], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            health = {t["labels"]["job"]: (t["health"], t.get("lastError", "")) for t in self.targets()}
            if all(health.get(job, ("",))[0] == "up" for job in jobs):
                return
            if time.monotonic() > deadline:
                raise PrometheusError(f"targets not up after {timeout_s:.0f}s: {health}")
            time.sleep(0.5)

    def last_scrape(self, job: str) -> float:
        """Start time (unix seconds) of the job's latest successful scrape, 0 if none."""
        # timestamp() must see the raw selector: on an expression it gives the evaluation time.
        if self.value(f'min(up{{job="{job}"}})', default=0.0) != 1.0:
            return 0.0
        return self.value(f'max(timestamp(up{{job="{job}"}}))', default=0.0)

    def wait_fresh_scrape(self, jobs: Sequence[str], after: Optional[float] = None, timeout_s: float = 30) -> float:
        """Wait until every job has a successful scrape that started after `after` (default: now)."""
        after = time.time() if after is None else after
        deadline = time.monotonic() + timeout_s
        while True:
            stamps = {job: self.last_scrape(job) for job in jobs}
            if all(ts > after for ts in stamps.values()):
                return max(stamps.values())
            if time.monotonic() > deadline:
                raise PrometheusError(f"no scrape of {list(jobs)} after {after:.3f} within {timeout_s:.0f}s: {stamps}")
            time.sleep(0.25)

    def wait_for(self, expr: str, timeout_s: float = 30, interval_s: float = 0.5) -> List[Dict]:
        """Poll until an instant query returns a non-empty result; returns it."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.query(expr)
            if rows:
                return rows
            if time.monotonic() > deadline:
                raise PrometheusError(f"`{expr}` still empty after {timeout_s:.0f}s")
            time.sleep(interval_s)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        self._http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def run_prometheus(targets: Mapping[str, str], work_dir: Path, interval: str = "1s",
                   rule_files: Sequence[str] = (), startup_timeout_s: float = 60) -> Iterator[Prometheus]:
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    config_path = work_dir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(scrape_config(targets, interval, rule_files), sort_keys=False))
    port = free_port()
    log_path = work_dir / "prometheus.log"
    cmd = [
        binary(), f"--config.file={config_path}", f"--storage.tsdb.path={work_dir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2h", "--log.level=warn",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work_dir, start_new_session=True)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {proc.returncode}: {prom.log_tail()}")
            try:
                if httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready after {startup_timeout_s:.0f}s: {prom.log_tail()}")
            time.sleep(0.25)
        yield prom
    finally:
        prom.stop()


def promtool(*args: str, stdin: Optional[bytes] = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], input=stdin, capture_output=True, timeout=timeout_s)
