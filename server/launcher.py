"""Runs the app for `qwen-serve up` and reports on it for `qwen-serve status`.

`up`: preflight checks, start (or join) Ray, deploy with `serve.run` in a background
thread while the main thread prints each pool's progress, print the URL once every pool
is ready, then wait for Ctrl-C (or SIGTERM) and shut down cleanly.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from server.config import AppConfig

APP_NAME = "qwen-serve"
READY_LINE = "qwen-serve ready: OpenAI API at"


def _say(msg: str) -> None:
    print(msg, flush=True)


def local_num_cpus(config: AppConfig) -> float:
    """Logical CPUs a local Ray needs: every placement group plus ingress, with headroom."""
    from server.app import placement_bundles

    total = config.server.ingress_num_cpus * config.server.ingress_replicas
    for pool in config.pools.values():
        bundles = placement_bundles(pool)["bundles"]
        per_replica = sum(b.get("CPU", 0) for b in bundles) + (0.25 if pool.accelerator == "cpu" else 1)
        total += per_replica * max(pool.served_replicas, pool.autoscaling.max_replicas if pool.autoscaling else 0)
    return float(max(os.cpu_count() or 1, math.ceil(total + 1)))


def router_port_count(config: AppConfig) -> int:
    """Most replicas the router can have: each takes its own port with direct ingress."""
    host = config.router_pool
    if host is None:
        return config.server.ingress_replicas
    pool = config.pools[host]
    return max(pool.replicas, pool.autoscaling.max_replicas if pool.autoscaling else 1, 1)


# Ray's own background work, trimmed for a local single-node server. Measured per process
# under load on a 2-core machine (deploy/PERFORMANCE.md), Ray's processes took about 0.2 of
# a core beside the engine; these settings cut the Serve controller from about 5% of a core
# to 2% and the GCS from 3.5% to 1.4%. Each is a default: the caller's environment wins.
#  - the Serve controller reconciles every 1 s instead of every 0.1 s (deploys, health
#    checks and autoscaling decisions keep their own, longer periods);
#  - replicas' logs go to Ray's log files only, not also to stderr for the log monitor;
#  - no event-loop statistics in Ray's C++ event loops, no pre-started idle workers, and
#    no idle workers kept after the tasks that started them (each woke ~100 times a second,
#    about 0.9% of a core; a later task starts a fresh worker, about a second).
LEAN_RAY_ENV = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_event_stats": "0",
    "RAY_enable_worker_prestart": "0",
    "RAY_num_workers_soft_limit": "0",
}


def apply_local_env(config: AppConfig, environ: Any = os.environ) -> None:
    """Set the environment a local Ray instance (every process it starts) reads."""
    for key, value in LEAN_RAY_ENV.items():
        environ.setdefault(key, value)
    environ.update(local_serve_env(config))


def local_serve_env(config: AppConfig) -> Dict[str, str]:
    """Ray Serve settings for a local Ray instance, read by every Ray process at start.

    With direct ingress the router's replicas serve HTTP themselves on `port` and the ports
    after it (one each), so a request skips the proxy process and its Ray hop per streamed
    chunk. There is no external load balancer to deregister from, so no drain delay, and a
    restarted replica takes its port back at once.
    """
    if not config.server.direct_ingress:
        return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    port = config.server.port
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + router_port_count(config)),  # exclusive
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
    }


def ephemeral_port_range() -> Tuple[int, int]:
    """The kernel's range for `bind(port 0)`: the ports Ray's own processes get."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def pick_proxy_port(config: AppConfig, ephemeral: Optional[Tuple[int, int]] = None,
                    binds: Optional[Callable[[int], bool]] = None) -> int:
    """Port of Ray Serve's proxy: `port` without direct ingress, else proxy_port, else the
    first port after the router's that is free and outside the kernel's ephemeral range.

    Not a port the kernel hands out for `bind(0)`: Ray's workers bind their own servers
    that way while Serve starts, and one of them could take such a port before the proxy
    binds it (seen once: "Failed to bind to address")."""
    server = config.server
    if not server.direct_ingress:
        return server.port
    if server.proxy_port:
        return server.proxy_port
    low, high = ephemeral or ephemeral_port_range()
    host = server.host or "0.0.0.0"
    binds = binds or (lambda port: _binds(host, port))
    first = server.port + router_port_count(config)
    for port in itertools.chain(range(first, 65536), range(1024, server.port)):
        if not low <= port <= high and binds(port):
            return port
    raise RuntimeError("no free port outside the ephemeral range for Ray Serve's proxy; set server.proxy_port")


def _binds(host: str, port: int) -> bool:
    from server import preflight

    try:
        preflight.check_port(host, port)
    except preflight.PreflightError:
        return False
    return True


# Head-node processes `ray.init` always starts and a single-node `qwen-serve up` has no work
# for: (Node attribute that stops it, what it is).
RAY_MONITORS = (
    ("kill_monitor", "autoscaler monitor"),
    ("kill_log_monitor", "log monitor"),
)


def stop_ray_monitors(node: Any = None) -> str:
    """Stop the local Ray head's autoscaler and log monitors (server.ray_monitors: false).

    `ray.init` has no setting to leave them out (`ray start` has `--no-monitor` and
    `--include-log-monitor`), so they are stopped through Ray's own node handle, which
    forgets them so that `ray.shutdown` does not look for them again. Returns a line
    saying what was stopped; a Ray without that handle keeps them running."""
    if node is None:
        import ray._private.worker as ray_worker

        node = getattr(ray_worker, "_global_node", None)
    stopped, kept = [], []
    for method, what in RAY_MONITORS:
        try:
            getattr(node, method)(check_alive=False)
            stopped.append(what)
        except Exception:  # noqa: BLE001 - a Ray without the handle still serves
            kept.append(what)
    text = f"stopped Ray's {' and '.join(stopped)} (server.ray_monitors: false)" if stopped else ""
    if kept:
        text += ("; " if text else "") + f"could not stop Ray's {' and '.join(kept)} (left running)"
    return text


def _deployment_rows(status: Any) -> Dict[str, Dict[str, Any]]:
    app = status.applications.get(APP_NAME)
    rows: Dict[str, Dict[str, Any]] = {}
    if app is None:
        return rows
    for name, dep in app.deployments.items():
        counts = {str(k.value if hasattr(k, "value") else k): v for k, v in (dep.replica_states or {}).items()}
        rows[name] = {"status": str(getattr(dep.status, "value", dep.status)), "replicas": counts, "message": dep.message}
    return rows


class Launcher:
    def __init__(self, config: AppConfig, source: str) -> None:
        self.config = config
        self.source = source
        self._stop = threading.Event()
        self._deploy_error: Optional[BaseException] = None

    def url(self) -> str:
        host = self.config.server.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{self.config.server.port}"

    def run(self) -> int:
        from server import preflight
        from server.plan_apply import PlanApplyError, resolve_plans

        started = time.monotonic()
        try:
            self.config = resolve_plans(self.config)
        except PlanApplyError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        _say(f"qwen-serve: config {self.source}; pools: {', '.join(self.config.pools)}")
        local = self.config.server.ray_address is None
        try:
            preflight.run_all(self.config, check_bind=True, progress=lambda m: _say(f"  {m}"))
        except preflight.PreflightError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        proxy_port = pick_proxy_port(self.config)
        if local:
            if self.config.server.direct_ingress and self.config.server.proxy_port:
                try:
                    preflight.check_port(self.config.server.host, proxy_port)
                except preflight.PreflightError as err:
                    print(f"error: server.proxy_port: {err}", file=sys.stderr)
                    return 2
            apply_local_env(self.config)  # before Ray (and Serve) start
        import ray
        from ray import serve

        from server.app import build_app

        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        if local:
            num_cpus = math.ceil(self.config.server.num_cpus or local_num_cpus(self.config))
            _say(f"  starting a local Ray instance ({num_cpus:g} logical CPUs)")
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     _metrics_export_port=self.config.server.ray_metrics_port)
        else:
            _say(f"  joining the Ray cluster at {self.config.server.ray_address}")
            ray.init(address=self.config.server.ray_address, log_to_driver=False)
        # Handled explicitly, not as KeyboardInterrupt: a shell starts a background job with
        # SIGINT ignored, and Python then never raises it, so `kill -INT` did nothing.
        # (After ray.init, which sets its own SIGTERM handler.)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if local:
            gcs = ray.get_runtime_context().gcs_address
            _say(f"  Ray is up at {gcs} (qwen-serve status --address {gcs})")
            if not self.config.server.ray_monitors:
                _say(f"  {stop_ray_monitors()}")
        try:
            serve.start(http_options={"host": self.config.server.host, "port": proxy_port if local else self.config.server.port})
            app = build_app(self.config)
            if self._stop.is_set():
                return 0  # stopped while Ray started: nothing deployed yet
            worker = threading.Thread(target=self._deploy, args=(app,), daemon=True)
            worker.start()
            if not self._wait_ready(started) or not self._wait_http(started):
                return 0 if self._stop.is_set() else 1  # stopped while starting: not a failure
            if local and self.config.server.direct_ingress:
                shown = self.url().rsplit(":", 1)[0]
                _say(f"  direct ingress: the router answers on {self.url()}; Ray Serve's proxy "
                     f"(balances across replicas) on {shown}:{proxy_port}")
            _say(f"{READY_LINE} {self.url()}/v1 (pools ready in {time.monotonic() - started:.0f}s; Ctrl-C stops)")
            while not self._stop.wait(0.5):
                pass
            return 0
        except KeyboardInterrupt:
            return 0
        finally:
            _say("qwen-serve: shutting down (in-flight requests get up to "
                 f"{self.config.server.graceful_shutdown_timeout_s:g}s to finish; Ctrl-C again stops now)")
            try:
                self._drain()
                if local:
                    serve.shutdown()  # a joined cluster's Serve may run other apps: only ours goes
            except KeyboardInterrupt:
                _say("  stopping now, without waiting for in-flight requests")
            finally:
                ray.shutdown()
            _say("qwen-serve: stopped")

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM or Ctrl-C: stop gracefully. A second Ctrl-C during the drain stops now."""
        if signum == signal.SIGINT and self._stop.is_set():
            raise KeyboardInterrupt
        self._stop.set()

    def _drain(self) -> None:
        """Delete the app and wait while its replicas finish their requests.

        `serve.shutdown()` alone gives Serve's controller 30 s and then kills everything, so
        a longer graceful_shutdown_timeout_s would be cut short; deleting the app first lets
        every replica use its full grace period (it stops taking requests at once).
        """
        from ray import serve

        grace = self.config.server.graceful_shutdown_timeout_s
        try:
            serve.delete(APP_NAME, _blocking=False)
            deadline = time.monotonic() + grace + 15  # replicas are killed at `grace`; then a margin
            while time.monotonic() < deadline and APP_NAME in serve.status().applications:
                time.sleep(0.5)
        except Exception as err:  # noqa: BLE001 - serve.shutdown() below still stops everything
            _say(f"  could not drain the app ({type(err).__name__}); stopping it now")

    def _deploy(self, app: Any) -> None:
        from ray import serve

        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            self._deploy_error = err

    def _wait_http(self, started: float) -> bool:
        """The router answers on the URL we print (a direct-ingress replica binds its port
        just after its deployment reports RUNNING) and its health check reaches every pool
        (until then it refuses requests for a pool with 503 pool_unavailable)."""
        deadline = max(started + self.config.server.startup_timeout_s, time.monotonic() + 30)
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                with urllib.request.urlopen(f"{self.url()}/ready", timeout=10) as resp:
                    if resp.status == 200:
                        return True
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
        if not self._stop.is_set():
            print(f"error: the router is not ready at {self.url()}/ready", file=sys.stderr)
        return False

    def _wait_ready(self, started: float) -> bool:
        from ray import serve

        deadline = started + self.config.server.startup_timeout_s
        last: Dict[str, str] = {}
        last_print = 0.0
        while time.monotonic() < deadline:
            if self._stop.is_set():
                return False
            if self._deploy_error is not None:
                print(f"error: deployment failed: {self._deploy_error}", file=sys.stderr)
                return False
            try:
                status = serve.status()
            except Exception:  # noqa: BLE001 - the controller may still be starting
                time.sleep(1)
                continue
            rows = _deployment_rows(status)
            app = status.applications.get(APP_NAME)
            app_status = str(getattr(app.status, "value", app.status)) if app else "NOT_STARTED"
            now = time.monotonic()
            summary = {name: f"{r['status']} {r['replicas']}" for name, r in rows.items()}
            if summary != last or now - last_print > 10:
                elapsed = now - started
                for name, row in sorted(rows.items()):
                    running = row["replicas"].get("RUNNING", 0)
                    total = sum(row["replicas"].values())
                    _say(f"  [{elapsed:5.0f}s] {name}: {row['status'].lower()} ({running}/{total} replicas running)")
                last, last_print = summary, now
            if app_status == "DEPLOY_FAILED" or any(r["status"] == "DEPLOY_FAILED" for r in rows.values()):
                msgs = "; ".join(f"{n}: {r['message']}" for n, r in rows.items() if r["message"])
                print(f"error: deployment failed: {app.message if app else ''} {msgs}".strip(), file=sys.stderr)
                return False
            if app_status == "RUNNING":
                return True
            time.sleep(1)
        print(f"error: pools not ready after {self.config.server.startup_timeout_s:.0f}s", file=sys.stderr)
        return False


def print_status(address: str, url: Optional[str]) -> int:
    # A local Ray 2.60 cluster turns token auth on and keeps the token in ~/.ray/auth_token;
    # a second process must opt in to present it.
    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray  # after the auth mode is set: Ray reads it when it loads
    from ray import serve

    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except Exception as err:  # noqa: BLE001
        print(f"error: no running Ray cluster at {address}: {err}", file=sys.stderr)
        return 1
    try:
        status = serve.status()
        rows = _deployment_rows(status)
        if not rows:
            print("qwen-serve is not deployed on this cluster")
            return 1
        print(f"{'deployment':<20} {'status':<14} replicas")
        for name, row in sorted(rows.items()):
            replicas = ", ".join(f"{k.lower()}={v}" for k, v in sorted(row["replicas"].items())) or "none"
            print(f"{name:<20} {row['status'].lower():<14} {replicas}")
        target = url or "http://127.0.0.1:8000"
        try:
            with urllib.request.urlopen(f"{target}/health?verbose=1", timeout=10) as resp:
                report = json.loads(resp.read())
        except Exception as err:  # noqa: BLE001
            print(f"health: unreachable at {target} ({type(err).__name__})")
            return 1
        print(f"\nhealth: {report['status']}")
        for pool, entry in report["pools"].items():
            print(f"  {pool:<12} {entry['status']:<10} {entry['reason']}")
        return 0 if report["status"] != "unhealthy" else 1
    finally:
        ray.shutdown()
