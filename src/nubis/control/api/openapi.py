"""The OpenAPI document at `/api/openapi.json`, built from the route table so it never drifts."""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import Route

from nubis import __version__

_SUMMARIES: dict[tuple[str, str], str] = {
    ("GET", "/api/functions"): "List functions, keyed by name (?export=true for export form)",
    ("POST", "/api/functions"): "Create a function; 202, deployed in the background",
    ("DELETE", "/api/functions"): "Delete a function named in the JSON body; 204",
    ("GET", "/api/functions/{name}"): "Get a function {metadata, spec, status}",
    ("PUT", "/api/functions/{name}"): "Replace a function's configuration; 202, redeployed",
    ("PATCH", "/api/functions/{name}"): "Set desiredState (ready → redeploy); 202",
    ("DELETE", "/api/functions/{name}"): "Delete a function; 204",
    ("GET", "/api/functions/{name}/replicas"): "Names of the function's replicas",
    ("GET", "/api/functions/{name}/logs"): "The function's replica logs as text (?follow=true, ?since=)",
    ("GET", "/api/functions/{name}/logs/{replica}"): "One replica's logs as text",
    ("GET", "/api/functions/{name}/deploy_logs"): (
        "Nubis extension: the function's deploy logs of every kept generation, keyed by generation "
        "(?generation=N for one); status.logs holds the current generation's only"
    ),
    ("POST", "/api/function_archives"): (
        "Nubis extension: upload a function directory as a .tar(.gz|.bz2|.xz) or .zip archive "
        "(header X-Nuclio-Function-Name). Returns {path, sha256, size}; put `path` in spec.build.path."
    ),
    ("POST", "/api/function_invocations"): "Invoke a function (X-Nuclio-Function-Name, X-Nuclio-Path)",
    ("GET", "/api/function_templates"): "Deployable function templates",
    ("GET", "/api/projects"): "List projects, keyed by name",
    ("POST", "/api/projects"): "Create a project; 201 with the project",
    ("PUT", "/api/projects"): "Create or update a project (deprecated form used by MLRun); 204",
    ("DELETE", "/api/projects"): "Delete a project named in the JSON body (strategy header); 204",
    ("GET", "/api/versions"): "Versions; dashboard.label is the Nuclio API version answered",
    ("GET", "/api/external_ip_addresses"): "Addresses functions are reachable at (never empty)",
}


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = re.sub(r"\{(\w+):path\}", r"{\1}", route.path)
        for method in sorted(route.methods or ()):
            if method == "HEAD" and "GET" in (route.methods or ()):
                continue
            summary = _SUMMARIES.get((method, route.path), route.name.replace("_", " "))
            operation: dict[str, Any] = {
                "summary": summary,
                "security": [{"bearer": []}, {"basic": []}],
                "responses": {"default": {"description": "Nuclio-shaped JSON"}},
            }
            if route.path == "/api/function_archives":
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/gzip": {},
                        "application/x-tar": {},
                        "application/zip": {},
                        "application/octet-stream": {},
                    },
                }
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Nubis API (Nuclio dashboard API compatible)", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            }
        },
    }
