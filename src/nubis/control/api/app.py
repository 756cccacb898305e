"""The API application: one route table, every entry built through the authorisation gate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from nubis.control.api import (
    access,
    api_gateways,
    archives,
    auth_routes,
    certs,
    failed_events,
    functions,
    invocation_results,
    invocations,
    logs,
    platform_info,
    projects,
    replica_states,
    scopes,
    secrets,
    templates,
    traces,
    trigger_metrics,
    trigger_states,
    workload,
)
from nubis.control.api.gatekeeping import route
from nubis.control.api.openapi import openapi_document
from nubis.control.api.responses import json_response
from nubis.control.api.site_guard import SiteGuard, SitePolicy

ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


#: where a route naming a function by path, or by `X-Nuclio-Function-Name`, acts
FUNCTION, INVOKED = scopes.function_by_path, scopes.function_by_header


def api_routes() -> list[Route]:
    return [
        route("/api/functions", functions.list_functions, ["GET"], "read"),
        route("/api/functions", functions.create_function, ["POST"], "write"),
        route("/api/functions", functions.delete_function, ["DELETE"], "write", scopes.function_by_body),
        route("/api/functions/{name}", functions.get_function, ["GET"], "read", FUNCTION),
        route("/api/functions/{name}", functions.update_function, ["PUT"], "write", FUNCTION),
        route("/api/functions/{name}", functions.patch_function, ["PATCH"], "write", FUNCTION),
        route("/api/functions/{name}", functions.delete_function, ["DELETE"], "write", FUNCTION),
        route("/api/functions/{name}/logs", logs.function_logs, ["GET"], "read", FUNCTION),
        route("/api/functions/{name}/logs/{replica}", logs.function_logs, ["GET"], "read", FUNCTION),
        route(
            "/api/functions/{name}/deploy_logs",
            functions.function_deploy_logs,
            ["GET"],
            "read",
            scopes.function_by_path,
        ),
        route(
            "/api/functions/{name}/triggers", trigger_states.function_triggers, ["GET"], "read", scopes.function_by_path
        ),
        route(
            "/api/functions/{name}/replicas", replica_states.function_replicas, ["GET"], "read", scopes.function_by_path
        ),
        route("/api/metrics", trigger_metrics.trigger_metrics, ["GET"], "read"),
        route(
            "/api/functions/{name}/failed_events",
            failed_events.list_failed_events,
            ["GET"],
            "read",
            scopes.function_by_path,
        ),
        route(
            "/api/functions/{name}/failed_events/replay",
            failed_events.replay_failed_events,
            ["POST"],
            "write",
            scopes.function_by_path,
        ),
        route("/api/events/{event:path}/trace", traces.event_trace, ["GET"], "read"),
        route("/api/function_archives", archives.upload_archive, ["POST"], "write"),
        route("/api/function_invocations", invocations.invoke, ANY_METHOD, "invoke", INVOKED),
        route(
            "/api/function_invocations/{path:path}", invocations.invoke, ANY_METHOD, "invoke", scopes.function_by_header
        ),
        route("/api/invocations", invocation_results.list_invocations, ["GET"], "invoke", scopes.function_by_query),
        route("/api/invocations/{id}", invocation_results.get_invocation, ["GET"], "invoke", scopes.function_by_query),
        route("/api/function_templates", templates.list_function_templates, ["GET"], "read"),
        route("/api/function_templates/render", templates.render_template, ["POST"], "read"),
        route("/api/projects", projects.list_projects, ["GET"], "read"),
        route("/api/projects", projects.create_project, ["POST"], "write"),
        route("/api/projects", projects.update_project, ["PUT"], "write", scopes.project_by_body),
        route("/api/projects", projects.delete_project, ["DELETE"], "write", scopes.project_by_body),
        route("/api/projects/{name}", projects.get_project, ["GET"], "read", scopes.project_by_path),
        route("/api/projects/{name}", projects.update_project, ["PUT"], "write", scopes.project_by_path),
        route("/api/projects/{project}/secrets", secrets.list_secrets, ["GET"], "read", scopes.project_by_path),
        route("/api/projects/{project}/secrets/{name}", secrets.get_secret, ["GET"], "read", scopes.project_by_path),
        route("/api/projects/{project}/secrets/{name}", secrets.put_secret, ["PUT"], "write", scopes.project_by_path),
        route(
            "/api/projects/{project}/secrets/{name}", secrets.patch_secret, ["PATCH"], "write", scopes.project_by_path
        ),
        route(
            "/api/projects/{project}/secrets/{name}", secrets.delete_secret, ["DELETE"], "write", scopes.project_by_path
        ),
        route("/api/api_gateways", api_gateways.list_api_gateways, ["GET"], "read"),
        route("/api/api_gateways", api_gateways.create_api_gateway, ["POST"], "write"),
        route("/api/api_gateways", api_gateways.update_api_gateway, ["PUT"], "write", scopes.gateway_by_body),
        route("/api/api_gateways", api_gateways.delete_api_gateway, ["DELETE"], "write", scopes.gateway_by_body),
        route("/api/api_gateways/{name}", api_gateways.get_api_gateway, ["GET"], "read", scopes.gateway_by_path),
        route("/api/api_gateways/{name}", api_gateways.update_api_gateway, ["PUT"], "write", scopes.gateway_by_path),
        route("/api/versions", platform_info.versions, ["GET"], "read", scopes.platform_wide),
        route("/api/external_ip_addresses", platform_info.external_ip_addresses, ["GET"], "read", scopes.platform_wide),
        route("/api/namespaces", platform_info.namespaces, ["GET"], "read", scopes.own_tenant),
        route("/api/frontend_spec", platform_info.frontend_spec, ["GET"], "read", scopes.platform_wide),
        route("/api/certs", certs.list_certificates, ["GET"], "admin", scopes.platform_wide),
        route("/api/certs", certs.issue_certificate, ["POST"], "admin", scopes.platform_wide),
        route("/api/certs/{serial}/revoke", certs.revoke_certificate, ["POST"], "admin", scopes.platform_wide),
        route("/api/tokens", access.list_tokens, ["GET"], "manage"),
        route("/api/tokens", access.create_token, ["POST"], "manage", access.token_scope),
        route("/api/tokens/{id}", access.revoke_token, ["DELETE"], "manage", access.token_by_path),
        route("/api/audit", access.audit_log, ["GET"], "manage", access.audit_scope),
        route("/api/tenants", access.list_tenants, ["GET"], "read", scopes.own_tenant),
        route("/api/tenants", access.create_tenant, ["POST"], "admin", scopes.platform_wide),
        route("/api/tenants/{name}", access.delete_tenant, ["DELETE"], "admin", scopes.platform_wide),
        route("/api/openapi.json", _openapi, ["GET"], "read", scopes.platform_wide),
    ]


async def _openapi(request: Request) -> Response:
    return json_response(openapi_document(api_routes()))


class StripTrailingSlash:
    """`/api/functions/` is `/api/functions` (NUCLIO.md §4.1; MLRun sends trailing slashes)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                scope = dict(scope, path=path.rstrip("/") or "/")
            # Iguazio's proxy prefixes headers with x-igz-; Nuclio reads them as x-.
            headers = scope.get("headers") or []
            if any(name.startswith(b"x-igz-") for name, _ in headers):
                scope = dict(scope, headers=[(b"x-" + n[6:] if n.startswith(b"x-igz-") else n, v) for n, v in headers])
        await self.app(scope, receive, send)


def create_app(control: Any, login_routes: Sequence[BaseRoute] | None = None) -> Starlette:
    """`control` is the running ControlPlane (store, gate, reconciler, settings); `login_routes` the
    OIDC login's `/auth/*` routes (`nubis.control.login`; default: only `/auth/config`, saying there is none)."""
    routes = [
        *api_routes(),
        Route("/healthz", platform_info.healthz, methods=["GET"]),
        Route("/readyz", platform_info.readyz, methods=["GET"]),
        *(auth_routes.routes(None) if login_routes is None else login_routes),
        *workload.routes(),  # the workload issuer's documents, and its replicas' own routes
    ]
    app = Starlette(routes=routes)
    app.state.control = control
    # Added first, so it runs inside StripTrailingSlash and sees normalised paths; it refuses
    # cross-site and foreign-Host requests before the gate (site_guard.py says why).
    app.add_middleware(SiteGuard, policy=SitePolicy.for_server(control.settings))
    app.add_middleware(StripTrailingSlash)
    return app
