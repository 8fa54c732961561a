"""The chart renders, lints clean, and every manifest validates against its real schema.

Core kinds: the Kubernetes OpenAPI schemas shipped by `kubernetes-validate` (strict: no
unknown fields). RayService, ServiceMonitor, PodMonitor and PrometheusRule: the CRDs in
shared/schemas (KubeRay, Prometheus Operator), made strict the same way: Kubernetes would
silently prune a misplaced field, so the test refuses it instead.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any, Dict

import pytest
import yaml

from helm_chart import CHART, EXAMPLES, NAMESPACE, RELEASE, helm, load_example, shared_schemas_dir

jsonschema = pytest.importorskip("jsonschema")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

KUBE_VERSION = "1.33"
CRD_FILES = {
    ("ray.io/v1", "RayService"): "kuberay-ray.io_rayservices.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator-monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "prometheus-operator-monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheus-operator-monitoring.coreos.com_prometheusrules.yaml",
}
# Labels KubeRay sets on Ray pods and relies on (its head Service selects by them).
KUBERAY_OWNED_POD_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/created-by"}


def _strict(node: Any) -> Any:
    """A CRD schema with unknown fields refused wherever the API server would prune them."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@pytest.fixture(scope="module")
def crd_validators() -> Dict[tuple, Any]:
    schemas = shared_schemas_dir()
    if schemas is None:
        pytest.skip("shared/schemas (the KubeRay and Prometheus Operator CRDs) is not beside the checkout")
    validators = {}
    for (api_version, kind), filename in CRD_FILES.items():
        crd = yaml.safe_load((schemas / filename).read_text())
        group = crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            if f"{group}/{version['name']}" == api_version:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                validators[(api_version, kind)] = jsonschema.Draft7Validator(schema)
    assert set(validators) == set(CRD_FILES)
    return validators


def _k8s_validate(doc: Dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {err.message}") from None


@pytest.mark.parametrize("example", EXAMPLES)
def test_helm_lint_is_clean(example):
    report = helm.lint(str(CHART), load_example(example), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]


def test_default_values_lint_clean_and_render_cpu(rendered_examples, render_values):
    report = helm.lint(str(CHART), None, strict=True, namespace=NAMESPACE)
    assert not [m for m in report["messages"] if m["severity"] >= 2]
    default = render_values()
    assert default.app_args == rendered_examples["default-values.yaml"].app_args
    assert {p["accelerator"] for p in default.app_args["pools"].values()} == {"cpu"}
    workers = default.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [w["groupName"] for w in workers] == ["cpu"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_core_manifests_validate_against_kubernetes_schemas(example, rendered_examples):
    r = rendered_examples[example]
    core = [d for d in r.docs if (d["apiVersion"], d["kind"]) not in CRD_FILES]
    assert core, "expected core Kubernetes objects (PodDisruptionBudget, Secret, Ingress)"
    for doc in core:
        _k8s_validate(doc)
    # KubeRay builds real objects from these embedded templates: validate them as such.
    spec = r.rayservice["spec"]
    _k8s_validate({"apiVersion": "v1", "kind": "Service", **spec["serveService"]})
    cluster = spec["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        _k8s_validate({"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(group["template"]), "metadata": {"name": "ray", **group["template"]["metadata"]}})


@pytest.mark.parametrize("example", EXAMPLES)
def test_custom_resources_validate_against_crds(example, rendered_examples, crd_validators):
    r = rendered_examples[example]
    custom = [d for d in r.docs if (d["apiVersion"], d["kind"]) in CRD_FILES]
    assert any(d["kind"] == "RayService" for d in custom)
    for doc in custom:
        errors = sorted(crd_validators[(doc["apiVersion"], doc["kind"])].iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{doc['kind']}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors[:10])


@pytest.mark.parametrize("example", EXAMPLES)
def test_serve_config_is_a_valid_ray_serve_config(example, rendered_examples):
    from ray.serve.schema import ServeDeploySchema

    r = rendered_examples[example]
    serve = ServeDeploySchema.model_validate(r.serve_config)
    (app,) = serve.applications
    assert app.import_path == "server.app:build_app" and app.route_prefix == "/"
    port = r.app_args.get("server", {}).get("port", 8000)
    assert serve.http_options.port == port
    assert serve.proxy_location.value == "EveryNode"


@pytest.mark.parametrize("example", EXAMPLES)
def test_ports_follow_the_config(example, rendered_examples):
    r = rendered_examples[example]
    server = r.app_args.get("server", {})
    serve_port, metrics_port = server.get("port", 8000), server.get("ray_metrics_port", 8080)
    spec = r.rayservice["spec"]
    assert spec["serveService"]["spec"]["ports"][0] == {"name": "serve", "port": serve_port, "targetPort": "serve", "protocol": "TCP"}
    cluster = spec["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == serve_port and ports["metrics"] == metrics_port
        assert group["rayStartParams"]["metrics-export-port"] == str(metrics_port)
    for ingress in r.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"] == {"name": spec["serveService"]["metadata"]["name"], "port": {"number": serve_port}}


@pytest.mark.parametrize("example", EXAMPLES)
def test_ray_pods(example, rendered_examples):
    """Head without GPUs or engines; per worker group: GPUs, /dev/shm, Ray resources."""
    values = load_example(example)
    r = rendered_examples[example]
    cluster = r.rayservice["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (head_container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {})
    groups = {g["name"]: g for g in values.get("workerGroups") or []} or {"cpu": {"gpuKind": "cpu", "gpusPerPod": 0}}
    assert [w["groupName"] for w in cluster["workerGroupSpecs"]] == list(groups)
    for worker in cluster["workerGroupSpecs"]:
        group = groups[worker["groupName"]]
        pod = worker["template"]["spec"]
        (container,) = pod["containers"]
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu", 0)
        assert gpus == group["gpusPerPod"]
        shm = next(v for v in pod["volumes"] if v["name"] == "shared-mem")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "shared-mem", "mountPath": "/dev/shm"} in container["volumeMounts"]
        labels = worker["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert not KUBERAY_OWNED_POD_LABELS & set(labels) and not any(k.startswith("ray.io/") for k in labels)
        if group["gpuKind"] != "cpu":
            assert group.get("tolerations") == pod.get("tolerations")
            assert group.get("nodeSelector") == pod.get("nodeSelector")


@pytest.mark.parametrize("example", EXAMPLES)
def test_ray_autoscaler_sees_gpus_and_accelerator_types(example, rendered_examples):
    """Each worker group's resources as Ray's KubeRay autoscaler reads them (its own parser)."""
    autoscaling_config = pytest.importorskip("ray.autoscaler._private.kuberay.autoscaling_config")
    if not hasattr(autoscaling_config, "_get_ray_resources_from_group_spec"):
        pytest.skip("this Ray's KubeRay autoscaler has no _get_ray_resources_from_group_spec")
    expected = {"l4": {"L4"}, "a100-40g": {"A100", "A100-40G"}, "a100-80g": {"A100", "A100-80G"}, "h100": {"H100"}, "h200": {"H200"}, "cpu": set()}
    values = load_example(example)
    groups = {g["name"]: g for g in values.get("workerGroups") or []}
    cluster = rendered_examples[example].rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    for worker in cluster["workerGroupSpecs"]:
        seen = autoscaling_config._get_ray_resources_from_group_spec(worker, is_head=False)
        group = groups.get(worker["groupName"], {"gpuKind": "cpu", "gpusPerPod": 0, "numCpus": "4"})
        assert seen.get("GPU", 0) == group["gpusPerPod"]
        types = {k.split(":", 1)[1] for k in seen if k.startswith("accelerator_type:")}
        assert types == expected[group["gpuKind"]]
        if group.get("numCpus"):
            assert seen["CPU"] == int(float(group["numCpus"]))
        assert worker["minReplicas"] == group.get("minReplicas", 1) and worker["maxReplicas"] == group.get("maxReplicas", 1)


def test_rayservice_options(rendered_examples):
    auto = rendered_examples["autoscaling-values.yaml"].rayservice["spec"]
    assert auto["upgradeStrategy"]["type"] == "NewClusterWithIncrementalUpgrade"
    assert auto["upgradeStrategy"]["clusterUpgradeOptions"]["gatewayClassName"] == "istio"
    assert auto["rayClusterConfig"]["autoscalerOptions"]["idleTimeoutSeconds"] == 900
    assert rendered_examples["default-values.yaml"].rayservice["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    ft = rendered_examples["gcs-ft-values.yaml"].rayservice["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert ft == {
        "redisAddress": "redis-master.redis.svc.cluster.local:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-password", "key": "password"}}},
    }
    assert "gcsFaultToleranceOptions" not in rendered_examples["default-values.yaml"].rayservice["spec"]["rayClusterConfig"]


def test_secrets_are_mounted_and_referenced(rendered_examples):
    staging = rendered_examples["gcs-ft-values.yaml"]
    (secret,) = staging.of_kind("Secret")
    assert secret["stringData"]["api-keys"].splitlines() == ["staging-ci:sk-staging-ci-0123456789", "staging-dev:sk-staging-dev-9876543210"]
    assert staging.app_args["security"]["api_keys_file"] == "/etc/qwen-serve/api-keys/api-keys"
    prod = rendered_examples["h200x8-two-pools-values.yaml"]
    assert not prod.of_kind("Secret"), "existing Secrets are referenced, not created"
    cluster = prod.rayservice["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
        assert {"name": "api-keys", "mountPath": "/etc/qwen-serve/api-keys", "readOnly": True} in container["volumeMounts"]
        keys = next(v for v in pod["volumes"] if v["name"] == "api-keys")
        assert keys["secret"]["secretName"] == "qwen-serve-api-keys"
        cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
        assert cache == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "qwen-models"}}


def test_monitoring_targets(rendered_examples):
    r = rendered_examples["gpu-30b-values.yaml"]
    service = r.rayservice["spec"]["serveService"]
    sm = r.one("ServiceMonitor")
    assert all(service["metadata"]["labels"][k] == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"][0]["port"] == "serve" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert "metricRelabelings" not in r.one("PodMonitor")["spec"]["podMetricsEndpoints"][0]  # routerMetrics off

    r = rendered_examples["h200x8-two-pools-values.yaml"]
    assert not r.of_kind("ServiceMonitor")
    pm = r.one("PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "prometheus"
    pod_labels = r.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
    wanted = dict(pm["spec"]["selector"]["matchLabels"])
    assert wanted.pop("ray.io/is-ray-node") == "yes"  # set by KubeRay on every Ray pod
    assert all(pod_labels[k] == v for k, v in wanted.items())
    endpoint = pm["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics"
    keep, rename = endpoint["metricRelabelings"]
    assert keep == {"sourceLabels": ["__name__"], "regex": "ray_vllm_.*|ray_serve_.*|ray_node_.*|ray_qwen_serve_.*", "action": "keep"}
    # The router replicas' copies through Ray get the names the dashboard and alerts use.
    assert rename == {"sourceLabels": ["__name__"], "regex": "ray_(qwen_serve_.+)", "targetLabel": "__name__", "replacement": "$1"}
    assert re.fullmatch(rename["regex"], "ray_qwen_serve_requests_total").expand(rename["replacement"].replace("$1", r"\1")) == "qwen_serve_requests_total"
    assert re.fullmatch(keep["regex"], "ray_qwen_serve_requests_total")
    rule = r.one("PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"]["ray.io/node-type"] == "worker"
    assert not rendered_examples["default-values.yaml"].of_kind("ServiceMonitor")


def test_config_file_value_replaces_config(render_values):
    """--set-file configFile=deploy/X.yaml deploys that file's document."""
    text = (CHART.parents[1] / "deploy" / "gpu-qwen3-30b-a3b.yaml").read_text()
    values = load_example("gpu-30b-values.yaml")
    inline = render_values(values).app_args
    del values["config"]
    from_file = render_values({**values, "configFile": text}).app_args
    assert json.dumps(from_file, sort_keys=True) == json.dumps(inline, sort_keys=True)
