"""deploy/prometheus (alert rules, their promtool unit tests, the example config) and the
Grafana dashboard: valid, complete, and naming only metrics that exist: the router's
(server/metrics.py) or the engine and Serve metrics captured from a live scrape
(deploy/prometheus/engine_metrics.txt, checked live by tests/integration/test_metrics_prometheus.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import ServeMetrics

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yaml"
ALERTS_TEST = PROM_DIR / "alerts_test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "qwen-serve.json"
ENGINE_METRICS = PROM_DIR / "engine_metrics.txt"

REQUIRED_ALERTS = {
    "QwenServeHighErrorRate",
    "QwenServeTTFTSLOBreach",
    "QwenServeKVCacheNearFull",
    "QwenServePoolNoReadyReplica",
    "QwenServeSustainedDowngrades",
}
# Labels a query may group by: ours, plus the bounded ones of Ray's engine and Serve metrics.
GROUP_LABELS = {"pool", "mode", "status", "reason", "le", "model_name", "ReplicaId", "deployment", "route", "status_code"}
GRAFANA_VARS = {"$__rate_interval": "5m", "$pool": ".*", "$mode": ".*"}

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (deploy/install.sh --test)")


def engine_metric_names() -> Dict[str, str]:
    """{name: note} from engine_metrics.txt; note is 'event: ...' for event-driven series."""
    names = {}
    for line in ENGINE_METRICS.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, note = line.partition(" ")
        names[name] = note.strip()
    return names


def router_metric_names() -> Set[str]:
    """Every sample name the router can export (histogram and counter suffixes included)."""
    m = ServeMetrics(pools=["p"])
    m.set_pool_status("p", "healthy")
    names = set()
    for family in text_string_to_metric_families(m.render().decode()):
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_count", "_sum")}
        elif family.type == "counter":
            names.add(family.name + "_total")
        else:
            names.add(family.name)
    return names


def metric_names_in(expr: str) -> Set[str]:
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop label values and strings
    return {tok for tok in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if tok.startswith(("qwen_serve_", "ray_", "vllm"))}


def dashboard_targets() -> Iterator[Tuple[Dict, Dict]]:
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        for inner in [panel] + panel.get("panels", []):
            for target in inner.get("targets", []):
                yield inner, target


def alert_rules() -> List[Dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr.replace("$1", ""), expr
    return expr


# --- alerts ---------------------------------------------------------------------------
def test_every_required_alert_exists_with_severity_and_text():
    rules = alert_rules()
    names = {r["alert"] for r in rules if "alert" in r}
    assert REQUIRED_ALERTS <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]


def test_every_alert_has_a_firing_unit_test():
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    firing = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case.get("exp_alerts")}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case.get("exp_alerts")}
    names = {r["alert"] for r in alert_rules()}
    assert names <= firing, names - firing
    assert names <= quiet, names - quiet  # and a case where it must not (yet) fire


@needs_promtool
def test_promtool_check_rules():
    out = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_test_rules():
    out = subprocess.run(["promtool", "test", "rules", ALERTS_TEST.name], cwd=PROM_DIR, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_check_example_config():
    out = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=PROM_DIR, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_example_config_scrapes_both_targets():
    doc = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in doc["scrape_configs"]}
    assert targets == {"qwen-serve-router": ["127.0.0.1:8000"], "ray": ["127.0.0.1:8080"]}
    assert doc["rule_files"] == ["alerts.yaml"]


# --- dashboard ------------------------------------------------------------------------
def test_dashboard_is_importable_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "qwen-serve" and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"pool", "mode"} <= set(variables)
    for panel, target in dashboard_targets():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert target["expr"].strip() and target["refId"], panel["title"]
    # Panels do not overlap on the 24-column grid.
    cells: Set[Tuple[int, int]] = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (mine & cells), panel["title"]
        cells |= mine


def test_dashboard_covers_what_an_sre_needs():
    exprs = {}
    for panel, target in dashboard_targets():
        exprs.setdefault(panel["title"], []).append(target["expr"])
    joined = "\n".join(e for es in exprs.values() for e in es)

    def panel_with(*needles: str) -> List[str]:
        return [t for t, es in exprs.items() if all(any(n in e for e in es) for n in needles)]

    assert panel_with("rate(qwen_serve_requests_total")  # throughput
    for metric in ("qwen_serve_time_to_first_token_seconds_bucket", "qwen_serve_inter_token_latency_seconds_bucket",
                   "qwen_serve_time_to_first_answer_token_seconds_bucket"):
        assert panel_with(f"histogram_quantile(0.5, sum by (le, mode) (rate({metric}"), metric
        assert panel_with(f"histogram_quantile(0.99, sum by (le, mode) (rate({metric}"), metric
    assert panel_with("ray_vllm_kv_cache_usage_perc")
    assert panel_with("qwen_serve_queued_requests")
    assert panel_with("sum by (mode) (rate(qwen_serve_route_decisions_total")  # mode mix
    assert panel_with("qwen_serve_downgrades_total")
    assert panel_with('status=~"5.."') and panel_with("qwen_serve_rejections_total")  # errors
    assert "ray_vllm_num_requests_waiting" in joined and "ray_vllm_num_preemptions_total" in joined
    assert "ray_vllm_prefix_cache_hits_total" in joined


def test_dashboard_and_alerts_name_only_metrics_that_exist():
    known = router_metric_names() | set(engine_metric_names())
    used: Dict[str, Set[str]] = {}
    for panel, target in dashboard_targets():
        for name in metric_names_in(target["expr"]):
            used.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for rule in alert_rules():
        for name in metric_names_in(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    unknown = {name: where for name, where in used.items() if name not in known}
    assert not unknown, unknown
    assert not any(name.startswith("vllm") for name in used)
    # And the engine-side list holds nothing unused.
    assert set(engine_metric_names()) - set(used) <= {
        "ray_vllm_prompt_tokens_total", "ray_vllm_generation_tokens_total", "ray_vllm_request_success_total",
        "ray_vllm_e2e_request_latency_seconds_bucket", "ray_vllm_request_queue_time_seconds_bucket",
        "ray_serve_deployment_status", "ray_serve_deployment_queued_queries", "ray_serve_replica_processing_queries",
    }


def test_queries_group_only_by_bounded_labels():
    exprs = [t["expr"] for _, t in dashboard_targets()] + [r["expr"] for r in alert_rules()]
    for expr in exprs:
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            labels = {g.strip() for g in group.split(",") if g.strip()}
            assert labels <= GROUP_LABELS, (expr, labels - GROUP_LABELS)


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    rules = []
    for i, (panel, target) in enumerate(dashboard_targets()):
        rules.append({"record": f"dashboard:panel_{panel['id']}:{target['refId'].lower()}", "expr": grafana_to_promql(target["expr"])})
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules)} rules found" in out.stdout
