"""`/api/projects` (NUCLIO.md §4.3): every project object carries `metadata`, `spec` and `status`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from nubis.control.api.api_gateways import gateway_object, store_new_gateway
from nubis.control.api.bodies import json_body, project_header, section, text, text_map
from nubis.control.api.function_objects import SKIP_BUILD, SKIP_DEPLOY, export_object, validated_config
from nubis.control.api.responses import empty, json_response
from nubis.control.gateway_rules import checked_gateway
from nubis.errors import BadRequest, Conflict, NubisError, PreconditionFailed
from nubis.spec import validate_project_name
from nubis.store import ProjectRecord
from nubis.store.projects import project_already_exists, project_not_found

DEFAULT_PROJECT = "default"
DELETE_STRATEGIES = ("restricted", "cascading", "check")


def project_object(record: ProjectRecord) -> dict[str, Any]:
    return {
        "metadata": {
            "name": record.name,
            "namespace": record.namespace,
            "labels": record.labels or {},
            "annotations": record.annotations or {},
        },
        "spec": record.spec or {},
        "status": {},
    }


def _record_from_body(body: dict[str, Any], request: Request, name: str | None = None) -> ProjectRecord:
    metadata = section(body, "metadata")
    name = name or text(metadata, "name", field="metadata.name") or project_header(request)
    if not name:
        raise BadRequest("project name is missing: set metadata.name")
    validate_project_name(str(name), field="metadata.name")
    spec = section(body, "spec")
    for key in ("description", "owner"):
        text(spec, key, field=f"spec.{key}")  # strings in Nuclio's ProjectSpec
    text(metadata, "namespace", field="metadata.namespace")  # a string; the gate took the tenant from it
    return ProjectRecord(
        name=str(name),
        namespace=request.state.tenant,
        labels=text_map(metadata, "labels", field="metadata.labels"),
        annotations=text_map(metadata, "annotations", field="metadata.annotations"),
        spec=spec,
    )


async def list_projects(request: Request) -> Response:
    store = request.app.state.control.store
    wanted = project_header(request)
    principal, tenant = request.state.principal, request.state.tenant
    records = [
        r
        for r in await store.list_projects()
        if wanted in (None, r.name) and r.namespace == tenant and principal.sees_project(tenant, r.name)
    ]
    if request.query_params.get("export", "").lower() != "true":
        return json_response({r.name: project_object(r) for r in records})
    exported = {}
    for record in records:
        functions = await store.list_functions(project=record.name)
        gateways = await store.list_api_gateways(record.name)
        exported[record.name] = {
            "project": project_object(record),
            "functions": {f.name: export_object(f) for f in functions},
            "functionEvents": {},
            "apiGateways": {g.name: gateway_object(g, export=True) for g in gateways},
        }
    return json_response(exported)


async def get_project(request: Request) -> Response:
    name = request.path_params["name"]
    record = await request.app.state.control.store.get_project(name)
    if record is None:
        raise project_not_found(name)
    return json_response(project_object(record))


async def create_project(request: Request) -> Response:
    body = await json_body(request)
    if request.query_params.get("import", "").lower() == "true":
        return await _import_project(request, body)
    record = _record_from_body(body, request)
    await request.app.state.control.store.ensure_tenant(record.namespace)
    created = await request.app.state.control.store.create_project(record)
    return json_response(project_object(created), 201)


async def update_project(request: Request) -> Response:
    """`PUT /api/projects/{name}`, and MLRun's deprecated `PUT /api/projects` (name in body/header)."""
    body = await json_body(request)
    name = request.path_params.get("name")
    record = _record_from_body(body, request, name)
    if name and section(body, "metadata").get("name") not in (None, name):
        raise BadRequest("project name in the path and in metadata.name differ")
    existing = await request.app.state.control.store.get_project(record.name)
    if existing is not None and existing.namespace != record.namespace:
        raise project_already_exists(record.name)  # another tenant's: names are platform-wide
    await request.app.state.control.store.ensure_tenant(record.namespace)
    await request.app.state.control.store.upsert_project(record)
    headers = {} if name else {"Deprecation": "true"}
    return empty(204, headers)


async def delete_project(request: Request) -> Response:
    body = await json_body(request, required=False)
    name = text(section(body, "metadata"), "name", field="metadata.name") or project_header(request)
    if not name:
        raise BadRequest('project name is missing: send {"metadata": {"name": ...}}')
    strategy = (request.headers.get("x-nuclio-delete-project-strategy") or "restricted").lower()
    if strategy not in DELETE_STRATEGIES:
        raise BadRequest(f"unknown delete strategy {strategy!r}: expected one of {', '.join(DELETE_STRATEGIES)}")
    control = request.app.state.control
    if name == DEFAULT_PROJECT:
        raise PreconditionFailed("the default project cannot be deleted")
    if await control.store.get_project(name) is None:
        raise project_not_found(name)
    functions = await control.store.list_functions(project=name)
    if functions and strategy in ("restricted", "check"):
        names = ", ".join(f.name for f in functions[:10]) + (", ..." if len(functions) > 10 else "")
        raise PreconditionFailed(
            f"Project contains functions: project {name!r} still has {names}; delete them first, "
            "or delete with the cascading strategy"
        )
    gateways = await control.store.list_api_gateways(name)
    if gateways and strategy in ("restricted", "check"):
        raise PreconditionFailed(
            f"Project contains api gateways: project {name!r} still has {', '.join(g.name for g in gateways)}; "
            "delete them first, or delete with the cascading strategy"
        )
    if strategy == "check":
        return empty(204)
    for gateway in gateways:
        await control.store.delete_api_gateway(gateway.name)
    for function in functions:
        await control.remove_function(function.name)
    await control.store.delete_project(name)
    return empty(204)


async def _import_project(request: Request, body: dict[str, Any]) -> Response:
    """`POST /api/projects?import=true` with `{project, functions, functionEvents, apiGateways}`:
    the project is created if missing and each function stored as `imported` (not built)."""
    control = request.app.state.control
    record = _record_from_body(section(body, "project"), request)
    existing = await control.store.get_project(record.name)
    if existing is not None and existing.namespace != record.namespace:
        raise project_already_exists(record.name)  # another tenant's: names are platform-wide
    if existing is None:
        await control.store.ensure_tenant(record.namespace)
        await control.store.create_project(record)
    created: list[str] = []
    failed: list[dict[str, str]] = []
    for name, function in section(body, "functions").items():
        try:
            config = validated_config(function, name=None, project=record.name)
            config["metadata"].setdefault("annotations", {}).update({SKIP_BUILD: "true", SKIP_DEPLOY: "true"})
            fn = await control.store.create_function(
                config["metadata"]["name"], record.name, record.namespace, config, imported=True
            )
            created.append(fn.name)
        except NubisError as exc:
            failed.append({"function": str(name), "error": exc.message})
    result = {"createdAmount": len(created), "failedAmount": len(failed), "failedFunctions": failed}
    skipped = {"createdAmount": 0, "failedAmount": 0}
    gateways = await _import_gateways(control, section(body, "apiGateways"), record)
    return json_response(
        {"functionImportResult": result, "functionEventImportResult": skipped, "apiGatewayImportResult": gateways},
        201,
    )


async def _import_gateways(control: Any, gateways: dict[str, Any], project_record: ProjectRecord) -> dict[str, Any]:
    """A project's exported API gateways, created as a POST would (provisioned once their
    functions are; one whose basicAuth password was masked by the export ends in `error`)."""
    created, failed = 0, []
    project = project_record.name
    for name, body in gateways.items():
        try:
            if not isinstance(body, dict):
                raise BadRequest(f"apiGateways.{name} is not an object")
            checked = checked_gateway(
                body, path_name=None, project=project, current=None, oidc_issuer=control.settings.oidc_issuer
            )
            if await control.store.get_api_gateway(checked.name) is not None:
                raise Conflict(f"API gateway {checked.name} already exists")
            await store_new_gateway(control, checked, project_record.namespace)
            created += 1
        except NubisError as exc:
            failed.append({"apiGateway": str(name), "error": exc.message})
    return {"createdAmount": created, "failedAmount": len(failed), "failedApiGateways": failed}
