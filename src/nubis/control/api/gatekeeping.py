"""Every API route is built through `guarded`, so none can skip the authorisation gate.

`guarded` authenticates the caller, resolves where the call acts (`scopes.py`: tenant, project),
asks the gate whether the caller may do the route's action there, and records the call in the
audit log when it changes something or is refused. A named resource the caller may not read is
answered as missing (404), so the gate does not disclose other tenants' names.

`ROUTES_WITHOUT_AUTH` lists the only exceptions (liveness and readiness probes, and the public
documents of login and workload identity); a test enumerates the app's routes and checks both facts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nubis.auth.gate import AuthenticationError, AuthorizationError
from nubis.auth.principals import Action, Principal
from nubis.control.api import scopes
from nubis.control.api.responses import from_exception
from nubis.errors import NotFound, NubisError
from nubis.store.records import AuditRecord, utc_now

log = logging.getLogger("nubis.api")

Endpoint = Callable[[Request], Awaitable[Response]]

#: Probes a process supervisor calls; they reveal nothing but "up" and "ready". The workload
#: issuer's public documents (discovery, JWKS), and the two routes replicas call with their own
#: identity token, which `workload.py` checks itself (no API token or login opens them).
ROUTES_WITHOUT_AUTH = frozenset(
    {
        "/healthz",
        "/readyz",
        # the browser login's start and the provider's redirect back, and what the SPA and CLI read
        # to begin; the session's own routes check its cookie and CSRF token themselves (auth_routes.py)
        "/auth/config",
        "/auth/login",
        "/auth/callback",
        "/auth/logout",
        "/auth/session",
        # the workload issuer's public documents, and the routes a replica calls with its identity
        # token, which they check themselves (workload.py)
        "/.well-known/openid-configuration",
        "/.well-known/jwks.json",
        "/openid/v1/jwks",
        "/api/workload/token",
        "/api/workload/secrets",
    }
)
#: methods that change nothing: audited only when refused
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def guarded(action: Action, endpoint: Endpoint, scope: scopes.Resolver = scopes.in_tenant) -> Endpoint:
    """Wrap an endpoint: authenticate, resolve (tenant, project), authorise, audit, map errors."""

    async def gate_then_call(request: Request) -> Response:
        control = request.app.state.control
        gate = control.gate
        principal: Principal | None = None
        tenant, project = control.settings.namespace, None
        try:
            principal = await gate.authenticate(
                request.headers.get("authorization"),
                cookies=request.cookies,
                method=request.method,
                headers=request.headers,
            )
            target = await scope(request, principal)
            tenant, project = target.tenant, target.project
            allowed(principal, action, target)
        except AuthenticationError as exc:
            response = from_exception(exc)
            response.headers["WWW-Authenticate"] = 'Bearer realm="nubis"'
            await audit(request, principal, action, tenant, project, response, exc.message)
            return response
        except scopes.AnsweredAsMissing as exc:
            response = Response(status_code=204)
            await audit(request, principal, action, tenant, project, response, exc.message, outcome="denied")
            return response
        except NubisError as exc:  # AuthorizationError (403), a hidden resource (404), the store failing
            response = failed(request, exc)
            hidden = isinstance(exc, NotFound)
            await audit(
                request, principal, action, tenant, project, response, exc.message, outcome="denied" if hidden else None
            )
            return response
        request.state.principal = principal
        request.state.tenant = tenant
        request.state.project = project
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = failed(request, exc)
            detail = exc.message if isinstance(exc, NubisError) else type(exc).__name__
        else:
            detail = ""
        if request.method not in READ_METHODS and action != "invoke":
            await audit(request, principal, action, tenant, project, response, detail)
        return response

    gate_then_call.__name__ = getattr(endpoint, "__name__", "endpoint")
    gate_then_call.nubis_guarded = True  # type: ignore[attr-defined]
    gate_then_call.nubis_action = action  # type: ignore[attr-defined]
    return gate_then_call


def allowed(principal: Principal, action: Action, target: scopes.Target) -> None:
    """Raise unless `principal` may do `action` on `target`.

    A tenant-wide read (a list) needs any grant in the tenant: the endpoint shows only the
    projects the principal sees. A named resource the principal may not even read is missing to it.
    """
    tenant, project = target.tenant, target.project
    if principal.may(action, tenant, project):
        return
    if action == "read" and project is None and target.hidden_as is None and principal.sees_tenant(tenant):
        return
    if target.hidden_as is not None and not principal.may("read", tenant, project):
        raise target.hidden_as
    where = f"tenant {tenant}" + (f", project {project}" if project else "")
    role = principal.role_in(tenant, project)
    has = f"its role there is {role}" if role else "it has no role there"
    raise AuthorizationError(f"{principal.name} may not {action} in {where} ({has})")


async def audit(
    request: Request,
    principal: Principal | None,
    action: Action,
    tenant: str,
    project: str | None,
    response: Response,
    detail: str,
    *,
    outcome: str | None = None,
) -> None:
    """Record a call (never its body, nor a credential). The call has been answered by then, so an
    audit log that cannot be written is logged as a warning rather than failing the call."""
    status = response.status_code
    if outcome is None:
        outcome = "denied" if status in (401, 403) else ("failed" if status >= 400 else "allowed")
        if request.method in READ_METHODS and outcome != "denied":
            return  # a read that was let through: not audited (a caller naming `outcome` records it anyway)
    record = AuditRecord(
        time=utc_now(),
        principal=principal.name if principal else "unauthenticated",
        tenant=tenant,
        project=project,
        action=action,
        method=request.method,
        path=request.url.path,
        status=status,
        outcome=outcome,
        remote=request.client.host if request.client else "",
        detail=detail,
    )
    try:
        await request.app.state.control.store.add_audit(record)
    except NubisError as exc:
        log.warning("could not record %s %s in the audit log: %s", request.method, request.url.path, exc.message)


def failed(request: Request, exc: Exception) -> Response:
    """The error answer for `exc`, logged once: a bug (outside the hierarchy) with its traceback,
    a server-side `NubisError` (5xx) as one line; a client's error (4xx) is the client's to read."""
    response = from_exception(exc)
    if not isinstance(exc, NubisError):
        log.error("%s %s failed unexpectedly", request.method, request.url.path, exc_info=exc)
    elif response.status_code >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc.message)
    return response


def route(
    path: str,
    endpoint: Endpoint,
    methods: list[str],
    action: Action,
    scope: scopes.Resolver = scopes.in_tenant,
    **kwargs: Any,
) -> Route:
    return Route(path, guarded(action, endpoint, scope), methods=methods, **kwargs)
