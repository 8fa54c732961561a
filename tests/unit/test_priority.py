"""Which of a local Ray instance's processes `server.ray_daemon_niceness` lowers (a table
over process trees), and the worker niceness it sets. That the real stack's processes get
these priorities is checked in tests/integration/test_cli.py."""

from __future__ import annotations

import os

import pytest

from server.launcher import apply_local_env
from server.priority import Proc, to_lower
from tests.unit.test_router_placement import config

LAUNCHER = 100
# A single-node `qwen-serve up`: the launcher starts the GCS and the raylet; the raylet
# starts the dashboard agent and the workers; a pool replica starts vLLM's engine.
TREE = [
    Proc(100, 1, "python3"),
    Proc(101, 100, "gcs_server"),
    Proc(102, 100, "raylet"),
    Proc(103, 102, "python3"),  # dashboard agent
    Proc(104, 102, "ray::ServeController"),
    Proc(105, 102, "ray::ProxyActor"),
    Proc(106, 102, "ray::ServeReplica:qwen-serve:pool-hybrid"),
    Proc(107, 106, "VLLM::EngineCore"),
    Proc(108, 107, "python3"),  # a helper the engine started
    Proc(109, 102, "ray::IDLE"),
]


@pytest.mark.parametrize("procs, root, lowered", [
    (TREE, LAUNCHER, [100, 101, 103, 104, 105]),
    # tensor parallelism over Ray: the rank workers are the engine's too
    (TREE + [Proc(110, 102, "ray::RayWorkerWrapper"), Proc(111, 110, "VLLM::Worker_TP1")], LAUNCHER,
     [100, 101, 103, 104, 105]),
    # a process outside the launcher's tree is never touched
    (TREE + [Proc(200, 1, "ray::ServeController")], LAUNCHER, [100, 101, 103, 104, 105]),
    # a retitled Serve controller (Ray titles a worker with the task it runs) is still lowered
    ([Proc(100, 1, "python3"), Proc(102, 100, "raylet"), Proc(104, 102, "ray::ServeController.listen_for_change")],
     LAUNCHER, [100, 104]),
    # only the launcher (Ray not started yet)
    ([Proc(100, 1, "python3")], LAUNCHER, [100]),
    ([], LAUNCHER, [100]),
])
def test_lowers_rays_own_processes_not_the_raylet_or_the_engines(procs, root, lowered):
    assert to_lower(procs, root) == lowered


def test_workers_run_at_the_launchers_niceness_when_the_setting_is_on():
    environ: dict = {}
    apply_local_env(config(port=18123, ray_daemon_niceness=10), environ)
    assert environ["RAY_worker_niceness"] == str(os.getpriority(os.PRIO_PROCESS, 0))
    environ = {"RAY_worker_niceness": "5"}  # the caller's environment wins
    apply_local_env(config(port=18123, ray_daemon_niceness=10), environ)
    assert environ["RAY_worker_niceness"] == "5"
    environ = {}
    apply_local_env(config(port=18123), environ)  # off: Ray's default (15)
    assert "RAY_worker_niceness" not in environ
