"""`/api/projects/{project}/secrets`: a project's secrets, written whole or merged, read back as keys only.

A Nubis extension (Nuclio's dashboard has no secrets API). The values go in and never come out:
every answer, error and audit record names secrets and keys, never a value; the values leave the
store only server-side, when a replica starts (`api/workload.py`). The tenant is the gate's
(`request.state.tenant`, resolved from the project in the path); a project that does not exist
in it is missing (404), as the projects routes answer.

A body is `{"data": {KEY: VALUE}}`, the values plain strings (not base64, unlike a Kubernetes
Secret's `data`), or `{"stringData": {...}}` as Kubernetes writes plain values; with both, a key
of `stringData` wins, as in Kubernetes. In a PATCH, a key whose value is null is removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from nubis.control.api.bodies import json_body
from nubis.control.api.responses import empty, json_response
from nubis.errors import BadRequest, NotFound, PermanentError
from nubis.secrets.base import SecretBackend, SecretError, check_name
from nubis.spec import FunctionConfig, parse_config
from nubis.spec.secret_refs import SecretRef, secret_references
from nubis.store.projects import project_not_found

BODY_KEYS = ("data", "stringData")


def secret_not_found(name: str, project: str) -> NotFound:
    return NotFound(f"Secret not found: secret {name!r} does not exist in project {project!r}")


def secret_object(name: str, project: str, keys: list[str]) -> dict[str, Any]:
    return {"name": name, "project": project, "keys": keys}


async def list_secrets(request: Request) -> Response:
    backend, tenant, project = await _where(request)
    found = await backend.names(tenant, project)
    return json_response({"secrets": [secret_object(name, project, keys) for name, keys in sorted(found.items())]})


async def get_secret(request: Request) -> Response:
    backend, tenant, project, name = await _where_named(request)
    return _answer(name, project, await backend.keys(tenant, project, name))


async def put_secret(request: Request) -> Response:
    """Create or replace the whole secret: keys not in the body are gone afterwards."""
    backend, tenant, project, name = await _where_named(request)
    values, _ = _values(await json_body(request), allow_null=False)
    await backend.put(tenant, project, name, values)
    return _answer(name, project, sorted(values))


async def patch_secret(request: Request) -> Response:
    """Set the body's keys and remove its null ones; every other key stays. 404 when there is no secret."""
    backend, tenant, project, name = await _where_named(request)
    values, removed = _values(await json_body(request), allow_null=True)
    return _answer(name, project, await backend.patch(tenant, project, name, values, removed))


async def delete_secret(request: Request) -> Response:
    backend, tenant, project, name = await _where_named(request)
    if not await backend.delete(tenant, project, name):
        raise secret_not_found(name, project)
    return empty(204)


def _answer(name: str, project: str, keys: list[str] | None) -> Response:
    """The secret's keys, or 404 when the backend found no such secret (None)."""
    if keys is None:
        raise secret_not_found(name, project)
    return json_response(secret_object(name, project, keys))


async def check_secret_references(
    control: Any, tenant: str, project: str, config: FunctionConfig | Mapping[str, Any]
) -> list[SecretRef]:
    """At deploy: every secret (and key) the configuration references must exist in its tenant and
    project, unless the reference is optional; BadRequest (400) names the field and the secret.

    Returns the references (their shapes checked: a malformed one is a SpecError, 400 too).
    """
    if not isinstance(config, FunctionConfig):
        config = parse_config(config).config
    refs = secret_references(config)
    if not refs:
        return refs
    backend: SecretBackend | None = control.secrets
    if backend is None:
        raise BadRequest(f"{refs[0].field}: the function references secrets, and this server has no secret store")
    known: dict[str, list[str] | None] = {}
    for ref in refs:
        if ref.secret not in known:
            known[ref.secret] = await backend.keys(tenant, project, ref.secret)
        keys = known[ref.secret]
        if ref.optional:
            continue
        if keys is None:
            raise BadRequest(
                f"{ref.field}: secret {ref.secret!r} does not exist in project {project!r} (create it first: "
                f"nubis secrets set --project {project} {ref.secret} KEY=VALUE, or mark the reference optional)"
            )
        wanted = [ref.key] if ref.key is not None else [key for key, _ in ref.items or ()]
        for key in wanted:
            if key not in keys:
                raise BadRequest(
                    f"{ref.field}: secret {ref.secret!r} has no key {key!r} (its keys: {', '.join(keys) or 'none'})"
                )
    return refs


async def _where(request: Request) -> tuple[SecretBackend, str, str]:
    """The store, the gate's tenant and the path's project, which must exist in that tenant."""
    control = request.app.state.control
    tenant, project = request.state.tenant, request.path_params["project"]
    record = await control.store.get_project(project)
    if record is None or record.namespace != tenant:
        raise project_not_found(project)
    if control.secrets is None:
        raise PermanentError("this server has no secret store (nubis server --secrets-backend)")
    backend: SecretBackend = control.secrets
    return backend, tenant, project


async def _where_named(request: Request) -> tuple[SecretBackend, str, str, str]:
    """`_where`, and the secret's name from the path, checked."""
    backend, tenant, project = await _where(request)
    return backend, tenant, project, check_name(request.path_params["name"])


def _values(body: dict[str, Any], *, allow_null: bool) -> tuple[dict[str, str], list[str]]:
    """The body's keys to set and (PATCH) to remove; the errors never quote a value."""
    unknown = sorted(set(body) - set(BODY_KEYS))
    if unknown:
        raise SecretError(f"unknown body key {unknown[0][:100]!r}: expected data and/or stringData")
    if not any(key in body for key in BODY_KEYS):
        raise SecretError('expected {"data": {"KEY": "value", ...}} (or stringData)')
    values: dict[str, str] = {}
    removed: list[str] = []
    for part in BODY_KEYS:  # stringData last: its keys win, as in Kubernetes
        given = body.get(part)
        if given is None:
            continue
        if not isinstance(given, dict):
            raise SecretError(f"{part}: expected a map of keys to string values, found {_json_type(given)}")
        for key, value in given.items():
            if value is None and allow_null:
                removed.append(key)
                values.pop(key, None)
            elif not isinstance(value, str):
                what = "a string value (null removes the key)" if allow_null else "a string value"
                raise SecretError(f"{part}.{key[:100]}: expected {what}, found {_json_type(value)}")
            else:
                values[key] = value
                if key in removed:
                    removed.remove(key)
    return values, removed


def _json_type(value: object) -> str:
    """A JSON value's type in JSON's words, for a message that must not quote the value."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    return "null" if value is None else names.get(type(value), "an object")
