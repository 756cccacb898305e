"""`/api/api_gateways` (NUCLIO.md §9.1): Nuclio's API gateways, stored for the gateway process.

Lists are maps keyed by name (`{}` when none: MLRun polls the list on every deploy); create
answers 201 with the object, update 204, delete takes the name from the JSON body. The rules live
in `control/gateway_rules.py`; the reconciler moves a stored gateway from
`waitingForProvisioning` to `ready` or `error`. A basic-auth password is hashed before it is
stored and every answer shows it masked.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from nubis.auth.gate import AuthorizationError
from nubis.control.api.bodies import header_flag, json_body, project_header, section, text
from nubis.control.api.responses import empty, json_response
from nubis.control.gateway_rules import (
    MASKED_PASSWORD,
    CheckedGateway,
    checked_gateway,
    gateway_name,
    missing_functions,
)
from nubis.errors import BadRequest, PreconditionFailed
from nubis.store import ApiGatewayRecord, hash_password
from nubis.store.api_gateways import api_gateway_not_found
from nubis.store.projects import project_does_not_exist

VALIDATE_FUNCTIONS = "x-nuclio-agw-validate-functions-existence"


def gateway_object(record: ApiGatewayRecord, *, export: bool = False) -> dict[str, Any]:
    """`{metadata, spec, status}` (export: `{metadata, spec}`, no namespace nor timestamp)."""
    metadata = dict(record.config.get("metadata") or {}, name=record.name)
    spec = dict(record.spec)
    authentication = dict(spec.get("authentication") or {})
    if record.password_hash is not None:
        authentication["basicAuth"] = dict(authentication.get("basicAuth") or {}, password=MASKED_PASSWORD)
        spec["authentication"] = authentication
    if export:
        return {"metadata": metadata, "spec": spec}
    metadata.update(namespace=record.namespace, creationTimestamp=record.created_at.isoformat())
    status = {"name": record.name, "state": "", **record.status}
    return {"metadata": metadata, "spec": spec, "status": status}


async def list_api_gateways(request: Request) -> Response:
    store = request.app.state.control.store
    principal, tenant = request.state.principal, request.state.tenant
    records = [
        r
        for r in await store.list_api_gateways(project_header(request))
        if r.namespace == tenant and principal.may("read", tenant, r.project)
    ]
    function = request.headers.get("x-nuclio-function-name")
    if function:
        records = [r for r in records if function in r.functions]
    export = request.query_params.get("export", "").lower() == "true"
    return json_response({r.name: gateway_object(r, export=export) for r in records})


async def get_api_gateway(request: Request) -> Response:
    name = request.path_params["name"]
    record = await request.app.state.control.store.get_api_gateway(name)
    if record is None:
        raise api_gateway_not_found(name)
    return json_response(gateway_object(record, export=request.query_params.get("export", "").lower() == "true"))


async def create_api_gateway(request: Request) -> Response:
    control = request.app.state.control
    checked = checked_gateway(
        await json_body(request),
        path_name=None,
        project=project_header(request),
        current=None,
        oidc_issuer=control.settings.oidc_issuer,
    )
    await _check_functions(request, checked)
    record = await store_new_gateway(control, checked, request.state.tenant)
    return json_response(gateway_object(record), 201)


async def store_new_gateway(control: Any, checked: CheckedGateway, namespace: str) -> ApiGatewayRecord:
    """Store a gateway that passed the request-time rules, for the reconciler to provision (a
    create, or one of a project's on import). A masked password (an export's) stores none: the
    gateway then ends in `error` until it is given one."""
    password_hash = hash_password(checked.password) if checked.password else None
    record: ApiGatewayRecord = await control.store.create_api_gateway(
        checked.name, checked.project, namespace, checked.config, password_hash
    )
    control.reconciler.wake()
    return record


async def update_api_gateway(request: Request) -> Response:
    """`PUT /api/api_gateways/{name}`, and the UI's `PUT /api/api_gateways` (name in the body)."""
    control = request.app.state.control
    body = await json_body(request)
    path_name = request.path_params.get("name")
    name = gateway_name(section(body, "metadata"), section(body, "spec"), path_name)
    current = await control.store.get_api_gateway(name)
    if current is None:
        raise api_gateway_not_found(name)
    checked = checked_gateway(
        body,
        path_name=path_name,
        project=project_header(request),
        current=current,
        oidc_issuer=control.settings.oidc_issuer,
    )
    await _check_functions(request, checked)
    password_hash = current.password_hash if checked.keep_password else None
    if checked.password:
        password_hash = hash_password(checked.password)
    await control.store.update_api_gateway(checked.name, checked.config, password_hash)
    control.reconciler.wake()
    return empty(204)


async def delete_api_gateway(request: Request) -> Response:
    body = await json_body(request, required=False)
    name = text(section(body, "metadata"), "name", field="metadata.name")
    if not name:
        raise BadRequest('API gateway name is missing: send {"metadata": {"name": ...}}')
    if not await request.app.state.control.store.delete_api_gateway(name):
        raise api_gateway_not_found(name)
    return empty(204)


async def _check_functions(request: Request, checked: CheckedGateway) -> None:
    """The gateway's project and upstream functions must be the request's tenant's (a gateway
    must not route to another tenant's function), and the caller may write in that project.
    `X-Nuclio-Agw-Validate-Functions-Existence: true`: a missing upstream function is a 412."""
    store = request.app.state.control.store
    principal, tenant = request.state.principal, request.state.tenant
    project = await store.get_project(checked.project)
    if project is None or project.namespace != tenant:
        raise project_does_not_exist(checked.project)
    if not principal.may("write", tenant, checked.project):
        raise AuthorizationError(f"{principal.name} may not write in project {checked.project}")
    names = [u["nucliofunction"]["name"] for u in checked.config["spec"]["upstreams"]]
    for record in await store.functions_named(names):
        if record.namespace != tenant or not principal.may("read", tenant, record.project):
            raise PreconditionFailed(f"Function {record.name} does not exist")
    if not header_flag(request, VALIDATE_FUNCTIONS):
        return
    missing = await missing_functions(store, names)
    if missing:
        raise PreconditionFailed(f"Function {missing[0]} does not exist")
