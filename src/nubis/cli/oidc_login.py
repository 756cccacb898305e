"""`nubis login --oidc [URL]`: log in at the server's OIDC issuer, then save the tokens (0600).

The server says where to log in (`GET /auth/config`: issuer, the public client id, scopes; never a
secret). Then, when the issuer has a device authorization endpoint (RFC 8628), the device flow: the
CLI prints a URL and a code, the user confirms them in any browser (on any machine), and the CLI
polls the token endpoint at the interval the provider asks. Otherwise (or with `--loopback`) the
authorization code flow with PKCE S256 through a loopback redirect (RFC 8252 §7.3): a one-shot
listener on http://127.0.0.1:<free port>/callback, a browser opened on the authorization URL (or
the URL printed), the state and the ID token's nonce checked. `offline_access` is asked for, with
`prompt=consent` as OIDC Core §11 wants, so a refresh token comes back; `oidc_tokens.py` uses it.

The ID token becomes the CLI's API token; before saving it the CLI asks the server who it is
(`GET /auth/session`), so a login the server does not accept is said at once, with the reason.
"""

from __future__ import annotations

import hmac
import time
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import typer

from nubis.auth.oidc_flow import (
    DEVICE_CODE_GRANT,
    LoginFailed,
    ProviderEndpoints,
    ProviderUnreachable,
    TokenSet,
    authorization_url,
    discovery_url,
    pkce_pair,
    provider_error,
    random_token,
    token_set,
    unverified_claims,
)
from nubis.cli.client import ClientError, error_text
from nubis.cli.oidc_tokens import SavedOidc, save_oidc_login

if TYPE_CHECKING:
    import httpx

#: seconds the user has to finish a loopback login; the device flow's default interval (RFC 8628 §3.2)
LOOPBACK_TIMEOUT = 300.0
DEFAULT_INTERVAL = 5.0
HTTP_TIMEOUT = 30.0


def oidc_login(url: str, *, loopback: bool = False, open_browser: bool = True) -> Path:
    """Log in at `url`'s issuer and save the login; returns the config file's path."""
    import httpx

    url = url.rstrip("/")
    with httpx.Client(timeout=HTTP_TIMEOUT) as http:
        config = _server_config(http, url)
        issuer, client_id = str(config["issuer"]), str(config["clientId"])
        endpoints = _discover(http, issuer)
        scope = str(config.get("scopes") or "openid")
        if "offline_access" not in scope.split():
            scope += " offline_access"
        if endpoints.device_authorization_endpoint and not loopback:
            tokens = _device_flow(http, endpoints, client_id, scope)
        else:
            tokens = _loopback_flow(http, endpoints, client_id, scope, open_browser)
        if tokens.id_token is None:
            raise ClientError(f"{issuer} gave no ID token: the server's --oidc-scopes must include openid")
        who = _whoami(http, url, tokens.id_token)
    saved = SavedOidc(issuer, client_id, endpoints.token_endpoint, tokens.refresh_token)
    path = save_oidc_login(url, tokens, saved)
    grants = ", ".join(
        f"{g['role']} of {g['tenant']}" + (f"/{g['project']}" if g.get("project") else "")
        for g in who.get("grants", [])
    )
    typer.echo(f"logged in to {url} as {who.get('name')} ({grants or 'no role yet'}); saved to {path}")
    if who.get("note"):
        typer.echo(str(who["note"]), err=True)
    return path


def _server_config(http: httpx.Client, url: str) -> dict[str, Any]:
    import httpx

    try:
        answer = http.get(f"{url}/auth/config")
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the Nubis server at {url}: {exc}") from None
    config = answer.json() if answer.status_code == 200 else None
    if not isinstance(config, dict) or not config.get("enabled"):
        raise ClientError(
            f"the server at {url} has no OIDC login (it is started with --oidc-issuer and --oidc-client-id); "
            "log in with an API token: nubis login URL"
        )
    return config


def _discover(http: httpx.Client, issuer: str) -> ProviderEndpoints:
    import httpx

    url = discovery_url(issuer)
    try:
        answer = http.get(url)
        document = answer.json() if answer.status_code == 200 else None
        if not isinstance(document, dict):
            raise ProviderUnreachable(f"the discovery document {url} answered {answer.status_code}")
        return ProviderEndpoints.from_discovery(document, issuer, url)
    except (httpx.HTTPError, ValueError) as exc:
        raise ClientError(f"cannot fetch the discovery document {url}: {exc}") from None
    except ProviderUnreachable as exc:
        raise ClientError(exc.message) from None


def _token(http: httpx.Client, endpoint: str, form: dict[str, str]) -> TokenSet | dict[str, Any]:
    """The tokens, or the provider's OAuth error answer (a dict with `error`, RFC 6749 §5.2)."""
    import httpx

    try:
        answer = http.post(endpoint, data=form)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the token endpoint {endpoint}: {exc}") from None
    try:
        return token_set(answer.status_code, answer.content, "the login")
    except LoginFailed as exc:
        try:
            body = answer.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "error" in body:
            return body
        raise ClientError(exc.message) from None


def _device_flow(http: httpx.Client, endpoints: ProviderEndpoints, client_id: str, scope: str) -> TokenSet:
    import httpx

    assert endpoints.device_authorization_endpoint is not None
    form = {"client_id": client_id, "scope": scope, "prompt": "consent"}
    try:
        answer = http.post(endpoints.device_authorization_endpoint, data=form)
        grant = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ClientError(
            f"cannot start the device login at {endpoints.device_authorization_endpoint}: {exc}"
        ) from None
    if answer.status_code != 200 or not isinstance(grant, dict) or "device_code" not in grant:
        detail = provider_error(grant, answer.status_code) if isinstance(grant, dict) else f"HTTP {answer.status_code}"
        raise ClientError(f"the provider refused the device login: {detail}")
    complete = grant.get("verification_uri_complete")
    typer.echo(f"To log in, open {grant.get('verification_uri')} and enter the code {grant.get('user_code')}", err=True)
    if complete:
        typer.echo(f"  (or open {complete})", err=True)
    interval = float(grant.get("interval") or DEFAULT_INTERVAL)
    deadline = time.monotonic() + float(grant.get("expires_in") or 600)
    poll = {"grant_type": DEVICE_CODE_GRANT, "device_code": str(grant["device_code"]), "client_id": client_id}
    while time.monotonic() < deadline:
        time.sleep(interval)
        result = _token(http, endpoints.token_endpoint, poll)
        if isinstance(result, TokenSet):
            return result
        if result.get("error") == "authorization_pending":
            continue
        if result.get("error") == "slow_down":  # RFC 8628 §3.5: 5 s more from now on
            interval += 5.0
            continue
        raise ClientError(f"the device login failed: {provider_error(result)}")
    raise ClientError("the device login's code expired before it was confirmed: run `nubis login --oidc` again")


class _Callback(BaseHTTPRequestHandler):
    """The one request the provider's redirect makes: its query is kept, the page says what next."""

    query: dict[str, str] | None = None

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/callback":
            self.send_error(404)
            return
        type(self).query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        body = b"<html><body>Nubis: login received, you can close this tab.</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the query holds the code: not printed
        return


def _loopback_flow(
    http: httpx.Client, endpoints: ProviderEndpoints, client_id: str, scope: str, open_browser: bool
) -> TokenSet:
    handler: type[_Callback] = type("Callback", (_Callback,), {"query": None})  # one per login
    with HTTPServer(("127.0.0.1", 0), handler) as listener:
        redirect_uri = f"http://127.0.0.1:{listener.server_address[1]}/callback"
        state, nonce = random_token(), random_token()
        verifier, challenge = pkce_pair()
        url = authorization_url(
            endpoints,
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            nonce=nonce,
            challenge=challenge,
            extra={"prompt": "consent"},
        )
        typer.echo(f"To log in, open this URL in a browser on this machine:\n  {url}", err=True)
        if open_browser:
            webbrowser.open(url)
        listener.timeout = 1.0
        deadline = time.monotonic() + LOOPBACK_TIMEOUT
        while handler.query is None and time.monotonic() < deadline:
            listener.handle_request()
    query: dict[str, str] | None = handler.query
    if query is None:
        raise ClientError(f"no login came back within {LOOPBACK_TIMEOUT:g} s: run `nubis login --oidc` again")
    if not hmac.compare_digest(query.get("state", "").encode(), state.encode()):
        raise ClientError("the login's answer carries another state: run `nubis login --oidc` again")
    if "error" in query:
        raise ClientError(f"the provider refused the login: {provider_error(query)}")
    if "iss" in query and query["iss"] != endpoints.issuer:
        raise ClientError(f"the login's answer is not from {endpoints.issuer} (iss)")
    form = {
        "grant_type": "authorization_code",
        "code": query.get("code", ""),
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
        "client_id": client_id,
    }
    result = _token(http, endpoints.token_endpoint, form)
    if not isinstance(result, TokenSet):
        raise ClientError(f"the code exchange failed: {provider_error(result)}")
    given = unverified_claims(result.id_token or "").get("nonce")  # the server verifies the signature
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), nonce.encode()):
        raise ClientError("the ID token's nonce is not this login's: run `nubis login --oidc` again")
    return result


def _whoami(http: httpx.Client, url: str, token: str) -> dict[str, Any]:
    import httpx

    try:
        answer = http.get(f"{url}/auth/session", headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the Nubis server at {url}: {exc}") from None
    if answer.status_code != 200:
        raise ClientError(f"the server does not accept the login: {error_text(answer)}")
    who: dict[str, Any] = answer.json()
    return who
