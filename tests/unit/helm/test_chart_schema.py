"""Bad values fail at install time with a message that names the key.

values.schema.json catches the shape (Helm validates it before rendering); the chart's
_validate.tpl catches what a schema cannot (a pool with no matching GPU group, a replica
wider than a pod, minimums beyond the groups' maximum).
"""

from __future__ import annotations

import copy
import json

import pytest

import values_schema
from helm_chart import CHART, helm, load_example

GPU_GROUP = {
    "name": "h100", "gpuKind": "h100", "gpusPerPod": 1, "replicas": 1, "minReplicas": 1, "maxReplicas": 2,
    "resources": {"limits": {"cpu": "8", "memory": "64Gi"}},
}


def gpu_values(pool=None, groups=None):
    pool = pool or {"model": "Qwen/Qwen3-8B", "accelerator_type": "H100"}
    return {
        "config": {"pools": {"p": pool}, "router": {"modes": {"thinking": {"pool": "p"}, "fast": {"pool": "p"}}}},
        "workerGroups": groups if groups is not None else [copy.deepcopy(GPU_GROUP)],
    }


def error_of(chart, values) -> str:
    with pytest.raises(helm.HelmError) as info:
        chart.render(values, name="qs", namespace="llm")
    return str(info.value)


def test_generated_config_schema_is_fresh():
    current = json.loads(values_schema.SCHEMA_PATH.read_text())
    assert values_schema.render(current) == current, (
        "helm/qwen-serve/values.schema.json is stale against server/config.py; "
        "run: python tests/unit/helm/values_schema.py --write"
    )


def test_schema_refuses_unknown_config_keys_everywhere():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["config"] == {"$ref": "#/$defs/AppConfig", "description": schema["properties"]["config"]["description"]}
    for name, body in schema["$defs"].items():
        if values_schema.is_generated(name):
            assert body.get("additionalProperties") is False, name


def _group(**changes):
    return [{**GPU_GROUP, **changes}]


@pytest.mark.parametrize("values,message", [
    # Negative replica counts.
    ({"workerGroups": _group(replicas=-1)}, "at '/workerGroups/0/replicas': minimum: got -1, want 0"),
    ({"workerGroups": _group(maxReplicas=-3)}, "at '/workerGroups/0/maxReplicas': minimum: got -3, want 0"),
    (gpu_values({"model": "m", "accelerator_type": "H100", "replicas": -2}), "at '/config/pools/p/replicas': minimum: got -2, want 0"),
    (gpu_values({"model": "m", "accelerator_type": "H100", "autoscaling": {"min_replicas": -1, "max_replicas": 2}}),
     "at '/config/pools/p/autoscaling/min_replicas': minimum: got -1, want 0"),
    # Unknown GPU kind.
    ({"workerGroups": _group(gpuKind="v100")}, "at '/workerGroups/0/gpuKind': value must be one of 'l4', 'a100-40g', 'a100-80g', 'h100', 'h200', 'cpu'"),
    # Missing model.
    (gpu_values({"accelerator_type": "H100"}), "at '/config/pools/p': missing property 'model'"),
    # Typos and wrong types.
    (gpu_values({"model": "m", "acelerator": "gpu"}), "at '/config/pools/p': additional properties 'acelerator' not allowed"),
    ({"config": {"server": {"port": 70000}}}, "at '/config/server/port': maximum: got 70,000, want 65,535"),
    ({"config": {"routr": {}}}, "at '/config': additional properties 'routr' not allowed"),
    ({"config": {"pools": {"bad name": {"model": "m"}}}}, "invalid propertyName 'bad name'"),
    ({"workerGroups": _group(gpusPerPod=0)}, "at '/workerGroups/0/gpusPerPod': minimum: got 0, want 1"),
    ({"workerGroups": [{**GPU_GROUP, "gpuKind": "cpu", "gpusPerPod": 2}]}, "at '/workerGroups/0/gpusPerPod': value must be 0"),
    ({"workerGroups": [{"name": "g", "gpuKind": "h100"}]}, "at '/workerGroups/0': missing properties 'gpusPerPod', 'replicas', 'minReplicas', 'maxReplicas'"),
    ({"workerGroups": _group(name="H100_Group")}, "at '/workerGroups/0/name': 'H100_Group' does not match pattern"),
    ({"gcsFaultTolerance": {"enabled": True}}, "at '/gcsFaultTolerance/redisAddress': '' does not match pattern"),
    ({"image": {"flavor": "rocm"}}, "at '/image/flavor': value must be one of 'cpu', 'cuda'"),
    ({"rayService": {"upgradeStrategy": "Rolling"}}, "at '/rayService/upgradeStrategy': value must be one of"),
    ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
])
def test_schema_rejects_bad_values(chart, values, message):
    assert message in error_of(chart, values)


@pytest.mark.parametrize("values,message", [
    (gpu_values(groups=[]),
     "config.pools.p needs accelerator_type H100, but no workerGroups entry offers it (groups: none)"),
    (gpu_values(groups=[{**GPU_GROUP, "name": "l4", "gpuKind": "l4"}]),
     "config.pools.p needs accelerator_type H100, but no workerGroups entry offers it (groups: l4 (gpuKind l4, 1 GPU/pod))"),
    (gpu_values({"model": "Qwen/Qwen3-235B-A22B", "accelerator_type": "H100", "parallelism": {"tensor_parallel_size": 8}}),
     "config.pools.p places 8 GPUs of one replica on one node (tensor_parallel_size 8), but no H100 group has that many GPUs per pod"),
    (gpu_values({"model": "m", "accelerator_type": "H100", "replicas": 3}),
     "config.pools need at least 3 H100 GPUs for their minimum replicas, but the H100 worker groups hold at most 2"),
    (gpu_values({"model": "m", "plan": {"gpu": "h200", "gpus": 4}}),
     "config.pools.p needs accelerator_type H200, but no workerGroups entry offers it"),
    (gpu_values({"model": "m", "accelerator": "cpu"}),
     "config.pools.p runs on the CPU (accelerator: cpu), but no workerGroups entry has gpuKind cpu"),
    (gpu_values({"model": "m", "accelerator_type": "H100", "autoscaling": {"min_replicas": 3, "max_replicas": 2}}),
     "config.pools.p.autoscaling: min_replicas (3) is above max_replicas (2)"),
    ({**gpu_values(), "config": {**gpu_values()["config"], "router": {"modes": {"thinking": {"pool": "p"}, "fast": {"pool": "q"}}}}},
     'config.router.modes.fast.pool is "q", which is not a pool (pools: p)'),
    ({"workerGroups": [{**GPU_GROUP, "gpuKind": "cpu", "gpusPerPod": 0, "minReplicas": 2, "maxReplicas": 1, "replicas": 1}]},
     "workerGroups[h100]: minReplicas (2) is above maxReplicas (1)"),
    ({"workerGroups": [{**GPU_GROUP, "gpuKind": "cpu", "gpusPerPod": 0}, {**GPU_GROUP, "gpuKind": "cpu", "gpusPerPod": 0}]},
     'workerGroups: the name "h100" is used twice'),
    ({"config": {"security": {"api_keys_file": "/keys"}}},
     "config.security.api_keys_file is /keys, but apiKeys.enabled is false"),
    ({"apiKeys": {"enabled": True}}, "apiKeys.enabled needs apiKeys.existingSecret (recommended) or apiKeys.keys"),
    ({"apiKeys": {"enabled": True, "existingSecret": "k"}, "config": {"security": {"api_keys_file": "/other"}}},
     "config.security.api_keys_file is /other, but apiKeys mounts the keys at /etc/qwen-serve/api-keys/api-keys"),
    ({"rayService": {"upgradeStrategy": "NewClusterWithIncrementalUpgrade"}},
     "rayService.upgradeStrategy NewClusterWithIncrementalUpgrade needs rayService.clusterUpgradeOptions"),
    ({"terminationGracePeriodSeconds": 20},
     "terminationGracePeriodSeconds (20) must exceed config.server.graceful_shutdown_timeout_s (30)"),
    ({"configFile": "applications: [{name: other, import_path: other.app:build}]"},
     "configFile: a Serve config file must hold exactly one application with import_path server.app:build_app"),
    ({"monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}},
     "monitoring.serviceMonitor and monitoring.podMonitor.routerMetrics both collect qwen_serve_*"),
])
def test_chart_checks_reject_inconsistent_values(chart, values, message):
    assert message in error_of(chart, values)


@pytest.mark.parametrize("monitoring,config", [
    ({"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True, "routerMetrics": False}}, {}),
    ({"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}, {"metrics": {"ray_export": False}}),
])
def test_router_metrics_from_one_source_render(chart, monitoring, config):
    chart.render({"monitoring": monitoring, "config": config}, name="qs", namespace="llm")


def test_gpu_pool_that_fits_renders(chart):
    files = chart.render(gpu_values(), name="qs", namespace="llm")
    assert any(name.endswith("rayservice.yaml") for name in files)


@pytest.mark.parametrize("kind,types", [("a100-40g", {"A100", "A100-40G"}), ("a100-80g", {"A100", "A100-80G"})])
def test_a100_groups_serve_both_spellings(chart, kind, types):
    for accelerator_type in types:
        values = gpu_values({"model": "m", "accelerator_type": accelerator_type}, [{**GPU_GROUP, "name": "a100", "gpuKind": kind}])
        chart.render(values, name="qs", namespace="llm")


def test_example_values_pass_the_schema(chart):
    from helm_chart import EXAMPLES

    for example in EXAMPLES:
        chart.validate_schema(chart.merge_values(load_example(example)))
