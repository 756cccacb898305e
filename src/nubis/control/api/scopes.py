"""Where a request acts: its (tenant, project), found before the gate decides, one resolver per route.

The tenant is, in order: the namespace the request names (Nuclio's per-resource namespace headers,
or `?namespace=`), the tenant of the resource it names (a function, project or API gateway), the
principal's only tenant (`Principal.home_tenant`: nuclio-jupyter and MLRun send no namespace, so
a tenant's token makes them work inside that tenant), else the server's default namespace.

A resource that exists but that the caller may not see is answered exactly as a missing one (the
same 404 and text), so names in other tenants and projects are not disclosed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from nubis.auth.principals import Principal
from nubis.control.api.bodies import MAX_JSON_BODY, PROJECT_LABEL
from nubis.errors import NotFound
from nubis.store.api_gateways import api_gateway_not_found
from nubis.store.functions import function_not_found
from nubis.store.projects import project_not_found

#: Nuclio's per-resource namespace headers (NUCLIO.md §4: one per resource kind)
NAMESPACE_HEADERS = (
    "x-nuclio-function-namespace",
    "x-nuclio-project-namespace",
    "x-nuclio-api-gateway-namespace",
    "x-nuclio-function-event-namespace",
)


class AnsweredAsMissing(NotFound):
    """A hidden resource whose route answers a missing one with success, as Nuclio's idempotent
    `DELETE /api/functions` does (204): the gate answers that, and nothing is deleted."""

    status_code = 204


@dataclass(frozen=True)
class Target:
    tenant: str
    project: str | None
    #: the error a caller who may not read the target gets instead of a 403 (a 404 that does not
    #: tell a hidden resource from a missing one); None: the target is not a named resource
    hidden_as: NotFound | None = None


Resolver = Callable[[Request, Principal], Awaitable[Target]]


def named_tenant(request: Request) -> str | None:
    for header in NAMESPACE_HEADERS:
        value = request.headers.get(header)
        if value:
            return value
    return request.query_params.get("namespace") or None


async def default_tenant(request: Request, principal: Principal) -> str:
    """The tenant a request names (a header, `?namespace=`, or its body's `metadata.namespace`),
    else the principal's only one, else the server's default namespace."""
    named = named_tenant(request)
    if named is None:
        value = (await body_metadata(request)).get("namespace")
        named = value if isinstance(value, str) and value else None
    return named or principal.home_tenant() or request.app.state.control.settings.namespace


async def body_metadata(request: Request) -> dict[str, object]:
    """`metadata` of a JSON body, or {} (the endpoint itself answers malformed bodies)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return {}
    raw = await request.body()  # cached: the endpoint reads the same bytes
    if not raw.strip() or len(raw) > MAX_JSON_BODY:
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    for key, value in data.items():
        if key.lower() == "metadata" and isinstance(value, dict):
            return value
    return {}


async def _body_project(request: Request) -> str | None:
    header = request.headers.get("x-nuclio-project-name")
    if header:
        return header
    labels = (await body_metadata(request)).get("labels")
    project = labels.get(PROJECT_LABEL) if isinstance(labels, dict) else None
    return project if isinstance(project, str) and project else None


async def in_tenant(request: Request, principal: Principal) -> Target:
    """A tenant-wide call (lists, creates): the project from the header or the body's label."""
    return Target(await default_tenant(request, principal), await _body_project(request))


async def platform_wide(request: Request, principal: Principal) -> Target:
    """Calls about the platform itself (versions, certificates): the default tenant, no project."""
    return Target(await default_tenant(request, principal), None)


async def _resource_target(request: Request, principal: Principal, record: Any, hidden: NotFound) -> Target:
    """Where a call naming a function or API gateway (`record`, None when missing or unnamed) acts:
    the record's tenant and project, unless the request names another tenant (where it is missing)."""
    named = named_tenant(request)
    if record is None or (named is not None and named != record.namespace):
        return Target(await default_tenant(request, principal), await _body_project(request))
    return Target(record.namespace, record.project, hidden)


async def _function_target(request: Request, principal: Principal, name: str | None) -> Target:
    record = await request.app.state.control.store.get_function(name) if name else None
    # Nuclio's delete answers a missing function with 204: a hidden one is answered the same
    hidden = (
        AnsweredAsMissing(f"function {name} deleted") if request.method == "DELETE" else function_not_found(name or "")
    )
    return await _resource_target(request, principal, record, hidden)


async def function_by_path(request: Request, principal: Principal) -> Target:
    return await _function_target(request, principal, request.path_params.get("name"))


async def _body_name(request: Request) -> str | None:
    name = (await body_metadata(request)).get("name")
    return name if isinstance(name, str) else None


async def function_by_body(request: Request, principal: Principal) -> Target:
    """`DELETE /api/functions` names the function in its body's metadata."""
    return await _function_target(request, principal, await _body_name(request))


async def function_by_header(request: Request, principal: Principal) -> Target:
    """`/api/function_invocations` names the function in `X-Nuclio-Function-Name`."""
    return await _function_target(request, principal, request.headers.get("x-nuclio-function-name"))


async def _project_target(request: Request, principal: Principal, name: str | None) -> Target:
    if not name:
        return Target(await default_tenant(request, principal), None)
    record = await request.app.state.control.store.get_project(name)
    named = named_tenant(request)
    if record is None or (named is not None and named != record.namespace):
        return Target(await default_tenant(request, principal), name)
    return Target(record.namespace, record.name, project_not_found(name))


async def project_by_path(request: Request, principal: Principal) -> Target:
    # `project` first: under /api/projects/{project}/secrets/{name}, `name` is the secret's
    name = request.path_params.get("project") or request.path_params.get("name")
    return await _project_target(request, principal, name)


async def project_by_body(request: Request, principal: Principal) -> Target:
    """`PUT`/`DELETE /api/projects` name the project in the body (or `X-Nuclio-Project-Name`)."""
    name = (await body_metadata(request)).get("name") or request.headers.get("x-nuclio-project-name")
    return await _project_target(request, principal, name if isinstance(name, str) else None)


async def _gateway_target(request: Request, principal: Principal, name: str | None) -> Target:
    record = await request.app.state.control.store.get_api_gateway(name) if name else None
    return await _resource_target(request, principal, record, api_gateway_not_found(name or ""))


async def gateway_by_path(request: Request, principal: Principal) -> Target:
    return await _gateway_target(request, principal, request.path_params.get("name"))


async def gateway_by_body(request: Request, principal: Principal) -> Target:
    return await _gateway_target(request, principal, await _body_name(request))


async def function_by_query(request: Request, principal: Principal) -> Target:
    """`/api/invocations?function=NAME`: that function's; without one, the tenant's."""
    return await _function_target(request, principal, request.query_params.get("function"))


async def own_tenant(request: Request, principal: Principal) -> Target:
    """Calls about the caller itself (its tenants): the tenant it names, else its first one."""
    tenants = principal.tenants()
    named = named_tenant(request)
    if named is None and tenants:
        named = tenants[0]
    return Target(named or request.app.state.control.settings.namespace, None)
