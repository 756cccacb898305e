"""The one authorisation gate every API call goes through: (principal, tenant, project, action).

Authentication tries, in order: the `Authorization` header (an API token, as Bearer or as basic
auth's password; or a bearer JWT from the configured OIDC issuer), then the browser session cookie
(with its CSRF check on state-changing methods), then anonymous access where the server runs with
`--insecure-local` on loopback. Each credential kind is one `Authenticator`; the gate knows none of
their details, so a new kind (a workload identity, a client certificate) is one more authenticator.

Authorisation is `Principal.may(action, tenant, project)` (principals.py); a refusal names the
principal, the action and where, never a credential.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Protocol

from nubis.auth.principals import ANONYMOUS, Action, Principal
from nubis.errors import ApiError


class AuthenticationError(ApiError):
    """No valid credentials: the API answers 401 (with a `WWW-Authenticate` challenge)."""

    status_code = 401


class AuthorizationError(ApiError):
    """Valid credentials, not allowed: the API answers 403."""

    status_code = 403


class Authenticator(Protocol):
    """One kind of bearer credential. `principal` answers None when the credential is not of its
    kind (so the next authenticator is asked), and raises `AuthenticationError` when it is of its
    kind but not valid (expired, revoked, wrong issuer, bad signature)."""

    async def principal(self, credential: str) -> Principal | None: ...


class SessionAuthenticator(Protocol):
    """The browser login's session cookie (auth code + PKCE flow). `principal` gets the cookie's
    value, the request method and the request's headers (for the CSRF check of state-changing
    methods); None when the cookie names no live session."""

    cookie_name: str

    async def principal(self, cookie: str, method: str, headers: Mapping[str, str]) -> Principal | None: ...


class Gate:
    """Authenticates a request's credentials and authorises the action it asks for."""

    def __init__(
        self,
        authenticators: Sequence[Authenticator],
        *,
        sessions: SessionAuthenticator | None = None,
        allow_anonymous: bool = False,
    ) -> None:
        self.authenticators = list(authenticators)
        self.sessions = sessions
        self.allow_anonymous = allow_anonymous

    @staticmethod
    def credentials(authorization: str | None) -> str | None:
        """The credential carried by an Authorization header (Bearer, or basic auth's password)."""
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return value.strip() or None
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            _, _, password = decoded.partition(":")
            return password or None
        return None

    async def authenticate(
        self,
        authorization: str | None,
        *,
        cookies: Mapping[str, str] | None = None,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
    ) -> Principal:
        credential = self.credentials(authorization)
        if credential is not None:
            for authenticator in self.authenticators:
                principal = await authenticator.principal(credential)
                if principal is not None:
                    return principal
            raise AuthenticationError("the API token is not valid")
        if self.sessions is not None and cookies:
            cookie = cookies.get(self.sessions.cookie_name)
            if cookie:
                principal = await self.sessions.principal(cookie, method, headers or {})
                if principal is not None:
                    return principal
        if self.allow_anonymous:
            return ANONYMOUS
        raise AuthenticationError(
            "authentication required: pass an API token as 'Authorization: Bearer <token>' "
            "(see `nubis login`), or start the server with --insecure-local for anonymous local use"
        )

    def authorize(self, principal: Principal, action: Action, tenant: str, project: str | None) -> None:
        if principal.may(action, tenant, project):
            return
        where = f"tenant {tenant}" + (f", project {project}" if project else "")
        raise AuthorizationError(f"{principal.name} may not {action} in {where}")
