"""Helpers of the Helm chart tests: the chart rendered by Helm's own engine.

`helm-python-sdk` binds Helm v4's Go SDK (no helm binary); every example values file in
helm/qwen-serve/ci/ is rendered once per session and shared by the tests.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK) is not installed")

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "qwen-serve"
EXAMPLES_DIR = CHART / "ci"
EXAMPLES = sorted(p.name for p in EXAMPLES_DIR.glob("*-values.yaml"))
RELEASE = "qs"
NAMESPACE = "llm"

# Example values file -> the deploy/ Serve config file whose `args` it must deploy.
MATCHING_DEPLOY_FILE = {
    "default-values.yaml": "deploy/local.yaml",
    "gcs-ft-values.yaml": "deploy/local.yaml",
    "gpu-30b-values.yaml": "deploy/gpu-qwen3-30b-a3b.yaml",
    "h200x8-two-pools-values.yaml": "deploy/h200x8-qwen3-235b.yaml",
}


def shared_schemas_dir() -> Optional[Path]:
    """The CRDs to validate against: shared/schemas beside the checkout (CI) or inside it."""
    for candidate in (REPO.parent / "shared" / "schemas", REPO / "shared" / "schemas"):
        if candidate.is_dir():
            return candidate
    return None


def load_example(name: str) -> Dict[str, Any]:
    return yaml.safe_load((EXAMPLES_DIR / name).read_text()) or {}


class Rendered:
    """One render of the chart: manifests by kind, plus the parsed serveConfigV2."""

    def __init__(self, files: Dict[str, str]) -> None:
        self.files = files
        self.docs: List[Dict[str, Any]] = []
        for name, text in sorted(files.items()):
            if not name.endswith(".yaml"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.docs.append(doc)

    def of_kind(self, kind: str) -> List[Dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str) -> Dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def rayservice(self) -> Dict[str, Any]:
        return self.one("RayService")

    @property
    def serve_config(self) -> Dict[str, Any]:
        return yaml.safe_load(self.rayservice["spec"]["serveConfigV2"])

    @property
    def app_args(self) -> Dict[str, Any]:
        apps = self.serve_config["applications"]
        assert len(apps) == 1
        return apps[0]["args"]

    @property
    def notes(self) -> str:
        return next((t for n, t in self.files.items() if n.endswith("NOTES.txt")), "")


def render(chart, values: Optional[Dict[str, Any]] = None) -> Rendered:
    return Rendered(chart.render(copy.deepcopy(values) if values else None, name=RELEASE, namespace=NAMESPACE, is_install=True))


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
