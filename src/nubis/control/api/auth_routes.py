"""The OIDC login's routes, beside the API (not under /api): what the dashboard and the CLI call.

    GET  /auth/config    public: whether the server has a login, its issuer, the client id and
                         scopes `nubis login --oidc` uses, whether the issuer has a device flow
    GET  /auth/login     public: ?next=/path (this server's paths only) [&login_hint=]: a redirect
                         to the issuer (code flow, PKCE S256, state, nonce), the state bound to
                         the browser by a cookie for the callback
    GET  /auth/callback  public: the issuer's answer; a session cookie, then a redirect to next
    POST /auth/logout    the session cookie and its X-CSRF-Token: ends the session; 303 to the
                         issuer's end_session_endpoint (or JSON {logoutUrl} to Accept: application/json)
    GET  /auth/session   who the caller is (cookie or bearer): name, groups, grants, and for a
                         cookie the CSRF token state-changing calls must send

The first three are reachable without credentials (gatekeeping.ROUTES_WITHOUT_AUTH); the last two
authenticate themselves: logout by the session it ends, session through the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from nubis.auth.browser_login import PENDING_TTL, BrowserLogin
from nubis.auth.gate import AuthenticationError
from nubis.auth.login_sessions import check_csrf
from nubis.auth.oidc_login import LoginUnavailable, no_grant_note
from nubis.control.api.gatekeeping import audit
from nubis.control.api.responses import from_exception, json_response
from nubis.errors import NubisError

#: binds a pending login's state to the browser that began it (sent to the callback only)
LOGIN_STATE_COOKIE = "nubis_login_state"
CALLBACK = "/auth/callback"
NO_STORE = {"Cache-Control": "no-store"}
PUBLIC_PATHS = ("/auth/config", "/auth/login", CALLBACK)


@dataclass(frozen=True)
class LoginConfig:
    """What `/auth/config` tells anyone: no secret."""

    issuer: str
    #: the client `nubis login --oidc` uses (a public one)
    client_id: str
    scopes: str


@dataclass(frozen=True)
class Login:
    browser: BrowserLogin
    config: LoginConfig


def routes(login: Login | None) -> list[BaseRoute]:
    if login is None:
        return [Route("/auth/config", _no_login, methods=["GET"])]
    endpoints = _Endpoints(login)
    return [
        Route("/auth/config", endpoints.config, methods=["GET"]),
        Route("/auth/login", endpoints.login, methods=["GET"]),
        Route(CALLBACK, endpoints.callback, methods=["GET"]),
        Route("/auth/logout", endpoints.logout, methods=["POST"]),
        Route("/auth/session", endpoints.session, methods=["GET"]),
    ]


async def _no_login(request: Request) -> Response:
    return json_response({"enabled": False}, headers=NO_STORE)


class _Endpoints:
    def __init__(self, login: Login) -> None:
        self.browser = login.browser
        self.config_answer = login.config
        self.sessions = login.browser.sessions

    async def config(self, request: Request) -> Response:
        try:
            device: bool | None = (await self.browser.endpoints()).device_authorization_endpoint is not None
        except LoginUnavailable:
            device = None  # unknown now: the CLI asks the issuer itself
        config = self.config_answer
        answer = {
            "enabled": True,
            "issuer": config.issuer,
            "clientId": config.client_id,
            "scopes": config.scopes,
            "deviceAuthorization": device,
            "loginUrl": "/auth/login",
        }
        return json_response(answer, headers=NO_STORE)

    async def login(self, request: Request) -> Response:
        query = request.query_params
        try:
            url, state = await self.browser.begin(query.get("next"), query.get("login_hint"))
        except NubisError as exc:
            return from_exception(exc)
        response = RedirectResponse(url, status_code=302, headers=NO_STORE)
        response.set_cookie(
            LOGIN_STATE_COOKIE,
            state,
            max_age=int(PENDING_TTL),
            path=CALLBACK,
            secure=self.sessions.secure,
            httponly=True,
            samesite="lax",
        )
        return response

    async def callback(self, request: Request) -> Response:
        namespace = request.app.state.control.settings.namespace
        try:
            finished = await self.browser.finish(dict(request.query_params), request.cookies.get(LOGIN_STATE_COOKIE))
        except NubisError as exc:
            response = from_exception(exc)
            await audit(
                request, None, "read", namespace, None, response, f"login refused: {exc.message}", outcome="denied"
            )
        else:
            response = RedirectResponse(finished.next_path, status_code=303, headers=NO_STORE)
            response.set_cookie(self.sessions.cookie_name, finished.cookie, **self.sessions.cookie_attributes())  # type: ignore[arg-type]
            principal = finished.session.principal
            tenant = principal.home_tenant() or namespace
            await audit(request, principal, "read", tenant, None, response, "logged in", outcome="allowed")
        response.delete_cookie(LOGIN_STATE_COOKIE, path=CALLBACK, secure=self.sessions.secure, httponly=True)
        return response

    async def logout(self, request: Request) -> Response:
        cookie = request.cookies.get(self.sessions.cookie_name)
        session = await self.sessions.find(cookie) if cookie else None
        if session is not None:
            try:
                check_csrf(session, request.headers)
            except NubisError as exc:
                return from_exception(exc)
            await self.sessions.end(cookie or "")
        url = await self.browser.logout_url(session)
        if session is not None:
            principal = session.principal
            tenant = principal.home_tenant() or request.app.state.control.settings.namespace
            await audit(request, principal, "read", tenant, None, Response(status_code=200), "logged out")
        if "application/json" in request.headers.get("accept", ""):
            response: Response = json_response({"loggedOut": session is not None, "logoutUrl": url}, headers=NO_STORE)
        else:
            response = RedirectResponse(url or "/", status_code=303, headers=NO_STORE)
        response.delete_cookie(self.sessions.cookie_name, path="/", secure=self.sessions.secure, httponly=True)
        return response

    async def session(self, request: Request) -> Response:
        gate = request.app.state.control.gate
        try:
            principal = await gate.authenticate(
                request.headers.get("authorization"), cookies=request.cookies, method="GET", headers=request.headers
            )
        except AuthenticationError as exc:
            response = from_exception(exc)
            response.headers["WWW-Authenticate"] = 'Bearer realm="nubis"'
            return response
        except NubisError as exc:
            return from_exception(exc)
        answer: dict[str, object] = {
            "name": principal.name,
            "kind": principal.kind,
            "groups": list(principal.groups),
            "admin": principal.is_admin,
            "grants": [{"role": g.role, "tenant": g.tenant, "project": g.project} for g in principal.grants],
        }
        cookie = request.cookies.get(self.sessions.cookie_name)
        if not request.headers.get("authorization") and cookie:
            session = await self.sessions.find(cookie)
            if session is not None:
                answer |= {"csrfToken": session.csrf_token, "expiresAt": session.expires}
        if not principal.grants:
            answer["note"] = no_grant_note(principal, self.browser.mapping.roles_claim)
        return json_response(answer, headers=NO_STORE)
