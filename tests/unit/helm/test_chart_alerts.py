"""The chart's alert rules: valid for Prometheus, in sync with deploy/, on real metric names."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from helm_chart import CHART, REPO
from server.metrics import ServeMetrics

ALERTS = CHART / "files" / "alerts.yaml"
DEPLOY_ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"


def rules():
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_chart_alerts_match_deploy_alerts():
    if not DEPLOY_ALERTS.exists():
        pytest.skip("deploy/prometheus/alerts.yaml does not exist (yet): the chart's file is the only copy")
    assert ALERTS.read_bytes() == DEPLOY_ALERTS.read_bytes(), (
        "helm/qwen-serve/files/alerts.yaml differs from deploy/prometheus/alerts.yaml: "
        "copy deploy/prometheus/alerts.yaml over the chart's file"
    )


def test_promtool_accepts_the_rules(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package 'prometheus') is not installed")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_have_severity_and_text():
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"[0-9]+[smh]", rule["for"]), rule["alert"]


def test_router_metric_names_exist():
    """Every qwen_serve_* series an alert reads is one the router exports."""
    registry = ServeMetrics(pools=["p"]).registry
    exported = set()
    for family in registry.collect():
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
    # Samples appear once observed; add the suffixes every counter / histogram exposes.
    for family in registry.collect():
        if family.type == "counter":
            exported.add(f"{family.name}_total")
        if family.type == "histogram":
            exported.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
    used = {name for rule in rules() for name in re.findall(r"\bqwen_serve_[a-z_]+\b", rule["expr"])}
    assert used, "expected router metrics in the alerts"
    assert used <= exported, f"alerts use metrics the router does not export: {sorted(used - exported)}"
