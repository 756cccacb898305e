"""The OIDC login as `nubis server` is configured with it: authenticators, sessions and routes.

`oidc_authenticators(settings)` is what the server hands the gate and the app: the bearer JWT
authenticator, the browser sessions (the gate's `SessionAuthenticator`) and the `/auth/*` routes.
Without `--oidc-issuer` and `--oidc-client-id` there is no login: no authenticator, no sessions,
and only `/auth/config`, which says so (the dashboard and `nubis login --oidc` read it).

One verifier serves both the API's bearer JWTs and the browser login's ID tokens (the keys are
fetched once); the audiences it accepts are the server's client id, the CLI's client id and
`--oidc-audience`, since each of those names tokens meant for this platform.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from starlette.routing import BaseRoute

from nubis.auth.browser_login import BrowserLogin
from nubis.auth.gate import Authenticator, SessionAuthenticator
from nubis.auth.issuers import issuer_problem
from nubis.auth.jwt_verifier import OidcVerifier
from nubis.auth.login_sessions import CookieSessions, MemorySessionStore
from nubis.auth.oidc_login import ClaimsMapping, OidcAuthenticator
from nubis.auth.role_map import RoleMap, RoleMapError, load_role_map
from nubis.control.api import auth_routes
from nubis.control.settings import ServerSettings

CALLBACK_PATH = "/auth/callback"


def oidc_login_problem(settings: ServerSettings) -> str | None:
    """What is wrong with the `--oidc-*` options as given together (None: nothing), the role map
    file's mistakes included (file, field, expected, found): checked before anything starts."""
    issuer, client_id = settings.oidc_issuer, settings.oidc_client_id
    if issuer is None:
        given = [name for name, value in _login_options(settings) if value]
        return f"{given[0]} configures the login at --oidc-issuer: give the issuer too" if given else None
    if problem := issuer_problem(issuer):
        return f"--oidc-issuer: {problem}"
    if client_id is None:
        if settings.oidc_audience:
            return None  # bearer JWTs for the gateway only, no login
        return "--oidc-issuer needs --oidc-client-id (the server's client at the issuer) or --oidc-audience"
    if settings.oidc_client_secret is not None and not settings.oidc_client_secret.get_secret_value():
        return "--oidc-client-secret is empty: give the client's secret, or leave it out for a public client"
    redirect = redirect_url(settings)
    parts = urlsplit(redirect)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        return f"--oidc-redirect-url: expected an absolute http(s) URL without fragment, found {redirect!r}"
    if settings.oidc_role_map is not None and not settings.oidc_role_map.is_file():
        return f"--oidc-role-map: expected a YAML or JSON file, found no file at {str(settings.oidc_role_map)!r}"
    try:
        role_map(settings)
    except RoleMapError as exc:
        return f"--oidc-role-map: {exc.message}"
    return None


def _login_options(settings: ServerSettings) -> list[tuple[str, object]]:
    return [
        ("--oidc-audience", settings.oidc_audience),
        ("--oidc-client-id", settings.oidc_client_id),
        ("--oidc-client-secret", settings.oidc_client_secret),
        ("--oidc-cli-client-id", settings.oidc_cli_client_id),
        ("--oidc-role-map", settings.oidc_role_map),
        ("--oidc-redirect-url", settings.oidc_redirect_url),
    ]


def redirect_url(settings: ServerSettings) -> str:
    """The browser login's callback: `--oidc-redirect-url`, else this API's own URL's."""
    return settings.oidc_redirect_url or settings.workload_issuer + CALLBACK_PATH


def is_secure(settings: ServerSettings) -> bool:
    """Whether browsers reach the API over TLS: its own (--tls-cert) or a proxy's (an https callback)."""
    return settings.tls_cert is not None or redirect_url(settings).startswith("https://")


def cli_client_id(settings: ServerSettings) -> str | None:
    return settings.oidc_cli_client_id or settings.oidc_client_id


def role_map(settings: ServerSettings) -> RoleMap:
    path: Path | None = settings.oidc_role_map
    return load_role_map(path, settings.oidc_roles_claim) if path is not None else RoleMap()


def oidc_authenticators(
    settings: ServerSettings,
) -> tuple[list[Authenticator], SessionAuthenticator | None, list[BaseRoute]]:
    """The login's parts for the gate and the app (see the module's docstring); raises
    `RoleMapError` for a bad role map."""
    issuer, client_id = settings.oidc_issuer, settings.oidc_client_id
    if issuer is None or client_id is None:
        return [], None, auth_routes.routes(None)
    mapping = ClaimsMapping(role_map(settings), settings.oidc_roles_claim)
    audiences = [
        client_id,
        cli_client_id(settings) or client_id,
        *([settings.oidc_audience] if settings.oidc_audience else []),
    ]
    verifier = OidcVerifier(issuer, audiences, leeway=settings.oidc_leeway)
    sessions = CookieSessions(MemorySessionStore(), secure=is_secure(settings), ttl=settings.oidc_session_ttl)
    secret = settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None
    login = BrowserLogin(
        verifier=verifier,
        mapping=mapping,
        sessions=sessions,
        client_id=client_id,
        client_secret=secret,
        redirect_uri=redirect_url(settings),
        scope=settings.oidc_scopes,
    )
    config = auth_routes.LoginConfig(
        issuer=issuer, client_id=cli_client_id(settings) or client_id, scopes=settings.oidc_scopes
    )
    return [OidcAuthenticator(verifier, mapping)], sessions, auth_routes.routes(auth_routes.Login(login, config))
