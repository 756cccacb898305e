"""Every API route is built through `guarded`, so none can skip the authorisation gate.

`ROUTES_WITHOUT_AUTH` lists the only exceptions (the server's own liveness and readiness probes);
a test enumerates the app's routes and checks both facts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nubis.auth.gate import Action, AuthenticationError
from nubis.control.api.responses import from_exception
from nubis.errors import NubisError

log = logging.getLogger("nubis.api")

Endpoint = Callable[[Request], Awaitable[Response]]

#: Probes a process supervisor calls; they reveal nothing but "up" and "ready".
ROUTES_WITHOUT_AUTH = frozenset({"/healthz", "/readyz"})


def guarded(action: Action, endpoint: Endpoint) -> Endpoint:
    """Wrap an endpoint: authenticate, authorise (principal, project, action), map errors."""

    async def gate_then_call(request: Request) -> Response:
        gate = request.app.state.control.gate
        try:
            principal = await gate.authenticate(request.headers.get("authorization"))
            gate.authorize(principal, action, request.headers.get("x-nuclio-project-name"))
        except AuthenticationError as exc:
            response = from_exception(exc)
            response.headers["WWW-Authenticate"] = 'Bearer realm="nubis"'
            return response
        except NubisError as exc:  # AuthorizationError (403), or the token store failing
            return failed(request, exc)
        request.state.principal = principal
        try:
            return await endpoint(request)
        except Exception as exc:
            return failed(request, exc)

    gate_then_call.__name__ = getattr(endpoint, "__name__", "endpoint")
    gate_then_call.nubis_guarded = True  # type: ignore[attr-defined]
    return gate_then_call


def failed(request: Request, exc: Exception) -> Response:
    """The error answer for `exc`, logged once: a bug (outside the hierarchy) with its traceback,
    a server-side `NubisError` (5xx) as one line; a client's error (4xx) is the client's to read."""
    response = from_exception(exc)
    if not isinstance(exc, NubisError):
        log.error("%s %s failed unexpectedly", request.method, request.url.path, exc_info=exc)
    elif response.status_code >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc.message)
    return response


def route(path: str, endpoint: Endpoint, methods: list[str], action: Action, **kwargs: Any) -> Route:
    return Route(path, guarded(action, endpoint), methods=methods, **kwargs)
