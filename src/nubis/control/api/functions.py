"""`/api/functions` (NUCLIO.md §4.3, §11 items 1-4): create/update answer 202 and deploy in the
background; the function is readable in state `building` before the 202 goes out."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from nubis.auth.gate import AuthorizationError
from nubis.control.api.bodies import PROJECT_LABEL, header_flag, json_body, project_header, section, text
from nubis.control.api.function_objects import (
    TERMINAL_STATES,
    export_object,
    function_object,
    is_import,
    is_provisioning,
    validated_config,
    without_import_annotations,
)
from nubis.control.api.responses import cached_json, empty, json_response
from nubis.control.api.secrets import check_secret_references
from nubis.control.api.trigger_secrets import unmask, unmask_metadata
from nubis.control.api.unchanged import is_unchanged
from nubis.errors import BadRequest, Conflict, PreconditionFailed
from nubis.spec import parse_duration
from nubis.store.functions import function_not_found
from nubis.store.projects import project_does_not_exist

DEFAULT_PROJECT = "default"
ENRICH_GATEWAYS = "x-nuclio-function-enrich-apigateways"


async def list_functions(request: Request) -> Response:
    """All functions (filtered by project/name headers), keyed by name.

    Lists leave out `status.logs` (clients poll one function for those). Each function's encoded
    object is cached with the `updated_at` it was built from; a request reads the (name,
    updated_at) index and re-reads only the functions that changed, so a dashboard polling a
    thousand functions costs one small query and a join of cached bytes.
    """
    control = request.app.state.control
    project = project_header(request)
    wanted = request.headers.get("x-nuclio-function-name")
    export = request.query_params.get("export", "").lower() == "true"
    versions = await visible_function_versions(request, project)
    if wanted:
        versions = [(name, stamp) for name, stamp in versions if name == wanted]
    cache: dict[str, tuple[object, bytes]] = control.object_cache.setdefault(export, {})
    stale = [name for name, stamp in versions if cache.get(name, (None,))[0] != stamp]
    if stale:
        for record in await control.store.functions_named(stale):
            obj = export_object(record) if export else function_object(record)
            cache[record.name] = (record.updated_at, msgspec.json.encode(obj, enc_hook=str))
    if project is None and not wanted and len(cache) > len(versions):
        present = {name for name, _ in versions}
        for name in [n for n in cache if n not in present]:
            del cache[name]
    parts = [msgspec.json.encode(name) + b":" + cache[name][1] for name, _ in versions if name in cache]
    if not export and header_flag(request, ENRICH_GATEWAYS):
        parts = await _with_gateways(control, [name for name, _ in versions if name in cache], parts)
    return cached_json(b"{" + b",".join(parts) + b"}\n")


async def visible_function_versions(request: Request, project: str | None) -> list[tuple[str, Any]]:
    """(name, updated_at) of the functions of the request's tenant (of `project`) that the
    caller may see."""
    principal, tenant = request.state.principal, request.state.tenant
    places = await request.app.state.control.store.function_places(project, tenant)
    return [(name, stamp) for name, stamp, _, owner in places if principal.may("read", tenant, owner)]


async def _with_gateways(control: Any, names: list[str], parts: list[bytes]) -> list[bytes]:
    """`X-Nuclio-Function-Enrich-Apigateways: true`: functions used by API gateways are encoded
    again with `status.apiGateways` (the cached bytes of the others stay as they are)."""
    used = await gateways_by_function(control.store)
    if not used:
        return parts
    enriched = dict(zip(names, parts, strict=True))
    for record in await control.store.functions_named([n for n in names if n in used]):
        obj = function_object(record)
        obj["status"]["apiGateways"] = used[record.name]
        enriched[record.name] = msgspec.json.encode(record.name) + b":" + msgspec.json.encode(obj, enc_hook=str)
    return list(enriched.values())


async def gateways_by_function(store: Any) -> dict[str, list[str]]:
    """The names of the API gateways routing to each function."""
    used: dict[str, list[str]] = {}
    for gateway in await store.list_api_gateways():
        for function in dict.fromkeys(gateway.functions):
            used.setdefault(function, []).append(gateway.name)
    return used


async def get_function(request: Request) -> Response:
    control = request.app.state.control
    name = request.path_params["name"]
    record = await control.store.get_function(name)
    if record is None:
        raise function_not_found(name)
    if request.query_params.get("export", "").lower() == "true":
        return json_response(export_object(record))
    # status.logs: the current generation's deploy only (older ones: /deploy_logs).
    obj = function_object(record, await control.store.get_logs(record.name))
    if header_flag(request, ENRICH_GATEWAYS):
        obj["status"]["apiGateways"] = [g.name for g in await control.store.api_gateways_using(name)]
    return json_response(obj)


async def function_deploy_logs(request: Request) -> Response:
    """Nubis extension: every kept deploy log of the function, keyed by generation
    (`?generation=N`: that one only). `status.logs` holds the current generation's alone."""
    control = request.app.state.control
    name = request.path_params["name"]
    if await control.store.get_function(name) is None:
        raise function_not_found(name)
    logs = await control.store.deploy_logs(name)
    wanted = request.query_params.get("generation")
    if wanted is not None:
        if not wanted.isdigit():
            raise BadRequest(f"generation must be a whole number, found {wanted!r}")
        logs = {int(wanted): logs.get(int(wanted), [])}
    return json_response({str(generation): records for generation, records in logs.items()})


async def _project_for(request: Request, body: dict[str, object], current: str | None = None) -> str:
    labels = section(section(body, "metadata"), "labels")
    project = project_header(request) or labels.get(PROJECT_LABEL) or current or DEFAULT_PROJECT
    record = await request.app.state.control.store.get_project(str(project))
    if record is None or record.namespace != request.state.tenant:
        raise project_does_not_exist(str(project))
    if not request.state.principal.may("write", record.namespace, record.name):
        raise AuthorizationError(f"{request.state.principal.name} may not write in project {record.name}")
    return str(project)


async def _check_secrets(request: Request, project: str, config: dict[str, Any]) -> None:
    """A deploy needs the secrets its function references, in its own tenant and project (an
    import is stored, not deployed: its secrets may come later)."""
    if not is_import(config):
        await check_secret_references(request.app.state.control, request.state.tenant, project, config)


async def create_function(request: Request) -> Response:
    control = request.app.state.control
    body = await json_body(request)
    _wait_timeout(request)
    project = await _project_for(request, body)
    config = validated_config(body, name=None, project=project, code_roots=control.settings.code_roots)
    await _check_secrets(request, project, config)
    name = config["metadata"]["name"]
    existing = await control.store.get_function(name)
    if existing is not None:
        if request.state.principal.may("read", existing.namespace, existing.project):
            raise Conflict(f"Function {name} already exists (in project {existing.project})")
        # names are platform-wide (docs/tenancy.md): say it is taken, not where
        raise Conflict(f"Function {name} already exists: function names are unique on this platform")
    namespace = request.state.tenant
    if is_import(config):
        # nuctl/dashboard import: stored, neither built nor deployed, until a redeploy (PATCH).
        await control.store.create_function(name, project, namespace, config, imported=True)
        return empty(202)
    record = await control.store.create_function(name, project, namespace, config)
    control.reconciler.wake()
    await _maybe_wait(request, record.name, record.generation)
    return empty(202)


async def update_function(request: Request) -> Response:
    control = request.app.state.control
    name = request.path_params["name"]
    body = await json_body(request)
    _wait_timeout(request)
    current = await control.store.get_function(name)
    if current is None:
        return await create_function_named(request, body, name)
    if is_provisioning(current):
        raise PreconditionFailed(
            f"Function {name} is being deployed (state {current.status.get('state')}); retry once it is done"
        )
    project = await _project_for(request, body, current.project)
    if project != current.project:
        raise BadRequest(f"function {name} belongs to project {current.project}; it cannot move to {project}")
    if isinstance(body.get("spec"), dict):
        # what a GET answered, sent back: its masked trigger credentials keep the stored ones
        body = dict(body, spec=unmask(body["spec"], current.config.get("spec") or {}))
    if isinstance(body.get("metadata"), dict):
        body = dict(body, metadata=unmask_metadata(body["metadata"], current.config.get("metadata") or {}))
    config = validated_config(body, name=name, project=project, code_roots=control.settings.code_roots)
    await _check_secrets(request, project, config)
    expected = section(body, "metadata").get("resourceVersion") or None
    fresh = expected is None or expected == current.resource_version
    if fresh and await is_unchanged(control, current, config):
        # Same spec, same code, and it serves: no new generation. Answered as Nuclio does.
        return empty(202)
    record = await control.store.update_function_config(name, config, expected_resource_version=expected)
    control.reconciler.wake()
    await _maybe_wait(request, name, record.generation)
    return empty(202)


async def create_function_named(request: Request, body: dict[str, object], name: str) -> Response:
    """PUT of a function that does not exist yet creates it (nuclio-jupyter may PUT after a GET 404 race)."""
    control = request.app.state.control
    project = await _project_for(request, body)
    config = validated_config(body, name=name, project=project, code_roots=control.settings.code_roots)
    await _check_secrets(request, project, config)
    namespace = request.state.tenant
    record = await control.store.create_function(name, project, namespace, config)
    control.reconciler.wake()
    await _maybe_wait(request, name, record.generation)
    return empty(202)


async def patch_function(request: Request) -> Response:
    control = request.app.state.control
    name = request.path_params["name"]
    body = await json_body(request, required=False)
    record = await control.store.get_function(name)
    if record is None:
        raise function_not_found(name)
    desired = body.get("desiredState")
    if desired is None:
        return empty(204)
    if desired not in ("ready", "scaledToZero"):
        raise BadRequest(f"desiredState must be 'ready' or 'scaledToZero', found {desired!r}")
    if is_provisioning(record):
        raise PreconditionFailed(f"Function {name} is being deployed; retry once it is done")
    if desired == "scaledToZero" or record.state == "scaledToZero":
        # at once, whatever its minReplicas; its next event (or desiredState ready) wakes it
        if record.state not in ("ready", "scaledToZero"):
            raise PreconditionFailed(f"Function {name} is {record.state}, not ready: it cannot be scaled")
        await control.autoscaler.set_zero(name, desired == "scaledToZero")
        return empty(202)
    record = await control.store.update_function_config(name, without_import_annotations(record.config))
    control.reconciler.wake()
    return empty(202)


async def delete_function(request: Request) -> Response:
    control = request.app.state.control
    body = await json_body(request, required=False)
    metadata = section(body, "metadata")
    name = text(metadata, "name", field="metadata.name") or request.path_params.get("name")
    if not name:
        raise BadRequest('function name is missing: send {"metadata": {"name": ...}}')
    record = await control.store.get_function(name)
    if record is None:
        return empty(204)
    expected = text(metadata, "resourceVersion", field="metadata.resourceVersion")
    if expected and expected != record.resource_version:
        raise Conflict("resourceVersion does not match: the function changed since it was read")
    if is_provisioning(record) and not header_flag(request, "x-nuclio-delete-function-ignore-state-validation"):
        raise PreconditionFailed(f"Function {name} is being deployed; retry once it is done")
    gateways = [g.name for g in await control.store.api_gateways_using(name)]
    if gateways and not header_flag(request, "x-nuclio-delete-function-with-api-gateways"):
        raise PreconditionFailed(
            f"Function is used by api gateways: {', '.join(gateways)}; delete them first, or send "
            "X-Nuclio-Delete-Function-With-API-Gateways: true to delete them with the function"
        )
    await control.remove_function(name)  # its API gateways go first
    return empty(204)


async def _maybe_wait(request: Request, name: str, generation: int) -> None:
    """`X-Nuclio-Wait-Function-Action: true` blocks until the deploy ends (NUCLIO.md §4.2)."""
    timeout = _wait_timeout(request)
    if timeout is None:
        return
    store = request.app.state.control.store
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        record = await store.get_function(name)
        if record is None or (
            record.deployed_generation >= generation and record.status.get("state") in TERMINAL_STATES
        ):
            return
        if record.generation == generation and record.status.get("state") in ("error", "unhealthy"):
            return
        await asyncio.sleep(0.1)


def _wait_timeout(request: Request) -> float | None:
    """How long `X-Nuclio-Wait-Function-Action: true` waits (None: not asked). Read before anything
    is stored, so a malformed timeout is a 400 with nothing created."""
    if not header_flag(request, "x-nuclio-wait-function-action"):
        return None
    value = request.headers.get("x-nuclio-creation-state-updated-timeout") or "15m"
    return parse_duration(value, field="X-Nuclio-Creation-State-Updated-Timeout") or 900.0
