"""The one authorisation gate every API route goes through: (principal, project, action).

Today there is one role: the local admin, authenticated by an API token (Bearer, or basic auth
with the token as password), or anyone when the server runs with `--insecure-local` on loopback.
The tenant model of a later issue replaces `authorize` without touching a route.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from nubis.auth.tokens import hash_token
from nubis.errors import ApiError

Action = Literal["read", "write", "invoke", "admin"]


@dataclass(frozen=True)
class Principal:
    name: str
    role: Literal["admin", "anonymous"]


ANONYMOUS = Principal("anonymous", "anonymous")


class AuthenticationError(ApiError):
    """No valid credentials: the API answers 401 (with a `WWW-Authenticate` challenge)."""

    status_code = 401


class AuthorizationError(ApiError):
    """Valid credentials, not allowed: the API answers 403."""

    status_code = 403


TokenLookup = Callable[[str], Awaitable[str | None]]


class Gate:
    """Authenticates a request's credentials and authorises the action it asks for."""

    def __init__(self, lookup_principal: TokenLookup, *, allow_anonymous: bool = False) -> None:
        self._lookup = lookup_principal
        self.allow_anonymous = allow_anonymous

    @staticmethod
    def credentials(authorization: str | None) -> str | None:
        """The token carried by an Authorization header (Bearer, or basic auth's password)."""
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

    async def authenticate(self, authorization: str | None) -> Principal:
        token = self.credentials(authorization)
        if token is not None:
            name = await self._lookup(hash_token(token))
            if name is not None:
                return Principal(name, "admin")
            raise AuthenticationError("the API token is not valid")
        if self.allow_anonymous:
            return ANONYMOUS
        raise AuthenticationError(
            "authentication required: pass an API token as 'Authorization: Bearer <token>' "
            "(see `nubis login`), or start the server with --insecure-local for anonymous local use"
        )

    def authorize(self, principal: Principal, action: Action, project: str | None) -> None:
        # One role today: the admin, or anonymous on an --insecure-local server, may do everything.
        if principal.role in ("admin", "anonymous"):
            return
        raise AuthorizationError(f"{principal.name} may not {action} in project {project or '*'}")
