"""Where the machine's CPU went while a load level ran.

On a machine shared with the load generator (and, in a VM, with other tenants), a
server's throughput moves with whatever else wants the cores. Two snapshots around a
level say where the time went instead:

- `engine_cores`: vLLM's engine processes (`VLLM::EngineCore`, `VLLM::Worker...`,
  Ray's `RayWorkerWrapper` on GPUs), in cores (CPU seconds per wall second);
- `serving_cores`: the rest of the server's session: vLLM's API server, or Ray's
  processes and the Serve replica that runs the router and the engine client;
- `serving_ms_per_token`: that serving cost in CPU milliseconds per output token, the
  figure that compares serving layers whatever speed the machine ran at;
- `tokens_per_engine_cpu_s`: output tokens per CPU-second of the engine's processes: on a
  CPU, where the engine computes the model, how much work the same CPU time bought (a
  lower figure at the same `engine_cores` means a slower machine or a disturbed engine);
- `client_cores`: the load generator itself;
- `other_cores`: busy time of the machine outside both (other work on this machine);
- `steal_pct`: share of the machine's CPU time the hypervisor gave to other guests
  (`/proc/stat`); a level with a high steal ran on a slower machine.

The arithmetic (`usage`, `parse_proc_stat`, `process_name`, `process_role`) is pure;
`take` reads `/proc` through psutil. Off Linux the machine-wide figures are None.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

# /proc/stat's aggregate "cpu" line, in order (ticks of USER_HZ).
PROC_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
IDLE_FIELDS = ("idle", "iowait")
ENGINE_PREFIXES = ("VLLM::", "ray::RayWorkerWrapper")
TOP_PROCESSES = 8


@dataclass(frozen=True)
class Snapshot:
    wall_s: float  # time.monotonic()
    machine: Optional[Dict[str, int]]  # parse_proc_stat, None off Linux
    ticks_per_s: int
    # pid -> (name, CPU seconds, start time): a pid whose start time changed is another process.
    processes: Dict[int, Tuple[str, float, float]] = field(default_factory=dict)
    client_s: float = 0.0  # the load generator's own CPU seconds


def parse_proc_stat(text: str) -> Optional[Dict[str, int]]:
    """The aggregate `cpu` line of /proc/stat as field -> ticks; None if absent."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(v) for v in parts[1:1 + len(PROC_STAT_FIELDS)]]
            values += [0] * (len(PROC_STAT_FIELDS) - len(values))
            return dict(zip(PROC_STAT_FIELDS, values))
    return None


def process_name(cmdline: List[str], fallback: str = "?") -> str:
    """A short, stable name for a process: its title when it set one (`VLLM::EngineCore`,
    `ray::ServeReplica:...`), the script or module a Python runs, else the program."""
    if not cmdline:
        return fallback
    first = cmdline[0]
    if first.startswith(("VLLM::", "ray::")):
        return first.split(" ")[0][:60]
    base = os.path.basename(first.split(" ")[0])
    if base.startswith("python"):
        args = cmdline[1:]
        for i, arg in enumerate(args):
            if arg == "-m" and i + 1 < len(args):
                return args[i + 1]
            if arg == "-c":
                return "python -c"
            if arg.endswith(".py"):
                return os.path.basename(arg)
            if not arg.startswith("-"):
                return os.path.basename(arg)
    return base or fallback


def process_role(name: str) -> str:
    """"engine" for vLLM's engine processes, "serving" for everything else a server runs."""
    return "engine" if name.startswith(ENGINE_PREFIXES) else "serving"


def usage(before: Snapshot, after: Snapshot, output_tokens: int) -> Dict[str, object]:
    """The CPU figures of the window between two snapshots (see the module docstring)."""
    wall = after.wall_s - before.wall_s
    if wall <= 0 or not after.processes:  # no time, or no process seen (no /proc): no figures
        return {}
    by_name: Dict[str, float] = {}
    roles = {"engine": 0.0, "serving": 0.0}
    for pid, (name, cpu_after, started) in after.processes.items():
        prev = before.processes.get(pid)
        # Keyed by pid and start time, not name: Ray workers retitle themselves with the task
        # they run (`ray::ServeController` -> `ray::ServeController.listen_for_change`).
        spent = cpu_after - (prev[1] if prev is not None and prev[2] == started else 0.0)
        if spent <= 0:
            continue
        by_name[name] = by_name.get(name, 0.0) + spent
        roles[process_role(name)] += spent
    client = max(after.client_s - before.client_s, 0.0)
    out: Dict[str, object] = {
        "engine_cores": roles["engine"] / wall,
        "serving_cores": roles["serving"] / wall,
        "serving_ms_per_token": (1000.0 * roles["serving"] / output_tokens) if output_tokens > 0 else None,
        "tokens_per_engine_cpu_s": (output_tokens / roles["engine"]) if roles["engine"] > 0 else None,
        "client_cores": client / wall,
        "other_cores": None,
        "steal_pct": None,
        "top": [(name, round(spent / wall, 4)) for name, spent in
                sorted(by_name.items(), key=lambda kv: kv[1], reverse=True)[:TOP_PROCESSES]],
    }
    if before.machine and after.machine:
        delta = {k: after.machine[k] - before.machine[k] for k in PROC_STAT_FIELDS}
        total = sum(delta.values())
        if total > 0:
            out["steal_pct"] = 100.0 * delta["steal"] / total
            busy_s = (total - delta["steal"] - sum(delta[k] for k in IDLE_FIELDS)) / after.ticks_per_s
            out["other_cores"] = max(busy_s - roles["engine"] - roles["serving"] - client, 0.0) / wall
    return out


def _read_proc_stat() -> Optional[Dict[str, int]]:
    try:
        with open("/proc/stat") as fh:
            return parse_proc_stat(fh.read())
    except OSError:
        return None


def take(pids: Iterable[int]) -> Snapshot:
    """CPU seconds so far of `pids` (the server's session) and of this process, with the
    machine's /proc/stat counters."""
    import psutil

    processes: Dict[int, Tuple[str, float, float]] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                processes[pid] = (process_name(proc.cmdline(), proc.name()), times.user + times.system,
                                  proc.create_time())
        except (psutil.Error, OSError):
            continue
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return Snapshot(wall_s=time.monotonic(), machine=_read_proc_stat(), ticks_per_s=ticks,
                    processes=processes, client_s=time.process_time())
