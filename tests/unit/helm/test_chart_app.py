"""The chart's document builds the same Ray Serve LLM engines as the matching deploy/ file.

`server.app.build_app` starts a local Ray instance (Ray Serve LLM asks the cluster), so the
application is compared one level down, where it is decided: the LLMConfig of every pool
(`server.app.llm_config_for_pool`, after `server.app.resolve_plans` fills `plan:` pools).
Importing server.app imports vLLM (tens of seconds on a small machine); the rest of the
chart tests do not need it.
"""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest

from helm_chart import EXAMPLES, MATCHING_DEPLOY_FILE
from server.config import AppConfig, parse_config
from test_chart_config import expected_config

app = pytest.importorskip("server.app", reason="server.app needs ray[serve] and vLLM")


def llm_configs(config: AppConfig) -> Dict[str, Dict[str, Any]]:
    config = app.resolve_plans(config)
    return {name: app.llm_config_for_pool(name, pool, config).model_dump() for name, pool in config.pools.items()}


@pytest.mark.parametrize("example", sorted(MATCHING_DEPLOY_FILE))
def test_same_engines_as_deploy_file(example, rendered_examples):
    chart = llm_configs(parse_config(rendered_examples[example].app_args, example))
    deploy = llm_configs(expected_config(example))
    assert chart == deploy


@pytest.mark.parametrize("example", EXAMPLES)
def test_engines_schedule_on_the_worker_groups(example, rendered_examples):
    """Each GPU pool's bundles ask for its accelerator type, which its worker group offers."""
    r = rendered_examples[example]
    offered = set()
    for worker in r.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        escaped = worker["rayStartParams"].get("resources")  # '"{\\"accelerator_type:H200\\":1}"'
        if escaped:
            offered.update(k for k in json.loads(escaped[1:-1].replace("\\", "")) if k.startswith("accelerator_type:"))
    for name, cfg in llm_configs(parse_config(r.app_args, example)).items():
        bundles = cfg["placement_group_config"]["bundles"]
        if cfg.get("accelerator_type"):
            wanted = f"accelerator_type:{cfg['accelerator_type']}"
            assert wanted in offered, f"pool {name} needs {wanted}; groups offer {sorted(offered)}"
            assert all(b.get("GPU", 0) >= 1 for b in bundles)
        else:
            assert all("GPU" not in b or not b["GPU"] for b in bundles), name


def test_autoscaling_reaches_serve(rendered_examples):
    r = rendered_examples["autoscaling-values.yaml"]
    (cfg,) = llm_configs(parse_config(r.app_args)).values()
    autoscaling = cfg["deployment_config"]["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"], autoscaling["target_ongoing_requests"]) == (1, 8, 24)
    (group,) = r.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert group["maxReplicas"] * 1 >= autoscaling["max_replicas"], "the Ray autoscaler must be able to place every Serve replica"
