"""CPU priority of a local Ray instance's processes (`server.ray_daemon_niceness`).

Ray starts its worker processes (Serve replicas, and the vLLM engine processes a replica
starts) at niceness 15, below its own daemons (GCS, raylet, dashboard agent, Serve
controller and proxy), which run at the launcher's. On a machine whose cores the engine
keeps busy, each daemon wake-up then pre-empts the engine. With the setting on, the
workers run at the launcher's niceness (`RAY_worker_niceness`, which Ray applies as an
absolute value to every worker it starts, later ones included) and Ray's own processes
are lowered once the pools are ready.

`to_lower` is the decision, a function of the process tree; `lower_ray_daemons` applies it.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, NamedTuple, Set

# Processes whose priority is the engine's: Serve replicas (the router and Ray Serve LLM's
# engine deployment, which starts vLLM's engine processes), Ray workers holding vLLM ranks
# (GPUs, or tensor parallelism over Ray), and idle workers (a later replica starts in one).
ENGINE_TITLES = ("ray::ServeReplica", "ray::RayWorkerWrapper", "ray::IDLE")
# Left alone: the raylet forks every later worker. Ray sets a worker's niceness absolutely,
# but an unprivileged user cannot lower a niceness again, so a lowered raylet would leave
# restarted and autoscaled replicas (and their engines) lowered too. It uses ~1% of a core.
KEPT_NAMES = ("raylet",)


class Proc(NamedTuple):
    pid: int
    ppid: int
    title: str  # the process title (cmdline[0] for Ray's and vLLM's retitled processes) or name


def to_lower(procs: Iterable[Proc], root: int) -> List[int]:
    """The pids of `root`'s tree to lower: every process except the raylet itself and the
    engine-side processes (see ENGINE_TITLES) with everything they started."""
    procs = list(procs)
    children: Dict[int, List[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    spared: Set[int] = {p.pid for p in procs if p.title in KEPT_NAMES}  # not what they started
    stack = [p.pid for p in procs if p.title.startswith(ENGINE_TITLES)]
    while stack:
        pid = stack.pop()
        if pid not in spared:
            spared.add(pid)
            stack.extend(children.get(pid, ()))
    in_tree: Set[int] = {root}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child in children.get(pid, ()):
            if child not in in_tree:
                in_tree.add(child)
                frontier.append(child)
    return sorted(pid for pid in in_tree if pid not in spared)


def _title(p: object) -> str:
    import psutil

    try:
        cmdline = p.cmdline()  # type: ignore[attr-defined]
        first = cmdline[0].split(" ")[0] if cmdline else ""
        return first if first.startswith(("ray::", "VLLM::")) else p.name()  # type: ignore[attr-defined]
    except psutil.Error:
        return ""


def lower_ray_daemons(by: int, root: int = 0) -> str:
    """Lower `root`'s (default: this process's) tree, as `to_lower` picks it, by `by`
    niceness levels (at most 19). Returns a line saying what was done."""
    import psutil

    root = root or os.getpid()
    top = psutil.Process(root)
    tree = [top] + top.children(recursive=True)
    procs = []
    for p in tree:
        try:
            procs.append(Proc(p.pid, p.ppid(), _title(p)))
        except psutil.Error:  # exited meanwhile
            continue
    lowered, failed = 0, 0
    for pid in to_lower(procs, root):
        try:
            proc = psutil.Process(pid)
            proc.nice(min(19, proc.nice() + by))
            lowered += 1
        except psutil.Error:
            failed += 1
    text = f"lowered Ray's own {lowered} processes by {by} niceness levels below the engines (server.ray_daemon_niceness)"
    return text + (f"; {failed} could not be changed" if failed else "")
