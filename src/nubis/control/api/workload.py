"""The workload issuer's routes: its public documents, and what replicas ask with their identity token.

    GET  /.well-known/openid-configuration   the issuer's discovery document (public)
    GET  /.well-known/jwks.json              its public keys (public; also at /openid/v1/jwks, as
                                             Kubernetes serves its service-account issuer's)
    POST /api/workload/token                 {"audience"?} -> {"token", "expiresAt"}: a fresh token
    GET  /api/workload/secrets               the values of the secrets the caller's function references

The last two are not the API's users' routes: no API token or login opens them, only a replica's
own identity token (`Authorization: Bearer <jwt>`, audience `nubis`), checked here rather than by
the gate (`gatekeeping.ROUTES_WITHOUT_AUTH` lists them). The token must verify, and it is *bound*:
its function must still exist in the tenant and project it names, and its replica must be one the
platform runs now, so a token that outlives its replica (copied, leaked) opens nothing. The
secrets answered are chosen from the function's *stored* spec, never from what the replica asks:
a replica gets its own function's references from its own tenant and project, nothing else.
Refusals are in the audit log, secret reads in the server's log (names only, never values).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nubis.auth.principals import Principal
from nubis.auth.workload_identity import VerifiedToken, WorkloadTokenRefused
from nubis.control.api.gatekeeping import audit
from nubis.control.api.responses import from_exception, json_response
from nubis.control.workload import WorkloadService
from nubis.errors import BadRequest, NotFound, NubisError
from nubis.spec import parse_config
from nubis.spec.secret_refs import secret_references
from nubis.store.records import FunctionRecord

#: the issuer's public documents change only when the key rotates; verifiers refetch on a new kid
PUBLIC_CACHE = {"Cache-Control": "public, max-age=60"}
PRIVATE = {"Cache-Control": "no-store"}
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATHS = ("/.well-known/jwks.json", "/openid/v1/jwks")
TOKEN_PATH = "/api/workload/token"
SECRETS_PATH = "/api/workload/secrets"
log = logging.getLogger("nubis.api")

CLAIMS = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "tenant", "project", "function", "replica"]


def _service(request: Request) -> WorkloadService:
    service: WorkloadService | None = request.app.state.control.workload
    if service is None:
        raise NotFound("this server issues no workload identity")
    return service


async def openid_configuration(request: Request) -> Response:
    try:
        service = _service(request)
    except NotFound as exc:
        return from_exception(exc)
    document = {
        "issuer": service.issuer,
        "jwks_uri": service.jwks_url,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "claims_supported": CLAIMS,
    }
    return json_response(document, headers=PUBLIC_CACHE)


async def jwks(request: Request) -> Response:
    try:
        return json_response(_service(request).keys.jwks(), headers=PUBLIC_CACHE)
    except NotFound as exc:
        return from_exception(exc)


async def renew_token(request: Request) -> Response:
    """A fresh token for the caller's replica, for the audience asked (default: the control plane)."""
    verified: VerifiedToken | None = None
    try:
        verified = _verified(request)
        await _bound(request, verified)
        body = await _body(request)
        audience = body.get("audience", "nubis")
        if not isinstance(audience, str):
            raise BadRequest("audience: expected a string")
        token, expires = _service(request).renew(verified.identity, audience)
    except NubisError as exc:
        return await _refused(request, exc, verified)
    return json_response({"token": token, "expiresAt": expires}, headers=PRIVATE)


async def workload_secrets(request: Request) -> Response:
    """`{"secrets": {name: {key: value}}, "missing": [name]}`: exactly the keys the caller's
    function's stored spec references (a secret volume without items: every key)."""
    verified: VerifiedToken | None = None
    try:
        verified = _verified(request)
        record = await _bound(request, verified)
        wanted = referenced(record)
        backend = request.app.state.control.secrets
        identity = verified.identity
        values: dict[str, dict[str, str]] = {}
        missing: list[str] = []
        for name, keys in sorted(wanted.items()):
            data = await backend.read(identity.tenant, identity.project, name)
            if data is None:
                missing.append(name)
                continue
            values[name] = dict(data) if keys is None else {k: v for k, v in data.items() if k in keys}
    except NubisError as exc:
        return await _refused(request, exc, verified)
    log.info("%s read the secrets %s", identity.subject, ", ".join(sorted(values)) or "(none)")
    return json_response({"secrets": values, "missing": missing}, headers=PRIVATE)


def referenced(record: FunctionRecord) -> dict[str, set[str] | None]:
    """The secrets (and keys; None: all) the function's stored spec references."""
    wanted: dict[str, set[str] | None] = {}
    for ref in secret_references(parse_config(record.config).config):
        if ref.key is not None:
            keys: set[str] | None = {ref.key}
        elif ref.items is not None:
            keys = {key for key, _ in ref.items}
        else:
            keys = None  # a volume of every key
        if keys is None or (ref.secret in wanted and wanted[ref.secret] is None):
            wanted[ref.secret] = None
        else:
            wanted[ref.secret] = (wanted.get(ref.secret) or set()) | keys
    return wanted


def _verified(request: Request) -> VerifiedToken:
    """The calling replica's identity, from a token that verifies."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise WorkloadTokenRefused("a replica's identity token is required (Authorization: Bearer)")
    return _service(request).verify(token.strip())


async def _bound(request: Request, verified: VerifiedToken) -> FunctionRecord:
    """The record of the token's function, if it exists where the token says and its replica runs."""
    control = request.app.state.control
    identity = verified.identity
    record: FunctionRecord | None = await control.store.get_function(identity.function)
    if record is None or (record.namespace, record.project) != (identity.tenant, identity.project):
        raise WorkloadTokenRefused("the workload token's function does not exist (any more) where it says")
    status = await control.platform.status(identity.function)
    if status is None or identity.replica not in {replica.name for replica in status.replicas}:
        raise WorkloadTokenRefused("the workload token's replica is not running")
    return record


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _principal(verified: VerifiedToken | None) -> Principal | None:
    return Principal(verified.identity.subject, "workload") if verified is not None else None


async def _refused(request: Request, exc: NubisError, verified: VerifiedToken | None) -> Response:
    response = from_exception(exc)
    if isinstance(exc, WorkloadTokenRefused):
        response.headers["WWW-Authenticate"] = 'Bearer realm="nubis-workload"'
    tenant = verified.identity.tenant if verified is not None else request.app.state.control.settings.namespace
    project = verified.identity.project if verified is not None else None
    await audit(request, _principal(verified), "read", tenant, project, response, exc.message)
    return response


def routes() -> list[Route]:
    """The issuer's routes; each checks its caller itself (`gatekeeping.ROUTES_WITHOUT_AUTH`)."""
    return [
        Route(DISCOVERY_PATH, openid_configuration, methods=["GET"]),
        *(Route(path, jwks, methods=["GET"]) for path in JWKS_PATHS),
        Route(TOKEN_PATH, renew_token, methods=["POST"]),
        Route(SECRETS_PATH, workload_secrets, methods=["GET"]),
    ]
