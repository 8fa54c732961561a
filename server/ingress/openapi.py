"""OpenAPI request-body schemas for the raw-body routes, taken from vLLM's protocol models.

The routes read the raw body (for size limits and fast parsing), so FastAPI cannot infer
their schemas; this adds them, so /openapi.json documents the API and schema-based fuzzers
generate real request bodies.
"""

from __future__ import annotations

from typing import Any, Dict

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.ingress.requests import MODELS

REF = "#/components/schemas/{model}"
ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/route/explain": "chat"}


def _schema(kind: str, components: Dict[str, Any]) -> Dict[str, Any]:
    schema = MODELS[kind].model_json_schema(ref_template=REF, mode="validation")
    components.update(schema.pop("$defs", {}))
    name = MODELS[kind].__name__
    components[name] = schema
    return {"$ref": REF.format(model=name)}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> Dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        refs = {kind: _schema(kind, components) for kind in set(ROUTES.values())}
        for path, kind in ROUTES.items():
            op = doc["paths"].get(path, {}).get("post")
            if op is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": refs[kind]}}}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
