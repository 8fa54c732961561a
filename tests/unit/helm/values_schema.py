"""The config part of the chart's values.schema.json, generated from server/config.py.

`config:` in the chart's values is the qwen-serve configuration document, so its JSON
schema is the pydantic model's (AppConfig), with unknown keys refused everywhere: a typo
in `config` fails `helm install` with the key's path instead of failing the Serve
deployment minutes later. The chart's own keys are written by hand in the same file
($defs with lowercase names); this module owns the CamelCase $defs (AppConfig and the
models it uses) and rewrites them:

    .venv/bin/python tests/unit/helm/values_schema.py --write

tests/unit/helm/test_chart_schema.py fails when the file is stale.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Dict

REPO = Path(__file__).resolve().parents[3]
SCHEMA_PATH = REPO / "helm" / "qwen-serve" / "values.schema.json"

# Mirrors AppConfig's pool-name validator (letters, digits, '-' and '_').
POOL_NAME_PATTERN = "^[A-Za-z0-9_-]+$"


def _strip_titles(node: Any) -> Any:
    """Drop pydantic's generated `title`s (noise in Helm's messages); keep descriptions."""
    if isinstance(node, dict):
        return {k: _strip_titles(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def config_defs() -> Dict[str, Any]:
    """AppConfig and its sub-models as JSON-schema $defs (refs: #/$defs/<Model>)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from server.config import AppConfig

    schema = copy.deepcopy(AppConfig.model_json_schema(mode="validation"))
    defs = schema.pop("$defs", {})
    app = schema
    # The chart lays its default pools (files/default-config.yaml) under a document that
    # names none, so `pools` is optional in values.
    app["required"] = [r for r in app.get("required", []) if r != "pools"]
    if not app["required"]:
        del app["required"]
    app["properties"]["pools"]["propertyNames"] = {"pattern": POOL_NAME_PATTERN}
    defs["AppConfig"] = app
    return {name: _strip_titles(body) for name, body in sorted(defs.items())}


def is_generated(name: str) -> bool:
    return name[:1].isupper()


def render(current: Dict[str, Any]) -> Dict[str, Any]:
    """`current` with its generated $defs replaced by fresh ones."""
    out = copy.deepcopy(current)
    kept = {k: v for k, v in out.get("$defs", {}).items() if not is_generated(k)}
    out["$defs"] = {**kept, **config_defs()}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {SCHEMA_PATH.relative_to(REPO)}")
    args = parser.parse_args(argv)
    current = json.loads(SCHEMA_PATH.read_text())
    fresh = render(current)
    if args.write:
        SCHEMA_PATH.write_text(json.dumps(fresh, indent=2) + "\n")
        print(f"wrote {SCHEMA_PATH.relative_to(REPO)}")
        return 0
    if fresh != current:
        print(f"{SCHEMA_PATH.relative_to(REPO)} is stale; run: python {Path(__file__).relative_to(REPO)} --write")
        return 1
    print("up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
