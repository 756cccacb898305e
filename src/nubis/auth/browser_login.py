"""The browser login (authorization code + PKCE), the dashboard's: begin, finish, where to log out.

`begin` remembers a pending login under a random `state` (with its nonce, PKCE verifier and the
relative path to return to) and answers the provider's authorization URL; the route also binds the
state to the browser with a short-lived cookie, so a callback carrying another browser's state is
refused (login CSRF). `finish` takes the provider's answer: the state must be pending (once: it is
forgotten on use) and the browser's, `iss` (RFC 9207) the issuer when sent, the code is exchanged
at the token endpoint (client secret by HTTP basic auth, or as a public client with its PKCE
verifier only), the ID token is checked by the shared verifier (signature, issuer, expiry, the
client id in `aud`, `azp` when several audiences) and its `nonce` must be the pending login's. The
claims (with the userinfo endpoint's, when the ID token lacks the roles claim) become the session's
principal. Pending logins live in memory, bounded, for PENDING_TTL seconds.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from nubis.auth.jwt_verifier import OidcVerifier
from nubis.auth.login_sessions import CookieSessions, Session
from nubis.auth.oidc_flow import (
    LoginFailed,
    ProviderEndpoints,
    ProviderUnreachable,
    TokenSet,
    authorization_url,
    basic_auth,
    discovery_url,
    pkce_pair,
    provider_error,
    random_token,
    token_set,
)
from nubis.auth.oidc_login import ClaimsMapping, LoginUnavailable, no_grant_note, verified_claims
from nubis.auth.role_map import claim_value
from nubis.errors import BadRequest

log = logging.getLogger("nubis.auth")

#: seconds a user has to log in at the provider; the most logins pending at once
PENDING_TTL = 600.0
MAX_PENDING = 10_000
#: seconds the provider's discovery document is believed
ENDPOINTS_TTL = 3600.0
HTTP_TIMEOUT = 10.0


class LoginRefused(BadRequest):
    """The callback cannot log anyone in (400): unknown state, the provider's error, a bad token."""


@dataclass(frozen=True)
class PendingLogin:
    nonce: str = field(repr=False)
    verifier: str = field(repr=False)
    next_path: str
    expires: float


@dataclass(frozen=True)
class Finished:
    cookie: str = field(repr=False)
    session: Session
    next_path: str


def safe_next(value: str | None) -> str:
    """`value` when it is a path of this server (`/x?y`), else `/`: never another site (`//evil`,
    `https://evil`, `/\\evil`, control characters), so the login is no open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return "/"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/"


class BrowserLogin:
    def __init__(
        self,
        *,
        verifier: OidcVerifier,
        mapping: ClaimsMapping,
        sessions: CookieSessions,
        client_id: str,
        client_secret: str | None,
        redirect_uri: str,
        scope: str,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.verifier = verifier
        self.issuer = verifier.issuer
        self.mapping = mapping
        self.sessions = sessions
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.scope = scope
        self.clock = clock
        self._http = http or httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False)
        self._pending: dict[str, PendingLogin] = {}
        self._endpoints: tuple[ProviderEndpoints, float] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"BrowserLogin(issuer={self.issuer!r}, client_id={self.client_id!r})"

    async def close(self) -> None:
        await self._http.aclose()

    async def endpoints(self) -> ProviderEndpoints:
        """The provider's endpoints (discovery, cached); `LoginUnavailable` when out of reach."""
        cached = self._endpoints
        if cached is not None and cached[1] > self.clock():
            return cached[0]
        async with self._lock:
            if self._endpoints is not None and self._endpoints[1] > self.clock():
                return self._endpoints[0]
            url = discovery_url(self.issuer)
            try:
                answer = await self._http.get(url, headers={"Accept": "application/json"})
                if answer.status_code != 200:
                    raise ProviderUnreachable(f"the discovery document {url} answered {answer.status_code}")
                endpoints = ProviderEndpoints.from_discovery(answer.json(), self.issuer, url)
            except (httpx.HTTPError, ValueError) as exc:
                raise LoginUnavailable(
                    f"cannot fetch the discovery document {url}: {exc or type(exc).__name__}"
                ) from None
            except ProviderUnreachable as exc:
                raise LoginUnavailable(exc.message) from None
            self._endpoints = (endpoints, self.clock() + ENDPOINTS_TTL)
            return endpoints

    async def begin(self, next_path: str | None, login_hint: str | None = None) -> tuple[str, str]:
        """(the provider's authorization URL, the state to bind to the browser)."""
        endpoints = await self.endpoints()
        state, nonce = random_token(), random_token()
        verifier, challenge = pkce_pair()
        self._remember(state, PendingLogin(nonce, verifier, safe_next(next_path), self.clock() + PENDING_TTL))
        extra = {"login_hint": login_hint[:200]} if login_hint else None
        url = authorization_url(
            endpoints,
            client_id=self.client_id,
            redirect_uri=self.redirect_uri,
            scope=self.scope,
            state=state,
            nonce=nonce,
            challenge=challenge,
            extra=extra,
        )
        return url, state

    def _remember(self, state: str, pending: PendingLogin) -> None:
        now = self.clock()
        if len(self._pending) >= MAX_PENDING:
            self._pending = {k: p for k, p in self._pending.items() if p.expires > now}
            while len(self._pending) >= MAX_PENDING:  # the oldest first: dicts keep insertion order
                del self._pending[next(iter(self._pending))]
        self._pending[state] = pending

    async def finish(self, query: Mapping[str, str], bound_state: str | None) -> Finished:
        """Log in from the provider's answer (`code`, `state`, `iss` or `error`); `LoginRefused`."""
        state = query.get("state") or ""
        if not bound_state or not hmac.compare_digest(state.encode(), bound_state.encode()):
            raise LoginRefused(
                "the login's state is not this browser's (no login cookie, or another login's): "
                "start again at /auth/login"
            )
        pending = self._pending.pop(state, None)
        if pending is None or pending.expires <= self.clock():
            raise LoginRefused("the login is unknown or took too long (10 minutes): start again at /auth/login")
        endpoints = await self.endpoints()
        if ("iss" in query or endpoints.sends_iss) and query.get("iss") != self.issuer:
            raise LoginRefused(f"the authorization answer is not from the issuer {self.issuer} (iss)")
        if "error" in query:
            raise LoginRefused(f"the provider refused the login: {provider_error(query)}")
        code = query.get("code")
        if not code:
            raise LoginRefused("the provider's answer has no code")
        tokens = await self._exchange(endpoints, code, pending.verifier)
        if tokens.id_token is None:
            raise LoginRefused("the provider's token answer has no id_token (is 'openid' in --oidc-scopes?)")
        claims = dict(await verified_claims(self.verifier, tokens.id_token))
        self._check_id_token(claims, pending.nonce)
        if claim_value(claims, self.mapping.roles_claim) is None and tokens.access_token:
            claims = await self._with_userinfo(endpoints, claims, tokens.access_token)
        principal = self.mapping.principal(claims)
        cookie, session = await self.sessions.open(principal, tokens.id_token)
        if principal.grants:
            log.info("OIDC login: %s (%s)", principal.name, "; ".join(g.describe() for g in principal.grants))
        else:
            log.info("OIDC login: %s", no_grant_note(principal, self.mapping.roles_claim))
        return Finished(cookie, session, pending.next_path)

    async def _exchange(self, endpoints: ProviderEndpoints, code: str, verifier: str) -> TokenSet:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        headers = {}
        if self._client_secret:  # client_secret_basic, every provider's default method
            headers["Authorization"] = basic_auth(self.client_id, self._client_secret)
        else:  # a public client: its id, and the PKCE verifier proves it began this login
            form["client_id"] = self.client_id
        try:
            answer = await self._http.post(endpoints.token_endpoint, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise LoginUnavailable(f"cannot reach the token endpoint {endpoints.token_endpoint}: {exc}") from None
        try:
            return token_set(answer.status_code, answer.content, "the code exchange", self.clock())
        except LoginFailed as exc:
            raise LoginRefused(exc.message) from None

    def _check_id_token(self, claims: Mapping[str, Any], nonce: str) -> None:
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if self.client_id not in audiences:
            raise LoginRefused(f"the ID token is not meant for the client {self.client_id} (aud)")
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise LoginRefused(f"the ID token names several audiences but is not for {self.client_id} (azp)")
        given = claims.get("nonce")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), nonce.encode()):
            raise LoginRefused("the ID token's nonce is not this login's (a replayed token?)")

    async def _with_userinfo(self, endpoints: ProviderEndpoints, claims: dict[str, Any], token: str) -> dict[str, Any]:
        """The claims with the userinfo endpoint's (OIDC Core §5.3.2: only when its `sub` is the ID token's)."""
        if endpoints.userinfo_endpoint is None:
            return claims
        try:
            answer = await self._http.get(endpoints.userinfo_endpoint, headers={"Authorization": f"Bearer {token}"})
            info = answer.json() if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            info = None
        if not isinstance(info, dict) or info.get("sub") != claims.get("sub"):
            log.warning(
                "OIDC login: the userinfo endpoint gave no claims for %s; grants from the ID token only",
                claims.get("sub"),
            )
            return claims
        return {**info, **claims}

    async def logout_url(self, session: Session | None) -> str | None:
        """The provider's end_session_endpoint for this session (RP-initiated logout), if it has one."""
        try:
            endpoints = await self.endpoints()
        except LoginUnavailable:
            return None
        if endpoints.end_session_endpoint is None:
            return None
        query = {"client_id": self.client_id}
        if session is not None and session.id_token:
            query["id_token_hint"] = session.id_token
        separator = "&" if "?" in endpoints.end_session_endpoint else "?"
        return endpoints.end_session_endpoint + separator + urlencode(query)
